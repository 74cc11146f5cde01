"""Carve a validation split out of a nuScenes dataroot's *training* scenes.

Settings (loss weights, thresholds, schedules) must be chosen on data the reported numbers never
see. :func:`carve_validation` writes a view of a dataroot in which the last ``num_val`` scenes of
the training split take the evaluation split's scene names, the original evaluation scenes take
names that belong to no devkit split (so no reader and no ``DetectionEval`` ever loads them), and
the remaining training scenes keep their names. Sensor files are symlinked, only ``scene.json``
is rewritten, so the devkit (readers, ``DetectionEval``) works on the view unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Devkit split pairs of each version: (training split, evaluation split).
SPLIT_PAIRS = {"v1.0-mini": ("mini_train", "mini_val"), "v1.0-trainval": ("train", "val")}


def carve_validation(dataroot: str | os.PathLike[str], out: str | os.PathLike[str], *, version: str = "v1.0-mini",
                     num_val: int = 2) -> Path:
    """A dataroot view whose evaluation split is ``num_val`` scenes carved from the training split.

    Args:
        dataroot: a nuScenes dataroot (``<dataroot>/<version>/scene.json`` and sensor folders).
        out: where the view is written (created; refused when it exists and is not such a view).
        version: ``v1.0-mini`` (carves into ``mini_val``) or ``v1.0-trainval`` (into ``val``).
        num_val: training scenes (the last ones in ``scene.json`` order) that become validation.

    Returns:
        ``out``. Reading it with the evaluation split yields only carved training scenes; the
        training split yields the other training scenes; the original evaluation scenes are hidden.

    Raises:
        ValueError: unknown version, or too few training scenes / evaluation names to carve.
        FileExistsError: ``out`` exists and was not written by this function.
    """
    from storage.nuscenes_reader import split_scene_names

    if version not in SPLIT_PAIRS:
        raise ValueError(f"carve_validation: version {version!r} is not one of {sorted(SPLIT_PAIRS)}")
    src, dst = Path(dataroot).resolve(), Path(out)
    marker = dst / "carved_from.json"
    if dst.exists() and not marker.exists():
        raise FileExistsError(f"carve_validation: {dst} exists and is not a carved view (no {marker.name})")
    train_split, val_split = SPLIT_PAIRS[version]
    splits = {name: set(split_scene_names(name, version)) for name in SPLIT_PAIRS[version]}
    scenes = json.loads((src / version / "scene.json").read_text())
    train = [s for s in scenes if s["name"] in splits[train_split]]
    if not 0 < num_val < len(train):
        raise ValueError(f"carve_validation: {src}: need 0 < num_val < {len(train)} training scenes, got {num_val}")
    used = {s["name"] for s in scenes}
    free_val_names = split_scene_names(val_split, version)
    if len(free_val_names) < num_val:
        raise ValueError(f"carve_validation: split {val_split} has only {len(free_val_names)} scene names")
    carved = {s["token"] for s in train[-num_val:]}
    val_names = iter(free_val_names)
    renamed = []
    for i, s in enumerate(scenes):
        s = dict(s)
        if s["token"] in carved:
            s["name"] = next(val_names)
        elif s["name"] in splits[val_split]:
            s["name"] = f"heldout-{i:04d}"  # in no devkit split: never read
        renamed.append(s)
    (dst / version).mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name != version and not (dst / entry.name).exists():
            (dst / entry.name).symlink_to(entry)
    for table in (src / version).iterdir():
        if table.name != "scene.json" and not (dst / version / table.name).exists():
            (dst / version / table.name).symlink_to(table)
    tmp = dst / version / "scene.json.tmp"
    tmp.write_text(json.dumps(renamed, indent=0))
    tmp.replace(dst / version / "scene.json")
    marker.write_text(json.dumps({"dataroot": str(src), "version": version, "num_val": num_val,
                                  "val_scenes": sorted(s["name"] for s in scenes if s["token"] in carved),
                                  "unused_names": sorted(used - {s["name"] for s in renamed})}, indent=1))
    return dst


__all__ = ["SPLIT_PAIRS", "carve_validation"]
