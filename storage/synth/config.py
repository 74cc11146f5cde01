"""Configuration of the synthetic nuScenes-format generator."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

#: Versions the generator can write, with the devkit split lists their scene names come from.
SUPPORTED_VERSIONS = ("v1.0-mini", "v1.0-trainval")


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What to generate. Same config (seed included) -> byte-identical files.

    Args:
        num_scenes: scenes to write. ``v1.0-mini`` has 10 scene names (2 ``mini_val`` +
            8 ``mini_train``): val is filled first, so 2-3 scenes already give a non-empty
            ``mini_val``. ``v1.0-trainval`` alternates val / train names (even index -> val).
        samples_per_scene: keyframes per scene, 2 Hz (0.5 s apart).
        seed: root of every random choice.
        version: ``v1.0-mini`` (at most 10 scenes) or ``v1.0-trainval``.
        image_size: ``(width, height)`` of the six camera images, pixels.
        objects_per_scene: ``(min, max)`` annotated objects per scene (at least 10: one of
            each detection class is always placed near the ego path).
        lidar_beams: beams of the spinning LiDAR (elevations spread like a Velodyne HDL-32E,
            -30.67 .. +10.67 deg).
        azimuth_steps: LiDAR columns per revolution (1080 ~ nuScenes' ~34k points per sweep).
        lidar_max_range: farthest return, m.
        sweeps_per_sample: non-keyframe LiDAR sweeps between two keyframes (and before the
            first), written under ``sweeps/LIDAR_TOP`` (nuScenes has 9 at 20 Hz).
        camera_sweeps_per_sample: non-keyframe images per camera between two keyframes, written
            under ``sweeps/CAM_*`` as ``is_key_frame: false`` sample_data (nuScenes has ~5 at 12 Hz);
            unannotated frames for distillation on unlabelled data. 0 leaves the output unchanged.
        jpeg_quality: PIL JPEG quality of the camera images.
        tables_only: write the 13 tables only, no sensor file (for index-scale tests of
            trainval-sized tables: 850 scenes x 40 samples in minutes). Nothing is ray cast:
            ``num_lidar_pts`` is an estimate from each box's size and range
            (:func:`storage.synth.writer.estimated_hits`), visibility is full. Readers can
            resolve every sample, but loading points or images fails (files absent).
    """

    num_scenes: int = 10
    samples_per_scene: int = 10
    seed: int = 0
    version: str = "v1.0-mini"
    image_size: tuple[int, int] = (480, 270)
    objects_per_scene: tuple[int, int] = (16, 28)
    lidar_beams: int = 32
    azimuth_steps: int = 1080
    lidar_max_range: float = 70.0
    sweeps_per_sample: int = 0
    camera_sweeps_per_sample: int = 0
    jpeg_quality: int = 90
    tables_only: bool = False

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(f"SynthConfig.version: {self.version!r} is not one of {SUPPORTED_VERSIONS}")
        if self.num_scenes < 1 or (self.version == "v1.0-mini" and self.num_scenes > 10):
            raise ValueError(f"SynthConfig.num_scenes: {self.num_scenes} not in 1..10 for v1.0-mini "
                             "(use version='v1.0-trainval' for more)")
        if self.samples_per_scene < 1:
            raise ValueError(f"SynthConfig.samples_per_scene must be >= 1, got {self.samples_per_scene}")
        lo, hi = self.objects_per_scene
        if not 10 <= lo <= hi:
            raise ValueError(f"SynthConfig.objects_per_scene: need 10 <= min <= max, got {self.objects_per_scene}")
        w, h = self.image_size
        if w < 16 or h < 9:
            raise ValueError(f"SynthConfig.image_size: {self.image_size} is smaller than 16x9")
        if self.lidar_beams < 2 or self.azimuth_steps < 16:
            raise ValueError("SynthConfig: need lidar_beams >= 2 and azimuth_steps >= 16")
        if self.sweeps_per_sample < 0:
            raise ValueError("SynthConfig.sweeps_per_sample must be >= 0")
        if self.camera_sweeps_per_sample < 0:
            raise ValueError("SynthConfig.camera_sweeps_per_sample must be >= 0")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.camera_sweeps_per_sample:  # keep summaries of keyframe-camera datasets byte-identical
            del d["camera_sweeps_per_sample"]
        if not self.tables_only:
            del d["tables_only"]
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SynthConfig:
        d = dict(data)
        for key in ("image_size", "objects_per_scene"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)
