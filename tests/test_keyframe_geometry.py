"""The shared geometry on the real nuScenes keyframe (scene-0061, first sample of v1.0-mini).

* Box convention: LiDAR points counted inside each box match the annotation's ``num_lidar_pts``.
* Projection: LiDAR points land in CAM_FRONT where the camera looks; projected boxes agree with
  the 2D boxes mmdet3d computed with the nuScenes devkit (``cam_instances``).
* Artefact: ``keyframe_cam_front_lidar.png`` (points coloured by depth, projected box edges).
"""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes.utils.geometry_utils import view_points

from storage.boxes import box_corners, count_points_in_boxes
from storage.mmdet3d_reader import Mmdet3dInfoReader
from projection import project_points
from storage.safe_pickle import safe_load
from storage.transforms import apply_transform


@pytest.fixture(scope="module")
def sample(keyframe_info):
    return Mmdet3dInfoReader(keyframe_info).read(0)


@pytest.fixture(scope="module")
def cam_instances(keyframe_info):
    return safe_load(keyframe_info)["data_list"][0]["cam_instances"]


def test_points_in_boxes_match_num_lidar_pts(sample, artefacts):
    valid = sample.num_lidar_pts > 0  # = bbox_3d_isvalid on this keyframe
    counts = count_points_in_boxes(sample.points, sample.gt_boxes)
    exact = counts[valid] == sample.num_lidar_pts[valid]
    fraction = exact.mean()
    (artefacts / "keyframe_points_in_boxes.txt").write_text(
        f"valid boxes: {valid.sum()}, exact num_lidar_pts matches: {exact.sum()} ({fraction:.4f})\n"
        f"abs differences: {np.abs(counts - sample.num_lidar_pts)[valid].tolist()}\n")
    print(f"points-in-box exact match: {exact.sum()}/{valid.sum()} = {fraction:.4f}")
    assert fraction >= 0.85
    # the misses are near-misses (points on faces), not a convention error
    assert np.median(np.abs(counts - sample.num_lidar_pts)[valid]) == 0
    assert (counts[~valid] == 0).all()
    # the same boxes read as bottom-centred (a wrong convention) would lose most matches
    shifted = sample.gt_boxes.copy()
    shifted[:, 2] += shifted[:, 5] / 2
    wrong = count_points_in_boxes(sample.points, shifted)[valid] == sample.num_lidar_pts[valid]
    assert wrong.mean() < fraction - 0.2


def test_lidar_points_project_into_cam_front_where_expected(sample):
    cam = sample.camera("CAM_FRONT")
    pts = sample.points
    proj = project_points(pts, cam)
    assert proj.uv.shape == (len(proj.index), 2) and proj.depth.shape == proj.index.shape
    assert 1000 < len(proj.index) < len(pts) // 2
    ego = apply_transform(sample.ego_from_lidar, pts)
    cam_pos = cam.ego_from_cam[:3, 3]
    d = ego - cam_pos
    # well inside the camera's view cone (half-FOV ~32 deg x 20 deg): must project
    ahead = (d[:, 0] > 3) & (np.abs(d[:, 1]) < 0.45 * d[:, 0]) & (np.abs(d[:, 2]) < 0.25 * d[:, 0])
    behind = d[:, 0] < -1.0
    assert ahead.sum() > 500 and behind.sum() > 5000
    projected = np.zeros(len(pts), dtype=bool)
    projected[proj.index] = True
    assert projected[ahead].all()
    assert not projected[behind].any()
    # depth is the point's camera-frame z (independent inverse and the devkit's pinhole projection)
    p_cam = apply_transform(np.linalg.inv(cam.lidar_from_cam), pts[proj.index])
    np.testing.assert_allclose(proj.depth, p_cam[:, 2], atol=1e-9)
    np.testing.assert_allclose(proj.uv, view_points(p_cam.T, cam.cam_intrinsic, normalize=True)[:2].T, atol=1e-6)
    w, h = cam.image_size
    assert (proj.uv >= 0).all() and (proj.uv[:, 0] < w).all() and (proj.uv[:, 1] < h).all()
    # near the optical axis (within 100 px of the principal point, < 6.4 deg off axis with
    # f = 1266 px) depth ~ range from the camera: 1 - cos(6.4 deg) < 7e-3
    k = cam.cam_intrinsic
    near_axis = np.all(np.abs(proj.uv - k[:2, 2]) < 100, axis=1)
    assert near_axis.sum() > 20
    rng_cam = np.linalg.norm(p_cam[near_axis], axis=1)
    assert (proj.depth[near_axis] <= rng_cam + 1e-9).all()
    np.testing.assert_allclose(proj.depth[near_axis], rng_cam, rtol=7e-3)
    # and the LiDAR range of those points is close too (the two sensors are ~0.54 m apart)
    rng_lidar = np.linalg.norm(pts[proj.index][near_axis, :3], axis=1)
    assert np.abs(proj.depth[near_axis] - rng_lidar).max() < 1.0


def test_projected_boxes_agree_with_mmdet3d_cam_instances(sample, cam_instances):
    """mmdet3d projected the devkit's camera-frame boxes (``center_2d``, ``depth``, 2D ``bbox``)."""
    cam = sample.camera("CAM_FRONT")
    inst = cam_instances["CAM_FRONT"]
    centre_2d = np.array([i["center_2d"] for i in inst])
    depth = np.array([i["depth"] for i in inst])
    proj = project_points(sample.gt_boxes[:, :3], cam)
    w, h = cam.image_size
    visible = (centre_2d[:, 0] >= 0) & (centre_2d[:, 0] < w) & (centre_2d[:, 1] >= 0) & (centre_2d[:, 1] < h)
    assert visible.sum() >= 40
    matched = []
    for j in np.flatnonzero(visible):
        dist = np.linalg.norm(proj.uv - centre_2d[j], axis=1)
        k = int(dist.argmin())
        assert dist[k] < 0.01 and abs(proj.depth[k] - depth[j]) < 1e-3
        matched.append(proj.index[k])
    assert len(set(matched)) == len(matched)  # one box per instance
    # 2D boxes of our corners vs mmdet3d's: equal up to the ~2 deg ego tilt our yaw-only boxes drop
    errors = []
    for j, b in zip(np.flatnonzero(visible), matched, strict=True):
        ours = _box_2d(box_corners(sample.gt_boxes[b:b + 1])[0], cam)
        if ours is not None:
            errors.append(np.abs(ours - np.asarray(inst[j]["bbox"])).max())
    assert len(errors) >= 30 and np.median(errors) < 2.0


def _box_2d(corners_lidar: np.ndarray, cam) -> np.ndarray | None:
    c = apply_transform(np.linalg.inv(cam.lidar_from_cam), corners_lidar)
    if (c[:, 2] <= 0.1).any():
        return None
    uv = view_points(c.T, cam.cam_intrinsic, normalize=True)[:2].T
    w, h = cam.image_size
    return np.array([max(uv[:, 0].min(), 0), max(uv[:, 1].min(), 0), min(uv[:, 0].max(), w),
                     min(uv[:, 1].max(), h)])


_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def test_overlay_png(sample, artefacts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cam = sample.camera("CAM_FRONT")
    image = cam.load_image(sample.sample_token)
    proj = project_points(sample.points, cam)
    fig, ax = plt.subplots(figsize=(16, 9), dpi=100)
    ax.imshow(image)
    sc = ax.scatter(proj.uv[:, 0], proj.uv[:, 1], c=proj.depth, s=2, cmap="turbo", vmin=0, vmax=60)
    cam_from_lidar = np.linalg.inv(cam.lidar_from_cam)
    for corners in box_corners(sample.gt_boxes):
        c = apply_transform(cam_from_lidar, corners)
        if (c[:, 2] <= 0.5).any():
            continue
        uv = view_points(c.T, cam.cam_intrinsic, normalize=True)[:2].T
        for a, b in _EDGES:
            ax.plot(uv[[a, b], 0], uv[[a, b], 1], color="white", linewidth=0.8)
    ax.set_xlim(0, cam.image_size[0])
    ax.set_ylim(cam.image_size[1], 0)
    ax.set_title(f"{sample.sample_token} CAM_FRONT: {len(proj.index)} LiDAR points by depth, GT boxes")
    fig.colorbar(sc, ax=ax, fraction=0.02, label="depth (m)")
    out = artefacts / "keyframe_cam_front_lidar.png"
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    assert out.stat().st_size > 100_000
    assert image.shape == (900, 1600, 3)
