"""Checked access to the fields of one sample of an mmdetection3d info pickle.

An info pickle is plain dicts, lists and arrays: a field can be absent, or hold a string where a
4x4 matrix belongs. :class:`InfoFields` reads a field and checks its type and shape where the
reader converts it, so a broken sample fails with one :class:`~storage.errors.SampleError` that
names the sample, the field's path in the sample (``lidar_points.lidar2ego``,
``instances[3].bbox_3d``) and the info file, and fails only that sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.arrays import Float64Array
from storage.errors import SampleError, numbers_phrase, short_repr

_REQUIRED: Any = object()


@dataclass(frozen=True, kw_only=True)
class InfoFields:
    """One dict of an info file (a sample, or a part of it at ``prefix``), read with checks.

    Attributes:
        record: the dict.
        sample_token: the sample it belongs to (named in errors).
        info_path: the info file (named in errors).
        prefix: the dict's path in the sample, ``""`` for the sample itself, e.g. ``"images.CAM_FRONT."``.
    """

    record: dict[str, Any]
    sample_token: str
    info_path: str
    prefix: str = ""

    def error(self, key: str, problem: str) -> SampleError:
        """``sample <token>: <prefix><key> <problem> at <info file>``."""
        return SampleError(self.sample_token, f"{self.prefix}{key}", problem, self.info_path)

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        """The field's value (``default`` when absent or None, if given).

        Raises:
            SampleError: the field is absent and has no default.
        """
        value = self.record.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "missing from the info file")
            return default
        return value

    def sub(self, key: str) -> InfoFields:
        """The dict at ``key``.

        Raises:
            SampleError: absent, or not a dict.
        """
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.error(key, f"is not a dict (got {short_repr(value)})")
        return InfoFields(record=value, sample_token=self.sample_token, info_path=self.info_path,
                          prefix=f"{self.prefix}{key}.")

    def items(self, key: str) -> Iterator[InfoFields]:
        """The dicts of the list at ``key`` (none when absent), named ``<key>[i]``.

        Raises:
            SampleError: not a list of dicts.
        """
        value = self.raw(key, [])
        if not isinstance(value, (list, tuple)):
            raise self.error(key, f"is not a list (got {short_repr(value)})")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{i}]", f"is not a dict (got {short_repr(item)})")
            yield InfoFields(record=item, sample_token=self.sample_token, info_path=self.info_path,
                             prefix=f"{self.prefix}{key}[{i}].")

    def text(self, key: str) -> str:
        """A path or name: a non-empty string.

        Raises:
            SampleError: absent, empty or not a string.
        """
        value = self.raw(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, f"is not a file name (got {short_repr(value)})")
        return str(value)

    def numbers(self, key: str, shape: tuple[int, ...], default: Any = _REQUIRED, *,
                crop: bool = False) -> Float64Array:
        """The field as a float64 array of ``shape`` (``()``: one number; ``-1`` in ``shape``: any
        length). With ``crop``, a larger 2D matrix is cut to its top-left ``shape`` (mmdet3d
        writes 3x3 intrinsics as 3x3 or 4x4).

        Raises:
            SampleError: ``... is not 4x4 numbers (got 'oops')``, or absent without a default.
        """
        value = self.raw(key, default)
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.error(key, f"is not {numbers_phrase(shape)} (got {short_repr(value)})") from None
        if crop and a.ndim == len(shape) and all(n >= s for n, s in zip(a.shape, shape, strict=True)):
            a = a[tuple(slice(0, s) for s in shape)].copy()
        if a.ndim != len(shape) or any(s not in (-1, n) for n, s in zip(a.shape, shape, strict=True)):
            raise self.error(key, f"is not {numbers_phrase(shape)} (got {short_repr(value)})")
        return a

    def quaternion(self, key: str) -> Float64Array:
        """A rotation ``(w, x, y, z)``: 4 numbers, not all zero.

        Raises:
            SampleError: not 4 numbers, a zero quaternion, or absent.
        """
        q = self.numbers(key, (4,))
        if not np.linalg.norm(q) > 0:
            raise self.error(key, f"is not a rotation quaternion (got {short_repr(self.raw(key))})")
        return q

    def integer(self, key: str, default: Any = _REQUIRED) -> int:
        """One whole number (a label id, a point count, a timestamp in us).

        Raises:
            SampleError: not a whole number, or absent without a default.
        """
        value = self.numbers(key, (), default)
        if not np.isfinite(value) or value != np.round(value):
            raise self.error(key, f"is not a whole number (got {short_repr(self.raw(key, default))})")
        return int(value)


__all__ = ["InfoFields"]
