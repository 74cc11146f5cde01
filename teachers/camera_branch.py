"""Camera branch of the fusion teacher: a small ResNet-style image backbone with an FPN and the
Lift-Splat-Shoot view transform (Philion & Fidler, ECCV 2020, §3: "lift" each feature pixel to a
categorical depth distribution over ``depth_bins`` times a context vector, "splat" the frustum
points onto the BEV grid by sum pooling; the one implementation is :mod:`teachers.lss`, shared
with the student). BEVFusion (Liu et al., ICRA 2023, §3.1) uses the same
transform with a Swin-T backbone; ours is a few residual stages so it trains on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from storage.grid import BEVGrid
from teachers.blocks import ResBlock
from teachers.lss import depth_bin_centers, frustum_points, num_depth_bins, voxel_pool


@dataclass(frozen=True, kw_only=True)
class CameraBranchConfig:
    """Attributes:
        channels: widths of the backbone stages (each halves the resolution; the stem halves it too).
        feature_stride: image stride of the FPN output the depth net runs on (8 or 16).
        bev_channels: C of the camera BEV map.
        depth_bins: ``(d_min, d_max, step)`` m; bins and centres as in :mod:`teachers.lss`.
    """

    channels: tuple[int, ...] = (32, 64, 128, 256)
    feature_stride: int = 16
    bev_channels: int = 64
    depth_bins: tuple[float, float, float] = (1.0, 61.0, 1.0)

    @property
    def num_depth_bins(self) -> int:
        """``D`` (:func:`teachers.lss.num_depth_bins`)."""
        return num_depth_bins(self.depth_bins)


class ImageBackbone(nn.Module):
    """Stem (stride 2) + residual stages (stride 2 each) + a top-down FPN to ``feature_stride``."""

    def __init__(self, config: CameraBranchConfig, out_channels: int) -> None:
        super().__init__()
        c = config.channels
        self.stem = nn.Sequential(nn.Conv2d(3, c[0], 3, 2, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(ResBlock(a, b, 2) for a, b in zip((c[0],) + c[:-1], c, strict=True))
        strides = [2 ** (i + 2) for i in range(len(c))]
        if config.feature_stride not in strides:
            raise ValueError(f"CameraBranchConfig.feature_stride {config.feature_stride} not in {strides}")
        self.first = strides.index(config.feature_stride)
        self.lateral = nn.ModuleList(nn.Conv2d(ch, out_channels, 1) for ch in c[self.first:])
        self.smooth = nn.Conv2d(out_channels, out_channels, 3, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w)`` -> ``(N, out_channels, h / s, w / s)``."""
        x = self.stem(images)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        feats = feats[self.first:]
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            y = lat(f) + F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(y)


class LSSCameraBranch(nn.Module):
    """Images -> per-camera depth distributions and a camera BEV map on ``grid``."""

    depths: torch.Tensor  # (D,) depth-bin centres, m (buffer)

    def __init__(self, config: CameraBranchConfig, grid: BEVGrid) -> None:
        super().__init__()
        self.config, self.grid = config, grid
        self.backbone = ImageBackbone(config, out_channels=config.bev_channels)
        self.depthnet = nn.Conv2d(config.bev_channels, config.num_depth_bins + config.bev_channels, 1)
        self.register_buffer("depths", depth_bin_centers(config.depth_bins), persistent=False)

    def forward(self, images: torch.Tensor, cam_intrinsic: torch.Tensor, lidar_from_cam: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: images ``(B, N, 3, h, w)`` (h, w divisible by ``feature_stride``), cam_intrinsic
        ``(B, N, 3, 3)``, lidar_from_cam ``(B, N, 4, 4)``.

        Raises:
            ValueError: image size not divisible by ``feature_stride``.

        Returns:
            camera_bev ``(B, C, H, W)`` on ``grid``; depth_probs ``(B, N, D, h/s, w/s)`` (softmax over D).
        """
        b, n = images.shape[:2]
        s = self.config.feature_stride
        if images.shape[-1] % s or images.shape[-2] % s:
            raise ValueError(f"LSSCameraBranch: image size {tuple(images.shape[-2:])} (h, w) must be divisible by "
                             f"feature_stride {s}")
        feat = self.backbone(images.flatten(0, 1))
        out = self.depthnet(feat)
        d = self.config.num_depth_bins
        depth = out[:, :d].softmax(dim=1)
        context = out[:, d:]
        h, w = feat.shape[-2:]
        pts = frustum_points(cam_intrinsic, lidar_from_cam, (h, w), self.config.feature_stride, self.depths)
        depth, context = depth.view(b, n, d, h, w), context.reshape(b, n, -1, h, w)
        return voxel_pool(pts, depth, context, self.grid), depth
