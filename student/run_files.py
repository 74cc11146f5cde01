"""A student run's files: the atomic checkpoint, the weights-only loader, the run folder guard.

Checkpoints hold model + loss modules, optimizer, scaler, position and the configs as plain
JSON-able data, so they load with ``torch.load(weights_only=True)`` (nothing in a file runs).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from storage.checkpoint import load_checkpoint
from storage.errors import CheckpointError
from student.model import StudentModel
from student.train_config import TrainConfig


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def params_sha256(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (name order), to compare DDP replicas."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_student(checkpoint: str | os.PathLike[str], device: torch.device | str = "cpu") -> StudentModel:
    """The trained student of a :func:`train_student` checkpoint, in eval mode.

    Raises:
        storage.errors.CheckpointError: the file is missing, unreadable, not a student checkpoint,
            or asks to run code (it is loaded weights-only).
    """
    from student.config import StudentConfig

    state = read_state(checkpoint, device, ("model", "config"))
    model = StudentModel(StudentConfig.from_dict(state["config"]["student"]))
    model.load_state_dict({k[len("model."):]: v for k, v in state["model"].items() if k.startswith("model.")})
    return model.to(device).eval()


def claim_out_dir(out_dir: Path, ckpt_path: Path, config: TrainConfig, rank: int) -> None:
    """Make ``out_dir``, refusing to replace a run already there unless ``resume`` or ``overwrite``
    (with ``overwrite`` rank 0 removes the old checkpoint, the log is rewritten from step 0).

    Raises:
        FileExistsError: ``out_dir`` holds a checkpoint or loss log and neither flag is set.
    """
    old = [p for p in (ckpt_path, out_dir / "train_log.jsonl") if p.exists()]
    if old and not (config.resume or config.overwrite):
        raise FileExistsError(f"{out_dir} already holds a run ({', '.join(map(str, old))}); pass --resume to "
                              "continue it or --overwrite to replace it, or choose another --out")
    if config.overwrite and rank == 0:
        ckpt_path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def read_state(path: str | os.PathLike[str], device: torch.device | str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A :func:`train_student` checkpoint, loaded weights-only (nothing in it runs).

    Raises:
        storage.errors.CheckpointError: unreadable, refused, or missing one of ``keys``.
    """
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state, dict) or any(k not in state for k in keys):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path}: not a student checkpoint (needs {list(keys)}, has {have})")
    return state


__all__ = ["claim_out_dir", "load_student", "params_sha256", "read_state", "save_state"]
