"""The target-field table: one :class:`TargetField` per kind of cache target, and the codecs.

The declarative table :data:`TARGET_FIELDS` (name, shape rule, dtype, codecs (:class:`Codec`,
:data:`CODEC_KINDS`), frame, warp rule (:data:`WARP_RULES`)) is the one place a target is
described; the schema (:mod:`storage.cache.schema`, which re-exports every name here), the writer,
the reader, the loader's packing and the BEV warping read it. In short:

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

from dataclasses import dataclass
from typing import Any

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


__all__ = ["BEV_PREFIX", "BOX_COLUMNS", "BOX_COLUMN_UNITS", "CODEC_KINDS", "DEFAULT_CODECS", "FIXED_TARGETS",
           "TARGET_FIELDS", "WARP_RULES", "Codec", "TargetField", "fields_where", "target_field", "target_kind"]
