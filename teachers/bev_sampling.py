"""Bilinear reads of BEV maps at metric points: the one ``sample_bev`` (teachers' instance
features at decoded boxes; the student's keypoint-response and instance distillation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from storage.grid import BEVGrid


def sample_bev(feature: torch.Tensor, grid: BEVGrid, xy: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Bilinear samples of a BEV map at metric points (``grid_sample``, ``align_corners=False``:
    cell values sit at cell centres, :meth:`storage.grid.BEVGrid.grid_sample_coords`).

    Args:
        feature: ``(B, C, H, W)`` on ``grid`` (row = +y, col = +x).
        grid: the map's grid.
        xy: per sample ``(M_i, >=2)`` ``[x, y, ...]`` m, same frame as ``grid``.

    Returns:
        Per sample ``(M_i, C)`` in ``feature``'s dtype (zeros outside the map).

    Raises:
        ValueError: ``xy`` has a length other than B.
    """
    if len(xy) != feature.shape[0]:
        raise ValueError(f"sample_bev: {len(xy)} point sets for a batch of {feature.shape[0]} maps")
    out = []
    for b, p in enumerate(xy):
        if len(p) == 0:
            out.append(feature.new_zeros((0, feature.shape[1])))
            continue
        g = grid.grid_sample_coords(p[:, :2]).to(feature.dtype).view(1, 1, -1, 2)
        s = F.grid_sample(feature[b:b + 1], g, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(s[0, :, 0].t().contiguous())  # (1, C, 1, M) -> (M, C)
    return out


__all__ = ["sample_bev"]
