"""Network-free LiDAR-guided targets on the real nuScenes keyframe (masks, frusta, depth)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from storage.boxes import box_corners, count_points_in_boxes
from storage.grid import BEVGrid
from projection import project_points
from storage.sample import CAMERA_NAMES, CameraInfo
from teachers.cache_row import (build_cache_row, fg_mask_from_boxes, fg_mask_from_points, gaussian_fg_heatmap,
                                lidar_depth_maps, scaled_cameras, view_masks)

GRID = BEVGrid(point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=(0.8, 0.8, 8.0))  # 128 x 128
IMAGE_SIZE = (704, 396)  # 1600x900 scaled by 0.44


@pytest.fixture(scope="module")
def sample(keyframe_info):
    from storage.mmdet3d_reader import Mmdet3dInfoReader

    return Mmdet3dInfoReader(keyframe_info).read(0)


def test_boxes_with_points_cover_foreground_cells(sample):
    counts = count_points_in_boxes(sample.points, sample.gt_boxes)
    fg_box = fg_mask_from_boxes(sample.gt_boxes, GRID)
    fg_pts = fg_mask_from_points(sample.points, sample.gt_boxes, GRID)
    heat = gaussian_fg_heatmap(sample.gt_boxes, sample.gt_labels, GRID)
    in_range = GRID.in_range(sample.gt_boxes)
    checked = 0
    for box, n, ok in zip(sample.gt_boxes, counts, in_range, strict=True):
        if n == 0 or not ok:
            continue
        r, c = GRID.metric_to_cell(box[None, :2])[0]
        assert fg_box[r, c] and heat[r, c] == 1.0
        # some point-foreground cell lies within the box footprint (+ half a cell)
        cells = GRID.metric_to_cell(box_corners(box[None])[0, :4, :2])
        r0, c0 = cells.min(0)
        r1, c1 = cells.max(0)
        assert fg_pts[max(r0, 0):r1 + 1, max(c0, 0):c1 + 1].any()
        checked += 1
    assert checked >= 20
    assert fg_pts.sum() <= fg_box.sum() * 4  # point cells stay near boxes, not the whole scene
    assert fg_box.mean() < 0.1  # foreground is a small part of the scene
    empty = np.zeros((0, 9))
    assert not fg_mask_from_boxes(empty, GRID).any()


def _camera(sample, i: int) -> CameraInfo:
    ks, l2c = scaled_cameras(sample, IMAGE_SIZE)
    cam = sample.camera(CAMERA_NAMES[i])
    return CameraInfo(name=cam.name, image_path=cam.image_path, cam_intrinsic=ks[i], ego_from_cam=cam.ego_from_cam,
                      lidar_from_cam=l2c[i], timestamp_us=cam.timestamp_us, image_size=IMAGE_SIZE)


def test_depth_maps_are_min_projected_depth_per_cell(sample):
    stride = 8
    ks, l2c = scaled_cameras(sample, IMAGE_SIZE)
    depth = lidar_depth_maps(sample.points, ks, l2c, IMAGE_SIZE, stride)
    assert depth.shape == (6, IMAGE_SIZE[1] // stride, IMAGE_SIZE[0] // stride)
    for i in range(6):
        proj = project_points(sample.points, _camera(sample, i))
        best: dict[tuple[int, int], float] = defaultdict(lambda: np.inf)
        for (u, v), d in zip(proj.uv, proj.depth, strict=True):
            key = (int(v // stride), int(u // stride))
            if key[0] < depth.shape[1] and key[1] < depth.shape[2]:
                best[key] = min(best[key], d)
        expect = np.zeros(depth.shape[1:], dtype=np.float32)
        for (r, c), d in best.items():
            expect[r, c] = d
        np.testing.assert_allclose(depth[i], expect, rtol=1e-5)
        assert (depth[i] > 0).sum() > 100


def test_view_masks_overlap_only_where_frusta_do(sample):
    ks, l2c = scaled_cameras(sample, IMAGE_SIZE)
    masks = view_masks(ks, l2c, IMAGE_SIZE, GRID, max_depth=50.0, heights=np.array([0.0]))
    centres = GRID.cell_centers()
    dist = np.linalg.norm(centres, axis=-1)
    ring = (dist > 5) & (dist < 45)
    assert masks.any(0)[ring].mean() > 0.95  # six cameras see all around
    assert (masks.any(0) & (dist > 50 * 1.5)).sum() == 0  # nothing beyond the depth limit
    # adjacent cameras: every shared cell's centre projects into both images, and there are some
    adjacent = [("CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_FRONT", "CAM_FRONT_LEFT"), ("CAM_BACK", "CAM_BACK_LEFT")]
    for a, b in adjacent:
        ia, ib = CAMERA_NAMES.index(a), CAMERA_NAMES.index(b)
        both = masks[ia] & masks[ib]
        assert both.sum() > 10
        pts = np.concatenate([centres[both], np.zeros((both.sum(), 1))], axis=1)
        for i in (ia, ib):
            assert len(project_points(pts, _camera(sample, i)).index) == len(pts)
    # front and back look apart: no shared cells
    assert not (masks[CAMERA_NAMES.index("CAM_FRONT")] & masks[CAMERA_NAMES.index("CAM_BACK")]).any()


def test_build_cache_row_lidar_part_and_pngs(sample, artefacts):
    t = build_cache_row(None, sample, bev_grid=GRID, depth_stride=8, image_wh=IMAGE_SIZE)
    assert t.fg_mask.shape == GRID.bev_shape and t.fg_mask.dtype == bool
    assert t.view_mask.shape == (6, *GRID.bev_shape) and t.lidar_depth.shape == (6, 49, 88)
    _write_pngs(sample, t, artefacts)


def _write_pngs(sample, t, artefacts) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ext = (GRID.point_cloud_range[0], GRID.point_cloud_range[3], GRID.point_cloud_range[1], GRID.point_cloud_range[4])
    fig, ax = plt.subplots(1, 2, figsize=(12, 6))
    ax[0].imshow(t.fg_mask, origin="lower", extent=ext, cmap="gray")
    pts = sample.points[GRID.in_range(sample.points)]
    ax[0].scatter(pts[:, 0], pts[:, 1], s=0.1, c="c", alpha=0.3)
    for corners in box_corners(sample.gt_boxes)[:, [0, 1, 2, 3, 0], :2]:
        ax[0].plot(corners[:, 0], corners[:, 1], "r-", lw=0.8)
    ax[0].set_title("fg_mask (white), GT boxes (red), LiDAR (cyan)")
    colours = plt.cm.tab10(np.arange(6))[:, :3]
    rgb = np.zeros((*GRID.bev_shape, 3))
    for i in range(6):
        rgb += t.view_mask[i][..., None] * colours[i] * 0.6
    ax[1].imshow(np.clip(rgb, 0, 1), origin="lower", extent=ext)
    ax[1].set_title("view masks: " + ", ".join(n[4:] for n in CAMERA_NAMES), fontsize=8)
    fig.savefig(artefacts / "targets_fg_and_view_masks.png", dpi=80)
    plt.close(fig)
    fig, axs = plt.subplots(2, 3, figsize=(15, 6))
    for i, a in enumerate(axs.flat):
        img = sample.camera(CAMERA_NAMES[i]).load_image()
        a.imshow(img, extent=(0, IMAGE_SIZE[0], IMAGE_SIZE[1], 0))
        r, c = np.nonzero(t.lidar_depth[i])
        a.scatter((c + 0.5) * 8, (r + 0.5) * 8, c=t.lidar_depth[i][r, c], s=4, cmap="jet", vmin=0, vmax=50)
        a.set_title(f"{CAMERA_NAMES[i]} LiDAR depth (stride 8)", fontsize=8)
        a.axis("off")
    fig.savefig(artefacts / "targets_lidar_depth.png", dpi=80)
    plt.close(fig)
