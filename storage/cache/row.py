"""One cache row: the targets of one ``(sample, view)``, as built, written and read.

:class:`CacheRow` is the one per-row container: :func:`teachers.cache_row.build_cache_row`
produces it, :class:`storage.cache.CacheWriter` encodes it and :class:`storage.cache.CacheReader`
returns it (numpy; with ``decode=False`` uint8 maps as :class:`QuantizedArray`, float16 kept).
Which attributes hold which target comes from :data:`storage.cache.schema.TARGET_FIELDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.arrays import AnyDtypeArray, Float64Array
from storage.cache.codecs import TargetValueError
from storage.cache.schema import BEV_PREFIX, TARGET_FIELDS, target_field

#: Array attributes of :class:`CacheRow` besides ``bev_features``, in table order.
ROW_ARRAYS: tuple[str, ...] = tuple(a for f in TARGET_FIELDS if f.name != "bev_features" for a in f.row_attrs)


@dataclass(kw_only=True, eq=False)
class CacheRow:
    """The targets of one row, in the row's frames. Absent targets are None.

    Attributes:
        bev_features: stage -> ``(C, H, W)`` float32 BEV map on the cache grid (``lidar_bev``,
            ``camera_bev``, ``fused_bev``, ``neck``, ...), or :class:`QuantizedArray`.
        heatmap: ``(K, H, W)`` float32 class heatmap in [0, 1] (sigmoid), or QuantizedArray.
        boxes: ``(M, 9)`` float32 ``[x, y, z, l, w, h, yaw, vx, vy]`` BEV frame, m, rad, m/s.
        scores: ``(M,)`` float32 in [0, 1].
        labels: ``(M,)`` int64 class ids.
        instance_features: ``(M, C)`` float32 (float16 read with ``decode=False``) at box centres.
        lidar_depth: ``(6, h, w)`` float32 min LiDAR depth per image cell, m, 0 = no point,
            camera frame (float16 read with ``decode=False``).
        depth_probs: ``(6, D, h, w)`` float32 depth distributions (softmax over D), or QuantizedArray.
        fg_mask: ``(H, W)`` bool LiDAR-guided foreground cells.
        view_mask: ``(6, H, W)`` bool cells inside each camera's frustum.
        view_matrix: ``(4, 4)`` float64 BEV augmentation of the row (BEV frame = view_matrix @ lidar).
        sample_token: the sample ("" until written).
        row: global row index ``sample_index * views + view`` (-1 until written).
        view: view index (0 = the plain sample).
    """

    bev_features: dict[str, Any] = field(default_factory=dict)
    heatmap: Any = None
    boxes: AnyDtypeArray | None = None
    scores: AnyDtypeArray | None = None
    labels: AnyDtypeArray | None = None
    instance_features: AnyDtypeArray | None = None
    lidar_depth: AnyDtypeArray | None = None
    depth_probs: Any = None
    fg_mask: AnyDtypeArray | None = None
    view_mask: AnyDtypeArray | None = None
    view_matrix: Float64Array = field(default_factory=lambda: np.eye(4))
    sample_token: str = ""
    row: int = -1
    view: int = 0

    def target_names(self) -> list[str]:
        """Names of the targets present (every attribute of the field set), in table order;
        a ragged target other than ``boxes`` counts only with the boxes."""
        names = [BEV_PREFIX + k for k in self.bev_features]
        for f in TARGET_FIELDS:
            if f.name == "bev_features" or any(getattr(self, a) is None for a in f.row_attrs):
                continue
            if f.ragged and f.name != "boxes" and self.boxes is None:
                continue
            names.append(f.name)
        return names

    def target(self, name: str) -> Any:
        """The value of target ``name`` as the codecs take it (``boxes``: ``(boxes, scores, labels)``).

        Raises:
            TargetValueError: the row lacks the target.
        """
        f = target_field(name)
        if f.name == "bev_features":
            value = self.bev_features.get(name[len(BEV_PREFIX):])
        else:
            parts = tuple(getattr(self, a) for a in f.row_attrs)
            value = None if any(p is None for p in parts) else (parts if len(parts) > 1 else parts[0])
        if value is None:
            raise TargetValueError(f"target {name} missing from the row")
        return value

    def set_target(self, name: str, value: Any) -> None:
        """Store ``value`` (as :meth:`target` returns it) under target ``name``."""
        f = target_field(name)
        if f.name == "bev_features":
            self.bev_features[name[len(BEV_PREFIX):]] = value
            return
        parts = value if len(f.row_attrs) > 1 else (value,)
        for a, v in zip(f.row_attrs, parts, strict=True):
            setattr(self, a, v)

    def arrays(self) -> dict[str, Any]:
        """Attribute -> value of every array present: ``bev_features/<stage>`` keys for the BEV
        maps, then :data:`ROW_ARRAYS` (boxes, scores and labels separately)."""
        out: dict[str, Any] = {BEV_PREFIX + k: v for k, v in self.bev_features.items()}
        out.update({a: getattr(self, a) for a in ROW_ARRAYS if getattr(self, a) is not None})
        return out


__all__ = ["CacheRow", "ROW_ARRAYS"]
