"""The cache schema: what a teacher-target cache holds, stored in the Zarr root attributes.

A cache is self-describing: its root ``zarr.json`` carries the schema version, the BEV grid of
the stored maps, the teacher (name, config, weights sha256), the source dataset
(id, version, split) and one :class:`TargetSpec` per stored target.

Rows are ``(sample, view)`` pairs: ``row = sample_index * views + view``. Shard ``i`` holds rows
``[i * shard_size, (i + 1) * shard_size)`` and is written whole by exactly one writer.

Target names (a target's *kind* follows from its name):

==========================  =================  ====================================
name                        logical shape      meaning
==========================  =================  ====================================
``bev_features/<stage>``    ``(C, H, W)``      float32 BEV map, BEV frame
``heatmap``                 ``(K, H, W)``      float32 class heatmap in [0, 1]
``boxes``                   ``(M_max, 9)``     float32 boxes + scores + labels, ragged
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
from typing import Any

from storage.grid import BEVGrid

#: Bump when the on-disk layout changes; readers refuse other versions unless asked.
SCHEMA_VERSION = 1

#: Codec kinds. ``quant_u8``: per-channel affine uint8 (scale/offset stored beside);
#: ``sqrt_u8``: per-channel square-root companded uint8 (for heavy-tailed maps);
#: ``unit_u8``: values in [0, 1] as round(255 x); ``float16`` / ``float32``: plain casts;
#: ``bitpack``: bool packed 8 per byte.
CODEC_KINDS = ("quant_u8", "sqrt_u8", "unit_u8", "float16", "float32", "bitpack")

#: Fixed target names; BEV maps use ``bev_features/<stage>``.
BEV_PREFIX = "bev_features/"
FIXED_TARGETS = ("heatmap", "boxes", "instance_features", "lidar_depth", "depth_probs", "fg_mask", "view_mask")

# kind -> (allowed codec kinds, logical ndim, logical dtype, default frame)
_KINDS: dict[str, tuple[tuple[str, ...], int, str, str]] = {
    "bev_features": (("quant_u8", "sqrt_u8", "float16", "float32"), 3, "float32", "bev"),
    "heatmap": (("unit_u8", "quant_u8", "sqrt_u8", "float16", "float32"), 3, "float32", "bev"),
    "boxes": (("float32",), 2, "float32", "bev"),
    "instance_features": (("float16", "float32"), 2, "float32", "bev"),
    "lidar_depth": (("float16", "float32"), 3, "float32", "camera"),
    "depth_probs": (("unit_u8", "float16", "float32"), 4, "float32", "camera"),
    "fg_mask": (("bitpack",), 2, "bool", "bev"),
    "view_mask": (("bitpack",), 3, "bool", "bev"),
}


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
    def from_dict(cls, d: dict[str, Any]) -> "Codec":
        return cls(kind=d["kind"], zstd_level=d.get("zstd_level"))


#: Defaults, chosen from bench/storage.py measurements: ``sqrt_u8`` keeps BEV cosine >= 0.9999 on
#: heavy-tailed maps where affine ``quant_u8`` falls to 0.997 (and costs ~5% more bytes on smooth maps).
DEFAULT_CODECS: dict[str, Codec] = {
    "bev_features": Codec(kind="sqrt_u8", zstd_level=1),
    "heatmap": Codec(kind="unit_u8", zstd_level=3),
    "boxes": Codec(kind="float32", zstd_level=1),
    "instance_features": Codec(kind="float16", zstd_level=1),
    "lidar_depth": Codec(kind="float16", zstd_level=1),
    "depth_probs": Codec(kind="unit_u8", zstd_level=1),
    "fg_mask": Codec(kind="bitpack", zstd_level=1),
    "view_mask": Codec(kind="bitpack", zstd_level=1),
}


def target_kind(name: str) -> str:
    """The kind of a target name (``bev_features/lidar_bev`` -> ``bev_features``).

    Raises:
        ValueError: for a name that is neither ``bev_features/<stage>`` nor a fixed target.
    """
    if name.startswith(BEV_PREFIX) and len(name) > len(BEV_PREFIX) and "/" not in name[len(BEV_PREFIX):]:
        return "bev_features"
    if name in FIXED_TARGETS:
        return name
    raise ValueError(f"unknown target name {name!r}: use 'bev_features/<stage>' or one of {FIXED_TARGETS}")


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
        kind = target_kind(self.name)
        allowed, ndim, dtype, frame = _KINDS[kind]
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != ndim or min(shape) < 1:
            raise ValueError(f"target {self.name}: shape must have {ndim} positive dims, got {shape}")
        if kind == "boxes" and shape[1] != 9:
            raise ValueError(f"target boxes: shape must be (M_max, 9), got {shape}")
        if kind == "view_mask" and shape[0] != 6 or kind in ("lidar_depth", "depth_probs") and shape[0] != 6:
            raise ValueError(f"target {self.name}: first axis must be the 6 cameras, got {shape}")
        codec = self.codec or DEFAULT_CODECS[kind]
        if codec.kind not in allowed:
            raise ValueError(f"target {self.name}: codec {codec.kind} not allowed, use one of {allowed}")
        if self.dtype and self.dtype != dtype:
            raise ValueError(f"target {self.name}: logical dtype is {dtype}, got {self.dtype!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "dtype", self.dtype or dtype)
        object.__setattr__(self, "frame", self.frame or frame)

    @property
    def kind(self) -> str:
        return target_kind(self.name)

    @property
    def raw_nbytes(self) -> int:
        """Bytes of one row in its logical dtype (float32 or bool; boxes with their scores and
        labels as float32), the compression baseline."""
        if self.kind == "boxes":
            return self.shape[0] * 11 * 4
        n = 1
        for s in self.shape:
            n *= s
        return n * (1 if self.dtype == "bool" else 4)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "frame": self.frame,
                "codec": self.codec.to_dict()}  # type: ignore[union-attr]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TargetSpec":
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"], frame=d["frame"],
                   codec=Codec.from_dict(d["codec"]))


@dataclass(frozen=True, kw_only=True)
class TeacherInfo:
    """The teacher that produced a cache.

    Args:
        name: registered teacher name (``teachers`` factory key).
        config: the teacher's config as a JSON-serialisable dict.
        weights_sha256: hex sha256 of the weights file ("" if untrained / random).
    """

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        json.dumps(self.config)  # raises TypeError for a config that is not JSON

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "weights_sha256": self.weights_sha256}


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """The source dataset of a cache, e.g. ``("nuscenes", "v1.0-trainval", "train")``."""

    dataset_id: str
    version: str
    split: str

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
        if "instance_features" in spec and ("boxes" not in spec
                                            or spec["boxes"].shape[0] != spec["instance_features"].shape[0]):
            raise ValueError("CacheSchema: instance_features needs a boxes target of the same capacity M_max")
        for t in self.targets:
            if t.frame == "bev" and t.kind not in ("boxes", "instance_features") \
                    and t.shape[-2:] != self.grid.bev_shape:
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
    def from_dict(cls, d: dict[str, Any]) -> "CacheSchema":
        return cls(schema_version=int(d["schema_version"]), grid=BEVGrid.from_dict(d["grid"]),
                   teacher=TeacherInfo(**d["teacher"]), dataset=DatasetInfo(**d["dataset"]),
                   targets=tuple(TargetSpec.from_dict(t) for t in d["targets"]), num_rows=int(d["num_rows"]),
                   views=int(d["views"]), shard_size=int(d["shard_size"]))


def target_specs_for(example: Any, *, max_boxes: int = 500, codecs: dict[str, Codec] | None = None,
                     only: tuple[str, ...] | None = None) -> tuple[TargetSpec, ...]:
    """Target specs matching the targets present in an example row.

    Args:
        example: a :class:`storage.targets.SampleTargets` (any row of the job).
        max_boxes: capacity ``M_max`` of ``boxes`` / ``instance_features``.
        codecs: target name or kind -> codec overriding :data:`DEFAULT_CODECS`.
        only: keep only these target names.

    Returns:
        one spec per non-None target of ``example`` (``boxes`` needs boxes, scores and labels).
    """
    codecs = codecs or {}
    found: list[tuple[str, tuple[int, ...]]] = [(BEV_PREFIX + k, tuple(v.shape)) for k, v in example.bev_features.items()]
    if example.heatmap is not None:
        found.append(("heatmap", tuple(example.heatmap.shape)))
    if example.boxes is not None and example.scores is not None and example.labels is not None:
        found.append(("boxes", (max_boxes, 9)))
        if example.instance_features is not None:
            found.append(("instance_features", (max_boxes, int(example.instance_features.shape[1]))))
    for name in ("lidar_depth", "depth_probs", "fg_mask", "view_mask"):
        if getattr(example, name) is not None:
            found.append((name, tuple(getattr(example, name).shape)))
    return tuple(TargetSpec(name=n, shape=s, codec=codecs.get(n) or codecs.get(target_kind(n)))
                 for n, s in found if only is None or n in only)
