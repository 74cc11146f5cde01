"""Camera branch of the fusion teacher: a small ResNet-style image backbone with an FPN and the
Lift-Splat-Shoot view transform (Philion & Fidler, ECCV 2020, §3: "lift" each feature pixel to a
categorical depth distribution over ``depth_bins`` times a context vector, "splat" the frustum
points onto the BEV grid by sum pooling). BEVFusion (Liu et al., ICRA 2023, §3.1) uses the same
transform with a Swin-T backbone; ours is a few residual stages so it trains on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from storage.grid import BEVGrid


@dataclass(frozen=True, kw_only=True)
class CameraBranchConfig:
    """Attributes:
        channels: widths of the backbone stages (each halves the resolution; the stem halves it too).
        feature_stride: image stride of the FPN output the depth net runs on (8 or 16).
        bev_channels: C of the camera BEV map.
        depth_bins: ``(min, max, step)`` m of the depth bin centres' grid (``min + (i + 0.5) step``).
    """

    channels: tuple[int, ...] = (32, 64, 128, 256)
    feature_stride: int = 16
    bev_channels: int = 64
    depth_bins: tuple[float, float, float] = (1.0, 61.0, 1.0)

    @property
    def num_depth_bins(self) -> int:
        lo, hi, step = self.depth_bins
        return int(round((hi - lo) / step))

    def depth_centres(self) -> torch.Tensor:
        """``(D,)`` float32 bin centres, m (distance along the optical axis)."""
        lo, _, step = self.depth_bins
        return lo + (torch.arange(self.num_depth_bins, dtype=torch.float32) + 0.5) * step


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class ImageBackbone(nn.Module):
    """Stem (stride 2) + residual stages (stride 2 each) + a top-down FPN to ``feature_stride``."""

    def __init__(self, config: CameraBranchConfig, out_channels: int) -> None:
        super().__init__()
        c = config.channels
        self.stem = nn.Sequential(nn.Conv2d(3, c[0], 3, 2, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(_ResBlock(a, b, 2) for a, b in zip((c[0],) + c[:-1], c))
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
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = lat(f) + F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(y)


def frustum_points(cam_intrinsic: torch.Tensor, lidar_from_cam: torch.Tensor, feat_hw: tuple[int, int], stride: int,
                   depths: torch.Tensor) -> torch.Tensor:
    """Lidar-frame positions of the frustum grid.

    Args:
        cam_intrinsic: ``(B, N, 3, 3)`` for the input images. lidar_from_cam: ``(B, N, 4, 4)``
            (may include a BEV augmentation; only matrix products are used).
        feat_hw: ``(h, w)`` of the feature map; cell ``(i, j)`` is pixel ``((j + .5) s, (i + .5) s)``.
        depths: ``(D,)`` depth along the optical axis, m.

    Returns:
        ``(B, N, D, h, w, 3)`` float32 xyz, lidar frame, m.
    """
    h, w = feat_hw
    dev = cam_intrinsic.device
    v, u = torch.meshgrid((torch.arange(h, device=dev) + 0.5) * stride, (torch.arange(w, device=dev) + 0.5) * stride,
                          indexing="ij")
    d = depths.to(dev)[:, None, None]
    pix = torch.stack([u.expand(len(depths), h, w) * d, v.expand(len(depths), h, w) * d, d.expand(-1, h, w)], -1)
    cam = pix @ torch.linalg.inv(cam_intrinsic.float())[:, :, None, None].transpose(-1, -2)  # (B,N,D,h,w,3)
    rot = lidar_from_cam[..., :3, :3].float()[:, :, None, None]
    trans = lidar_from_cam[..., :3, 3].float()[:, :, None, None, None]
    return (cam @ rot.transpose(-1, -2)) + trans


def splat(features: torch.Tensor, points: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Sum-pool frustum features into BEV cells ("splat", LSS §3; BEVFusion §3.1 BEV pooling).

    Args:
        features: ``(B, N, D, h, w, C)``. points: ``(B, N, D, h, w, 3)`` lidar frame, m.
        grid: output grid; points outside ``point_cloud_range`` (z included) are dropped.

    Returns:
        ``(B, C, H, W)`` float32.
    """
    b, c = features.shape[0], features.shape[-1]
    hh, ww = grid.bev_shape
    lo = points.new_tensor(grid.point_cloud_range[:3])
    hi = points.new_tensor(grid.point_cloud_range[3:])
    p = points.reshape(b, -1, 3)
    f = features.reshape(b, -1, c)
    ok = ((p >= lo) & (p < hi)).all(-1)
    col = ((p[..., 0] - lo[0]) / grid.voxel_size[0]).long().clamp(0, ww - 1)
    row = ((p[..., 1] - lo[1]) / grid.voxel_size[1]).long().clamp(0, hh - 1)
    flat = torch.arange(b, device=p.device)[:, None] * (hh * ww) + row * ww + col
    out = f.new_zeros((b * hh * ww, c)).index_add_(0, flat[ok], f[ok])
    return out.view(b, hh, ww, c).permute(0, 3, 1, 2).contiguous()


class LSSCameraBranch(nn.Module):
    """Images -> per-camera depth distributions and a camera BEV map on ``grid``."""

    def __init__(self, config: CameraBranchConfig, grid: BEVGrid) -> None:
        super().__init__()
        self.config, self.grid = config, grid
        self.backbone = ImageBackbone(config, out_channels=config.bev_channels)
        self.depthnet = nn.Conv2d(config.bev_channels, config.num_depth_bins + config.bev_channels, 1)
        self.register_buffer("depths", config.depth_centres(), persistent=False)

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
        frustum = depth.unsqueeze(1) * context.unsqueeze(2)  # (BN, C, D, h, w)
        h, w = feat.shape[-2:]
        frustum = frustum.view(b, n, -1, d, h, w).permute(0, 1, 3, 4, 5, 2)
        pts = frustum_points(cam_intrinsic, lidar_from_cam, (h, w), self.config.feature_stride, self.depths)
        return splat(frustum, pts, self.grid), depth.view(b, n, d, h, w)
