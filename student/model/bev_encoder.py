"""BEV encoder: a two-scale residual encoder with a SECOND-style FPN (Yan et al. 2018; the
BEVDepth / BEVDet "bev_backbone + bev_neck", BEVDet §3.1), resolution-preserving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teachers.blocks import ResBlock


class BEVEncoder(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``: stage 1 at stride 1, stage 2 at stride 2,
    stage 2 upsampled and concatenated with stage 1, then a 3x3 fusion conv.

    Raises (at forward):
        RuntimeError from torch if H or W is odd (the config forbids it).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels
        self.stage1 = nn.Sequential(ResBlock(in_channels, mid), ResBlock(mid, mid))
        self.stage2 = nn.Sequential(ResBlock(mid, 2 * mid, stride=2), ResBlock(2 * mid, 2 * mid))
        self.fuse = nn.Sequential(nn.Conv2d(3 * mid, out_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stage1(x)
        s2 = F.interpolate(self.stage2(s1), size=s1.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([s1, s2], dim=1))
