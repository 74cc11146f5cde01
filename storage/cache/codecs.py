"""Target codecs: how one row of one target becomes stored arrays, and back.

Each target is stored as one or more *components* (Zarr arrays ``targets/<name>/<component>``
with one chunk per row). The array-level compression (Zstd with its content checksum, or a
crc32c when uncompressed) is Zarr's; this module does the value transforms around it:

* ``quant_u8``: per-channel (axis 0) affine uint8, ``x ~= code * scale + offset`` with
  ``scale = (max - min) / 255`` and ``offset`` = min nudged so that 0.0 is exactly
  representable (zeros of ReLU maps stay exact, which also helps Zstd). Components ``data``
  (uint8) and ``qparams`` (``(2, C)`` float32 ``[scale, offset]``). Error ``|x^ - x| <= scale``
  (0.5 scale except for the value nudged past 255).
* ``sqrt_u8``: per-channel square-root companded uint8, ``x ~= code**2 * scale + offset`` with
  ``offset = min`` and ``scale = (max - min) / 255**2``: fine steps near the minimum (the zeros
  and small values of ReLU maps), coarse ones in the tail; for heavy-tailed maps it keeps
  cosine >= 0.9999 where affine drops below 0.999 (bench/storage.py). Same components.
* ``unit_u8``: values in [0, 1] as ``round(255 x)``; error <= 1/510.
* ``float16`` / ``float32``: casts (float16 relative error <= 2^-11, |x| <= 65504; :func:`to_float16`
  is NumPy's round-to-nearest-even cast, without its slow path for float16 subnormals).
* ``bitpack``: bool, 8 cells per byte (``np.packbits``, C order).
* boxes: ``data`` ``(M_max, 11)`` float32 with columns :data:`~storage.cache.schema.BOX_COLUMNS`
  ``[x, y, z, l, w, h, yaw, vx, vy, score, label]`` (:attr:`TargetSpec.stored_shape`) padded with
  zeros, plus ``count`` ``()`` int32.

What the stored arrays mean is also written beside them, for readers without bevkd
(:mod:`storage.cache.describe`).

Dequantisation can happen late, on the GPU: call :func:`dequantize` on torch tensors (it does
``data.float() ** power * scale[..., None, None] + offset[..., None, None]``; ``power`` is 1 for
the affine codecs, 2 for ``sqrt_u8``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from storage.arrays import AnyDtypeArray
from storage.cache.schema import Codec, TargetSpec

_FP16_MAX = 65504.0


class TargetValueError(ValueError):
    """A row's value cannot be stored (non-finite, out of range, too many boxes).

    The writer records such rows as failed, with this message as the reason.
    """


class QuantizedArray(NamedTuple):
    """A uint8 array and its per-channel parameters (a NamedTuple, so torch's default collate
    batches it field by field). Value ``= data ** power * scale + offset``.

    Attributes:
        data: ``(C, ...)`` uint8 codes (``(B, C, ...)`` once batched).
        scale: ``(C,)`` float32 (``(B, C)`` batched).
        offset: ``(C,)`` float32 value of code 0.
        power: 1 (affine: ``quant_u8``, ``unit_u8``) or 2 (``sqrt_u8``); an int, or a ``(B,)``
            tensor/array of equal values once batched.
    """

    data: Any
    scale: Any
    offset: Any
    power: Any = 1


def dequantize(q: QuantizedArray) -> Any:
    """``data ** power * scale + offset`` broadcast over the trailing axes of ``data``.

    Works for numpy arrays (returns float32 numpy) and torch tensors (returns float32 on the
    tensor's device; call it after ``.to("cuda")`` to dequantise on the GPU).
    """
    data, scale, offset, power = q
    power = int(power) if isinstance(power, (int, np.integer)) else int(power.reshape(-1)[0])
    extra = (1,) * (data.ndim - scale.ndim)
    scale = scale.reshape(tuple(scale.shape) + extra)
    offset = offset.reshape(tuple(offset.shape) + extra)
    x = data.astype(np.float32) if isinstance(data, np.ndarray) else data.float()
    if power == 2:
        x = x * x
    elif power != 1:
        raise ValueError(f"dequantize: power must be 1 or 2, got {power}")
    return x * scale + offset


def quantize_per_channel(x: npt.NDArray[np.floating[Any]]) -> QuantizedArray:
    """Per-channel (axis 0) affine uint8 quantisation with 0.0 exactly representable.

    Args:
        x: ``(C, ...)`` float, finite.

    Returns:
        QuantizedArray with ``data`` ``(C, ...)`` uint8, ``scale``/``offset`` ``(C,)`` float32.
    """
    flat = x.reshape(x.shape[0], -1).astype(np.float32, copy=False)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    scale = (hi - lo) / np.float32(255.0)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    straddles = (lo < 0) & (hi > 0)
    offset = np.where(straddles, -np.round(-lo / scale) * scale, lo).astype(np.float32)
    codes = np.subtract(flat, offset[:, None], dtype=np.float32)
    np.multiply(codes, (np.float32(1.0) / scale)[:, None], out=codes)
    np.rint(codes, out=codes)
    np.clip(codes, 0, 255, out=codes)
    return QuantizedArray(codes.astype(np.uint8).reshape(x.shape), scale, offset)


def quantize_sqrt_per_channel(x: npt.NDArray[np.floating[Any]]) -> QuantizedArray:
    """Per-channel (axis 0) square-root companded uint8 (``power=2``); the minimum is exact.

    Args:
        x: ``(C, ...)`` float, finite.

    Returns:
        QuantizedArray with ``data`` ``(C, ...)`` uint8, ``scale = (max - min) / 255**2`` and
        ``offset = min`` ``(C,)`` float32, ``power = 2``.
    """
    flat = x.reshape(x.shape[0], -1).astype(np.float32, copy=False)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    scale = (hi - lo) / np.float32(255.0 ** 2)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    codes = np.subtract(flat, lo[:, None], dtype=np.float32)  # >= 0 exactly: lo is the minimum
    np.multiply(codes, (np.float32(1.0) / scale)[:, None], out=codes)
    np.sqrt(codes, out=codes)
    np.rint(codes, out=codes)
    np.minimum(codes, 255, out=codes)
    return QuantizedArray(codes.astype(np.uint8).reshape(x.shape), scale, lo.astype(np.float32), 2)


def to_float16(x: AnyDtypeArray) -> npt.NDArray[np.float16]:
    """``x.astype(np.float16)`` bit for bit (IEEE round to nearest even), fast for small values.

    NumPy converts values that become float16 subnormals (``|x| < 2**-14``, common in untrained
    or post-softmax features) one at a time, ~15x slower than normal ones; those are computed
    here as ``rint(|x| * 2**24)`` units of ``2**-24`` (exact: a power-of-two scaling, then
    half-to-even rounding) with ``x``'s sign bit.

    Args:
        x: any shape, float32 or float64 (other dtypes are plain ``astype``), ``|x| <= 65504``.

    Returns:
        float16 array of ``x``'s shape.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        return x.astype(np.float16)
    tiny = np.abs(x) < 2.0 ** -14
    if not tiny.any():
        return x.astype(np.float16)
    out = np.where(tiny, x.dtype.type(0), x).astype(np.float16)
    small = x[tiny]
    codes = np.rint(np.abs(small) * x.dtype.type(2.0 ** 24)).astype(np.uint16)
    out.view(np.uint16)[tiny] = codes | (np.signbit(small).astype(np.uint16) << np.uint16(15))
    return out


def components(spec: TargetSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Stored components of a target: name -> (per-row shape, stored dtype)."""
    kind, codec = spec.kind, spec.codec
    assert codec is not None
    if kind == "boxes":
        return {"data": (spec.stored_shape, "float32"), "count": ((), "int32")}
    if codec.kind == "bitpack":
        return {"data": ((-(-int(np.prod(spec.shape)) // 8),), "uint8")}
    if codec.kind in ("quant_u8", "sqrt_u8"):
        return {"data": (spec.shape, "uint8"), "qparams": ((2, spec.shape[0]), "float32")}
    dtype = {"unit_u8": "uint8", "float16": "float16", "float32": "float32"}[codec.kind]
    return {"data": (spec.shape, dtype)}


def component_codec(spec: TargetSpec, component: str) -> Codec:
    """Compression of a component: the target's codec for ``data``, none for small side arrays."""
    assert spec.codec is not None
    return spec.codec if component == "data" else Codec(kind="float32", zstd_level=None)


def _check_shape(spec: TargetSpec, x: AnyDtypeArray, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"target {spec.name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")


def _check_finite(spec: TargetSpec, x: AnyDtypeArray, limit: float | None = None) -> None:
    if not x.size:
        return
    lo, hi = float(x.min()), float(x.max())  # NaN propagates through min/max; +-inf shows in one of them
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise TargetValueError(f"target {spec.name}: {int((~np.isfinite(x)).sum())} non-finite values")
    if limit is not None and max(-lo, hi) > limit:
        raise TargetValueError(f"target {spec.name}: |value| {float(np.abs(x).max()):g} exceeds float16 range")


def encode(spec: TargetSpec, value: Any) -> dict[str, AnyDtypeArray]:
    """Encode one row of a target into its stored components.

    Args:
        spec: the target.
        value: the logical array (see :class:`TargetSpec`); for ``boxes`` a tuple
            ``(boxes (M, 9), scores (M,), labels (M,))``; for ``instance_features`` ``(M, C)``.

    Returns:
        component name -> array of the shape/dtype given by :func:`components`.

    Raises:
        ValueError: wrong shape (a configuration error).
        TargetValueError: a value that cannot be stored (non-finite, out of range, M > M_max).
    """
    kind, codec = spec.kind, spec.codec
    assert codec is not None
    if kind == "boxes":
        return _encode_boxes(spec, *value)
    x = np.asarray(value)
    if kind == "instance_features":
        if x.ndim != 2 or x.shape[1] != spec.shape[1]:
            raise ValueError(f"target {spec.name}: expected shape (M, {spec.shape[1]}), got {x.shape}")
        if x.shape[0] > spec.shape[0]:
            raise TargetValueError(f"target {spec.name}: {x.shape[0]} rows exceed capacity {spec.shape[0]}")
        if codec.kind in ("float16", "float32"):  # cast the M rows only, into zero padding
            _check_finite(spec, x, _FP16_MAX if codec.kind == "float16" else None)
            out = np.zeros(spec.shape, np.float16 if codec.kind == "float16" else np.float32)
            out[:x.shape[0]] = to_float16(x) if codec.kind == "float16" else x
            return {"data": out}
        x = np.concatenate([x, np.zeros((spec.shape[0] - x.shape[0], x.shape[1]), x.dtype)])
    _check_shape(spec, x, spec.shape)
    if codec.kind == "bitpack":
        return {"data": np.packbits(x.astype(bool, copy=False).reshape(-1))}
    _check_finite(spec, x, _FP16_MAX if codec.kind == "float16" else None)
    if codec.kind in ("quant_u8", "sqrt_u8"):
        q = quantize_per_channel(x) if codec.kind == "quant_u8" else quantize_sqrt_per_channel(x)
        return {"data": q.data, "qparams": np.stack([q.scale, q.offset])}
    if codec.kind == "unit_u8":
        if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise TargetValueError(f"target {spec.name}: values outside [0, 1] "
                                   f"({float(x.min()):g}..{float(x.max()):g}) for codec unit_u8")
        return {"data": np.rint(x.astype(np.float32, copy=False) * np.float32(255.0)).astype(np.uint8)}
    return {"data": to_float16(x) if codec.kind == "float16" else x.astype(np.float32)}


def _encode_boxes(spec: TargetSpec, boxes: Any, scores: Any, labels: Any) -> dict[str, AnyDtypeArray]:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 9)
    m = boxes.shape[0]
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape[0] != m or labels.shape[0] != m:
        raise ValueError(f"target boxes: {m} boxes but {scores.shape[0]} scores and {labels.shape[0]} labels")
    if m > spec.shape[0]:
        raise TargetValueError(f"target boxes: {m} boxes exceed capacity M_max={spec.shape[0]}")
    if m and (labels.min() < 0 or labels.max() >= 2 ** 24):
        raise TargetValueError(f"target boxes: labels outside [0, 2^24): {labels.min()}..{labels.max()}")
    _check_finite(spec, boxes)
    data = np.zeros(spec.stored_shape, np.float32)
    data[:m, :9], data[:m, 9], data[:m, 10] = boxes, scores, labels
    return {"data": data, "count": np.asarray(m, dtype=np.int32)}


def decode(spec: TargetSpec, comps: dict[str, AnyDtypeArray], *, count: int | None = None,
           dequantize_values: bool = True) -> Any:
    """Inverse of :func:`encode` for one row (or, with a leading axis, ``B`` rows of non-ragged
    targets).

    Args:
        spec: the target.
        comps: component name -> stored array.
        count: number of valid boxes (for ``instance_features``; ``boxes`` carries its own).
        dequantize_values: if False, uint8 targets come back as :class:`QuantizedArray`
            (``unit_u8`` with ``scale = 1/255``, ``offset = 0``) and float16 stays float16.

    Returns:
        the logical value: float32 / bool array, :class:`QuantizedArray`, or for ``boxes`` a
        tuple ``(boxes (M, 9) float32, scores (M,) float32, labels (M,) int64)``.
    """
    codec = spec.codec
    assert codec is not None
    data = comps["data"]
    if spec.kind == "boxes":
        m = int(comps["count"])
        return data[:m, :9].copy(), data[:m, 9].copy(), data[:m, 10].astype(np.int64)
    if codec.kind == "bitpack":
        n = int(np.prod(spec.shape))
        return np.unpackbits(data, axis=-1, count=n).astype(bool).reshape(data.shape[:-1] + spec.shape)
    if spec.kind == "instance_features" and count is not None:
        data = data[:count]
    if codec.kind in ("quant_u8", "sqrt_u8"):
        q = QuantizedArray(data, comps["qparams"][..., 0, :], comps["qparams"][..., 1, :],
                           2 if codec.kind == "sqrt_u8" else 1)
        return dequantize(q) if dequantize_values else q
    if codec.kind == "unit_u8":
        c = spec.shape[0]
        q = QuantizedArray(data, np.full(data.shape[:-len(spec.shape)] + (c,), 1.0 / 255.0, np.float32),
                           np.zeros(data.shape[:-len(spec.shape)] + (c,), np.float32))
        return dequantize(q) if dequantize_values else q
    if codec.kind == "float16" and not dequantize_values:
        return data
    return data.astype(np.float32, copy=False)
