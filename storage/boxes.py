"""The one 3D box layout of bevkd and every conversion into it (STYLE.md §10).

Layout: ``(N, 9) [x, y, z, l, w, h, yaw, vx, vy]`` float64 — gravity centre (m), length
along the box's heading, width, height (m), yaw counter-clockwise from +x (rad), velocity
(m/s) in the same frame as the centre.

Source layouts converted here and only here:

* nuScenes: ``translation`` (global, m), ``size`` = ``wlh``, ``rotation`` quaternion (w, x, y, z),
  velocity (global, m/s) — :func:`boxes_from_nuscenes` / :func:`boxes_to_nuscenes`.
* mmdetection3d v1.1 infos: ``bbox_3d = [x, y, z, l, w, h, yaw]`` LiDAR frame, gravity centre —
  :func:`boxes_from_mmdet3d_v1`.
* mmdetection3d v0.x infos: ``gt_boxes = [x, y, z, w, l, h, yaw_v0]`` with
  ``yaw = -yaw_v0 - pi/2`` — :func:`boxes_from_mmdet3d_v0` / :func:`boxes_to_mmdet3d_v0`.
* Bottom-centre ``z`` (mmdet3d's box classes' default origin) — :func:`boxes_from_bottom_centre`.
"""

from __future__ import annotations

import numpy as np

from storage.arrays import BoolArray, Float64Array, Int64Array
from storage.transforms import apply_transform, rotation_from_quaternion

BOX_DIM = 9
BOX_FIELDS = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy")


def wrap_angle(yaw: Float64Array) -> Float64Array:
    """Angles wrapped to ``[-pi, pi)``."""
    return (np.asarray(yaw) + np.pi) % (2 * np.pi) - np.pi


def _check(boxes: Float64Array, name: str = "boxes") -> Float64Array:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != BOX_DIM:
        raise ValueError(f"{name}: expected (N, {BOX_DIM}) [{','.join(BOX_FIELDS)}], got shape {b.shape}")
    return b


def boxes_from_nuscenes(translation: Float64Array, size_wlh: Float64Array, rotation_wxyz: Float64Array,
                        velocity: Float64Array, dst_from_global: Float64Array) -> Float64Array:
    """nuScenes annotations (global frame) to ``(N, 9)`` boxes in ``dst``.

    Args:
        translation: ``(N, 3)`` box centres, global frame, m.
        size_wlh: ``(N, 3)`` width, length, height, m.
        rotation_wxyz: ``(N, 4)`` quaternions, global frame.
        velocity: ``(N, 2)`` or ``(N, 3)`` global-frame m/s (NaN allowed, kept as NaN -> 0).
        dst_from_global: ``(4, 4)`` e.g. ``lidar_from_global``.
    """
    n = len(translation)
    out = np.zeros((n, BOX_DIM), dtype=np.float64)
    if n == 0:
        return out
    out[:, :3] = apply_transform(dst_from_global, np.asarray(translation))
    wlh = np.asarray(size_wlh, dtype=np.float64)
    out[:, 3], out[:, 4], out[:, 5] = wlh[:, 1], wlh[:, 0], wlh[:, 2]
    rot = dst_from_global[:3, :3]
    for i, q in enumerate(np.asarray(rotation_wxyz)):
        heading = rot @ rotation_from_quaternion(q)[:, 0]
        out[i, 6] = np.arctan2(heading[1], heading[0])
    vel = np.nan_to_num(np.asarray(velocity, dtype=np.float64)[:, :2])
    v3 = np.concatenate([vel, np.zeros((n, 1))], axis=1) @ rot.T
    out[:, 7:9] = v3[:, :2]
    out[:, 6] = wrap_angle(out[:, 6])
    return out


def boxes_to_nuscenes(boxes: Float64Array, global_from_src: Float64Array) -> dict[str, Float64Array]:
    """Inverse of :func:`boxes_from_nuscenes`: ``translation (N,3)``, ``size`` wlh ``(N,3)``,
    ``rotation`` wxyz ``(N,4)`` (yaw-only in global), ``velocity (N,2)``, all global frame.

    Exact inverse also when ``src`` is tilted against global (pitch/roll of the ego pose):
    the global yaw is the one whose heading :func:`boxes_from_nuscenes` maps back onto ``yaw``,
    and the global xy velocity solves the 2x2 map that function applies.
    """
    b = _check(boxes)
    rot_sg = np.linalg.inv(np.asarray(global_from_src, dtype=np.float64)[:3, :3])  # src_from_global
    translation = apply_transform(global_from_src, b[:, :3])
    size = b[:, [4, 3, 5]]
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    # Global headings h (z = 0) with rot_sg @ h along (c, s): h is orthogonal to rot_sg^T @ (-s, c, 0).
    m = np.stack([-s, c, np.zeros_like(c)], axis=1) @ rot_sg
    h = np.stack([m[:, 1], -m[:, 0], np.zeros_like(c)], axis=1)
    forward = np.einsum("nk,nk->n", h @ rot_sg.T, np.stack([c, s, np.zeros_like(c)], axis=1))
    h *= np.where(forward < 0, -1.0, 1.0)[:, None]
    g = np.arctan2(h[:, 1], h[:, 0])
    rotation = np.zeros((len(b), 4))
    rotation[:, 0], rotation[:, 3] = np.cos(g / 2), np.sin(g / 2)
    rotation[rotation[:, 0] < 0] *= -1
    velocity = np.linalg.solve(rot_sg[:2, :2], b[:, 7:9].T).T if len(b) else np.zeros((0, 2))
    return {"translation": translation, "size": size, "rotation": rotation, "velocity": velocity}


def boxes_from_mmdet3d_v1(bbox_3d: Float64Array, velocity: Float64Array | None = None) -> Float64Array:
    """mmdet3d v1.1 ``[x, y, z, l, w, h, yaw]`` (gravity centre, LiDAR) + ``(N, 2)`` velocity."""
    b = np.asarray(bbox_3d, dtype=np.float64).reshape(-1, 7)
    v = (np.zeros((len(b), 2)) if velocity is None
         else np.nan_to_num(np.asarray(velocity, dtype=np.float64).reshape(-1, 2)))
    out = np.concatenate([b, v], axis=1)
    out[:, 6] = wrap_angle(out[:, 6])
    return out


def boxes_to_mmdet3d_v1(boxes: Float64Array) -> tuple[Float64Array, Float64Array]:
    """``(N, 7)`` mmdet3d v1.1 boxes and ``(N, 2)`` velocities."""
    b = _check(boxes)
    return b[:, :7].copy(), b[:, 7:9].copy()


def boxes_from_mmdet3d_v0(gt_boxes: Float64Array, velocity: Float64Array | None = None) -> Float64Array:
    """mmdet3d v0.x info ``[x, y, z, w, l, h, yaw_v0]`` (gravity centre) to bevkd boxes.

    v0.x stored ``yaw_v0 = -yaw - pi/2`` and ``w`` before ``l`` (mmdet3d v1.0 coordinate
    refactor notes), so ``yaw = -yaw_v0 - pi/2``.
    """
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 7)
    v1 = b[:, [0, 1, 2, 4, 3, 5, 6]].copy()
    v1[:, 6] = -b[:, 6] - np.pi / 2
    return boxes_from_mmdet3d_v1(v1, velocity)


def boxes_to_mmdet3d_v0(boxes: Float64Array) -> tuple[Float64Array, Float64Array]:
    """Inverse of :func:`boxes_from_mmdet3d_v0`: ``(N, 7)`` v0.x ``[x, y, z, w, l, h, yaw_v0]``
    (gravity centre, ``yaw_v0 = -yaw - pi/2``) and ``(N, 2)`` velocities, LiDAR frame."""
    b = _check(boxes)
    gt = b[:, [0, 1, 2, 4, 3, 5, 6]].copy()
    gt[:, 6] = -b[:, 6] - np.pi / 2
    return gt, b[:, 7:9].copy()


def boxes_from_bottom_centre(boxes: Float64Array) -> Float64Array:
    """Boxes whose ``z`` is the bottom-face centre (mmdet3d ``LiDARInstance3DBoxes``' default origin
    ``(0.5, 0.5, 0)``) to bevkd's gravity centre: ``z + h / 2``. ``(N, 9)`` in, ``(N, 9)`` out."""
    b = _check(boxes).copy()
    b[:, 2] += b[:, 5] / 2
    return b


def transform_boxes(boxes: Float64Array, dst_from_src: Float64Array) -> Float64Array:
    """Boxes in ``src`` to ``dst`` by a transform whose rotation is about z (plus translation).

    Centres are transformed, yaw is offset by the transform's yaw, velocities rotated.
    A uniform scale in the upper-left block (BEV augmentation) scales centres and sizes.
    """
    b = _check(boxes).copy()
    if len(b) == 0:
        return b
    lin = dst_from_src[:3, :3]
    scale = float(np.cbrt(abs(np.linalg.det(lin))))
    b[:, :3] = apply_transform(dst_from_src, b[:, :3])
    b[:, 3:6] *= scale
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], axis=1) @ lin.T
    b[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    v3 = np.concatenate([b[:, 7:9], np.zeros((len(b), 1))], axis=1) @ lin.T
    b[:, 7:9] = v3[:, :2]
    return b


def box_corners(boxes: Float64Array) -> Float64Array:
    """``(N, 8, 3)`` corners. Order: bottom face (z - h/2) CCW from (+l/2, +w/2), then top face."""
    b = _check(boxes)
    sx = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sy = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    local = np.stack([sx[None] * b[:, 3:4], sy[None] * b[:, 4:5], sz[None] * b[:, 5:6]], axis=-1)
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    corners: Float64Array = np.stack([x, y, local[..., 2]], axis=-1) + b[:, None, :3]
    return corners


def points_in_boxes(points: Float64Array, boxes: Float64Array) -> BoolArray:
    """``(P, N)`` bool: point ``p`` lies inside box ``n`` (closed faces).

    Args:
        points: ``(P, >=3)`` xyz in the boxes' frame, m.
        boxes: ``(N, 9)``.
    """
    b = _check(boxes)
    p = np.asarray(points, dtype=np.float64)[:, :3]
    if len(b) == 0 or len(p) == 0:
        return np.zeros((len(p), len(b)), dtype=bool)
    d = p[:, None, :] - b[None, :, :3]  # (P, N, 3)
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    lx = d[..., 0] * c + d[..., 1] * s
    ly = -d[..., 0] * s + d[..., 1] * c
    inside: BoolArray = (np.abs(lx) <= b[:, 3] / 2) & (np.abs(ly) <= b[:, 4] / 2) & (np.abs(d[..., 2]) <= b[:, 5] / 2)
    return inside


def count_points_in_boxes(points: Float64Array, boxes: Float64Array,
                          chunk: int = 65536) -> Int64Array:
    """``(N,)`` int64 number of points inside each box (chunked to bound memory)."""
    b = _check(boxes)
    counts = np.zeros(len(b), dtype=np.int64)
    p = np.asarray(points)
    for start in range(0, len(p), chunk):
        counts += points_in_boxes(p[start:start + chunk], b).sum(axis=0)
    return counts


__all__ = [
    "BOX_DIM", "BOX_FIELDS", "box_corners", "boxes_from_bottom_centre", "boxes_from_mmdet3d_v0",
    "boxes_from_mmdet3d_v1", "boxes_from_nuscenes", "boxes_to_mmdet3d_v0", "boxes_to_mmdet3d_v1",
    "boxes_to_nuscenes", "count_points_in_boxes",
    "points_in_boxes", "transform_boxes", "wrap_angle",
]
