"""The cache schema: what a teacher-target cache holds, stored in the Zarr root attributes.

A cache is self-describing: its root ``zarr.json`` carries the schema version, the BEV grid of
the stored maps, the teacher (name, config, weights sha256), the source dataset
(id, version, split) and one :class:`TargetSpec` per stored target.

Rows are ``(sample, view)`` pairs: ``row = sample_index * views + view``. Shard ``i`` holds rows
``[i * shard_size, (i + 1) * shard_size)`` and is written whole by exactly one writer.

Target fields: the declarative table :data:`~storage.cache.fields.TARGET_FIELDS` (one
:class:`~storage.cache.fields.TargetField` per kind: name, shape rule, dtype, codecs, frame, warp rule)
lives in :mod:`storage.cache.fields`, the one place a target is described; its names are re-exported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from storage.cache.fields import (BEV_PREFIX, BOX_COLUMN_UNITS, BOX_COLUMNS, CODEC_KINDS, DEFAULT_CODECS,
                                  FIXED_TARGETS, TARGET_FIELDS, WARP_RULES, Codec, TargetField, fields_where,
                                  target_field, target_kind)
from storage.grid import BEVGrid

if TYPE_CHECKING:
    from storage.cache.row import CacheRow

#: Bump when the on-disk layout changes; readers refuse other versions unless asked.
SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """One stored target.

    Args:
        name: target name (see the table in :mod:`storage.cache.fields`).
        shape: logical per-row shape, e.g. ``(256, 180, 180)``; for ragged targets
            (``boxes``, ``instance_features``) the first axis is the capacity ``M_max``.
        dtype: logical (decoded) dtype: ``float32`` or ``bool``.
        frame: ``bev`` (the row's BEV frame, see ``view_matrix``) or ``camera``.
        codec: storage codec; defaults to :data:`DEFAULT_CODECS` of the kind.

    Raises:
        ValueError: unknown name, wrong rank, or a codec the kind does not allow.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = ""
    frame: str = ""
    codec: Codec | None = None

    def __post_init__(self) -> None:
        f = target_field(self.name)
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != len(f.shape) or min(shape) < 1:
            raise ValueError(f"target {self.name}: shape must have {len(f.shape)} positive dims "
                             f"({', '.join(f.shape)}), got {shape}")
        for axis, (rule, size) in enumerate(zip(f.shape, shape, strict=True)):
            if rule.isdigit() and size != int(rule):
                what = "the 6 cameras" if rule == "6" else f"{rule} wide"
                raise ValueError(f"target {self.name}: axis {axis} must be {what} (shape ({', '.join(f.shape)})), "
                                 f"got {shape}")
        codec = self.codec or f.default_codec
        if codec.kind not in f.codecs:
            raise ValueError(f"target {self.name}: codec {codec.kind} not allowed, use one of {f.codecs}")
        if self.dtype and self.dtype != f.dtype:
            raise ValueError(f"target {self.name}: logical dtype is {f.dtype}, got {self.dtype!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "dtype", self.dtype or f.dtype)
        object.__setattr__(self, "frame", self.frame or f.frame)

    @property
    def kind(self) -> str:
        """The field name (``bev_features`` for every stage)."""
        return target_kind(self.name)

    @property
    def field(self) -> TargetField:
        """The row of :data:`TARGET_FIELDS` this target follows."""
        return target_field(self.name)

    @property
    def raw_nbytes(self) -> int:
        """Bytes of one row in its logical dtype (float32 or bool; boxes with their scores and
        labels as float32), the compression baseline."""
        n = 1
        for s in self.shape:
            n *= s
        extra = self.shape[0] * (len(self.field.row_attrs) - 1)  # scores, labels: one value per box
        return (n + extra) * (1 if self.dtype == "bool" else 4)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """Per-row shape of the stored ``data`` before its codec (``boxes``: ``(M_max, 11)``, one
        column per :attr:`TargetField.columns`); the logical :attr:`shape` otherwise."""
        columns = self.field.columns
        return (*self.shape[:-1], len(columns)) if columns else self.shape

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "frame": self.frame,
             "codec": self.codec.to_dict()}  # type: ignore[union-attr]
        if self.field.columns:  # informative (derived from the field): what the stored last axis holds
            d["stored_shape"] = list(self.stored_shape)
            d["columns"] = list(self.field.columns)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetSpec:
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"], frame=d["frame"],
                   codec=Codec.from_dict(d["codec"]))


@dataclass(frozen=True, kw_only=True)
class TeacherInfo:
    """A teacher's identity: what :func:`teachers.registry.load_teacher` returns and a cache records.

    Args:
        name: registered teacher name (``teachers`` factory key) or ``package.module:factory``.
        config: the teacher's config as a JSON-serialisable dict (``{}`` for a user module
            without a dataclass ``config``).
        weights_sha256: hex sha256 over the state dict (names, dtypes, shapes and bytes, in key
            order; :func:`teachers.registry.weights_sha256`), "" if unknown.
        checkpoint: where the weights came from (``""`` = freshly initialised).
        meta: free-form JSON-ready checkpoint metadata (training steps, metrics).

    Raises:
        TypeError: ``config`` or ``meta`` is not JSON-serialisable.
    """

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    checkpoint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        json.dumps(self.config)  # raises TypeError for a config that is not JSON
        json.dumps(self.meta)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "weights_sha256": self.weights_sha256,
                "checkpoint": self.checkpoint, "meta": self.meta}


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """The source dataset of a cache, e.g. ``("nuscenes", "v1.0-trainval", "train")``."""

    dataset_id: str
    version: str
    split: str

    @classmethod
    def from_reader_id(cls, reader_id: str) -> DatasetInfo:
        """From a reader's ``dataset_id`` ``"<id>:<version>:<split>"`` (missing parts are "")."""
        parts = str(reader_id).split(":", 2)
        parts += [""] * (3 - len(parts))
        return cls(dataset_id=parts[0], version=parts[1], split=parts[2])

    def to_dict(self) -> dict[str, Any]:
        return {"dataset_id": self.dataset_id, "version": self.version, "split": self.split}


@dataclass(frozen=True, kw_only=True)
class CacheSchema:
    """Everything that describes a cache (stored as JSON in the root attributes).

    Args:
        grid: the grid of the stored BEV maps (e.g. the detector's stride-8 output grid).
        teacher: who produced the targets.
        dataset: which dataset split the rows come from.
        targets: the stored targets; any subset of the kinds.
        num_rows: capacity, ``num_samples * views``.
        views: rows per sample (1 plain view + K-1 BEV augmentations).
        shard_size: rows per shard ``S``; a shard is written whole by one writer.
        schema_version: layout version, :data:`SCHEMA_VERSION` for new caches.

    Raises:
        ValueError: duplicate target names, ``num_rows`` not a multiple of ``views``,
            ``instance_features`` without ``boxes`` (or with another capacity), or a BEV target
            whose ``(H, W)`` differs from ``grid.bev_shape``.
    """

    grid: BEVGrid
    teacher: TeacherInfo
    dataset: DatasetInfo
    targets: tuple[TargetSpec, ...]
    num_rows: int
    views: int = 1
    shard_size: int = 32
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"CacheSchema.targets: need unique, non-empty target names, got {names}")
        if self.views < 1 or self.shard_size < 1 or self.num_rows < 1 or self.num_rows % self.views:
            raise ValueError(f"CacheSchema: num_rows {self.num_rows} must be a positive multiple of "
                             f"views {self.views}; shard_size {self.shard_size} must be >= 1")
        spec = {t.name: t for t in self.targets}
        for t in self.targets:
            if t.field.ragged and t.name != "boxes" and ("boxes" not in spec or spec["boxes"].shape[0] != t.shape[0]):
                raise ValueError(f"CacheSchema: {t.name} needs a boxes target of the same capacity M_max")
            if t.field.bev_map and t.shape[-2:] != self.grid.bev_shape:
                raise ValueError(f"CacheSchema: target {t.name} has (H, W) {t.shape[-2:]} but the grid's "
                                 f"bev_shape is {self.grid.bev_shape}")

    # ---- derived values -------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self.num_rows // self.views

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)

    def shard_rows(self, shard_index: int) -> range:
        """Global row indices of shard ``shard_index``.

        Raises:
            IndexError: for a shard outside ``[0, num_shards)``.
        """
        if not 0 <= shard_index < self.num_shards:
            raise IndexError(f"shard {shard_index} outside [0, {self.num_shards})")
        return range(shard_index * self.shard_size, min((shard_index + 1) * self.shard_size, self.num_rows))

    def target(self, name: str) -> TargetSpec:
        """The spec named ``name``. Raises KeyError naming the stored targets."""
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"target {name!r} is not in this cache (stored: {[t.name for t in self.targets]})")

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "grid": self.grid.to_dict(),
                "teacher": self.teacher.to_dict(), "dataset": self.dataset.to_dict(),
                "targets": [t.to_dict() for t in self.targets], "num_rows": self.num_rows,
                "views": self.views, "shard_size": self.shard_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheSchema:
        """The schema of :meth:`to_dict`'s output (a cache's root attributes).

        Raises:
            ValueError: a field missing or not what it must be; the message starts with the
                field's dotted name (``field grid.voxel_size: needs 3 numbers, got 'big'``).
        """
        if not isinstance(d, dict):
            raise ValueError(f"field bevkd_cache: needs an object, got {d!r:.80}")
        missing = [k for k in ("schema_version", "grid", "teacher", "dataset", "targets", "num_rows", "views",
                               "shard_size") if k not in d]
        if missing:
            raise ValueError(f"field {missing[0]}: missing")
        if not isinstance(d["targets"], list):
            raise ValueError(f"field targets: needs a list, got {d['targets']!r:.80}")
        return _field("bevkd_cache", lambda: cls(
            schema_version=_field("schema_version", lambda: _int(d["schema_version"])),
            grid=_field("grid", lambda: BEVGrid.from_dict(d["grid"])),
            teacher=_field("teacher", lambda: TeacherInfo(**d["teacher"])),
            dataset=_field("dataset", lambda: DatasetInfo(**d["dataset"])),
            targets=tuple(_field(f"targets[{i}]", TargetSpec.from_dict, t) for i, t in enumerate(d["targets"])),
            num_rows=_field("num_rows", lambda: _int(d["num_rows"])), views=_field("views", lambda: _int(d["views"])),
            shard_size=_field("shard_size", lambda: _int(d["shard_size"]))))


T = TypeVar("T")
_GRID_FIELDS = tuple(f.name for f in fields(BEVGrid))


class _FieldError(ValueError):
    """A field of a stored schema is missing or wrong; the message starts with its dotted name."""


def _field(name: str, parse: Callable[..., T], *args: Any) -> T:
    """``parse(*args)``, any error of it as one :class:`_FieldError` naming field ``name`` (or the
    grid's field that :meth:`BEVGrid.from_dict` names: ``field grid.voxel_size: ...``)."""
    try:
        return parse(*args)
    except _FieldError:  # an inner field, already named
        raise
    except KeyError as e:  # a key of a nested object, e.g. a target's "codec"
        raise _FieldError(f"field {name}: {e.args[0]!s:.200} missing") from None
    except (TypeError, ValueError, AttributeError) as e:
        head, _, rest = str(e).partition(": ")
        if name == "grid" and head in _GRID_FIELDS:
            raise _FieldError(f"field grid.{head}: {rest}") from None
        raise _FieldError(f"field {name}: {e}") from None


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"needs an integer, got {v!r:.80}")
    return v


def target_specs_for(example: CacheRow, *, max_boxes: int = 500, codecs: dict[str, Codec] | None = None,
                     only: tuple[str, ...] | None = None) -> tuple[TargetSpec, ...]:
    """Target specs matching the targets present in an example row.

    Args:
        example: any row of the job (:func:`teachers.cache_row.build_cache_row`).
        max_boxes: capacity ``M_max`` of the ragged targets (``boxes``, ``instance_features``).
        codecs: target name or field name -> codec overriding the field's default.
        only: keep only these target names.

    Returns:
        one spec per target present in ``example`` (:meth:`CacheRow.target_names`), in table order.
    """
    codecs = codecs or {}
    specs = []
    for name in example.target_names():
        value = example.target(name)
        shape = tuple(int(s) for s in np.shape(value[0] if isinstance(value, tuple) else value))
        if target_field(name).ragged:
            shape = (max_boxes, *shape[1:])
        if only is None or name in only:
            specs.append(TargetSpec(name=name, shape=shape, codec=codecs.get(name) or codecs.get(target_kind(name))))
    return tuple(specs)


__all__ = ["BEV_PREFIX", "BOX_COLUMNS", "BOX_COLUMN_UNITS", "CODEC_KINDS", "DEFAULT_CODECS", "FIXED_TARGETS",
           "SCHEMA_VERSION", "TARGET_FIELDS", "WARP_RULES", "CacheSchema", "Codec", "DatasetInfo", "TargetField",
           "TargetSpec", "TeacherInfo", "fields_where", "target_field", "target_kind", "target_specs_for"]
