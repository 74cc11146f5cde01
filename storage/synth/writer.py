"""Writes one synthetic scene: LiDAR sweeps, camera JPEGs and the scene's table records (only the
records with ``SynthConfig.tables_only``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from storage.arrays import Int64Array
from storage.synth.camera import render_camera
from storage.synth.config import SynthConfig
from storage.synth.lidar import Sweep, simulate_sweep
from storage.synth.scene import CAMERAS, LIDAR, Scene
from storage.synth.tables import Tables, link, pose_record, visibility_token
from storage.sample import NUSCENES_CLASSES
from storage.transforms import quaternion_from_rotation

KEYFRAME_US = 500_000  # 2 Hz


@dataclass
class SceneStats:
    """Per-keyframe figures collected while writing (for the summary)."""

    points_per_sweep: list[int] = field(default_factory=list)
    hits_per_box: list[int] = field(default_factory=list)


def lidar_times_us(config: SynthConfig) -> list[tuple[int, bool]]:
    """``(offset from the first keyframe in us, is_key_frame)`` of every LiDAR sweep, in time order."""
    step = KEYFRAME_US // (config.sweeps_per_sample + 1)
    out = [(-j * step, False) for j in range(config.sweeps_per_sample, 0, -1)]
    for k in range(config.samples_per_scene):
        out.append((k * KEYFRAME_US, True))
        if k + 1 < config.samples_per_scene:
            out += [(k * KEYFRAME_US + j * step, False) for j in range(1, config.sweeps_per_sample + 1)]
    return out


def write_scene(config: SynthConfig, scene: Scene, split: str, root: Path, tables: Tables, stats: SceneStats,
                progress: Callable[[str], None] | None = None) -> None:
    """Simulate and write every sweep, image and record of ``scene``."""
    log_token = tables.add_log(scene.name, scene.index)
    cs = {spec.channel: tables.add_calibrated_sensor(scene.name, spec, config.image_size) for spec in (LIDAR, *CAMERAS)}
    keyframes = [k * KEYFRAME_US for k in range(config.samples_per_scene)]
    samples = [tables.add("sample", {"token": tables.token("sample", scene.name, k), "timestamp": scene.start_us + off,
                                     "scene_token": tables.token("scene", scene.name)})
               for k, off in enumerate(keyframes)]
    link(samples)
    key_sweeps = _write_lidar(config, scene, root, tables, cs[LIDAR.channel], samples)
    chains: dict[str, list[dict[str, Any]]] = {cam.channel: [] for cam in CAMERAS}
    for k, sample in enumerate(samples):
        stats.points_per_sweep.append(len(key_sweeps[k].points))  # 0 with tables_only
        stats.hits_per_box += key_sweeps[k].num_hits.tolist()
        for channel, rec in _write_cameras(config, scene, root, tables, cs, [sample], keyframes[k]).items():
            chains[channel].append(rec)
        for j, off in camera_sweep_offsets_us(config, k):
            for channel, rec in _write_cameras(config, scene, root, tables, cs, samples, off, sweep=(k, j)).items():
                chains[channel].append(rec)
        if progress is not None:
            progress(f"{scene.name} ({split}) sample {k + 1}/{len(samples)}")
    for chain in chains.values():
        link(chain)
    _write_annotations(scene, tables, samples, key_sweeps)
    tables.add("scene", {"token": tables.token("scene", scene.name), "log_token": log_token,
                         "nbr_samples": len(samples), "first_sample_token": samples[0]["token"],
                         "last_sample_token": samples[-1]["token"], "name": scene.name,
                         "description": f"synthetic ({split}), ego {scene.ego.speed:.1f} m/s, "
                                        f"{len(scene.objects.labels)} objects"})


def _filename(root: Path, folder: str, channel: str, scene: Scene, timestamp: int, ext: str,
              mkdir: bool = True) -> str:
    rel = f"{folder}/{channel}/synth-{scene.name}__{channel}__{timestamp}.{ext}"
    if mkdir:
        (root / folder / channel).mkdir(parents=True, exist_ok=True)
    return rel


def estimated_hits(config: SynthConfig, scene: Scene, t: float) -> Int64Array:
    """``(K,)`` int64 LiDAR returns each object would get at scene time ``t`` (s), without ray
    casting (``SynthConfig.tables_only``): rays per steradian of the beam fan times the solid
    angle of the box's larger vertical face, ``max(l, w) * h / d**2``; 0 beyond
    ``lidar_max_range``. Occlusion is ignored."""
    boxes = scene.objects.boxes_at(t)
    origin = (scene.ego.scene_from_ego(t) @ LIDAR.ego_from_sensor)[:3, 3]
    d = np.maximum(np.linalg.norm(boxes[:, :2] - origin[:2], axis=1), 1.0)
    fan_sr = 2 * np.pi * np.deg2rad(30.67 + 10.67)  # the beams' elevation span over a full turn
    rays_per_sr = config.lidar_beams * config.azimuth_steps / fan_sr
    hits = rays_per_sr * np.maximum(boxes[:, 3], boxes[:, 4]) * boxes[:, 5] / d ** 2
    out: Int64Array = np.where(d <= config.lidar_max_range, np.floor(hits), 0).astype(np.int64)
    return out


def _sample_data(tables: Tables, token: str, sample: dict[str, Any], cs_token: str, timestamp: int, filename: str,
                 key: bool, scene: Scene, t: float, image_size: tuple[int, int]) -> dict[str, Any]:
    """A sample_data record plus its ego_pose (same token, as in nuScenes)."""
    global_from_ego = scene.global_from_scene @ scene.ego.scene_from_ego(t)
    tables.add("ego_pose", {"token": token, "timestamp": timestamp, **pose_record(global_from_ego)})
    w, h = image_size
    return tables.add("sample_data", {
        "token": token, "sample_token": sample["token"], "ego_pose_token": token, "calibrated_sensor_token": cs_token,
        "timestamp": timestamp, "fileformat": "jpg" if filename.endswith(".jpg") else "pcd",
        "is_key_frame": key, "height": h, "width": w, "filename": filename})


def _write_lidar(config: SynthConfig, scene: Scene, root: Path, tables: Tables, cs_token: str,
                 samples: list[dict[str, Any]]) -> list[Sweep]:
    records, key_sweeps = [], []
    for j, (off, key) in enumerate(lidar_times_us(config)):
        ts = scene.start_us + off
        rel = _filename(root, "samples" if key else "sweeps", LIDAR.channel, scene, ts, "pcd.bin",
                        mkdir=not config.tables_only)
        if config.tables_only:
            sweep = Sweep(points=np.zeros((0, 5), np.float32), num_hits=estimated_hits(config, scene, off / 1e6),
                          visible_fraction=np.ones(len(scene.objects.labels)))
        else:
            rng = np.random.default_rng(np.random.SeedSequence([config.seed, scene.index, 1 + j]))
            sweep = simulate_sweep(config, scene, off / 1e6, rng)
            sweep.points.tofile(root / rel)
        nearest = min(range(len(samples)), key=lambda k: (abs(samples[k]["timestamp"] - ts), -k))
        records.append(_sample_data(tables, tables.token("sample_data", scene.name, LIDAR.channel, j),
                                    samples[nearest], cs_token, ts, rel, key, scene, off / 1e6, (0, 0)))
        if key:
            key_sweeps.append(sweep)
    link(records)
    return key_sweeps


def camera_sweep_offsets_us(config: SynthConfig, k: int) -> list[tuple[int, int]]:
    """``(j, offset from the first keyframe in us)`` of the non-keyframe camera frames between
    keyframes ``k`` and ``k + 1`` (none after the last keyframe), before each camera's time offset."""
    n = config.camera_sweeps_per_sample
    if k + 1 >= config.samples_per_scene:
        return []
    step = KEYFRAME_US // (n + 1)
    return [(j, k * KEYFRAME_US + j * step) for j in range(1, n + 1)]


def _write_cameras(config: SynthConfig, scene: Scene, root: Path, tables: Tables, cs: dict[str, str],
                   samples: list[dict[str, Any]], frame_off: int, sweep: tuple[int, int] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Render and save the six images of one frame; returns their sample_data records.

    A keyframe (``sweep`` None) passes its one sample and writes under ``samples/``; a camera
    sweep ``(k, j)`` (``is_key_frame: false``, under ``sweeps/``) passes every keyframe sample and
    is linked to the one nearest in time, as nuScenes does."""
    from PIL import Image  # lazy: keep `import storage` light

    out = {}
    for cam in CAMERAS:
        off = frame_off + cam.time_offset_us
        ts = scene.start_us + off
        rel = _filename(root, "samples" if sweep is None else "sweeps", cam.channel, scene, ts, "jpg",
                        mkdir=not config.tables_only)
        if not config.tables_only:
            image = render_camera(scene, off / 1e6, cam, config.image_size)
            Image.fromarray(image).save(root / rel, quality=config.jpeg_quality)
        if sweep is None:
            sample = samples[0]
            token = tables.token("sample_data", scene.name, cam.channel, sample["token"])
        else:
            sample = samples[min(range(len(samples)), key=lambda i: (abs(samples[i]["timestamp"] - ts), -i))]
            token = tables.token("sample_data", scene.name, cam.channel, "sweep", *sweep)
        out[cam.channel] = _sample_data(tables, token, sample, cs[cam.channel], ts, rel, sweep is None, scene,
                                        off / 1e6, config.image_size)
    return out


def _write_annotations(scene: Scene, tables: Tables, samples: list[dict[str, Any]], key_sweeps: list[Sweep]) -> None:
    objs = scene.objects
    boxes_per_sample = [objs.boxes_at((sample["timestamp"] - scene.start_us) / 1e6) for sample in samples]
    for k_obj, label in enumerate(objs.labels):
        cls = NUSCENES_CLASSES[label]
        inst = tables.token("instance", scene.name, k_obj)
        attr = objs.attributes[k_obj]
        anns = []
        for k, sample in enumerate(samples):
            box = boxes_per_sample[k][k_obj]
            centre = scene.global_from_scene[:3, :3] @ box[:3] + scene.global_from_scene[:3, 3]
            yaw = box[6] + np.arctan2(scene.global_from_scene[1, 0], scene.global_from_scene[0, 0])
            rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1.0]])
            anns.append(tables.add("sample_annotation", {
                "token": tables.token("sample_annotation", scene.name, k_obj, k), "sample_token": sample["token"],
                "instance_token": inst,
                "visibility_token": visibility_token(float(key_sweeps[k].visible_fraction[k_obj])),
                "attribute_tokens": [tables.attribute_token[attr]] if attr else [],
                "translation": [float(v) for v in centre], "size": [float(box[4]), float(box[3]), float(box[5])],
                "rotation": [float(v) for v in quaternion_from_rotation(rot)],
                "num_lidar_pts": int(key_sweeps[k].num_hits[k_obj]), "num_radar_pts": 0}))
        link(anns)
        tables.add("instance", {"token": inst, "category_token": tables.category_token[cls],
                                "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                                "last_annotation_token": anns[-1]["token"]})
