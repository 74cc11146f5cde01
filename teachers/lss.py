"""The one lift-splat view transform (Philion & Fidler, "Lift, Splat, Shoot", ECCV 2020, §4.1-4.2),
shared by the fusion teacher's camera branch (BEVFusion §3.1) and the student (BEVDepth §3).

Frames and units: images may be *augmented* images (resize/crop/flip), related to the original
camera pixels by ``img_aug`` ``(3, 3)`` (``p_aug = img_aug @ p_orig``, homogeneous pixels,
continuous coordinates with pixel ``k`` spanning ``[k, k+1)`` as in :mod:`storage.projection`).
Depth is metres along the camera's optical axis (+z), unchanged by image augmentation.
Lifted points are in the lidar frame, or the augmented lidar frame when ``bev_aug``
(``(4, 4)``, ``aug_from_lidar``) is given.

Depth bins ``(d_min, d_max, step)``: bin ``i`` covers ``[d_min + i step, d_min + (i+1) step)``,
its centre ``d_min + (i + 0.5) step`` lifts the features; :func:`num_depth_bins` counts them.
"""

from __future__ import annotations

import math

import torch

from storage.grid import BEVGrid


def num_depth_bins(depth_bins: tuple[float, float, float]) -> int:
    """``D = floor((d_max - d_min) / step)`` (1e-6 tolerance for float round-off): the bins that
    fit in ``[d_min, d_max]``."""
    d_min, d_max, step = depth_bins
    return int(math.floor((d_max - d_min) / step + 1e-6))


def depth_bin_centers(depth_bins: tuple[float, float, float]) -> torch.Tensor:
    """``(D,)`` float32 centres ``d_min + (i + 0.5) * step`` of the depth bins, metres."""
    d_min, _, step = depth_bins
    return d_min + (torch.arange(num_depth_bins(depth_bins), dtype=torch.float32) + 0.5) * step


def frustum_points(cam_intrinsic: torch.Tensor, lidar_from_cam: torch.Tensor, feature_hw: tuple[int, int],
                   stride: int, depths: torch.Tensor, *, img_aug: torch.Tensor | None = None,
                   bev_aug: torch.Tensor | None = None) -> torch.Tensor:
    """Lidar-frame position of every (camera, depth bin, feature cell) (LSS §4.1 "Lift"),
    computed in float64.

    Args:
        cam_intrinsic: ``(B, N, 3, 3)`` pixels, of the *original* image (of the input image
            when ``img_aug`` is None).
        lidar_from_cam: ``(B, N, 4, 4)``.
        feature_hw: ``(h', w')`` feature cells; cell ``(i, j)`` is centred on (augmented) pixel
            ``((j + 0.5) * stride, (i + 0.5) * stride)``.
        stride: image-feature stride, pixels.
        depths: ``(D,)`` metres along the optical axis.
        img_aug: optional ``(B, N, 3, 3)`` ``aug_from_orig`` pixel transform.
        bev_aug: optional ``(B, 4, 4)`` ``aug_from_lidar`` BEV augmentation.

    Returns:
        ``(B, N, D, h', w', 3)`` float32 xyz, metres.
    """
    b, n = cam_intrinsic.shape[:2]
    h, w = feature_hw
    dev = cam_intrinsic.device
    v, u = torch.meshgrid((torch.arange(h, device=dev, dtype=torch.float64) + 0.5) * stride,
                          (torch.arange(w, device=dev, dtype=torch.float64) + 0.5) * stride, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(1, 1, -1, 3)  # (1,1,hw,3)
    if img_aug is not None:
        pix = pix @ torch.linalg.inv(img_aug.double()).transpose(-1, -2)
        pix = pix / pix[..., 2:3]
    rays = pix @ torch.linalg.inv(cam_intrinsic.double()).transpose(-1, -2)  # (B,N,hw,3), z = 1
    pts = rays[:, :, None] * depths.to(dev, torch.float64)[None, None, :, None, None]  # (B,N,D,hw,3)
    lfc = lidar_from_cam.double()
    pts = pts @ lfc[:, :, None, :3, :3].transpose(-1, -2) + lfc[:, :, None, None, :3, 3]
    if bev_aug is not None:
        a = bev_aug.double()[:, None, None]
        pts = pts @ a[..., :3, :3].transpose(-1, -2) + a[..., None, :3, 3]
    return pts.reshape(b, n, len(depths), h, w, 3).float()


def splat(features: torch.Tensor, points: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Sum-pool point features into the BEV cells holding their ``(x, y)`` (LSS §4.2 "Splat";
    BEVFusion §3.1 BEV pooling). Points outside ``grid.point_cloud_range`` (z included) are
    dropped; the sum is an ``index_add_`` (differentiable w.r.t. ``features``).

    Args:
        features: ``(B, ..., C)``.
        points: ``(B, ..., 3)`` metres, ``grid.frame``, the same middle dims as ``features``.
        grid: the BEV grid.

    Returns:
        ``(B, C, H, W)`` with ``(H, W) = grid.bev_shape``, ``features``' dtype.
    """
    b, c = features.shape[0], features.shape[-1]
    hh, ww = grid.bev_shape
    p = points.reshape(b, -1, 3)
    f = features.reshape(b, -1, c)
    rc = grid.metric_to_cell(p)  # (B, P, 2) [row, col]
    keep = grid.in_range(p) & grid.cell_in_grid(rc)
    flat = torch.arange(b, device=p.device)[:, None] * (hh * ww) + rc[..., 0] * ww + rc[..., 1]
    out = f.new_zeros((b * hh * ww, c)).index_add_(0, flat[keep], f[keep])
    return out.view(b, hh, ww, c).permute(0, 3, 1, 2).contiguous()


def voxel_pool(points: torch.Tensor, depth_probs: torch.Tensor, context: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Lift and splat: each frustum point carries ``depth_probs[d] * context`` (LSS §4.1 outer
    product) and is sum-pooled onto the BEV grid by :func:`splat`.

    Args:
        points: ``(B, N, D, h, w, 3)`` metres, ``grid.frame`` (:func:`frustum_points`).
        depth_probs: ``(B, N, D, h, w)`` softmax over D.
        context: ``(B, N, C, h, w)``.
        grid: the BEV grid; output is ``(B, C, H, W)`` with ``(H, W) = grid.bev_shape``.
    """
    feats = depth_probs.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)  # (B,N,D,h,w,C)
    return splat(feats, points, grid)


__all__ = ["depth_bin_centers", "frustum_points", "num_depth_bins", "splat", "voxel_pool"]
