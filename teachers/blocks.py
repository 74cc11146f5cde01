"""Convolution blocks shared by the fusion teacher and the student (STYLE.md §1: the student
imports the model parts it shares with the teachers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """Basic residual block (He et al., CVPR 2016, §3.3): two 3x3 conv + BN, a 1x1 conv + BN
    projection on the skip path when the stride or the width changes, ReLU after the sum.

    ``(N, c_in, H, W)`` -> ``(N, c_out, H / stride, W / stride)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                  nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ConvFuser(nn.Module):
    """Concatenate camera and (real or simulated) LiDAR BEV maps, then 3x3 conv + BN + ReLU
    (BEVFusion, Liu et al. ICRA 2023, §3.3; SimDistill §3.2 fuses its two streams the same way).

    ``camera_bev (B, C_cam, H, W)``, ``lidar_bev (B, C_lidar, H, W)`` -> ``(B, C_out, H, W)``.
    """

    def __init__(self, camera_channels: int, lidar_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(camera_channels + lidar_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, camera_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([camera_bev, lidar_bev], dim=1))


__all__ = ["ConvFuser", "ResBlock"]
