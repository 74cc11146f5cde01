"""Projection of LiDAR points into the cameras: an independent reference for tests
(production code projects in :mod:`teachers.cache_row`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.sample import CameraInfo
from storage.transforms import apply_transform


@dataclass(frozen=True, kw_only=True)
class Projection:
    """LiDAR points seen by one camera.

    Attributes:
        uv: ``(K, 2)`` float64 pixel coordinates ``[u (column), v (row)]``.
        depth: ``(K,)`` float64 distance along the camera's optical axis (+z), m.
        index: ``(K,)`` int64 index of each projected point in the input array.
    """

    uv: np.ndarray
    depth: np.ndarray
    index: np.ndarray


def project_points(points_lidar: np.ndarray, camera: CameraInfo, min_depth: float = 0.1) -> Projection:
    """Project lidar-frame points ``(N, >=3)`` into ``camera``.

    Keeps points with depth > ``min_depth`` m whose pixel lies inside the image
    ``0 <= u < width, 0 <= v < height``.
    """
    # np.linalg.inv, not the rigid transpose: calibrations read from float32-rounded matrices are
    # orthonormal only to ~1e-7, which the transpose turns into ~3e-5 px errors.
    cam_from_lidar = np.linalg.inv(np.asarray(camera.lidar_from_cam, dtype=np.float64))
    p_cam = apply_transform(cam_from_lidar, points_lidar)
    depth = p_cam[:, 2]
    front = depth > min_depth
    uvw = p_cam[front] @ np.asarray(camera.cam_intrinsic, dtype=np.float64).T
    uv = uvw[:, :2] / uvw[:, 2:3]
    w, h = camera.image_size
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    idx = np.flatnonzero(front)[inside]
    return Projection(uv=uv[inside], depth=depth[idx], index=idx)
