"""``teachers.cache_row.view_masks`` (column-interval form) against the per-point reference it replaced.

The reference is the original implementation, kept verbatim: every (cell, height) point projected
into every camera. The masks must be equal bit for bit: on the real keyframe's six calibrations at
the nuScenes BEV grid (180 x 180, 40 heights) and on small grids, and on a synthetic camera whose
grid points land exactly on the frustum's faces (u = 0, u = w, v = 0, depth = max_depth).
"""

from __future__ import annotations

import numpy as np
import pytest

from storage.grid import NUSCENES_GRID, BEVGrid
from storage.transforms import invert_transform
from teachers.cache_row import scaled_cameras, view_masks

NUSCENES_BEV = NUSCENES_GRID.with_stride(8)  # 180 x 180, 40 z centres
SMALL = BEVGrid(point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=(3.2, 3.2, 0.8))  # 32 x 32


def _reference_project(points: np.ndarray, cam_intrinsic: np.ndarray, lidar_from_cam: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The original ``teachers.cache_row._project``."""
    cf = invert_transform(lidar_from_cam)
    p = np.asarray(points, dtype=np.float64)[:, :3] @ cf[:3, :3].T + cf[:3, 3]
    depth = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = p @ np.asarray(cam_intrinsic, dtype=np.float64).T
        uv = uvw[:, :2] / np.where(depth[:, None] > 0, uvw[:, 2:3], np.nan)
    return uv, depth


def reference_view_masks(cam_intrinsic: np.ndarray, lidar_from_cam: np.ndarray, image_size: tuple[int, int],
                         bev_grid: BEVGrid, max_depth: float = 60.0, min_depth: float = 0.1,
                         heights: np.ndarray | None = None) -> np.ndarray:
    """The original ``teachers.cache_row.view_masks``: every column point projected (C, H, W) bool."""
    h, w = bev_grid.bev_shape
    if heights is None:
        heights = bev_grid.z_centers()
    xy = bev_grid.cell_centers().reshape(-1, 2)
    col = np.concatenate([np.concatenate([xy, np.full((len(xy), 1), z)], 1) for z in heights])
    out = np.zeros((len(cam_intrinsic), h, w), dtype=bool)
    for c, (k, l2c) in enumerate(zip(cam_intrinsic, lidar_from_cam, strict=True)):
        uv, depth = _reference_project(col, k, l2c)
        with np.errstate(invalid="ignore"):
            vis = ((depth > min_depth) & (depth <= max_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < image_size[0])
                   & (uv[:, 1] >= 0) & (uv[:, 1] < image_size[1]))
        out[c] = vis.reshape(len(heights), h, w).any(axis=0)
    return out


@pytest.fixture(scope="module")
def sample(keyframe_info):
    from storage.mmdet3d_reader import Mmdet3dInfoReader

    return Mmdet3dInfoReader(keyframe_info).read(0)


def test_equal_to_reference_at_nuscenes_scale(sample):
    ks, l2c = scaled_cameras(sample, (704, 256))
    assert len(NUSCENES_BEV.z_centers()) == 40 and NUSCENES_BEV.bev_shape == (180, 180)
    got = view_masks(ks, l2c, (704, 256), NUSCENES_BEV)
    expected = reference_view_masks(ks, l2c, (704, 256), NUSCENES_BEV)
    np.testing.assert_array_equal(got, expected)
    assert ((got.sum(axis=(1, 2)) > 1000) & ~got.all(axis=(1, 2))).all()  # each camera sees some cells, not all


@pytest.mark.parametrize("grid, image_size, kwargs", [
    (SMALL, (704, 396), {}),
    (SMALL, (160, 90), {"max_depth": 30.0, "min_depth": 0.0, "heights": np.array([2.0, -4.0, 0.0, 1.0])}),
    (BEVGrid(point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=(0.8, 0.8, 8.0)), (704, 396),
     {"max_depth": 50.0, "heights": np.array([0.0])}),
])
def test_equal_to_reference_on_small_grids(sample, grid, image_size, kwargs):
    ks, l2c = scaled_cameras(sample, image_size)
    got = view_masks(ks, l2c, image_size, grid, **kwargs)
    np.testing.assert_array_equal(got, reference_view_masks(ks, l2c, image_size, grid, **kwargs))
    assert got.any() and not got.all()


def test_equal_to_reference_for_augmented_views_and_projective_intrinsics(sample):
    """A scaled, rotated BEV augmentation (non-rigid ``lidar_from_cam``) and ``K`` with a third row
    other than ``[0, 0, 1]`` (same pixels, projective scale 2)."""
    ks, l2c = scaled_cameras(sample, (704, 256))
    angle = 0.3
    aug = np.eye(4)
    aug[:2, :2] = 1.05 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    aug[:3, 3] = [1.5, -2.0, 0.1]
    views = aug @ l2c
    np.testing.assert_array_equal(view_masks(ks, views, (704, 256), SMALL),
                                  reference_view_masks(ks, views, (704, 256), SMALL))
    got = view_masks(2.0 * ks, l2c, (704, 256), SMALL)
    np.testing.assert_array_equal(got, reference_view_masks(2.0 * ks, l2c, (704, 256), SMALL))
    assert got.any()


def _face_camera() -> tuple[np.ndarray, np.ndarray]:
    """A camera at the lidar origin looking along +x (cam x = -y, cam y = -z), f = 10 px,
    principal point (50, 5), image 100 x 10: every product is exact, so grid points land exactly
    on the frustum's faces: u = 0 at y = 5x, u = 100 at y = -5x, v = 0 at z = x / 2."""
    lidar_from_cam = np.eye(4)
    lidar_from_cam[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    k = np.array([[10.0, 0.0, 50.0], [0.0, 10.0, 5.0], [0.0, 0.0, 1.0]])
    return k[None], lidar_from_cam[None]


def test_points_exactly_on_the_frustum_faces():
    grid = BEVGrid(point_cloud_range=(-20.5, -20.5, -1.5, 20.5, 20.5, 1.5), voxel_size=(1.0, 1.0, 1.0))
    k, l2c = _face_camera()

    def cell(m: np.ndarray, x: int, y: int) -> bool:
        return bool(m[0, y + 20, x + 20])

    for heights in (None, np.array([1.0]), np.array([-1.0])):
        got = view_masks(k, l2c, (100, 10), grid, max_depth=10.0, min_depth=1.0, heights=heights)
        np.testing.assert_array_equal(got, reference_view_masks(k, l2c, (100, 10), grid, max_depth=10.0,
                                                                min_depth=1.0, heights=heights))
    m = view_masks(k, l2c, (100, 10), grid, max_depth=10.0, min_depth=1.0)
    assert cell(m, 2, 10) and not cell(m, 2, -10)  # u = 0 is inside, u = w outside
    assert cell(m, 10, 0) and not cell(m, 11, 0)  # depth = max_depth is inside
    assert not m[0, :, 21].any() and cell(m, 2, 0)  # depth = min_depth (x = 1) is outside
    top = view_masks(k, l2c, (100, 10), grid, max_depth=10.0, min_depth=1.0, heights=np.array([1.0]))
    bottom = view_masks(k, l2c, (100, 10), grid, max_depth=10.0, min_depth=1.0, heights=np.array([-1.0]))
    assert cell(top, 2, 0) and not cell(bottom, 2, 0) and cell(bottom, 4, 0)  # v = 0 inside, v = h outside
