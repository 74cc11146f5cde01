"""Synthetic nuScenes-format datasets the real devkit loads and evaluates.

``generate_dataset(SynthConfig(...), dataroot)`` writes ``<dataroot>/<version>/*.json`` (the 13
v1.0 tables), ``samples/LIDAR_TOP/*.pcd.bin`` (float32 x5: x, y, z, intensity, ring),
optional ``sweeps/LIDAR_TOP``, ``samples/CAM_*/*.jpg``, optional non-keyframe ``sweeps/CAM_*/*.jpg``,
``maps/<token>.png`` and
``synth_summary.json`` (``synth_summary.partial`` while it is written; :func:`prepare_dataroot`
refuses or empties an existing folder first). Scene names come from the devkit's split lists (``mini_val`` first),
so ``DetectionEval(eval_set='mini_val')`` runs on it. ``SynthConfig(tables_only=True)`` writes the
tables alone (no sensor file, nothing ray cast): trainval-sized tables (850 scenes x 40 samples)
for index-scale tests. Modules: ``scene`` (rig, ego
trajectory, objects), ``geometry`` (ray casting), ``lidar``, ``camera``, ``tables``, ``writer``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from storage.synth.config import SUPPORTED_VERSIONS, SynthConfig
from storage.synth.scene import make_scene, scene_names
from storage.synth.tables import Tables
from storage.synth.writer import SceneStats, write_scene

SUMMARY_FILE = "synth_summary.json"
#: Present while :func:`generate_dataset` writes (the config, JSON); removed once the summary is written.
PARTIAL_FILE = "synth_summary.partial"
#: Every top-level entry of a dataroot :func:`generate_dataset` writes.
GENERATED_ENTRIES = frozenset({SUMMARY_FILE, PARTIAL_FILE, "samples", "sweeps", "maps", *SUPPORTED_VERSIONS})


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
        dataroot: output folder (created; existing files of the same names are overwritten: call
            :func:`prepare_dataroot` first to refuse or empty a folder that holds a dataset).
        progress: called once per keyframe written with a short description.

    Returns:
        The dataroot as a Path. While it is written it holds :data:`PARTIAL_FILE`, so an
        interrupted dataroot is still recognised as generated (:func:`prepare_dataroot`).
    """
    from PIL import Image  # lazy

    root = Path(dataroot)
    root.mkdir(parents=True, exist_ok=True)
    (root / PARTIAL_FILE).write_text(config.dumps())
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
    (root / PARTIAL_FILE).unlink()
    return root


def prepare_dataroot(dataroot: str | Path, *, overwrite: bool = False) -> None:
    """Make ``dataroot`` ready for :func:`generate_dataset` without losing anything by accident.

    An absent or empty folder is left as it is. A non-empty one is refused unless ``overwrite``;
    with ``overwrite`` it is emptied only if it is a dataroot :func:`generate_dataset` wrote
    (it holds :data:`SUMMARY_FILE`, or :data:`PARTIAL_FILE` after an interrupted run) and
    nothing besides :data:`GENERATED_ENTRIES`, so no old sensor file outlives the tables that
    named it. A real nuScenes dataroot is never deleted.

    Raises:
        NotADirectoryError: ``dataroot`` (or a folder above it) is a file.
        FileExistsError: it holds files and not ``overwrite``, or ``overwrite`` and it is not a
            generated dataroot or holds other entries (the one-line message names up to three;
            nothing was deleted).
    """
    root = Path(dataroot)
    if root.is_file() or any(p.is_file() for p in root.parents):
        raise NotADirectoryError(f"--out {root}: {next(p for p in (root, *root.parents) if p.is_file())} "
                                 "is a file, not a dataroot folder")
    if not root.is_dir():
        return
    with os.scandir(root) as it:  # also sees hidden files and empty folders
        entries = sorted(e.name for e in it)
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"--out {root} is not empty (it holds {_some(entries)}); nothing was written: "
                              "choose another --out, or pass --overwrite to replace a dataset bevkd synth wrote")
    if SUMMARY_FILE not in entries and PARTIAL_FILE not in entries:
        raise FileExistsError(f"--out {root} is not a dataroot bevkd synth wrote (no {SUMMARY_FILE}; it holds "
                              f"{_some(entries)}): --overwrite replaces only such a dataroot, nothing was deleted")
    foreign = [e for e in entries if e not in GENERATED_ENTRIES]
    if foreign:
        raise FileExistsError(f"--out {root} holds {_some(foreign)} besides the dataset bevkd synth wrote: "
                              "--overwrite would delete it, so nothing was deleted; move it out or choose another "
                              "--out")
    for name in entries:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _some(names: list[str], limit: int = 3) -> str:
    """``'a', 'b', 'c' and 2 more``: up to ``limit`` names of a listing, for one-line messages."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


__all__ = ["GENERATED_ENTRIES", "SynthConfig", "SynthSummary", "generate_dataset", "prepare_dataroot"]
