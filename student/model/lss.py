"""Lift-splat view transform (Philion & Fidler, "Lift, Splat, Shoot", ECCV 2020, §4.1-4.2) with
BEVDepth's depth net (Li et al., AAAI 2023, §3.2 "camera-aware depth prediction").

Frames and units: images are *augmented* images (resize/crop/flip), related to the original
camera pixels by ``img_aug`` ``(3, 3)`` (``p_aug = img_aug @ p_orig``, homogeneous pixels,
continuous coordinates with pixel ``k`` spanning ``[k, k+1)`` as in :mod:`storage.projection`).
Depth is metres along the camera's optical axis (+z), unchanged by image augmentation.
Lifted points are in the lidar frame, or the augmented lidar frame when ``bev_aug``
(``(4, 4)``, ``aug_from_lidar``) is given.
"""

from __future__ import annotations

import torch
from torch import nn

from storage.grid import BEVGrid

#: Camera parameters fed to the camera-aware depth net: fx, fy, cx, cy (scaled by 1/1000),
#: the 2x3 affine part of ``img_aug`` and the 3x4 part of ``lidar_from_cam``.
NUM_CAMERA_PARAMS = 4 + 6 + 12


def depth_bin_centers(depth_bins: tuple[float, float, float], num_bins: int) -> torch.Tensor:
    """``(D,)`` float32 centres ``d_min + (i + 0.5) * step`` of the depth bins, metres."""
    d_min, _, step = depth_bins
    return d_min + (torch.arange(num_bins, dtype=torch.float32) + 0.5) * step


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


def frustum_points(cam_intrinsic: torch.Tensor, lidar_from_cam: torch.Tensor, img_aug: torch.Tensor,
                   feature_size: tuple[int, int], stride: int, depths: torch.Tensor,
                   bev_aug: torch.Tensor | None = None) -> torch.Tensor:
    """Lidar-frame position of every (camera, depth bin, feature cell) (LSS §4.1 "Lift").

    Args:
        cam_intrinsic: ``(B, N, 3, 3)`` pixels, of the *original* image.
        lidar_from_cam: ``(B, N, 4, 4)``.
        img_aug: ``(B, N, 3, 3)`` ``aug_from_orig`` pixel transform.
        feature_size: ``(h', w')`` feature cells; cell ``(i, j)`` is centred on augmented pixel
            ``((j + 0.5) * stride, (i + 0.5) * stride)``.
        stride: image-feature stride, pixels.
        depths: ``(D,)`` metres along the optical axis.
        bev_aug: optional ``(B, 4, 4)`` ``aug_from_lidar`` BEV augmentation.

    Returns:
        ``(B, N, D, h', w', 3)`` float32 xyz, metres.
    """
    b, n = cam_intrinsic.shape[:2]
    h, w = feature_size
    dev = cam_intrinsic.device
    v, u = torch.meshgrid((torch.arange(h, device=dev, dtype=torch.float64) + 0.5) * stride,
                          (torch.arange(w, device=dev, dtype=torch.float64) + 0.5) * stride, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(1, 1, -1, 3)  # (1,1,hw,3)
    orig = pix @ torch.linalg.inv(img_aug.double()).transpose(-1, -2)
    orig = orig / orig[..., 2:3]
    rays = orig @ torch.linalg.inv(cam_intrinsic.double()).transpose(-1, -2)  # (B,N,hw,3), z = 1
    pts = rays[:, :, None] * depths.to(dev, torch.float64)[None, None, :, None, None]  # (B,N,D,hw,3)
    lfc = lidar_from_cam.double()
    pts = pts @ lfc[:, :, None, :3, :3].transpose(-1, -2) + lfc[:, :, None, None, :3, 3]
    if bev_aug is not None:
        a = bev_aug.double()[:, None, None]
        pts = pts @ a[..., :3, :3].transpose(-1, -2) + a[..., None, :3, 3]
    return pts.reshape(b, n, len(depths), h, w, 3).float()


def voxel_pool(points: torch.Tensor, depth_probs: torch.Tensor, context: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Splat ``depth x context`` outer products onto the BEV grid by sum pooling (LSS §4.2).

    Each lifted point contributes ``depth_probs[d] * context`` to the BEV cell containing its
    ``(x, y)``; points outside ``grid.point_cloud_range`` (z included) are dropped. The sum is
    an ``index_add_`` (differentiable w.r.t. depth and context).

    Args:
        points: ``(B, N, D, h, w, 3)`` metres, ``grid.frame``.
        depth_probs: ``(B, N, D, h, w)`` softmax over D.
        context: ``(B, N, C, h, w)``.
        grid: the BEV grid; output is ``(B, C, H, W)`` with ``(H, W) = grid.bev_shape``.
    """
    b, n, d, h, w, _ = points.shape
    c = context.shape[2]
    H, W = grid.bev_shape
    pcr, vs = grid.point_cloud_range, grid.voxel_size
    pts = points.reshape(b, -1, 3)
    col = torch.floor((pts[..., 0] - pcr[0]) / vs[0]).long()
    row = torch.floor((pts[..., 1] - pcr[1]) / vs[1]).long()
    keep = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (pts[..., 2] >= pcr[2]) & (pts[..., 2] < pcr[5])
    batch = torch.arange(b, device=points.device)[:, None].expand_as(col)
    index = (batch * H * W + row * W + col)[keep]
    feats = depth_probs.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)  # (B,N,D,h,w,C)
    feats = feats.reshape(b, -1, c)[keep]
    out = context.new_zeros((b * H * W, c)).index_add_(0, index, feats)
    return out.reshape(b, H, W, c).permute(0, 3, 1, 2).contiguous()
