"""Spinning-LiDAR simulator: vectorised ray casting against ground, facades and boxes.

Beams are spread like a Velodyne HDL-32E (elevations -30.67 .. +10.67 deg); ring index 0 is
the lowest beam. A return on a box is pulled :data:`INSET` m inside the box (in the box frame)
so the stored point lies strictly inside it: counting points in the annotated boxes over the
written ``.pcd.bin`` gives back ``num_lidar_pts`` exactly despite float32 storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.arrays import Float32Array, Float64Array, Int64Array
from storage.synth.config import SynthConfig
from storage.synth.geometry import azimuth_span, hash_noise, ray_box, ray_ground, ray_walls
from storage.synth.scene import CLASS_SPECS, LIDAR, Scene, rot_z
from storage.sample import NUSCENES_CLASSES
from storage.transforms import apply_transform, invert_transform

INSET = 0.005
MIN_RANGE = 1.0


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """One LiDAR sweep.

    Attributes:
        points: ``(N, 5)`` float32 ``[x, y, z, intensity (0-255), ring]``, lidar frame, m.
        num_hits: ``(K,)`` int64 returns on each scene object.
        visible_fraction: ``(K,)`` float64 rays reaching the object unoccluded / rays crossing it
            (0 when no ray crosses it).
    """

    points: Float32Array
    num_hits: Int64Array
    visible_fraction: Float64Array


def beam_directions(config: SynthConfig) -> tuple[Float64Array, Int64Array, Float64Array]:
    """Unit ray directions in the lidar frame.

    Returns:
        dirs ``(B * A, 3)`` float64 (beam-major), ring ``(B * A,)`` int64, azimuth ``(A,)`` rad.
    """
    elev = np.deg2rad(np.linspace(-30.67, 10.67, config.lidar_beams))
    az = np.linspace(-np.pi, np.pi, config.azimuth_steps, endpoint=False)
    ce, se = np.cos(elev)[:, None], np.sin(elev)[:, None]
    dirs = np.stack([ce * np.cos(az)[None], ce * np.sin(az)[None], np.broadcast_to(se, (len(elev), len(az)))], -1)
    ring = np.repeat(np.arange(config.lidar_beams), config.azimuth_steps)
    return dirs.reshape(-1, 3), ring, az


def _columns(lo: float, hi: float, az: Float64Array) -> Int64Array:
    """Azimuth column indices inside ``[lo, hi]`` (wrapping at +-pi)."""
    step = az[1] - az[0]
    first = int(np.floor((lo + np.pi) / step))
    last = int(np.ceil((hi + np.pi) / step))
    return np.arange(first, last + 1) % len(az)


def simulate_sweep(config: SynthConfig, scene: Scene, t: float, rng: np.random.Generator) -> Sweep:
    """Cast every beam at scene time ``t`` (s after the first keyframe)."""
    dirs_l, ring, az = beam_directions(config)
    scene_from_lidar = scene.ego.scene_from_ego(t) @ LIDAR.ego_from_sensor
    origin = scene_from_lidar[:3, 3]
    dirs = dirs_l @ scene_from_lidar[:3, :3].T
    boxes = scene.objects.boxes_at(t)
    n_rays, n_beams, n_az = len(dirs), config.lidar_beams, len(az)
    best_t = np.minimum(ray_ground(origin, dirs), ray_walls(origin, dirs, scene.wall_offset))
    best_k = np.full(n_rays, -1, dtype=np.int64)
    best_local = np.zeros((n_rays, 3))
    crossing = np.zeros(len(boxes), dtype=np.int64)
    yaw_offset = float(np.arctan2(scene_from_lidar[1, 0], scene_from_lidar[0, 0]))
    for k, box in enumerate(boxes):
        if np.hypot(*(box[:2] - origin[:2])) - np.hypot(box[3], box[4]) > config.lidar_max_range:
            continue
        lo, hi = azimuth_span(origin, box)
        cols = _columns(lo - yaw_offset, hi - yaw_offset, az)
        idx = (np.arange(n_beams)[:, None] * n_az + cols[None]).ravel()
        hits = ray_box(origin, dirs[idx], box)
        in_range = hits.t <= config.lidar_max_range
        crossing[k] = int(in_range.sum())
        closer = in_range & (hits.t < best_t[idx])
        sel = idx[closer]
        best_t[sel], best_k[sel], best_local[sel] = hits.t[closer], k, hits.local[closer]
    keep = (best_t >= MIN_RANGE) & (best_t <= config.lidar_max_range)
    p_scene = origin + best_t[keep, None] * dirs[keep]
    on_box = best_k[keep] >= 0
    p_scene[on_box] = _inset(boxes, best_k[keep][on_box], best_local[keep][on_box])
    num_hits = np.bincount(best_k[keep][on_box], minlength=len(boxes)).astype(np.int64)
    intensity = _intensity(p_scene, best_k[keep], scene.objects.labels, rng)
    p_lidar = apply_transform(invert_transform(scene_from_lidar), p_scene)
    points = np.concatenate([p_lidar, intensity[:, None], ring[keep, None]], axis=1).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        visible = np.where(crossing > 0, num_hits / np.maximum(crossing, 1), 0.0)
    return Sweep(points=points, num_hits=num_hits, visible_fraction=visible)


def _inset(boxes: Float64Array, k: Int64Array, local: Float64Array) -> Float64Array:
    """Box-frame entry points pulled :data:`INSET` m inside their box, back in the scene frame."""
    half = boxes[k, 3:6] / 2 - INSET
    local = np.clip(local, -half, half)
    out = np.empty_like(local)
    for kk in np.unique(k):
        m = k == kk
        out[m] = local[m] @ rot_z(boxes[kk, 6]).T + boxes[kk, :3]
    return out


def _intensity(p: Float64Array, k: Int64Array, labels: Int64Array, rng: np.random.Generator) -> Float64Array:
    """Plausible 0-255 reflectivity: a per-class base on objects; asphalt, lane markings,
    pavement and facades elsewhere; Gaussian noise (sigma 2), rounded like nuScenes."""
    base = np.full(len(p), 25.0)  # facades
    ground = (k < 0) & (p[:, 2] < 0.01)
    y = np.abs(p[:, 1])
    base[ground] = np.where(y[ground] < 8.0, 8.0, 18.0) + 6.0 * hash_noise(np.floor(p[ground, 0] * 2),
                                                                           np.floor(p[ground, 1] * 2))
    marking = ground & (((np.abs(y - 1.75) < 0.08) & (np.mod(p[:, 0], 6.0) < 3.0)) | (np.abs(y - 5.25) < 0.08))
    base[marking] = 70.0
    class_base = np.array([CLASS_SPECS[c].intensity for c in NUSCENES_CLASSES])
    base[k >= 0] = class_base[labels[k[k >= 0]]]
    out: Float64Array = np.clip(np.round(base + rng.normal(0.0, 2.0, size=len(p))), 0, 255)
    return out
