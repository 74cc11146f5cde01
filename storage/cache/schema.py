"""The cache schema: what a teacher-target cache holds, stored in the Zarr root attributes.

A cache is self-describing: its root ``zarr.json`` carries the schema version, the BEV grid of
the stored maps, the teacher (name, config, weights sha256), the source dataset
(id, version, split) and one :class:`TargetSpec` per stored target.

Rows are ``(sample, view)`` pairs: ``row = sample_index * views + view``. Shard ``i`` holds rows
``[i * shard_size, (i + 1) * shard_size)`` and is written whole by exactly one writer.

Target fields: the declarative table :data:`TARGET_FIELDS` (one :class:`TargetField` per kind:
name, shape rule, dtype, codecs, frame, warp rule) is the one place a target is described; the
schema, the writer, the reader, the loader's packing and the BEV warping read it. In short:

==========================  =================  ====================================
name                        logical shape      meaning
==========================  =================  ====================================
``bev_features/<stage>``    ``(C, H, W)``      float32 BEV map, BEV frame
``heatmap``                 ``(K, H, W)``      float32 class heatmap in [0, 1]
``boxes``                   ``(M_max, 9)``     float32 boxes, plus scores and labels, ragged;
                                               stored as ``(M_max, 11)`` :data:`BOX_COLUMNS`
``instance_features``       ``(M_max, C)``     float32 features at box centres, ragged
``lidar_depth``             ``(6, h, w)``      float32 metres, 0 = no point, camera frame
``depth_probs``             ``(6, D, h, w)``   float32 softmax over D, camera frame
``fg_mask``                 ``(H, W)``         bool, BEV frame
``view_mask``               ``(6, H, W)``      bool, BEV frame
==========================  =================  ====================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from storage.grid import BEVGrid

if TYPE_CHECKING:
    from storage.cache.row import CacheRow

#: Bump when the on-disk layout changes; readers refuse other versions unless asked.
SCHEMA_VERSION = 1
#: Codec kinds. ``quant_u8``: per-channel affine uint8 (scale/offset stored beside);
#: ``sqrt_u8``: per-channel square-root companded uint8 (for heavy-tailed maps);
#: ``unit_u8``: values in [0, 1] as round(255 x); ``float16`` / ``float32``: plain casts;
#: ``bitpack``: bool packed 8 per byte.
CODEC_KINDS = ("quant_u8", "sqrt_u8", "unit_u8", "float16", "float32", "bitpack")
#: The stored columns of the ``boxes`` target, one truth for schema, codec and attributes: the
#: logical value is ``(boxes (M, 9) [x, y, z, l, w, h, yaw, vx, vy], scores (M,), labels (M,))``
#: and the ``data`` component is ``(M_max, 11)`` float32 with these columns (gravity centre, m;
#: yaw CCW from +x, rad; velocity m/s; score in [0, 1]; label an integer-valued class index),
#: zero-padded past the row's ``count``.
BOX_COLUMNS: tuple[str, ...] = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy", "score", "label")
#: Units of :data:`BOX_COLUMNS` (``1``: dimensionless).
BOX_COLUMN_UNITS: tuple[str, ...] = ("m", "m", "m", "m", "m", "m", "rad", "m/s", "m/s", "1", "1")

@dataclass(frozen=True, kw_only=True)
class Codec:
    """How one target is stored.

    Args:
        kind: one of :data:`CODEC_KINDS`.
        zstd_level: Zstd level of the chunk compressor (with its content checksum), or ``None``
            for no compression (a crc32c is then appended to each chunk instead).

    Raises:
        ValueError: unknown kind or a level outside [-7, 22].
    """

    kind: str
    zstd_level: int | None = 1

    def __post_init__(self) -> None:
        if self.kind not in CODEC_KINDS:
            raise ValueError(f"Codec.kind must be one of {CODEC_KINDS}, got {self.kind!r}")
        if self.zstd_level is not None and not -7 <= self.zstd_level <= 22:
            raise ValueError(f"Codec.zstd_level must be in [-7, 22] or None, got {self.zstd_level}")

    @property
    def lossless(self) -> bool:
        """True when decoding returns exactly what was written (float16 counts as lossy)."""
        return self.kind in ("float32", "bitpack")

    def __str__(self) -> str:
        return self.kind + (f"+zstd{self.zstd_level}" if self.zstd_level is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "zstd_level": self.zstd_level}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Codec:
        return cls(kind=d["kind"], zstd_level=d.get("zstd_level"))


#: Warp rules: how a BEV augmentation (``view_matrix``) moves a target. ``bilinear`` / ``nearest``:
#: resampled on the grid (maps / masks); ``boxes``: centre, yaw and velocity moved
#: (:func:`storage.boxes.transform_boxes`); ``with_boxes``: travels unchanged with its box;
#: ``image_min`` / ``image_bilinear``: camera frame, unchanged by a BEV augmentation and moved by an
#: image augmentation (min-preserving / bilinear).
WARP_RULES = ("bilinear", "nearest", "boxes", "with_boxes", "image_min", "image_bilinear")


@dataclass(frozen=True, kw_only=True)
class TargetField:
    """One kind of cache target: a row of :data:`TARGET_FIELDS`, the table that the schema, the
    writer, the reader, the loader's packing and the BEV warping read (adding a target touches it
    and the producer only).

    Attributes:
        name: target name; ``bev_features`` stands for the family ``bev_features/<stage>``.
        shape: per-row shape rule, one symbol per axis: a digit is a fixed size (``6`` cameras,
            ``9`` box parameters), ``H`` / ``W`` the grid's ``bev_shape``, ``M`` the box capacity
            ``M_max`` (ragged: the valid rows are the row's box count); any other letter is free.
        dtype: logical (decoded) dtype, ``float32`` or ``bool``.
        codecs: the codec kinds allowed.
        default_codec: the codec used unless one is asked for.
        frame: ``bev`` (the row's BEV frame, see ``view_matrix``) or ``camera``.
        warp: one of :data:`WARP_RULES`.
        attrs: the :class:`storage.cache.row.CacheRow` attributes holding the value, in the order
            of the value's tuple (``boxes``: boxes, scores, labels); empty: the attribute ``name``.
        attr_dtypes: logical dtype of each of ``attrs`` (``boxes``: float32, float32, int64);
            empty: ``dtype`` for every attribute.
        columns: names of the stored last axis when the stored array packs several attributes
            into one (``boxes``: :data:`BOX_COLUMNS`, 9 box values then score and label); empty:
            stored as the logical shape.
    """

    name: str
    shape: tuple[str, ...]
    dtype: str
    codecs: tuple[str, ...]
    default_codec: Codec
    frame: str
    warp: str
    attrs: tuple[str, ...] = ()
    attr_dtypes: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()

    @property
    def ragged(self) -> bool:
        """First axis is the box capacity ``M_max``."""
        return self.shape[0] == "M"

    @property
    def bev_map(self) -> bool:
        """Trailing ``(H, W)`` axes on the cache grid."""
        return self.shape[-2:] == ("H", "W")

    @property
    def row_attrs(self) -> tuple[str, ...]:
        """The :class:`~storage.cache.row.CacheRow` attributes of this target."""
        return self.attrs or (self.name,)

    @property
    def row_dtypes(self) -> tuple[str, ...]:
        """The logical dtype of each of :attr:`row_attrs`, in the same order."""
        return self.attr_dtypes or (self.dtype,) * len(self.row_attrs)


_U8 = ("quant_u8", "sqrt_u8")

#: The cache target fields (module table above), in storage order. Defaults chosen from
#: bench/storage.py measurements: ``sqrt_u8`` keeps BEV cosine >= 0.9999 on heavy-tailed maps where
#: affine ``quant_u8`` falls to 0.997 (and costs ~5% more bytes on smooth maps).
TARGET_FIELDS: tuple[TargetField, ...] = (
    TargetField(name="bev_features", shape=("C", "H", "W"), dtype="float32", codecs=(*_U8, "float16", "float32"),
                default_codec=Codec(kind="sqrt_u8", zstd_level=1), frame="bev", warp="bilinear"),
    TargetField(name="heatmap", shape=("K", "H", "W"), dtype="float32",
                codecs=("unit_u8", *_U8, "float16", "float32"), default_codec=Codec(kind="unit_u8", zstd_level=3),
                frame="bev", warp="bilinear"),
    TargetField(name="boxes", shape=("M", "9"), dtype="float32", codecs=("float32",),
                default_codec=Codec(kind="float32", zstd_level=1), frame="bev", warp="boxes",
                attrs=("boxes", "scores", "labels"), attr_dtypes=("float32", "float32", "int64"),
                columns=BOX_COLUMNS),
    TargetField(name="instance_features", shape=("M", "C"), dtype="float32", codecs=("float16", "float32"),
                default_codec=Codec(kind="float16", zstd_level=1), frame="bev", warp="with_boxes"),
    TargetField(name="lidar_depth", shape=("6", "h", "w"), dtype="float32", codecs=("float16", "float32"),
                default_codec=Codec(kind="float16", zstd_level=1), frame="camera", warp="image_min"),
    TargetField(name="depth_probs", shape=("6", "D", "h", "w"), dtype="float32",
                codecs=("unit_u8", "float16", "float32"), default_codec=Codec(kind="unit_u8", zstd_level=1),
                frame="camera", warp="image_bilinear"),
    TargetField(name="fg_mask", shape=("H", "W"), dtype="bool", codecs=("bitpack",),
                default_codec=Codec(kind="bitpack", zstd_level=1), frame="bev", warp="nearest"),
    TargetField(name="view_mask", shape=("6", "H", "W"), dtype="bool", codecs=("bitpack",),
                default_codec=Codec(kind="bitpack", zstd_level=1), frame="bev", warp="nearest"),
)

_FIELDS = {f.name: f for f in TARGET_FIELDS}
#: Prefix of the BEV map family: ``bev_features/<stage>``.
BEV_PREFIX = "bev_features/"
#: Target names besides the ``bev_features/<stage>`` family.
FIXED_TARGETS = tuple(f.name for f in TARGET_FIELDS if f.name != "bev_features")
#: Default codec per field name (``bev_features`` for every stage).
DEFAULT_CODECS: dict[str, Codec] = {f.name: f.default_codec for f in TARGET_FIELDS}


def target_kind(name: str) -> str:
    """The field name of a target name (``bev_features/lidar_bev`` -> ``bev_features``).

    Raises:
        ValueError: for a name that is neither ``bev_features/<stage>`` nor a fixed target.
    """
    if name.startswith(BEV_PREFIX) and len(name) > len(BEV_PREFIX) and "/" not in name[len(BEV_PREFIX):]:
        return "bev_features"
    if name in FIXED_TARGETS:
        return name
    raise ValueError(f"unknown target name {name!r}: use 'bev_features/<stage>' or one of {FIXED_TARGETS}")


def target_field(name: str) -> TargetField:
    """The :class:`TargetField` of a target name. Raises ValueError for an unknown name."""
    return _FIELDS[target_kind(name)]


def fields_where(**match: object) -> tuple[TargetField, ...]:
    """The fields whose attributes equal ``match`` (e.g. ``warp="nearest"``, ``ragged=True``), in table order."""
    return tuple(f for f in TARGET_FIELDS if all(getattr(f, k) == v for k, v in match.items()))


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """One stored target.

    Args:
        name: target name (see the module table).
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
        return cls(schema_version=int(d["schema_version"]), grid=BEVGrid.from_dict(d["grid"]),
                   teacher=TeacherInfo(**d["teacher"]), dataset=DatasetInfo(**d["dataset"]),
                   targets=tuple(TargetSpec.from_dict(t) for t in d["targets"]), num_rows=int(d["num_rows"]),
                   views=int(d["views"]), shard_size=int(d["shard_size"]))


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
