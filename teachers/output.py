"""Typed teacher output (STYLE.md §13): what every teacher, built-in or user-supplied, returns.

:class:`TeacherOutput` is a batch of network predictions as torch tensors on the teacher's device;
one sample of it becomes (part of) a :class:`storage.cache.row.CacheRow` with :meth:`TeacherOutput.row`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from storage.grid import BEVGrid
from storage.cache.row import CacheRow


@dataclass(kw_only=True, eq=False)
class TeacherOutput:
    """A batch of teacher predictions.

    Attributes:
        bev_grid: the grid of every BEV map below (the detector's output stride).
        bev_features: name -> ``(B, C, H, W)`` float32 (``lidar_bev``, ``camera_bev``,
            ``fused_bev``, ``neck``), lidar frame.
        heatmap: ``(B, K, H, W)`` float32 class probabilities (sigmoid of the CenterHead logits).
        boxes: per sample ``(M, 9)`` float32 decoded boxes, lidar frame.
        scores: per sample ``(M,)`` float32.
        labels: per sample ``(M,)`` int64.
        instance_features: per sample ``(M, C)`` float32 features at box centres.
        depth_probs: ``(B, 6, D, h, w)`` float32 per-camera depth distributions, or None.
    """

    bev_grid: BEVGrid
    bev_features: dict[str, torch.Tensor]
    heatmap: torch.Tensor
    boxes: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    instance_features: list[torch.Tensor] = field(default_factory=list)
    depth_probs: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.heatmap.shape[0])

    def row(self, i: int) -> CacheRow:
        """The network part of sample ``i``'s cache row, as numpy (the whole row, with the
        LiDAR-guided masks and depth, is built by :func:`teachers.cache_row.build_cache_row`)."""

        def np32(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        return CacheRow(
            bev_features={k: np32(v[i]) for k, v in self.bev_features.items()},
            heatmap=np32(self.heatmap[i]),
            boxes=np32(self.boxes[i]) if self.boxes else None,
            scores=np32(self.scores[i]) if self.scores else None,
            labels=self.labels[i].detach().cpu().numpy().astype(np.int64) if self.labels else None,
            instance_features=np32(self.instance_features[i]) if self.instance_features else None,
            depth_probs=np32(self.depth_probs[i]) if self.depth_probs is not None else None,
        )
