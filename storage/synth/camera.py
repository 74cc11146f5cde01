"""Camera simulator: per-pixel ray casting of shaded cuboids over a textured ground,
building facades and sky, with occlusion through a depth buffer.

Each box is ray-cast only over the pixels of its projected bounding rectangle, so the cost
is one background pass per image plus the pixels the boxes cover.
"""

from __future__ import annotations

import numpy as np

from storage.arrays import BoolArray, Float64Array, UInt8Array
from storage.boxes import box_corners
from storage.synth.geometry import WALL_HEIGHT, BoxHits, hash_noise, ray_box, ray_ground, ray_walls
from storage.synth.scene import CLASS_SPECS, Scene, SensorSpec
from storage.sample import NUSCENES_CLASSES
from storage.transforms import apply_transform, invert_transform

#: Sun direction (scene frame) for Lambertian shading.
LIGHT = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])
_CLASS_COLOURS = np.array([CLASS_SPECS[c].colour for c in NUSCENES_CLASSES], dtype=np.float64)


def pixel_rays(intrinsic: Float64Array, image_size: tuple[int, int]) -> Float64Array:
    """``(H * W, 3)`` camera-frame directions through pixel centres, ``z = 1`` (row-major)."""
    w, h = image_size
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    uv1 = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    out: Float64Array = uv1 @ np.linalg.inv(intrinsic).T
    return out


def render_camera(scene: Scene, t: float, cam: SensorSpec, image_size: tuple[int, int]) -> UInt8Array:
    """``(H, W, 3)`` uint8 RGB image of ``cam`` at scene time ``t`` (s)."""
    w, h = image_size
    intrinsic = cam.intrinsic(image_size)
    scene_from_cam = scene.ego.scene_from_ego(t) @ cam.ego_from_sensor
    origin = scene_from_cam[:3, 3]
    dirs = pixel_rays(intrinsic, image_size) @ scene_from_cam[:3, :3].T
    depth, rgb = _background(scene, origin, dirs)
    boxes = scene.objects.boxes_at(t)
    cam_from_scene = invert_transform(scene_from_cam)
    for k, box in enumerate(boxes):
        region = _box_region(box, cam_from_scene, intrinsic, image_size)
        if region is None:
            continue
        u0, u1, v0, v1 = region
        idx = (np.arange(v0, v1)[:, None] * w + np.arange(u0, u1)[None]).ravel()
        hits = ray_box(origin, dirs[idx], box)
        closer = hits.t < depth[idx]
        if not closer.any():
            continue
        sel = idx[closer]
        depth[sel] = hits.t[closer]
        rgb[sel] = _shade_box(box, _CLASS_COLOURS[scene.objects.labels[k]], hits, closer)
    return np.clip(rgb, 0, 255).astype(np.uint8).reshape(h, w, 3)


def _box_region(box: Float64Array, cam_from_scene: Float64Array, intrinsic: Float64Array,
                image_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Pixel rectangle ``(u0, u1, v0, v1)`` (exclusive ends) the box can cover, or None."""
    w, h = image_size
    corners = apply_transform(cam_from_scene, box_corners(box[None])[0])
    if (corners[:, 2] <= 0.05).all():
        return None
    if (corners[:, 2] <= 0.05).any():
        return 0, w, 0, h  # straddles the camera plane: test every pixel
    uv = corners @ intrinsic.T
    uv = uv[:, :2] / uv[:, 2:3]
    u0, v0 = np.floor(uv.min(axis=0)).astype(int) - 1
    u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + 1
    u0, u1, v0, v1 = max(u0, 0), min(u1, w), max(v0, 0), min(v1, h)
    if u0 >= u1 or v0 >= v1:
        return None
    return int(u0), int(u1), int(v0), int(v1)


def _shade_box(box: Float64Array, colour: Float64Array, hits: BoxHits, mask: BoolArray) -> Float64Array:
    """Lambert-shaded class colour with darkened cuboid edges, ``(M, 3)`` float."""
    axis, sign, local = hits.face_axis[mask], hits.face_sign[mask], hits.local[mask]
    normal_box = np.zeros((len(axis), 3))
    normal_box[np.arange(len(axis)), axis] = sign
    c, s = np.cos(box[6]), np.sin(box[6])
    normal = normal_box @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
    shade = 0.35 + 0.65 * np.clip(normal @ LIGHT, 0.0, 1.0)
    half = box[3:6] / 2
    edge_dist = np.abs(half - np.abs(local))  # (M, 3); the face's own axis is ~0
    edge_dist[np.arange(len(axis)), axis] = np.inf
    edge = edge_dist.min(axis=1) < 0.04 + 0.01 * half.min()
    shade = np.where(edge, shade * 0.45, shade)
    out: Float64Array = colour[None] * shade[:, None]
    return out


def _background(scene: Scene, origin: Float64Array, dirs: Float64Array) -> tuple[Float64Array, Float64Array]:
    """Depth ``(R,)`` and colour ``(R, 3)`` of ground, facades and sky."""
    t_ground = ray_ground(origin, dirs)
    t_wall = ray_walls(origin, dirs, scene.wall_offset)
    depth = np.minimum(t_ground, t_wall)
    up = dirs[:, 2] / np.linalg.norm(dirs, axis=1)
    sky = np.array([150.0, 190.0, 235.0]) + np.clip(up, 0, 1)[:, None] * np.array([-70.0, -60.0, -20.0])
    rgb = sky.copy()
    g = np.isfinite(t_ground) & (t_ground <= t_wall)
    rgb[g] = _ground_colour(origin + t_ground[g, None] * dirs[g])
    wl = np.isfinite(t_wall) & (t_wall < t_ground)
    rgb[wl] = _wall_colour(origin + t_wall[wl, None] * dirs[wl])
    fog = np.exp(-np.where(np.isfinite(depth), depth, 1e9) / 180.0)[:, None]
    return depth, rgb * fog + sky * (1 - fog)


def _ground_colour(p: Float64Array) -> Float64Array:
    """Asphalt with lane markings, pavement tiles, and grass lots, by scene position."""
    x, y = p[:, 0], np.abs(p[:, 1])
    n = hash_noise(np.floor(x * 3), np.floor(p[:, 1] * 3))
    col: Float64Array = np.where((y < 8.0)[:, None], np.array([85.0, 85.0, 90.0]), np.array([165.0, 160.0, 150.0]))
    col = col + (n[:, None] - 0.5) * 18.0
    tiles = (y >= 8.0) & (y < 11.0) & ((np.mod(x, 1.5) < 0.05) | (np.mod(y, 1.5) < 0.05))
    col[tiles] *= 0.8
    lots = y >= 11.0
    col[lots] = np.array([95.0, 125.0, 70.0]) + (n[lots, None] - 0.5) * 25.0
    dashed = (np.abs(y - 1.75) < 0.08) & (np.mod(x, 6.0) < 3.0)
    solid = np.abs(y - 5.25) < 0.08
    col[dashed | solid] = np.array([235.0, 235.0, 225.0])
    curb = np.abs(y - 8.0) < 0.15
    col[curb] = np.array([200.0, 200.0, 200.0])
    return col


def _wall_colour(p: Float64Array) -> Float64Array:
    """Facades: a tint per 12 m block with a grid of dark windows."""
    block = np.floor(p[:, 0] / 12.0)
    tint = hash_noise(block, np.sign(p[:, 1]), salt=7)
    col: Float64Array = np.stack([150 + 60 * tint, 130 + 40 * tint, 110 + 30 * (1 - tint)], axis=1)
    window = (np.mod(p[:, 0], 3.0) > 1.2) & (np.mod(p[:, 2], 3.5) > 1.4) & (p[:, 2] > 1.0)
    col[window] = np.array([60.0, 70.0, 90.0])
    col[p[:, 2] > WALL_HEIGHT - 0.3] *= 0.7
    return col
