"""Ray casting primitives shared by the LiDAR and camera simulators (scene frame).

The scene frame is the world of one synthetic scene: ground plane ``z = 0``, the road along
+x, building facades at ``y = +-wall_offset``. Rays are ``origin + t * dirs``; ``t`` is in units
of the (not necessarily unit) direction vectors, so distances from several primitives compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.arrays import Float64Array, Int64Array

#: Building facades are this tall (m); above them is sky.
WALL_HEIGHT = 14.0


@dataclass(frozen=True, kw_only=True)
class BoxHits:
    """Where rays enter one box.

    Attributes:
        t: ``(R,)`` float64 ray parameter of the entry point, ``inf`` where the ray misses.
        local: ``(R, 3)`` float64 entry point in the box frame (x along the heading), m.
        face_axis: ``(R,)`` int64 box axis (0 x, 1 y, 2 z) of the entered face.
        face_sign: ``(R,)`` float64 +-1: side of that face.
    """

    t: Float64Array
    local: Float64Array
    face_axis: Int64Array
    face_sign: Float64Array


def ray_box(origin: Float64Array, dirs: Float64Array, box: Float64Array) -> BoxHits:
    """Slab-method intersection of rays with one oriented box.

    Args:
        origin: ``(3,)`` ray origin, scene frame, m (outside the box).
        dirs: ``(R, 3)`` ray directions, scene frame.
        box: ``(9,)`` ``[x, y, z, l, w, h, yaw, vx, vy]`` scene frame (yaw about +z).
    """
    c, s = np.cos(box[6]), np.sin(box[6])
    rel = np.asarray(origin, dtype=np.float64) - box[:3]
    o = (c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2])  # box frame
    d = (c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2])
    t_enter = np.full(len(dirs), -np.inf)
    t_exit = np.full(len(dirs), np.inf)
    axis = np.zeros(len(dirs), dtype=np.int64)
    sign = np.zeros(len(dirs))
    for a in range(3):
        da = np.where(np.abs(d[a]) < 1e-12, 1e-12, d[a])
        inv = 1.0 / da
        half = box[3 + a] / 2.0
        t1 = (-half - o[a]) * inv
        t2 = (half - o[a]) * inv
        near = np.minimum(t1, t2)
        later = near > t_enter
        t_enter = np.where(later, near, t_enter)
        axis[later] = a
        sign = np.where(later, -np.sign(da), sign)
        t_exit = np.minimum(t_exit, np.maximum(t1, t2))
    hit = (t_enter <= t_exit) & (t_enter > 0)
    t = np.where(hit, t_enter, np.inf)
    tl = np.where(hit, t_enter, 0.0)
    local = np.stack([o[a] + tl * d[a] for a in range(3)], axis=1)
    return BoxHits(t=t, local=local, face_axis=axis, face_sign=sign)


def ray_ground(origin: Float64Array, dirs: Float64Array) -> Float64Array:
    """``(R,)`` ray parameter where rays meet the ground ``z = 0`` (``inf`` if never)."""
    dz = dirs[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origin[2] / dz
    return np.where(dz < -1e-9, t, np.inf)


def ray_walls(origin: Float64Array, dirs: Float64Array, wall_offset: tuple[float, float]) -> Float64Array:
    """``(R,)`` ray parameter where rays meet the facades ``y = +wall_offset[0]`` and
    ``y = -wall_offset[1]`` below :data:`WALL_HEIGHT` (``inf`` if never)."""
    dy = dirs[:, 1]
    target = np.where(dy > 0, wall_offset[0], -wall_offset[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (target - origin[1]) / dy
    z = origin[2] + t * dirs[:, 2]
    ok = (np.abs(dy) > 1e-9) & (t > 0) & (z >= 0) & (z <= WALL_HEIGHT)
    return np.where(ok, t, np.inf)


def azimuth_span(origin: Float64Array, box: Float64Array) -> tuple[float, float]:
    """Azimuth interval ``(lo, hi)`` (rad, ``hi - lo < pi``, ``lo`` may be < -pi) the box covers
    seen from ``origin`` in the xy plane. Exact for a box whose footprint excludes the origin
    (the angular extent of a convex polygon is reached at its vertices)."""
    c, s = np.cos(box[6]), np.sin(box[6])
    hl, hw = box[3] / 2, box[4] / 2
    corners = np.array([[hl, hw], [hl, -hw], [-hl, hw], [-hl, -hw]])
    xy = corners @ np.array([[c, s], [-s, c]]) + box[:2] - origin[:2]
    centre = np.arctan2(box[1] - origin[1], box[0] - origin[0])
    rel = (np.arctan2(xy[:, 1], xy[:, 0]) - centre + np.pi) % (2 * np.pi) - np.pi
    return float(centre + rel.min()), float(centre + rel.max())


def hash_noise(ix: Float64Array, iy: Float64Array, salt: int = 0) -> Float64Array:
    """Deterministic value noise in ``[0, 1)`` of integer lattice coordinates (textures)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float64) / 65536.0
