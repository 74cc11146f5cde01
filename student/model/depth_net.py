"""BEVDepth's camera-aware depth net (Li et al., AAAI 2023, §3.2): per feature pixel, ``D`` depth
logits and a context vector for the lift-splat of :mod:`teachers.lss` (shared with the fusion
teacher's camera branch).
"""

from __future__ import annotations

import torch
from torch import nn

#: Camera parameters fed to the camera-aware depth net: fx, fy, cx, cy (scaled by 1/1000),
#: the 2x3 affine part of ``img_aug`` and the 3x4 part of ``lidar_from_cam``.
NUM_CAMERA_PARAMS = 4 + 6 + 12


def camera_params(cam_intrinsic: torch.Tensor, lidar_from_cam: torch.Tensor, img_aug: torch.Tensor) -> torch.Tensor:
    """``(..., NUM_CAMERA_PARAMS)`` float32 vector of one camera's calibration and augmentation."""
    k = cam_intrinsic.float()
    intr = torch.stack([k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]], dim=-1) / 1000.0
    return torch.cat([intr, img_aug.float()[..., :2, :3].flatten(-2), lidar_from_cam.float()[..., :3, :4].flatten(-2)],
                     dim=-1)


class DepthNet(nn.Module):
    """Per-pixel depth distribution (``D`` logits) and context features (BEVDepth §3.2).

    Args:
        in_channels: channels of the image feature map.
        mid_channels: hidden channels.
        context_channels: C of the lifted context features.
        num_bins: D.
        camera_aware: gate the depth branch with an MLP of :func:`camera_params` (SE block).
    """

    def __init__(self, in_channels: int, mid_channels: int, context_channels: int, num_bins: int,
                 camera_aware: bool = True) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True))
        self.context = nn.Conv2d(mid_channels, context_channels, 1)
        self.depth = nn.Sequential(nn.Conv2d(mid_channels, mid_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
                                   nn.Conv2d(mid_channels, num_bins, 1))
        self.camera_mlp = (nn.Sequential(nn.Linear(NUM_CAMERA_PARAMS, mid_channels), nn.ReLU(inplace=True),
                                         nn.Linear(mid_channels, mid_channels))
                           if camera_aware else None)

    def forward(self, feat: torch.Tensor, cam: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``feat (N, C_in, h, w)``, ``cam (N, NUM_CAMERA_PARAMS)`` -> depth logits
        ``(N, D, h, w)`` and context ``(N, C, h, w)``."""
        x = self.reduce(feat)
        context = self.context(x)
        if self.camera_mlp is not None and cam is not None:
            x = x * self.camera_mlp(cam).sigmoid()[:, :, None, None]
        return self.depth(x), context


__all__ = ["NUM_CAMERA_PARAMS", "DepthNet", "camera_params"]
