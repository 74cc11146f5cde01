"""Multi-modal fusion distillation — SimDistill (Zhao et al., AAAI 2024) §3.3.

A fusion teacher (BEVFusion-style) exposes three BEV maps: camera, LiDAR and fused. The
SimDistill student mirrors them (:class:`student.model.StudentOutput` ``camera_bev``,
``sim_lidar_bev``, ``fused_bev``) and distils each from its counterpart:
intra-modal (camera <- camera), cross-modal (simulated LiDAR <- LiDAR) and multi-modal
(fused <- fused). Each term is a mean-squared error, optionally weighted by a ``(B, H, W)``
soft foreground mask (SimDistill applies its feature losses on foreground-weighted maps; with
no mask every cell counts equally).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(kw_only=True, eq=False)
class FusionTerms:
    """The three SimDistill feature terms (unweighted scalars)."""

    camera: torch.Tensor
    lidar: torch.Tensor
    fused: torch.Tensor


def weighted_mse(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``sum W * mean_ch (s - t)^2 / sum W`` (plain MSE when ``weight`` is None); teacher detached."""
    if student.shape != teacher.shape:
        raise ValueError(f"fusion distillation: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}; "
                         "adapt the student with student.adapters.BEVAdapter first")
    err = (student - teacher.detach()).pow(2).mean(dim=1)
    if weight is None:
        return err.mean()
    return (err * weight).sum() / weight.sum().clamp(min=1e-6)


class FusionDistillation(nn.Module):
    """SimDistill camera<-camera, sim-LiDAR<-LiDAR, fused<-fused feature distillation."""

    def forward(self, camera: tuple[torch.Tensor, torch.Tensor], lidar: tuple[torch.Tensor, torch.Tensor],
                fused: tuple[torch.Tensor, torch.Tensor], weight: torch.Tensor | None = None) -> FusionTerms:
        """Each argument is ``(student_map, teacher_map)``, ``(B, C, H, W)`` on the same grid."""
        return FusionTerms(camera=weighted_mse(*camera, weight), lidar=weighted_mse(*lidar, weight),
                           fused=weighted_mse(*fused, weight))
