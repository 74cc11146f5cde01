"""Checks of a student run's folder before training: where the checkpoint lives, a run folder apart
from its caches, and a resumed checkpoint written with the same config.

Which config fields a resumed run may change is :data:`RESUME_MAY_CHANGE`: how long the run goes,
where and how this invocation runs and reports, and how it is evaluated. Everything else must equal
the checkpoint's (its weights, optimiser state and data order are what ``resume`` continues).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from storage.errors import CheckpointError
from student.config_io import plain_differences
from student.losses import DistillationConfig
from student.train_config import TrainConfig

#: :class:`TrainConfig` fields a resumed run may change: how long it runs (``steps``, ``epochs``: the
#: cosine learning-rate schedule then spans the new total; ``stop_after``), where and how this
#: invocation runs and reports (``out_dir``: a moved run folder; ``workers``, ``device``,
#: ``progress``, ``tensorboard``, ``checkpoint_every``), how it is evaluated (``eval_every``,
#: ``eval_score_threshold``, ``distance_bands``), and ``backbone_weights`` (read by a new run only).
#: Every other field (``student``, the resolved ``distill``, ``data``, ``batch_size``, ``lr``,
#: ``weight_decay``, ``grad_clip``, ``warmup_steps``, ``seed``, ``amp``, ``no_distill``) must equal
#: the checkpoint's: they shape the saved weights and optimiser state, or the data order and
#: schedule that ``resume`` continues bit for bit.
RESUME_MAY_CHANGE = ("steps", "epochs", "stop_after", "resume", "overwrite", "out_dir", "workers", "device",
                     "progress", "tensorboard", "checkpoint_every", "eval_every", "eval_score_threshold",
                     "distance_bands", "backbone_weights")

#: Differences named in one error line; the rest are counted.
_MAX_NAMED = 6


def last_checkpoint(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir/checkpoints/last.pt``: the checkpoint a run writes and ``resume`` continues."""
    return Path(out_dir) / "checkpoints" / "last.pt"


def check_out_dir_apart(out_dir: str | os.PathLike[str], caches: dict[str, Any]) -> None:
    """Refuse a run folder that is a cache's folder, lies inside one or holds one.

    Args:
        out_dir: the run folder.
        caches: name (as the error says it) -> local path, URL or None; URLs are not checked.

    Raises:
        ValueError: the folders overlap (the run's files would mix with the cache's).
    """
    out = Path(out_dir).resolve()
    for name, location in caches.items():
        if location is None or "://" in os.fspath(location):
            continue
        cache = Path(location).resolve()
        if out == cache or cache in out.parents or out in cache.parents:
            raise ValueError(f"run folder {os.fspath(out_dir)} and {name} {os.fspath(location)} overlap (the same "
                             "folder or one inside the other): the run's checkpoints and logs would mix with the "
                             "cache's files; choose an out folder apart from the cache")


def check_same_run(path: Path, state: dict[str, Any], config: TrainConfig, distill: DistillationConfig) -> None:
    """Refuse to resume the checkpoint ``state`` (read from ``path``) with a config that differs
    from the one it was written with, outside :data:`RESUME_MAY_CHANGE`.

    The distillation settings are compared as resolved (``distill``: the config's, or the recipe's
    choice for the targets at hand), so a config naming the recipe's choice explicitly still resumes.
    Keys one side lacks (a field added or removed between versions) are not compared.

    Raises:
        CheckpointError: one line naming each differing dotted key with the checkpoint's value and ours.
    """
    ignore = (*RESUME_MAY_CHANGE, "distill", "recipe", "unlabelled_pseudo_labels")  # folded into distill
    stored = state.get("config")
    diffs = plain_differences(stored if isinstance(stored, dict) else {}, config.to_dict(), ignore)
    if isinstance(state.get("distill"), dict):
        diffs += plain_differences(state["distill"], json.loads(json.dumps(distill.to_dict())), key="distill")
    if not diffs:
        return
    said = "; ".join(f"{k}: {json.dumps(old)} in the checkpoint, {json.dumps(new)} now"
                     for k, old, new in diffs[:_MAX_NAMED])
    more = f"; and {len(diffs) - _MAX_NAMED} more" if len(diffs) > _MAX_NAMED else ""
    raise CheckpointError(f"cannot resume {path}: it was trained with another config: {said}{more} (a resumed run "
                          f"may change only {', '.join(RESUME_MAY_CHANGE)}; start a new run with another --out, or "
                          "--overwrite)")


__all__ = ["RESUME_MAY_CHANGE", "check_out_dir_apart", "check_same_run", "last_checkpoint"]
