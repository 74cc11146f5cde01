"""Rigid transforms: 4x4 float64 matrices named ``<dst>_from_<src>`` (STYLE.md §9).

``global_from_lidar = global_from_ego @ ego_from_lidar`` maps homogeneous column vectors.
Quaternions are ``(w, x, y, z)`` as in nuScenes.
"""

from __future__ import annotations

import numpy as np

from storage.arrays import Float64Array


def make_transform(rotation: Float64Array, translation: Float64Array) -> Float64Array:
    """``(4, 4)`` float64 from a ``(3, 3)`` rotation and a ``(3,)`` translation (metres)."""
    t = np.eye(4, dtype=np.float64)
    t[:3, :3] = np.asarray(rotation, dtype=np.float64)
    t[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return t


def rotation_from_quaternion(q_wxyz: Float64Array) -> Float64Array:
    """``(3, 3)`` float64 rotation matrix of a unit quaternion ``(w, x, y, z)``.

    Raises:
        ValueError: if the quaternion has zero norm.
    """
    q = np.asarray(q_wxyz, dtype=np.float64)
    n = np.linalg.norm(q)
    if n == 0:
        raise ValueError("rotation_from_quaternion: zero quaternion")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quaternion_from_rotation(rotation: Float64Array) -> Float64Array:
    """``(4,)`` float64 unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a ``(3, 3)`` rotation."""
    m = np.asarray(rotation, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    quat = np.asarray(q, dtype=np.float64)
    quat /= np.linalg.norm(quat)
    return quat if quat[0] >= 0 else -quat


def transform_from_quaternion(q_wxyz: Float64Array, translation: Float64Array) -> Float64Array:
    """``(4, 4)`` float64 from a nuScenes ``rotation`` (w, x, y, z) and ``translation`` (m)."""
    return make_transform(rotation_from_quaternion(q_wxyz), translation)


def invert_transform(dst_from_src: Float64Array) -> Float64Array:
    """``src_from_dst`` of a ``(4, 4)`` transform.

    Rigid transforms (orthonormal rotation block, 1e-9) are inverted exactly by transposition;
    anything else (e.g. a scaled BEV augmentation ``view_matrix @ lidar_from_cam``) by
    ``np.linalg.inv``.
    """
    m = np.asarray(dst_from_src, dtype=np.float64)
    r = m[:3, :3]
    t = m[:3, 3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-9):
        return np.linalg.inv(m)
    return make_transform(r.T, -r.T @ t)


def apply_transform(dst_from_src: Float64Array, points: Float64Array) -> Float64Array:
    """Transform ``(N, 3+)`` points; returns ``(N, 3)`` float64 xyz in ``dst`` (extra columns dropped)."""
    p = np.asarray(points, dtype=np.float64)[:, :3]
    out: Float64Array = p @ dst_from_src[:3, :3].T + dst_from_src[:3, 3]
    return out


def yaw_of(dst_from_src: Float64Array) -> float:
    """Rotation about +z (radians, CCW) of the transform's x axis, ``atan2(r10, r00)``."""
    return float(np.arctan2(dst_from_src[1, 0], dst_from_src[0, 0]))
