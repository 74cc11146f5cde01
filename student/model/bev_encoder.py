"""BEV encoder: a two-scale residual encoder with a SECOND-style FPN (Yan et al. 2018; the
BEVDepth / BEVDet "bev_backbone + bev_neck", BEVDet §3.1), resolution-preserving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                  nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class BEVEncoder(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``: stage 1 at stride 1, stage 2 at stride 2,
    stage 2 upsampled and concatenated with stage 1, then a 3x3 fusion conv.

    Raises (at forward):
        RuntimeError from torch if H or W is odd (the config forbids it).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels
        self.stage1 = nn.Sequential(_ResBlock(in_channels, mid), _ResBlock(mid, mid))
        self.stage2 = nn.Sequential(_ResBlock(mid, 2 * mid, stride=2), _ResBlock(2 * mid, 2 * mid))
        self.fuse = nn.Sequential(nn.Conv2d(3 * mid, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stage1(x)
        s2 = F.interpolate(self.stage2(s1), size=s1.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([s1, s2], dim=1))
