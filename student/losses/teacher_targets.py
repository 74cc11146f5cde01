"""What the distillation losses read from a teacher: the same container whether the targets
come from the cache (:class:`storage.cache.row.CacheRow` rows, collated) or from a live
teacher (:class:`teachers.output.TeacherOutput`), so "cached = online" is one equality test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from storage.cache.row import ROW_ARRAYS, CacheRow
from storage.cache.schema import TARGET_FIELDS, TargetField, fields_where
from storage.grid import BEVGrid
from student.augment import warp_bev, warp_boxes
from teachers.output import TeacherOutput

#: :class:`TeacherTargets` attributes besides ``bev_grid`` / ``bev_features``, from the target-field
#: table (:data:`storage.cache.schema.TARGET_FIELDS`): ragged ones hold one tensor per sample
#: (``boxes``, ``scores``, ``labels``, ``instance_features``; empty list = absent), dense ones one
#: ``(B, ...)`` tensor or None (``heatmap``, ``lidar_depth``, ``depth_probs``, ``fg_mask``, ``view_mask``).
RAGGED_ATTRS: tuple[str, ...] = tuple(a for f in fields_where(ragged=True) for a in f.row_attrs)
DENSE_ATTRS: tuple[str, ...] = tuple(a for a in ROW_ARRAYS if a not in RAGGED_ATTRS)
#: attribute -> its row of the table, and its torch dtype once decoded (float32, bool; int64 labels).
_FIELD_OF: dict[str, TargetField] = {a: f for f in TARGET_FIELDS for a in f.row_attrs}
_DTYPE_OF: dict[str, torch.dtype] = {a: getattr(torch, d) for f in TARGET_FIELDS
                                     for a, d in zip(f.row_attrs, f.row_dtypes, strict=True)}


@dataclass(frozen=True, kw_only=True)
class TeacherShapes:
    """Static description of a teacher's targets, needed to build adapters before training.

    Attributes:
        bev_grid: grid of the teacher's BEV maps, heatmap and masks.
        bev_channels: name -> channels of each BEV feature map (``lidar_bev``, ``neck`` ...).
        instance_channels: channels of ``instance_features`` (None when not cached).
        num_classes: heatmap channels K.
    """

    bev_grid: BEVGrid
    bev_channels: dict[str, int] = field(default_factory=dict)
    instance_channels: int | None = None
    num_classes: int = 10


@dataclass(kw_only=True, eq=False)
class TeacherTargets:
    """A batch of teacher targets as torch tensors (fields of :class:`CacheRow`, batched).

    Attributes:
        bev_grid: grid of every BEV map, heatmap and mask below.
        bev_features: name -> ``(B, C, H, W)`` float32, (augmented) lidar frame.
        heatmap: ``(B, K, H, W)`` float32 class probabilities, or None.
        boxes: per sample ``(M, 9)`` float32 teacher boxes; scores ``(M,)``; labels ``(M,)`` int64.
        instance_features: per sample ``(M, C)`` float32 features at the box centres.
        lidar_depth: ``(B, 6, h, w)`` float32 min LiDAR depth per image cell, m; 0 = no point.
        depth_probs: ``(B, 6, D, h, w)`` float32 teacher depth distributions, or None.
        fg_mask: ``(B, H, W)`` bool LiDAR-guided foreground, or None.
        view_mask: ``(B, 6, H, W)`` bool per-camera frustum cells, or None.
    """

    bev_grid: BEVGrid
    bev_features: dict[str, torch.Tensor] = field(default_factory=dict)
    heatmap: torch.Tensor | None = None
    boxes: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    instance_features: list[torch.Tensor] = field(default_factory=list)
    lidar_depth: torch.Tensor | None = None
    depth_probs: torch.Tensor | None = None
    fg_mask: torch.Tensor | None = None
    view_mask: torch.Tensor | None = None

    @classmethod
    def from_samples(cls, rows: Sequence[CacheRow], bev_grid: BEVGrid,
                     device: torch.device | str = "cpu") -> TeacherTargets:
        """Collate cached rows. A field missing (None) in any row is None in the batch; BEV
        feature names are those present in every row. float16 storage becomes float32."""

        def stack(name: str) -> torch.Tensor | None:
            vals = [getattr(r, name) for r in rows]
            if any(v is None for v in vals):
                return None
            return torch.stack([torch.as_tensor(np.asarray(v)).to(_DTYPE_OF[name]) for v in vals]).to(device)

        def per(name: str) -> list[torch.Tensor]:
            vals = [getattr(r, name) for r in rows]
            if any(v is None for v in vals):
                return []
            out = [torch.as_tensor(np.asarray(v)).to(device, _DTYPE_OF[name]) for v in vals]
            width = _ragged_width(name, vals)
            return [t.reshape(-1, width) if width else t.reshape(-1) for t in out]

        keys = set.intersection(*(set(r.bev_features) for r in rows)) if rows else set()
        targets: dict[str, Any] = {a: stack(a) for a in DENSE_ATTRS} | {a: per(a) for a in RAGGED_ATTRS}
        return cls(bev_grid=bev_grid,
                   bev_features={k: torch.stack([torch.as_tensor(np.asarray(r.bev_features[k])).float()
                                                 for r in rows]).to(device) for k in sorted(keys)},
                   **targets)

    @classmethod
    def from_teacher_output(cls, out: TeacherOutput, *, fg_mask: torch.Tensor | None = None,
                            view_mask: torch.Tensor | None = None,
                            lidar_depth: torch.Tensor | None = None) -> TeacherTargets:
        """Wrap a live teacher's output (no copy) plus the network-free masks and LiDAR depth."""
        return cls(bev_grid=out.bev_grid, bev_features=dict(out.bev_features), heatmap=out.heatmap,
                   boxes=list(out.boxes), scores=list(out.scores), labels=list(out.labels),
                   instance_features=list(out.instance_features), depth_probs=out.depth_probs,
                   fg_mask=fg_mask, view_mask=view_mask, lidar_depth=lidar_depth)

    @property
    def batch_size(self) -> int:
        for t in (self.heatmap, self.fg_mask, self.lidar_depth, *self.bev_features.values()):
            if t is not None:
                return int(t.shape[0])
        return len(self.boxes)

    def to(self, device: torch.device | str) -> TeacherTargets:
        """A copy with every tensor on ``device``."""
        changes: dict[str, Any] = {"bev_features": {k: v.to(device) for k, v in self.bev_features.items()}}
        for a in DENSE_ATTRS:
            t = getattr(self, a)
            changes[a] = None if t is None else t.to(device)
        for a in RAGGED_ATTRS:
            changes[a] = [t.to(device) for t in getattr(self, a)]
        return replace(self, **changes)

    def warped(self, bev_aug: np.ndarray | torch.Tensor) -> TeacherTargets:
        """The targets in the BEV-augmented frame (:mod:`student.augment`), by each field's warp rule.

        BEV maps and heatmaps are sampled bilinearly, masks nearest, boxes moved by
        :func:`storage.boxes.transform_boxes`; per-camera depth targets are image-space and
        unchanged; instance features travel with their boxes.

        Args:
            bev_aug: ``(4, 4)`` (whole batch) or ``(B, 4, 4)`` ``aug_from_<targets' frame>``;
                for multi-view caches pass :func:`student.augment.residual_transform`.
        """
        m = torch.as_tensor(bev_aug, dtype=torch.float64)
        b = self.batch_size
        mats = m.expand(b, 4, 4) if m.ndim == 2 else m
        g = self.bev_grid
        bev_rule = _FIELD_OF["bev_features"].warp
        changes: dict[str, Any] = {"bev_features": {k: warp_bev(v, mats, g, mode=bev_rule)
                                                    for k, v in self.bev_features.items()}}
        for a in DENSE_ATTRS:
            f, t = _FIELD_OF[a], getattr(self, a)
            if f.bev_map and t is not None:  # camera-frame targets are not moved by a BEV augmentation
                changes[a] = warp_bev(t, mats, g, mode=f.warp)
        for a in RAGGED_ATTRS:
            ts = getattr(self, a)
            if _FIELD_OF[a].warp == "boxes" and a == _FIELD_OF[a].row_attrs[0]:
                changes[a] = [torch.as_tensor(warp_boxes(bx, mats[i].cpu().numpy()), dtype=bx.dtype, device=bx.device)
                              for i, bx in enumerate(ts)]
            else:  # scores, labels and instance features travel with their boxes
                changes[a] = list(ts)
        return replace(self, **changes)


def _ragged_width(name: str, values: Sequence[Any]) -> int | None:
    """Columns of ragged attribute ``name`` (``boxes``: 9; ``instance_features``: C from ``values``);
    None for the per-box scalars (``scores``, ``labels``)."""
    f = _FIELD_OF[name]
    if name != f.row_attrs[0]:
        return None
    rule = f.shape[1]
    if rule.isdigit():
        return int(rule)
    return next((np.asarray(v).shape[-1] for v in values if v is not None), 0) or None
