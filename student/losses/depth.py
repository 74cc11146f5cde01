"""Depth supervision and depth distillation of the lift's depth distribution.

* :class:`DepthBCELoss` — BEVDepth (Li et al., AAAI 2023) §3.2 "explicit depth supervision":
  binary cross-entropy between the predicted depth distribution and the one-hot depth bin of the
  projected LiDAR depth, on image cells that received a LiDAR point (BEVDepth weights it by 3.0).
* :class:`DepthDistillation` — BEV-LGKD (Li et al., 2022) §3.4 "depth distillation": the
  student's depth distribution imitates the teacher's, KL(teacher || student) per image cell.

LiDAR depth maps are ``(B, N, h, w)`` metres, 0 = no point. When they are finer than the depth
net's grid by an integer factor they are reduced by :func:`min_pool_depth` (the nearest valid
depth in each patch, BEVDepth's label downsampling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachers.lss import num_depth_bins


def min_pool_depth(depth: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """``(..., h, w)`` sparse depth -> ``(..., h', w')``: the minimum *positive* depth of each
    ``(h/h') x (w/w')`` patch, 0 where the patch has no point.

    Raises:
        ValueError: ``(h, w)`` is not an integer multiple of ``out_size``.
    """
    h, w = depth.shape[-2:]
    oh, ow = out_size
    if (h, w) == (oh, ow):
        return depth
    if h % oh or w % ow:
        raise ValueError(f"min_pool_depth: depth map {h}x{w} is not a multiple of {oh}x{ow}")
    fh, fw = h // oh, w // ow
    d = torch.where(depth > 0, depth, torch.full_like(depth, float("inf")))
    d = d.reshape(*depth.shape[:-2], oh, fh, ow, fw).amin(dim=(-3, -1))
    return torch.where(torch.isinf(d), torch.zeros_like(d), d)


def depth_one_hot(depth: torch.Tensor, depth_bins: tuple[float, float, float], num_bins: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot depth-bin targets of LiDAR depth.

    Bin ``i = floor((d - d_min) / step)``; depths outside ``[d_min, d_min + num_bins * step)``
    and empty cells (0) are invalid.

    Args:
        depth: ``(...)`` metres.

    Returns:
        ``(one_hot (..., D) float32, valid (...) bool)``.
    """
    d_min, _, step = depth_bins
    idx = torch.floor((depth - d_min) / step).long()
    valid = (depth > 0) & (idx >= 0) & (idx < num_bins)
    one_hot = F.one_hot(idx.clamp(0, num_bins - 1), num_bins).float() * valid.unsqueeze(-1)
    return one_hot, valid


class DepthBCELoss(nn.Module):
    """BEVDepth §3.2: ``L = sum_{valid cells} sum_d BCE(p_d, onehot_d) / max(#valid, 1)``.

    Args:
        depth_bins: ``(d_min, d_max, step)`` metres: the student's
            :attr:`student.config.DepthConfig.depth_bins` (the one source; bin count from
            :func:`teachers.lss.num_depth_bins`).
    """

    def __init__(self, depth_bins: tuple[float, float, float]) -> None:
        super().__init__()
        d_min, d_max, step = (float(v) for v in depth_bins)
        self.depth_bins = (d_min, d_max, step)
        self.num_bins = num_depth_bins(self.depth_bins)

    def forward(self, depth_probs: torch.Tensor, lidar_depth: torch.Tensor) -> torch.Tensor:
        """``depth_probs (B, N, D, h, w)`` softmax; ``lidar_depth (B, N, h*f, w*f)`` m -> scalar.

        Raises:
            ValueError: ``D`` differs from the bin count of ``depth_bins`` (the depth net and
                the loss disagree on the bins).
        """
        if depth_probs.shape[2] != self.num_bins:
            raise ValueError(f"DepthBCELoss: depth_probs have {depth_probs.shape[2]} bins, depth_bins "
                             f"{self.depth_bins} give {self.num_bins}; build the loss from the student's DepthConfig")
        out_hw = (int(depth_probs.shape[-2]), int(depth_probs.shape[-1]))
        depth = min_pool_depth(lidar_depth.to(depth_probs.dtype), out_hw)
        target, valid = depth_one_hot(depth, self.depth_bins, self.num_bins)  # (B,N,h,w,D), (B,N,h,w)
        pred = depth_probs.permute(0, 1, 3, 4, 2)[valid].clamp(1e-6, 1 - 1e-6)
        bce = F.binary_cross_entropy(pred, target[valid], reduction="sum")
        return bce / valid.sum().clamp(min=1).to(bce.dtype)


class DepthDistillation(nn.Module):
    """BEV-LGKD §3.4: ``L = mean_{cells} sum_d t_d (log t_d - log s_d)`` (KL of the teacher's
    depth distribution from the student's), optionally only on cells with LiDAR depth.

    Args:
        eps: floor on probabilities inside the logs.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``student_probs``/``teacher_probs`` ``(B, N, D, h, w)``; ``mask (B, N, h, w)`` bool or None."""
        if student_probs.shape != teacher_probs.shape:
            raise ValueError(f"DepthDistillation: student {tuple(student_probs.shape)} vs teacher "
                             f"{tuple(teacher_probs.shape)} (same depth bins and feature size required)")
        t = teacher_probs.detach()
        kl = (t * (t.clamp(min=self.eps).log() - student_probs.clamp(min=self.eps).log())).sum(dim=2)
        if mask is None:
            return kl.mean()
        m = mask.to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp(min=1.0)
