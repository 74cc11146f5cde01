"""Masked BEV feature distillation.

* :class:`DenseFeatureDistillation` — BEVDistill (Chen et al., ICLR 2023) §3.2 "dense feature
  distillation": student BEV features imitate the teacher's, weighted by a soft foreground mask
  built from Gaussians at box centres (Eq. 3 the mask, Eq. 4 the weighted, normalised L2).
* :class:`LiDARGuidedFeatureDistillation` — BEV-LGKD (Li et al., arXiv 2212.00623, 2022) §3.2-3.3:
  the foreground mask comes from LiDAR points (cells holding points inside boxes) and is split
  per camera by view-dependent masks (cells inside each camera's frustum); the masked L2 is
  normalised per view and averaged over views.

Both take student maps already adapted to the teacher's channels and grid
(:class:`student.adapters.BEVAdapter`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from storage.grid import BEVGrid
from teachers.center_gt import gaussian_radius


def gaussian_soft_mask(boxes: Sequence[torch.Tensor], grid: BEVGrid, *, min_radius: int = 2,
                       min_overlap: float = 0.1) -> torch.Tensor:
    """BEVDistill Eq. 3 soft foreground mask: ``W[r, c] = max_k exp(-d_k(r, c)^2 / (2 sigma_k^2))``.

    ``d_k`` is the distance in cells from cell centre ``(r, c)`` to box ``k``'s (continuous)
    centre; ``sigma_k = (2 r_k + 1) / 6`` with the CenterPoint radius
    ``r_k = max(min_radius, floor(gaussian_radius(l_k, w_k, min_overlap)))`` in cells, and
    ``W`` is 0 where ``|dx| > r_k`` or ``|dy| > r_k`` (CenterNet's truncated kernel).

    Args:
        boxes: per sample ``(M, 9)`` boxes on ``grid``'s frame, metres.
        grid: the BEV grid of the mask.

    Returns:
        ``(B, H, W)`` float32 in [0, 1].
    """
    h, w = grid.bev_shape
    vx, vy, _ = grid.voxel_size
    dev = boxes[0].device if len(boxes) else torch.device("cpu")
    out = torch.zeros((len(boxes), h * w), device=dev)
    for i, bx in enumerate(boxes):
        b = bx.detach().float().reshape(-1, 9)
        if len(b) == 0:
            continue
        r = torch.tensor([max(min_radius, int(gaussian_radius(float(ln) / vx, float(wd) / vy, min_overlap)))
                          for ln, wd in b[:, 3:5].tolist()], device=dev, dtype=torch.float32)
        sigma2 = ((2 * r + 1) / 6.0) ** 2
        cy, cx = grid.metric_to_cell_float(b[:, :2]).unbind(-1)  # continuous cell coordinates
        reach = int(r.max()) + 1
        off = torch.arange(-reach, reach + 1, device=dev)
        cols = cx.floor().long()[:, None] + off[None]  # (M, K) window around each centre
        rows = cy.floor().long()[:, None] + off[None]
        dx, dy = cols + 0.5 - cx[:, None], rows + 0.5 - cy[:, None]
        g = torch.exp(-(dx[:, None, :] ** 2 + dy[:, :, None] ** 2) / (2 * sigma2)[:, None, None])  # (M, K, K)
        ok_x = (dx.abs() <= r[:, None]) & (cols >= 0) & (cols < w)
        ok_y = (dy.abs() <= r[:, None]) & (rows >= 0) & (rows < h)
        valid = ok_y[:, :, None] & ok_x[:, None, :]
        flat = rows[:, :, None] * w + cols[:, None, :]
        out[i].scatter_reduce_(0, flat[valid], g[valid], reduce="amax")
    return out.reshape(len(boxes), h, w)


def _sq_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.shape != teacher.shape:
        raise ValueError(f"feature distillation: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}; "
                         "adapt the student with student.adapters.BEVAdapter first")
    return (student - teacher.detach()).pow(2).mean(dim=1)  # (B, H, W), mean over channels


class DenseFeatureDistillation(nn.Module):
    """BEVDistill §3.2, Eq. 4: ``L = sum_{b,r,c} W * mean_ch (F_s - F_t)^2 / max(sum W, eps)``.

    The teacher map is detached. ``W`` is :func:`gaussian_soft_mask` (or any ``(B, H, W)`` weight).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``student``/``teacher`` ``(B, C, H, W)``, ``weight`` ``(B, H, W)`` -> scalar."""
        err = _sq_error(student, teacher)
        return (err * weight).sum() / weight.sum().clamp(min=self.eps)


class LiDARGuidedFeatureDistillation(nn.Module):
    """BEV-LGKD §3.2-3.3: foreground x view-dependent masked feature imitation.

    For sample ``b`` and camera ``v`` with ``M_bv = fg_mask[b] & view_mask[b, v]``:
    ``L_bv = sum(M_bv * mean_ch (F_s - F_t)^2) / |M_bv|``; ``L`` is the mean of ``L_bv`` over
    the (b, v) pairs with ``|M_bv| > 0`` (0 when there are none). Cells seen by two cameras
    count once per camera (each view is its own distillation problem, as in the paper).
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, fg_mask: torch.Tensor,
                view_mask: torch.Tensor) -> torch.Tensor:
        """``student``/``teacher`` ``(B, C, H, W)``, ``fg_mask (B, H, W)`` bool,
        ``view_mask (B, V, H, W)`` bool -> scalar."""
        err = _sq_error(student, teacher)  # (B, H, W)
        m = (fg_mask[:, None] & view_mask).float()  # (B, V, H, W)
        count = m.sum(dim=(2, 3))
        per_view = (m * err[:, None]).sum(dim=(2, 3)) / count.clamp(min=1.0)
        valid = count > 0
        if not bool(valid.any()):
            return err.sum() * 0.0
        return per_view[valid].mean()


