"""SimDistill's simulated-LiDAR branch and fuser (Zhao et al., "SimDistill: Simulated
Multi-modal Distillation for BEV 3D Object Detection", AAAI 2024, §3.2).

SimDistill's student has a second BEV stream that imitates the teacher's LiDAR BEV from camera
features, with a "geometry compensation module" (deformable convolutions that move features
to where LiDAR would place them), and fuses both streams as the fusion teacher does.

Simplification (stated, not hidden): geometry compensation here is one offset-predicting
conv that resamples the camera BEV at ``cell + offset`` (bilinear, a single-tap deformable
sampling) followed by a 3x3 conv block; the fuser is BEVFusion's concat + 3x3 conv
(:class:`teachers.blocks.ConvFuser`). No deformable-conv CUDA op is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class GeometryCompensation(nn.Module):
    """Camera BEV ``(B, C, H, W)`` -> simulated-LiDAR BEV ``(B, C_out, H, W)``.

    Offsets ``(B, 2, H, W)`` (cells, ``[dx, dy]``) are predicted, initialised to zero, and the
    input is resampled at the shifted cell centres before a conv block.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 2, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        assert self.offset.bias is not None
        nn.init.zeros_(self.offset.bias)
        self.block = nn.Sequential(_conv_block(in_channels, out_channels), _conv_block(out_channels, out_channels))

    def forward(self, camera_bev: torch.Tensor) -> torch.Tensor:
        b, _, h, w = camera_bev.shape
        off = self.offset(camera_bev)
        ys, xs = torch.meshgrid(torch.arange(h, device=off.device, dtype=off.dtype),
                                torch.arange(w, device=off.device, dtype=off.dtype), indexing="ij")
        gx = (xs + 0.5 + off[:, 0]) / w * 2 - 1
        gy = (ys + 0.5 + off[:, 1]) / h * 2 - 1
        moved = F.grid_sample(camera_bev, torch.stack([gx, gy], dim=-1), mode="bilinear",
                              padding_mode="zeros", align_corners=False)
        return self.block(moved)
