"""Synthetic nuScenes-format datasets the real devkit loads and evaluates.

``generate_dataset(SynthConfig(...), dataroot)`` writes ``<dataroot>/<version>/*.json`` (the 13
v1.0 tables), ``samples/LIDAR_TOP/*.pcd.bin`` (float32 x5: x, y, z, intensity, ring),
optional ``sweeps/LIDAR_TOP``, ``samples/CAM_*/*.jpg``, optional non-keyframe ``sweeps/CAM_*/*.jpg``,
``maps/<token>.png`` and
``synth_summary.json``. Scene names come from the devkit's split lists (``mini_val`` first),
so ``DetectionEval(eval_set='mini_val')`` runs on it. ``SynthConfig(tables_only=True)`` writes the
tables alone (no sensor file, nothing ray cast): trainval-sized tables (850 scenes x 40 samples)
for index-scale tests. Modules: ``scene`` (rig, ego
trajectory, objects), ``geometry`` (ray casting), ``lidar``, ``camera``, ``tables``, ``writer``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from storage.synth.config import SynthConfig
from storage.synth.scene import make_scene, scene_names
from storage.synth.tables import Tables
from storage.synth.writer import SceneStats, write_scene

SUMMARY_FILE = "synth_summary.json"


@dataclass(frozen=True, kw_only=True)
class SynthSummary:
    """What :func:`generate_dataset` wrote (also stored as ``<dataroot>/synth_summary.json``).

    Attributes:
        config: the generator config.
        scenes: ``(name, split)`` per scene.
        num_samples: keyframes written.
        num_annotations: sample_annotation records.
        mean_points_per_sweep: mean LiDAR returns of a keyframe sweep.
        fraction_boxes_with_points: annotations with ``num_lidar_pts > 0`` / all annotations.
    """

    config: SynthConfig
    scenes: tuple[tuple[str, str], ...]
    num_samples: int
    num_annotations: int
    mean_points_per_sweep: float
    fraction_boxes_with_points: float

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_json(), "scenes": [list(s) for s in self.scenes],
                "num_samples": self.num_samples, "num_annotations": self.num_annotations,
                "mean_points_per_sweep": self.mean_points_per_sweep,
                "fraction_boxes_with_points": self.fraction_boxes_with_points}

    @classmethod
    def load(cls, dataroot: str | Path) -> SynthSummary:
        """Read ``synth_summary.json``. Raises FileNotFoundError if the dataroot has none."""
        d = json.loads((Path(dataroot) / SUMMARY_FILE).read_text())
        return cls(config=SynthConfig.from_json(d["config"]), scenes=tuple(tuple(s) for s in d["scenes"]),
                   num_samples=d["num_samples"], num_annotations=d["num_annotations"],
                   mean_points_per_sweep=d["mean_points_per_sweep"],
                   fraction_boxes_with_points=d["fraction_boxes_with_points"])


def generate_dataset(config: SynthConfig, dataroot: str | Path,
                     progress: Callable[[str], None] | None = None) -> Path:
    """Write a devkit-loadable nuScenes-format dataset.

    Args:
        config: what to generate (deterministic in ``config.seed``).
        dataroot: output folder (created; existing files of the same names are overwritten).
        progress: called once per keyframe written with a short description.

    Returns:
        The dataroot as a Path.
    """
    from PIL import Image  # lazy

    root = Path(dataroot)
    root.mkdir(parents=True, exist_ok=True)
    tables = Tables(config.seed)
    stats = SceneStats()
    names = scene_names(config)
    for index, (name, split) in enumerate(names):
        write_scene(config, make_scene(config, index, name), split, root, tables, stats, progress)
    tables.write(root / config.version, compact=config.tables_only)
    (root / "maps").mkdir(exist_ok=True)
    Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(root / tables.records["map"][0]["filename"])
    hits = np.asarray(stats.hits_per_box)
    summary = SynthSummary(config=config, scenes=tuple(names), num_samples=len(stats.points_per_sweep),
                           num_annotations=len(hits), mean_points_per_sweep=float(np.mean(stats.points_per_sweep)),
                           fraction_boxes_with_points=float((hits > 0).mean()) if len(hits) else 0.0)
    (root / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=1, sort_keys=True))
    return root


__all__ = ["SynthConfig", "SynthSummary", "generate_dataset"]
