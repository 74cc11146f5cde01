"""Image neck: a two-level FPN (Lin et al., "Feature Pyramid Networks", CVPR 2017, §3) fusing
ResNet C4 and C5 into one stride-16 map, the resolution BEVDepth lifts from (BEVDepth §4.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """Top-down fusion of C4 (stride 16) and C5 (stride 32) into one stride-16 map.

    Args:
        c4_channels: channels of C4.
        c5_channels: channels of C5.
        out_channels: channels of the output map.
    """

    def __init__(self, c4_channels: int, c5_channels: int, out_channels: int) -> None:
        super().__init__()
        self.lateral4 = nn.Conv2d(c4_channels, out_channels, 1)
        self.lateral5 = nn.Conv2d(c5_channels, out_channels, 1)
        self.smooth = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        """``c4 (N, C4, h/16, w/16)``, ``c5 (N, C5, h/32, w/32)`` -> ``(N, out, h/16, w/16)``."""
        top = F.interpolate(self.lateral5(c5), size=c4.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(self.lateral4(c4) + top)
