"""Points -> voxels + mean voxel features, in torch (SECOND §2.1 / VoxelNet voxel partition;
mmdet3d ``HardSimpleVFE`` and ``DynamicSimpleVFE``: the feature of a voxel is the mean of its points).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import torch

from storage.grid import BEVGrid


@dataclass(kw_only=True, eq=False)
class Voxels:
    """A batch of non-empty voxels.

    Attributes:
        features: ``(V, C)`` float32 mean of the voxel's points (``[x, y, z, intensity, ...]``).
        coords: ``(V, 4)`` int32 ``[batch, z, y, x]`` voxel indices (spconv order).
        num_points: ``(V,)`` int64 points averaged per voxel.
        batch_size: B.
    """

    features: torch.Tensor
    coords: torch.Tensor
    num_points: torch.Tensor
    batch_size: int


def _voxelize_one(points: torch.Tensor, grid: BEVGrid, mode: str, max_points: int, max_voxels: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    nx, ny, nz = grid.grid_size
    idx = grid.metric_to_voxel(points)  # (N, 3) [ix, iy, iz]
    inside = (idx >= 0).all(1) & (idx[:, 0] < nx) & (idx[:, 1] < ny) & (idx[:, 2] < nz)
    points, idx = points[inside], idx[inside]
    lin = (idx[:, 2] * ny + idx[:, 1]) * nx + idx[:, 0]
    if mode == "hard":
        # first-come order: voxels ranked by their first point, points by arrival
        order = torch.argsort(lin, stable=True)
        sorted_lin = lin[order]
        first = torch.ones_like(sorted_lin, dtype=torch.bool)
        first[1:] = sorted_lin[1:] != sorted_lin[:-1]
        start = torch.cummax(torch.where(first, torch.arange(len(lin), device=lin.device), 0), 0).values
        rank = torch.empty_like(lin)
        rank[order] = torch.arange(len(lin), device=lin.device) - start
        keep = rank < max_points
        points, lin = points[keep], lin[keep]
    uniq, inverse = torch.unique(lin, return_inverse=True)
    count = torch.zeros(len(uniq), dtype=torch.long, device=points.device).index_add_(
        0, inverse, torch.ones_like(inverse))
    feats = torch.zeros(len(uniq), points.shape[1], dtype=points.dtype, device=points.device).index_add_(
        0, inverse, points)
    feats = feats / count.clamp(min=1).unsqueeze(1).to(points.dtype)
    if mode == "hard" and len(uniq) > max_voxels:
        first_pos = torch.full((len(uniq),), len(lin), dtype=torch.long, device=lin.device)
        first_pos.scatter_reduce_(0, inverse, torch.arange(len(lin), device=lin.device), reduce="amin")
        kept = torch.argsort(first_pos)[:max_voxels]
        uniq, feats, count = uniq[kept], feats[kept], count[kept]
    x = uniq % nx
    y = (uniq // nx) % ny
    z = uniq // (nx * ny)
    return feats, torch.stack([z, y, x], dim=1), count


def voxelize(points: Sequence[torch.Tensor], grid: BEVGrid, mode: str = "hard", max_points_per_voxel: int = 10,
             max_voxels: int = 120000) -> Voxels:
    """Voxelise a batch of point clouds on ``grid`` with mean features.

    Args:
        points: per sample ``(N_i, C)`` float32, lidar frame, m; points outside
            ``grid.point_cloud_range`` are dropped.
        grid: the voxel grid.
        mode: ``"hard"`` keeps the first ``max_points_per_voxel`` points of a voxel and the
            ``max_voxels`` voxels whose first point came first (mmdet3d hard voxelisation);
            ``"dynamic"`` averages every point (no caps).

    Returns:
        :class:`Voxels` with coords ``[batch, z, y, x]``.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in ("hard", "dynamic"):
        raise ValueError(f"voxelize: mode must be 'hard' or 'dynamic', got {mode!r}")
    feats, coords, counts = [], [], []
    for b, p in enumerate(points):
        f, c, n = _voxelize_one(p.float(), grid, mode, max_points_per_voxel, max_voxels)
        feats.append(f)
        coords.append(torch.cat([torch.full_like(c[:, :1], b), c], dim=1))
        counts.append(n)
    return Voxels(features=torch.cat(feats), coords=torch.cat(coords).int(), num_points=torch.cat(counts),
                  batch_size=len(points))
