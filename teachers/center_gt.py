"""CenterPoint training targets and losses (Yin et al., "Center-based 3D Object Detection and
Tracking", CVPR 2021, §3-§4; focal loss of CornerNet, Law & Deng, ECCV 2018, §3.3, Eq. 1).

Everything here works on the *output* grid of a CenterHead: a :class:`storage.grid.BEVGrid`
whose ``bev_shape`` equals the head's ``(H, W)`` (for a backbone with output stride 8 on
``grid``, pass ``grid.with_stride(8)``). BEV maps are ``(H, W)`` with row = +y, col = +x.

Regression target per object (10 values, mmdetection3d CenterHead ``anno_box`` order):
``[dx, dy, z, log l, log w, log h, sin yaw, cos yaw, vx, vy]`` where ``(dx, dy)`` is the
sub-cell offset of the centre in cells, ``z`` the gravity-centre height (m), sizes in m,
velocity in m/s, lidar frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

from storage.grid import BEVGrid

#: Number of regression values per object (see module docstring).
CODE_SIZE = 10
#: CenterPoint nuScenes code weights: velocity down-weighted (mmdet3d config ``code_weights``).
DEFAULT_CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)


def gaussian_radius(length_cells: float, width_cells: float, min_overlap: float = 0.1) -> float:
    """CornerNet radius (Law & Deng 2018, §3.2): the largest corner shift keeping IoU >= min_overlap.

    Solves the three quadratic cases (both corners inside, both outside, one each) and returns
    the smallest root. Sizes are in output-grid cells; the result is in cells.
    """
    h, w = float(length_cells), float(width_cells)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * c1, 0.0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(max(b2 * b2 - 16 * c2, 0.0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def gaussian_kernel(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` float32 Gaussian, peak 1, sigma = diameter / 6 (CenterNet §3)."""
    sigma = (2 * radius + 1) / 6.0
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(np.float32).eps * g.max()] = 0
    return g.astype(np.float32)


def draw_gaussian(heatmap: np.ndarray, row: int, col: int, radius: int) -> None:
    """Splat a Gaussian of ``radius`` cells at ``(row, col)`` into ``heatmap (H, W)`` by max, in place."""
    g = gaussian_kernel(radius)
    h, w = heatmap.shape
    top, bottom = min(row, radius), min(h - row, radius + 1)
    left, right = min(col, radius), min(w - col, radius + 1)
    if bottom <= -top or right <= -left:
        return
    patch = heatmap[row - top:row + bottom, col - left:col + right]
    np.maximum(patch, g[radius - top:radius + bottom, radius - left:radius + right], out=patch)


@dataclass(kw_only=True, eq=False)
class CenterTargets:
    """CenterHead targets of one task (class group), batched.

    Attributes:
        heatmap: ``(B, K_t, H, W)`` float32 in [0, 1], peaks of exactly 1 at object centres.
        box_targets: ``(B, max_objs, 10)`` float32 regression targets (module docstring).
        indices: ``(B, max_objs)`` int64 flat cell index ``row * W + col`` of each object.
        mask: ``(B, max_objs)`` bool, True for real objects.
    """

    heatmap: torch.Tensor
    box_targets: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor

    @property
    def num_objects(self) -> int:
        return int(self.mask.sum())


def _targets_single(boxes: np.ndarray, labels: np.ndarray, grid: BEVGrid, classes: Sequence[int],
                    max_objs: int, min_overlap: float, min_radius: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    h, w = grid.bev_shape
    heat = np.zeros((len(classes), h, w), dtype=np.float32)
    code = np.zeros((max_objs, CODE_SIZE), dtype=np.float32)
    inds = np.zeros(max_objs, dtype=np.int64)
    mask = np.zeros(max_objs, dtype=bool)
    cls_to_ch = {int(c): i for i, c in enumerate(classes)}
    vx, vy, _ = grid.voxel_size
    cells = grid.metric_to_cell_float(np.asarray(boxes, dtype=np.float64).reshape(-1, 9)[:, :2])  # [row, col]
    n = 0
    for box, label, (fy, fx) in zip(boxes, labels, cells, strict=True):
        ch = cls_to_ch.get(int(label))
        if ch is None or n >= max_objs:
            continue
        length, width = box[3] / vx, box[4] / vy
        if length <= 0 or width <= 0:
            continue
        col, row = int(math.floor(fx)), int(math.floor(fy))
        if not (0 <= col < w and 0 <= row < h):
            continue
        radius = max(min_radius, int(gaussian_radius(length, width, min_overlap)))
        draw_gaussian(heat[ch], row, col, radius)
        inds[n], mask[n] = row * w + col, True
        code[n] = [fx - col, fy - row, box[2], math.log(box[3]), math.log(box[4]), math.log(box[5]),
                   math.sin(box[6]), math.cos(box[6]), box[7], box[8]]
        n += 1
    return heat, code, inds, mask


def build_center_targets(gt_boxes: Sequence[np.ndarray | torch.Tensor], gt_labels: Sequence[np.ndarray | torch.Tensor],
                         grid: BEVGrid, tasks: Sequence[Sequence[int]], *, max_objs: int = 500,
                         min_overlap: float = 0.1, min_radius: int = 2,
                         device: torch.device | str = "cpu") -> list[CenterTargets]:
    """Gaussian heatmaps and regression targets from GT boxes (CenterPoint §3, "Center heatmap head").

    Each object's centre cell gets a peak of 1 in its class channel, spread by a Gaussian of
    radius ``max(min_radius, floor(gaussian_radius(l, w, min_overlap)))`` output cells.

    Args:
        gt_boxes: per sample ``(N_i, 9)`` ``[x, y, z, l, w, h, yaw, vx, vy]``, lidar frame, m.
        gt_labels: per sample ``(N_i,)`` int class ids (index into the global class list).
        grid: the head's output grid (``bev_shape == (H, W)`` of the heatmap).
        tasks: class ids per task head; channel ``k`` of task ``t`` is class ``tasks[t][k]``.
        max_objs: objects kept per sample and task (extra ones are dropped).
        min_overlap: CornerNet IoU for the radius (CenterPoint uses 0.1).
        min_radius: smallest radius in cells (CenterPoint uses 2).

    Returns:
        One :class:`CenterTargets` per task. Boxes whose centre is off-grid are skipped.
    """
    out = []
    for classes in tasks:
        per = [_targets_single(np.asarray(torch.as_tensor(b).detach().cpu(), dtype=np.float64).reshape(-1, 9),
                               np.asarray(torch.as_tensor(lab).detach().cpu()).reshape(-1), grid, classes,
                               max_objs, min_overlap, min_radius)
               for b, lab in zip(gt_boxes, gt_labels, strict=True)]
        heat, code, inds, mask = (torch.from_numpy(np.stack(x)).to(device) for x in zip(*per, strict=True))
        out.append(CenterTargets(heatmap=heat, box_targets=code, indices=inds, mask=mask))
    return out


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0,
                        eps: float = 1e-12) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss, summed (CornerNet §3.3 Eq. 1; CenterPoint §3).

    Args:
        pred: ``(B, K, H, W)`` probabilities (sigmoid), clamped to [1e-4, 1 - 1e-4] by the caller.
        target: ``(B, K, H, W)`` Gaussian heatmap in [0, 1]; cells equal to 1 are positives.

    Returns:
        Scalar sum over all cells; divide by the number of positives (see :class:`GaussianFocalLoss`).
    """
    pos = target.eq(1).float()
    neg_w = (1 - target).pow(beta)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg_w * (1 - pos)
    return (pos_loss + neg_loss).sum()


class GaussianFocalLoss(torch.nn.Module):
    """CornerNet focal loss on logits, normalised by ``max(#positives, 1)`` (alpha=2, beta=4)."""

    def __init__(self, alpha: float = 2.0, beta: float = 4.0) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
        num_pos = target.eq(1).float().sum().clamp(min=1.0)
        return gaussian_focal_loss(pred, target, self.alpha, self.beta) / num_pos


def gather_at(feature: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` map values at flat cells ``indices (B, M)`` -> ``(B, M, C)``."""
    b, c = feature.shape[:2]
    flat = feature.reshape(b, c, -1)
    return flat.gather(2, indices.unsqueeze(1).expand(b, c, indices.shape[1])).transpose(1, 2)


def regression_l1_loss(pred_code: torch.Tensor, target: CenterTargets,
                       code_weights: Sequence[float] = DEFAULT_CODE_WEIGHTS) -> torch.Tensor:
    """Weighted L1 on the 10 regression values at GT centres (CenterPoint §3, "Regression heads").

    Args:
        pred_code: ``(B, 10, H, W)`` head regression maps concatenated in target order.
        target: the task's targets.

    Returns:
        Scalar: sum of ``|pred - target| * code_weight`` over valid objects / (#objects + 1e-4).
    """
    pred = gather_at(pred_code, target.indices)  # (B, M, 10)
    w = target.mask.unsqueeze(-1).float() * pred.new_tensor(code_weights)
    return ((pred - target.box_targets).abs() * w).sum() / (target.mask.float().sum() + 1e-4)
