"""Sparse instance distillation with InfoNCE — BEVDistill (Chen et al., ICLR 2023) §3.3.

BEVDistill maximises the mutual information between matched student and teacher instance
features with an InfoNCE bound: for instance ``i`` with student embedding ``s_i`` and teacher
embedding ``t_i`` (both projected and L2-normalised),
``L = -1/M sum_i log( exp(s_i . t_i / tau) / sum_j exp(s_i . t_j / tau) )``, the other teacher
instances of the same sample acting as negatives.

Our student is a dense CenterHead detector, so its instance feature is its BEV feature sampled
(bilinearly) at each teacher box centre — the same place the cache sampled the teacher's
``instance_features``. Boxes below ``min_score`` are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from storage.grid import BEVGrid
from teachers.bev_sampling import sample_bev


class InstanceInfoNCE(nn.Module):
    """BEVDistill §3.3 InfoNCE between student features at teacher box centres and the teacher's
    instance features.

    Args:
        student_channels: C of the student BEV map.
        teacher_channels: C of the teacher instance features.
        embed_dim: projection size; ``None`` = no projection (channels must match; used by tests).
        temperature: tau.
        min_score: teacher boxes with a lower score are skipped.
    """

    def __init__(self, student_channels: int, teacher_channels: int, embed_dim: int | None = 128,
                 temperature: float = 0.07, min_score: float = 0.0) -> None:
        super().__init__()
        if embed_dim is None:
            if student_channels != teacher_channels:
                raise ValueError(f"InstanceInfoNCE: embed_dim=None needs equal channels, got "
                                 f"{student_channels} vs {teacher_channels}")
            self.student_proj: nn.Module = nn.Identity()
            self.teacher_proj: nn.Module = nn.Identity()
        else:
            self.student_proj = nn.Sequential(nn.Linear(student_channels, embed_dim), nn.ReLU(inplace=True),
                                              nn.Linear(embed_dim, embed_dim))
            self.teacher_proj = nn.Linear(teacher_channels, embed_dim)
        self.temperature = temperature
        self.min_score = min_score

    def forward(self, student_bev: torch.Tensor, grid: BEVGrid, boxes: Sequence[torch.Tensor],
                teacher_features: Sequence[torch.Tensor], scores: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``student_bev (B, C, H, W)`` on ``grid``; per sample teacher ``boxes (M, 9)``,
        ``teacher_features (M, C_t)``, ``scores (M,)`` -> scalar (mean over samples with
        instances; 0 when none)."""
        losses = []
        for b, (bx, tf) in enumerate(zip(boxes, teacher_features, strict=True)):
            keep = torch.ones(len(bx), dtype=torch.bool, device=bx.device)
            if scores is not None and len(scores) > b:
                keep = scores[b] >= self.min_score
            if int(keep.sum()) == 0:
                continue
            s = sample_bev(student_bev[b:b + 1], grid, [bx[keep][:, :2].float()])[0]  # (M, C)
            s = F.normalize(self.student_proj(s), dim=-1)
            t = F.normalize(self.teacher_proj(tf[keep].float().detach()), dim=-1)
            logits = s @ t.T / self.temperature
            losses.append(F.cross_entropy(logits, torch.arange(len(s), device=logits.device)))
        if not losses:
            return student_bev.sum() * 0.0
        return torch.stack(losses).mean()
