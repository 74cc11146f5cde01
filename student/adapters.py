"""Adapters between student and teacher BEV maps.

Channel adapter: a learnable 1x1 conv (FitNets' regressor, Romero et al. ICLR 2015 §2.2;
BEVDistill §3.2 applies one before the dense feature loss). Grid adapter: bilinear resampling
of the student's map onto the teacher's grid by metric position (:func:`student.augment.warp_bev`
with the identity), so grids of different range, resolution or shape line up cell by cell.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from storage.grid import BEVGrid
from student.augment import warp_bev


def resample_bev(maps: torch.Tensor, src_grid: BEVGrid, dst_grid: BEVGrid, mode: str = "bilinear") -> torch.Tensor:
    """``(B, C, H_src, W_src)`` on ``src_grid`` -> ``(B, C, H_dst, W_dst)`` on ``dst_grid`` by
    metric position (cells outside ``src_grid``'s range become 0). A no-op when grids are equal."""
    if src_grid.same_as(dst_grid):
        return maps
    return warp_bev(maps, np.eye(4), src_grid, dst_grid=dst_grid, mode=mode)


class BEVAdapter(nn.Module):
    """Student BEV map -> teacher's channels and grid.

    Args:
        in_channels: student channels.
        out_channels: teacher channels.
        src_grid: student grid.
        dst_grid: teacher grid.
        learnable: use a 1x1 conv even when channels match (default True; False with equal
            channels gives an exact identity, used by tests and for same-architecture teachers).

    Raises:
        ValueError: ``learnable=False`` with different channel counts.
    """

    def __init__(self, in_channels: int, out_channels: int, src_grid: BEVGrid, dst_grid: BEVGrid,
                 learnable: bool = True) -> None:
        super().__init__()
        if not learnable and in_channels != out_channels:
            raise ValueError(f"BEVAdapter: {in_channels} -> {out_channels} channels needs learnable=True")
        self.proj: nn.Module = nn.Conv2d(in_channels, out_channels, 1) if learnable else nn.Identity()
        self.src_grid, self.dst_grid = src_grid, dst_grid

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        """``(B, C_s, H_s, W_s)`` -> ``(B, C_t, H_t, W_t)``."""
        return resample_bev(self.proj(student_map), self.src_grid, self.dst_grid)
