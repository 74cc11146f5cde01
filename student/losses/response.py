"""Response (output) distillation on the class heatmap.

* :class:`HeatmapDistillation` — X3KD (Klingner et al., CVPR 2023) §3.4 "cross-modal output
  distillation" (X-OD): the teacher's dense heatmap supervises the student's heatmap at every
  cell. Implemented as binary cross-entropy with the teacher probabilities as soft targets,
  averaged over cells and classes.
* :class:`KeypointResponseDistillation` — UniDistill (Zhou et al., CVPR 2023) §3.3 "response
  distillation": teacher and student responses compared only at 9 BEV keypoints per object
  (centre, 4 corners, 4 edge midpoints of the box footprint), L1, averaged over keypoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from storage.grid import BEVGrid
from teachers.bev_sampling import sample_bev


class HeatmapDistillation(nn.Module):
    """X-OD: ``L = mean_{b,k,r,c} BCE(sigmoid(z_s), p_t)`` with teacher probabilities ``p_t`` detached."""

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """``student_logits (B, K, H, W)`` logits, ``teacher_probs (B, K, H, W)`` in [0, 1] -> scalar."""
        if student_logits.shape != teacher_probs.shape:
            raise ValueError(f"HeatmapDistillation: student {tuple(student_logits.shape)} vs teacher "
                             f"{tuple(teacher_probs.shape)}; resample the student heatmap to the teacher grid")
        return F.binary_cross_entropy_with_logits(student_logits, teacher_probs.detach().clamp(0, 1))


def box_keypoints(boxes: torch.Tensor) -> torch.Tensor:
    """``(M, 9)`` boxes -> ``(M, 9, 2)`` BEV keypoints ``[x, y]`` m: centre, 4 corners
    (``+-l/2, +-w/2``), 4 edge midpoints, rotated by yaw."""
    sx = boxes.new_tensor([0, 1, 1, -1, -1, 1, 0, -1, 0]) * 0.5
    sy = boxes.new_tensor([0, 1, -1, -1, 1, 0, -1, 0, 1]) * 0.5
    lx, ly = sx[None] * boxes[:, 3:4], sy[None] * boxes[:, 4:5]
    c, s = boxes[:, 6:7].cos(), boxes[:, 6:7].sin()
    return torch.stack([boxes[:, 0:1] + lx * c - ly * s, boxes[:, 1:2] + lx * s + ly * c], dim=-1)


class KeypointResponseDistillation(nn.Module):
    """UniDistill response distillation: ``L = mean_{objects, keypoints, classes} |sigmoid(z_s) - p_t|``
    at :func:`box_keypoints` of each box (teacher or GT boxes), sampled bilinearly."""

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, boxes: Sequence[torch.Tensor],
                grid: BEVGrid) -> torch.Tensor:
        """``student_logits``/``teacher_probs`` ``(B, K, H, W)`` on ``grid``; ``boxes`` per sample ``(M, 9)``."""
        diffs = []
        for b, bx in enumerate(boxes):
            if len(bx) == 0:
                continue
            kp = box_keypoints(bx.float().reshape(-1, 9)).reshape(-1, 2)
            s = sample_bev(student_logits[b:b + 1].sigmoid(), grid, [kp])[0]
            t = sample_bev(teacher_probs[b:b + 1].detach(), grid, [kp])[0]
            diffs.append((s - t).abs().reshape(-1))
        if not diffs:
            return student_logits.sum() * 0.0
        return torch.cat(diffs).mean()
