"""Box layout conversions, transforms, corners and point-in-box tests (STYLE.md §10).

The nuScenes devkit's ``Box`` / ``points_in_box`` serve as the independent reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from storage.boxes import (
    BOX_DIM, box_corners, boxes_from_mmdet3d_v0, boxes_from_mmdet3d_v1, boxes_from_nuscenes, boxes_to_mmdet3d_v1,
    boxes_to_nuscenes, count_points_in_boxes, points_in_boxes, transform_boxes, wrap_angle,
)
from storage.transforms import (
    apply_transform, invert_transform, make_transform, quaternion_from_rotation, rotation_from_quaternion,
    transform_from_quaternion, yaw_of,
)

DEG = np.pi / 180


def _rz(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _tilted(yaw: float, pitch: float, roll: float, t: tuple[float, float, float]) -> np.ndarray:
    q = (Quaternion(axis=[0, 0, 1], angle=yaw) * Quaternion(axis=[0, 1, 0], angle=pitch)
         * Quaternion(axis=[1, 0, 0], angle=roll))
    return make_transform(q.rotation_matrix, t)


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    b = np.zeros((n, BOX_DIM))
    b[:, :3] = rng.uniform(-30, 30, (n, 3))
    b[:, 3:6] = rng.uniform(0.3, 8.0, (n, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    b[:, 7:9] = rng.uniform(-10, 10, (n, 2))
    return b


def _yaw_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(wrap_angle(np.asarray(a) - np.asarray(b)))


# ---- nuScenes <-> bevkd ------------------------------------------------------------------------
def test_nuscenes_box_hand_computed():
    # global box: centre (10, 5, 1), wlh (2, 4, 1.5), yaw 30 deg, velocity (1, 2) m/s.
    # lidar frame: rotated +90 deg about z and shifted by (3, -2, 0.5) in global.
    global_from_lidar = make_transform(_rz(90 * DEG), (3.0, -2.0, 0.5))
    q = Quaternion(axis=[0, 0, 1], angle=30 * DEG)
    b = boxes_from_nuscenes(np.array([[10.0, 5.0, 1.0]]), np.array([[2.0, 4.0, 1.5]]), np.array([q.elements]),
                            np.array([[1.0, 2.0, np.nan]]), invert_transform(global_from_lidar))
    # (10, 5, 1) - (3, -2, 0.5) = (7, 7, 0.5), rotated by -90 deg: (7, -7, 0.5); velocity (2, -1)
    np.testing.assert_allclose(b, [[7.0, -7.0, 0.5, 4.0, 2.0, 1.5, -60 * DEG, 2.0, -1.0]], atol=1e-12)


def test_nuscenes_nan_velocity_becomes_zero_and_empty_input():
    q = Quaternion(axis=[0, 0, 1], angle=0.3).elements
    b = boxes_from_nuscenes(np.zeros((1, 3)), np.ones((1, 3)), np.array([q]), np.full((1, 3), np.nan), np.eye(4))
    np.testing.assert_array_equal(b[0, 7:9], [0.0, 0.0])
    assert boxes_from_nuscenes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 2)),
                               np.eye(4)).shape == (0, BOX_DIM)


def test_nuscenes_conversion_matches_the_devkit_box_in_a_tilted_frame():
    rng = np.random.default_rng(1)
    global_from_lidar = _tilted(2.0, 0.03, -0.02, (400.0, 1100.0, 1.8))
    lidar_from_global = invert_transform(global_from_lidar)
    n = 20
    trans = rng.uniform(350, 450, (n, 3))
    wlh = rng.uniform(0.5, 5.0, (n, 3))
    quats = np.array([Quaternion(axis=[0, 0, 1], angle=a).elements for a in rng.uniform(-np.pi, np.pi, n)])
    vel = rng.uniform(-5, 5, (n, 3))
    ours = boxes_from_nuscenes(trans, wlh, quats, vel, lidar_from_global)
    q_lg = Quaternion(matrix=lidar_from_global[:3, :3])
    for i in range(n):
        box = Box(trans[i], wlh[i], Quaternion(quats[i]), velocity=tuple(vel[i]))
        box.translate(-global_from_lidar[:3, 3])
        box.rotate(q_lg)
        np.testing.assert_allclose(ours[i, :3], box.center, atol=1e-9)
        np.testing.assert_allclose(ours[i, 3:6], [wlh[i, 1], wlh[i, 0], wlh[i, 2]])
        # bevkd yaw is the azimuth of the box's heading (its rotated +x axis) in the lidar frame
        heading = box.orientation.rotation_matrix[:, 0]
        assert _yaw_diff(ours[i, 6], np.arctan2(heading[1], heading[0])) < 1e-9
        # pyquaternion's yaw_pitch_roll (used by mmdet3d's converters) differs only at O(tilt^2)
        assert _yaw_diff(ours[i, 6], box.orientation.yaw_pitch_roll[0]) < 5e-3


def test_nuscenes_round_trip_is_exact_in_a_tilted_frame():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 50)
    global_from_lidar = _tilted(-2.4, 0.04, 0.03, (411.3, 1180.9, 0.0))
    nus = boxes_to_nuscenes(boxes, global_from_lidar)
    assert nus["translation"].shape == (50, 3) and nus["velocity"].shape == (50, 2)
    np.testing.assert_allclose(nus["size"], boxes[:, [4, 3, 5]])
    # the written quaternions are yaw-only unit quaternions with w >= 0
    np.testing.assert_allclose(nus["rotation"][:, 1:3], 0.0)
    np.testing.assert_allclose(np.linalg.norm(nus["rotation"], axis=1), 1.0)
    assert (nus["rotation"][:, 0] >= 0).all()
    back = boxes_from_nuscenes(nus["translation"], nus["size"], nus["rotation"], nus["velocity"],
                               invert_transform(global_from_lidar))
    np.testing.assert_allclose(back[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-9)
    assert _yaw_diff(back[:, 6], boxes[:, 6]).max() < 1e-9


def test_boxes_to_nuscenes_pure_yaw_hand_computed():
    b = np.array([[7.0, -7.0, 0.5, 4.0, 2.0, 1.5, -60 * DEG, 2.0, -1.0]])
    nus = boxes_to_nuscenes(b, make_transform(_rz(90 * DEG), (3.0, -2.0, 0.5)))
    np.testing.assert_allclose(nus["translation"], [[10.0, 5.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(nus["size"], [[2.0, 4.0, 1.5]])
    np.testing.assert_allclose(nus["rotation"], [Quaternion(axis=[0, 0, 1], angle=30 * DEG).elements], atol=1e-12)
    np.testing.assert_allclose(nus["velocity"], [[1.0, 2.0]], atol=1e-12)


# ---- mmdet3d ------------------------------------------------------------------------------------
def test_mmdet3d_v1_round_trip_and_yaw_wrap():
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 10)
    bbox, vel = boxes_to_mmdet3d_v1(boxes)
    assert bbox.shape == (10, 7) and vel.shape == (10, 2)
    np.testing.assert_array_equal(boxes_from_mmdet3d_v1(bbox, vel), boxes)
    b = boxes_from_mmdet3d_v1([[1, 2, 3, 4, 5, 6, 3 * np.pi / 2]])
    np.testing.assert_allclose(b, [[1, 2, 3, 4, 5, 6, -np.pi / 2, 0, 0]])
    b = boxes_from_mmdet3d_v1([[0, 0, 0, 1, 1, 1, 0]], [[np.nan, 1.0]])
    np.testing.assert_array_equal(b[0, 7:], [0.0, 1.0])


def test_mmdet3d_v0_hand_computed():
    # v0.x: [x, y, z, w, l, h, -yaw - pi/2]; yaw -60 deg -> yaw_v0 = -30 deg
    b = boxes_from_mmdet3d_v0(np.array([[7.0, -7.0, 0.5, 2.0, 4.0, 1.5, -30 * DEG]]), np.array([[2.0, -1.0]]))
    np.testing.assert_allclose(b, [[7.0, -7.0, 0.5, 4.0, 2.0, 1.5, -60 * DEG, 2.0, -1.0]], atol=1e-12)


def test_mmdet3d_v0_agrees_with_the_devkit_formula_of_mmdet3d_0x():
    """mmdet3d 0.x create_data: ``gt_boxes = [center, wlh, -yaw - pi/2]`` of the devkit box in LiDAR."""
    rng = np.random.default_rng(4)
    lidar_from_global = invert_transform(make_transform(_rz(0.7), (100.0, 200.0, 1.0)))
    q_lg = Quaternion(matrix=lidar_from_global[:3, :3])
    for yaw in rng.uniform(-np.pi, np.pi, 8):
        box = Box([120.0, 190.0, 1.5], [1.9, 4.5, 1.6], Quaternion(axis=[0, 0, 1], angle=yaw))
        ref = boxes_from_nuscenes(np.array([box.center]), np.array([box.wlh]), np.array([box.orientation.elements]),
                                  np.zeros((1, 2)), lidar_from_global)
        box.translate(-invert_transform(lidar_from_global)[:3, 3])
        box.rotate(q_lg)
        v0 = np.concatenate([box.center, box.wlh, [-box.orientation.yaw_pitch_roll[0] - np.pi / 2]])
        ours = boxes_from_mmdet3d_v0(v0[None])
        np.testing.assert_allclose(ours[:, :6], ref[:, :6], atol=1e-9)
        assert _yaw_diff(ours[0, 6], ref[0, 6]) < 1e-9


# ---- transform_boxes ----------------------------------------------------------------------------
def test_transform_boxes_hand_computed():
    b = np.array([[1.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0, 3.0, 0.0]])
    out = transform_boxes(b, make_transform(_rz(90 * DEG), (10.0, 0.0, 1.0)))
    np.testing.assert_allclose(out, [[10.0, 1.0, 1.0, 4.0, 2.0, 1.0, 90 * DEG, 0.0, 3.0]], atol=1e-12)
    assert transform_boxes(np.zeros((0, BOX_DIM)), np.eye(4)).shape == (0, BOX_DIM)


def test_transform_boxes_round_trip_composition_and_agreement_with_nuscenes():
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 30)
    a = make_transform(_rz(1.1), (5.0, -3.0, 0.2))
    c = make_transform(_rz(-2.5), (-1.0, 7.0, -0.4))
    back = transform_boxes(transform_boxes(boxes, a), invert_transform(a))
    np.testing.assert_allclose(back[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-9)
    assert _yaw_diff(back[:, 6], boxes[:, 6]).max() < 1e-9
    two = transform_boxes(transform_boxes(boxes, a), c)
    one = transform_boxes(boxes, c @ a)
    np.testing.assert_allclose(two[:, [0, 1, 2, 7, 8]], one[:, [0, 1, 2, 7, 8]], atol=1e-9)
    assert _yaw_diff(two[:, 6], one[:, 6]).max() < 1e-9
    # moving lidar boxes to global equals writing them as nuScenes boxes (pure-yaw frames)
    nus = boxes_to_nuscenes(boxes, a)
    glob = transform_boxes(boxes, a)
    np.testing.assert_allclose(glob[:, :3], nus["translation"], atol=1e-9)
    np.testing.assert_allclose(glob[:, 7:9], nus["velocity"], atol=1e-9)
    q_yaw = 2 * np.arctan2(nus["rotation"][:, 3], nus["rotation"][:, 0])
    assert _yaw_diff(glob[:, 6], q_yaw).max() < 1e-9


def test_transform_boxes_scale_and_flip_augmentations():
    b = np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 30 * DEG, 1.0, 2.0]])
    scaled = transform_boxes(b, np.diag([2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_allclose(scaled, [[2.0, 4.0, 1.0, 8.0, 4.0, 3.0, 30 * DEG, 2.0, 4.0]], atol=1e-12)
    flip_y = transform_boxes(b, np.diag([1.0, -1.0, 1.0, 1.0]))  # mirror across the x axis
    np.testing.assert_allclose(flip_y, [[1.0, -2.0, 0.5, 4.0, 2.0, 1.5, -30 * DEG, 1.0, -2.0]], atol=1e-12)


# ---- corners and points in boxes ----------------------------------------------------------------
def test_box_corners_hand_computed():
    b = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 90 * DEG, 0.0, 0.0]])
    c = box_corners(b)
    assert c.shape == (1, 8, 3)
    # local (+l/2, +w/2, -h/2) = (2, 1, -1) rotated by 90 deg -> (-1, 2, -1), plus the centre
    np.testing.assert_allclose(c[0, 0], [0.0, 4.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(c[0, 4], [0.0, 4.0, 4.0], atol=1e-12)
    np.testing.assert_allclose(c[0, 2], [2.0, 0.0, 2.0], atol=1e-12)  # (-l/2, -w/2, -h/2)
    np.testing.assert_allclose(c[0].mean(axis=0), [1.0, 2.0, 3.0], atol=1e-12)  # gravity centre


def test_box_corners_match_the_devkit_and_bottom_face_is_ccw():
    rng = np.random.default_rng(6)
    boxes = _random_boxes(rng, 20)
    ours = box_corners(boxes)
    for b, c in zip(boxes, ours, strict=True):
        ref = Box(b[:3], b[[4, 3, 5]], Quaternion(axis=[0, 0, 1], angle=b[6])).corners().T
        np.testing.assert_allclose(np.sort(c.round(9), axis=0), np.sort(ref.round(9), axis=0), atol=1e-8)
        # devkit corner 0 is (+l/2, +w/2, +h/2): our top-face corner 4
        np.testing.assert_allclose(c[4], ref[0], atol=1e-9)
        bottom = c[:4, :2]
        area2 = np.sum(bottom[:, 0] * np.roll(bottom[:, 1], -1) - np.roll(bottom[:, 0], -1) * bottom[:, 1])
        assert area2 == pytest.approx(2 * b[3] * b[4])  # positive signed area: counter-clockwise


def test_points_in_boxes_hand_made_points():
    # 4 x 2 x 2 box at (10, 0, 1), heading +y (yaw 90 deg): it spans x 9..11, y -2..2, z 0..2
    b = np.array([[10.0, 0.0, 1.0, 4.0, 2.0, 2.0, 90 * DEG, 0.0, 0.0]])
    pts = np.array([
        [10.0, 0.0, 1.0],   # centre
        [10.0, 1.99, 1.0],  # near the front face (length is along y)
        [10.0, 2.01, 1.0],  # beyond the front face
        [10.99, 0.0, 1.0],  # inside across the width
        [11.01, 0.0, 1.0],  # outside across the width
        [10.0, 0.0, 2.01],  # above the top
        [10.0, 0.0, -0.01],  # below the bottom
    ])
    np.testing.assert_array_equal(points_in_boxes(pts, b)[:, 0], [1, 1, 0, 1, 0, 0, 0])
    # faces are closed: a point exactly on a corner of an axis-aligned box is inside
    axis_aligned = np.array([[0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    on_faces = np.array([[1.0, 0.5, 0.5], [-1.0, 0.0, 0.0], [1.0, 0.5, 0.5 + 1e-9]])
    np.testing.assert_array_equal(points_in_boxes(on_faces, axis_aligned)[:, 0], [1, 1, 0])
    assert points_in_boxes(np.zeros((0, 3)), b).shape == (0, 1)
    assert points_in_boxes(pts, np.zeros((0, BOX_DIM))).shape == (7, 0)


def test_points_in_boxes_matches_the_devkit_and_counts_are_chunk_independent():
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 15)
    boxes[:, :3] = rng.uniform(-5, 5, (15, 3))
    pts = rng.uniform(-9, 9, (4000, 4)).astype(np.float32)
    mask = points_in_boxes(pts, boxes)
    assert mask.shape == (4000, 15) and mask.dtype == bool
    for i, b in enumerate(boxes):
        ref = points_in_box(Box(b[:3], b[[4, 3, 5]], Quaternion(axis=[0, 0, 1], angle=b[6])),
                            pts[:, :3].astype(np.float64).T)
        assert ref.sum() > 0
        np.testing.assert_array_equal(mask[:, i], ref)
    counts = count_points_in_boxes(pts, boxes, chunk=333)
    np.testing.assert_array_equal(counts, mask.sum(axis=0))


def test_wrong_box_shape_raises():
    with pytest.raises(ValueError, match=r"expected \(N, 9\)"):
        box_corners(np.zeros((3, 7)))
    with pytest.raises(ValueError, match=r"got shape \(3, 7\)"):
        transform_boxes(np.zeros((3, 7)), np.eye(4))


def test_rotation_helpers_agree_with_pyquaternion():
    rng = np.random.default_rng(8)
    for _ in range(10):
        q = Quaternion(rng.normal(size=4)).normalised
        np.testing.assert_allclose(rotation_from_quaternion(q.elements), q.rotation_matrix, atol=1e-12)
        back = quaternion_from_rotation(q.rotation_matrix)
        assert back[0] >= 0 and np.allclose(np.abs(back @ q.elements), 1.0)
    # half turns about x, y, z and near-half turns take the other branches of the conversion
    for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.2, -1, 0.3]):
        for angle in (np.pi, np.pi - 1e-3, 2.5):
            q = Quaternion(axis=axis, angle=angle)
            back = quaternion_from_rotation(q.rotation_matrix)
            np.testing.assert_allclose(rotation_from_quaternion(back), q.rotation_matrix, atol=1e-12)
    with pytest.raises(ValueError, match="zero quaternion"):
        rotation_from_quaternion(np.zeros(4))


def test_transform_helpers():
    t = transform_from_quaternion(Quaternion(axis=[0, 0, 1], angle=0.4).elements, [1.0, 2.0, 3.0])
    assert yaw_of(t) == pytest.approx(0.4)
    pts = np.array([[1.0, 0.0, 0.0, 9.0, 9.0]])
    out = apply_transform(t, pts)
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out, [[1 + np.cos(0.4), 2 + np.sin(0.4), 3.0]])
    np.testing.assert_allclose(invert_transform(t) @ t, np.eye(4), atol=1e-12)


def test_invert_transform_rigid_is_the_transpose_and_scaled_is_a_true_inverse():
    rigid = make_transform(_rz(0.7), (100.0, 200.0, 1.0))
    inv = invert_transform(rigid)
    assert np.array_equal(inv[:3, :3], rigid[:3, :3].T)
    assert np.allclose(inv @ rigid, np.eye(4), atol=1e-12)
    scaled = make_transform(1.05 * _rz(-0.3), (1.0, -2.0, 0.5))  # a BEV view with global scaling
    assert np.allclose(invert_transform(scaled) @ scaled, np.eye(4), atol=1e-12)
    assert not np.allclose(invert_transform(scaled)[:3, :3], scaled[:3, :3].T, atol=1e-3)
