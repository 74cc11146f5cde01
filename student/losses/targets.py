"""What the distillation losses read from a teacher: the same container whether the targets
come from the cache (:class:`storage.cache.row.CacheRow` rows, collated) or from a live
teacher (:class:`teachers.output.TeacherOutput`), so "cached = online" is one equality test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from storage.grid import BEVGrid
from storage.cache.row import CacheRow
from student.augment import warp_bev, warp_boxes
from teachers.output import TeacherOutput


@dataclass(frozen=True, kw_only=True)
class TeacherSpec:
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
                     device: torch.device | str = "cpu") -> "TeacherTargets":
        """Collate cached rows. A field missing (None) in any row is None in the batch; BEV
        feature names are those present in every row. float16 storage becomes float32."""

        def stack(name: str, dtype: torch.dtype) -> torch.Tensor | None:
            vals = [getattr(r, name) for r in rows]
            if any(v is None for v in vals):
                return None
            return torch.stack([torch.as_tensor(np.asarray(v)).to(dtype) for v in vals]).to(device)

        def per(name: str, dtype: torch.dtype, width: int | None) -> list[torch.Tensor]:
            vals = [getattr(r, name) for r in rows]
            if any(v is None for v in vals):
                return []
            out = [torch.as_tensor(np.asarray(v)).to(device, dtype) for v in vals]
            return [t.reshape(-1, width) if width else t.reshape(-1) for t in out]

        keys = set.intersection(*(set(r.bev_features) for r in rows)) if rows else set()
        inst_c = next((np.asarray(r.instance_features).shape[-1] for r in rows if r.instance_features is not None), 0)
        return cls(bev_grid=bev_grid,
                   bev_features={k: torch.stack([torch.as_tensor(np.asarray(r.bev_features[k])).float()
                                                 for r in rows]).to(device) for k in sorted(keys)},
                   heatmap=stack("heatmap", torch.float32), boxes=per("boxes", torch.float32, 9),
                   scores=per("scores", torch.float32, None), labels=per("labels", torch.int64, None),
                   instance_features=per("instance_features", torch.float32, inst_c or None),
                   lidar_depth=stack("lidar_depth", torch.float32), depth_probs=stack("depth_probs", torch.float32),
                   fg_mask=stack("fg_mask", torch.bool), view_mask=stack("view_mask", torch.bool))

    @classmethod
    def from_teacher_output(cls, out: TeacherOutput, *, fg_mask: torch.Tensor | None = None,
                            view_mask: torch.Tensor | None = None,
                            lidar_depth: torch.Tensor | None = None) -> "TeacherTargets":
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

    def to(self, device: torch.device | str) -> "TeacherTargets":
        """A copy with every tensor on ``device``."""
        mv = (lambda t: None if t is None else t.to(device))
        return TeacherTargets(bev_grid=self.bev_grid, bev_features={k: v.to(device) for k, v in self.bev_features.items()},
                              heatmap=mv(self.heatmap), boxes=[mv(t) for t in self.boxes],
                              scores=[mv(t) for t in self.scores], labels=[mv(t) for t in self.labels],
                              instance_features=[mv(t) for t in self.instance_features],
                              lidar_depth=mv(self.lidar_depth), depth_probs=mv(self.depth_probs),
                              fg_mask=mv(self.fg_mask), view_mask=mv(self.view_mask))

    def warped(self, bev_aug: np.ndarray | torch.Tensor) -> "TeacherTargets":
        """The targets in the BEV-augmented frame (:mod:`student.augment`).

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
        w = (lambda t, mode="bilinear": None if t is None else warp_bev(t, mats, g, mode=mode))
        boxes = [torch.as_tensor(warp_boxes(bx, mats[i].cpu().numpy()), dtype=bx.dtype, device=bx.device)
                 for i, bx in enumerate(self.boxes)]
        return TeacherTargets(bev_grid=g, bev_features={k: w(v) for k, v in self.bev_features.items()},
                              heatmap=w(self.heatmap), boxes=boxes, scores=list(self.scores), labels=list(self.labels),
                              instance_features=list(self.instance_features), lidar_depth=self.lidar_depth,
                              depth_probs=self.depth_probs,
                              fg_mask=None if self.fg_mask is None else warp_bev(self.fg_mask, mats, g),
                              view_mask=None if self.view_mask is None else warp_bev(self.view_mask, mats, g))
