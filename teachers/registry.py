"""The one string registry of bevkd (STYLE.md §4): teacher name -> factory.

The name is recorded in every cache, together with the teacher's config and the sha256 of its
weights (:class:`storage.cache.TeacherInfo`, returned by :func:`load_teacher`). Besides the
built-in names, ``"package.module:factory"`` names any importable callable returning an ``nn.Module``
whose ``forward(TeacherInput)`` returns a :class:`teachers.output.TeacherOutput` ("bring your own teacher").

Checkpoint format (``torch.save`` of a dict): ``{"teacher": name, "config": config dict,
"state_dict": ..., "meta": {...}}``; built-in teachers are rebuilt from ``config``. Checkpoints
are loaded weights-only, and the name a checkpoint records selects only a registered teacher: a
``package.module:factory`` is imported only when the caller names it (``--teacher``), never
because a file says so (STYLE.md §19).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from typing import Any
from collections.abc import Callable

import torch
from torch import nn

from storage.cache.schema import TeacherInfo
from storage.checkpoint import load_checkpoint
from storage.errors import CheckpointError
from teachers.config import (CenterPointConfig, centerpoint_config_from_dict, centerpoint_road, centerpoint_tiny,
                             centerpoint_voxel0075, config_to_dict)


def _centerpoint(config: CenterPointConfig | None) -> nn.Module:
    from teachers.centerpoint import CenterPointTeacher

    return CenterPointTeacher(config or centerpoint_tiny())


def _centerpoint_road(config: CenterPointConfig | None) -> nn.Module:
    from teachers.centerpoint import CenterPointTeacher

    return CenterPointTeacher(config or centerpoint_road())


def _centerpoint_nus(config: CenterPointConfig | None) -> nn.Module:
    from teachers.centerpoint import CenterPointTeacher

    return CenterPointTeacher(config or centerpoint_voxel0075())


def _bevfusion(config: Any | None) -> nn.Module:
    from teachers.fusion import BEVFusionTeacher, fusion_tiny

    return BEVFusionTeacher(config or fusion_tiny())


def _fusion_config_from_dict(d: dict[str, Any]) -> Any:
    from teachers.fusion import fusion_config_from_dict

    return fusion_config_from_dict(d)


#: name -> (factory(config or None) -> module, config_from_dict)
TEACHERS: dict[str, tuple[Callable[[Any], nn.Module], Callable[[dict[str, Any]], Any]]] = {
    "centerpoint": (_centerpoint, centerpoint_config_from_dict),
    "centerpoint_road": (_centerpoint_road, centerpoint_config_from_dict),
    "centerpoint_voxel0075": (_centerpoint_nus, centerpoint_config_from_dict),
    "bevfusion": (_bevfusion, _fusion_config_from_dict),
}


def weights_sha256(module: nn.Module) -> str:
    """sha256 hex digest of a module's state dict (key, dtype, shape and raw bytes, in key order)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _module_config(module: nn.Module) -> dict[str, Any]:
    cfg = getattr(module, "config", None)
    return config_to_dict(cfg) if cfg is not None and dataclasses.is_dataclass(cfg) else {}


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"teacher {spec!r}: expected a registered name ({', '.join(TEACHERS)}) "
                         "or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"teacher {spec!r}: cannot import factory ({exc})") from None
    if not callable(factory):
        raise ValueError(f"teacher {spec!r}: {attr} is not callable")
    return factory


def build_teacher(name: str, config: Any | None = None) -> nn.Module:
    """A freshly initialised teacher by registry ``name`` (optional config object), or by
    ``package.module:factory`` (called without arguments).

    Raises:
        ValueError: unknown name, or a factory that cannot be imported / returns no nn.Module.
    """
    if name in TEACHERS:
        return TEACHERS[name][0](config)
    module = _import_factory(name)()
    if not isinstance(module, nn.Module):
        raise ValueError(f"teacher {name!r}: factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def save_checkpoint(module: nn.Module, name: str, path: str | os.PathLike[str],
                    meta: dict[str, Any] | None = None) -> str:
    """Write ``{"teacher", "config", "state_dict", "meta"}`` to ``path``; returns the weights sha256."""
    torch.save({"teacher": name, "config": _module_config(module), "state_dict": module.state_dict(),
                "meta": dict(meta or {})}, os.fspath(path))
    return weights_sha256(module)


def load_teacher(name_or_factory: str | Callable[[], nn.Module] | None = None,
                 checkpoint: str | os.PathLike[str] | None = None,
                 map_location: str | torch.device = "cpu") -> tuple[nn.Module, TeacherInfo]:
    """Build (and optionally load) a teacher in eval mode.

    Args:
        name_or_factory: registry name, ``package.module:factory``, a zero-argument callable, or
            None to take the name stored in ``checkpoint`` (a registered name only: a name read
            from a file is never imported).
        checkpoint: a checkpoint written by :func:`save_checkpoint` (its config rebuilds built-in
            teachers), or a bare state dict file for user modules.

    Returns:
        ``(module, TeacherInfo)``.

    Raises:
        ValueError: unknown teacher, a checkpoint for another teacher, or mismatched weights
            (the message names the checkpoint and the first missing/unexpected keys).
        storage.errors.CheckpointError (a ValueError): the checkpoint is unreadable, asks to run
            code, or (without ``name_or_factory``) names an unregistered teacher.
    """
    ckpt = _read_checkpoint(checkpoint, map_location) if checkpoint is not None else None
    name = name_or_factory if name_or_factory is not None else _stored_name(ckpt, checkpoint)
    if name is None:
        raise ValueError("load_teacher: give a teacher name or a checkpoint that records one")
    if callable(name):
        module, label = name(), f"{getattr(name, '__module__', '?')}:{getattr(name, '__qualname__', '?')}"
    else:
        label = str(name)
        config = None
        if ckpt is not None and label in TEACHERS and ckpt.get("config"):
            stored = ckpt.get("teacher")
            same_config = stored in TEACHERS and TEACHERS[stored][1] is TEACHERS[label][1]
            if stored not in (None, label) and not same_config:
                raise ValueError(f"checkpoint {checkpoint}: holds teacher {ckpt['teacher']!r}, not {label!r}")
            config = TEACHERS[label][1](ckpt["config"])
        module = build_teacher(label, config)
    if ckpt is not None:
        missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {checkpoint}: weights do not fit teacher {label!r}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    module.eval()
    return module, TeacherInfo(name=label, config=_module_config(module), weights_sha256=weights_sha256(module),
                               checkpoint=os.fspath(checkpoint) if checkpoint is not None else "",
                               meta=dict((ckpt or {}).get("meta", {})))


def _read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device) -> dict[str, Any]:
    obj = load_checkpoint(path, map_location=map_location)  # weights-only: nothing in the file runs
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"teacher": None, "config": {}, "state_dict": obj, "meta": {}}
    raise CheckpointError(f"checkpoint {path}: not a bevkd checkpoint or state dict")


def _stored_name(ckpt: dict[str, Any] | None, path: Any) -> str | None:
    """The teacher name a checkpoint records, if it is a registered one.

    A name read from a file never selects code to import: ``package.module:factory`` (or any
    other unregistered name) must come from the caller (``--teacher``).

    Raises:
        storage.errors.CheckpointError: the checkpoint names an unregistered teacher.
    """
    stored = (ckpt or {}).get("teacher")
    if stored is None or (isinstance(stored, str) and stored in TEACHERS):
        return stored
    raise CheckpointError(f"checkpoint {path}: names teacher {str(stored)[:100]!r}, which is not registered "
                          f"({', '.join(TEACHERS)}); a checkpoint's name is never imported, pass --teacher "
                          "package.module:factory yourself if you trust it")


__all__ = ["TEACHERS", "build_teacher", "load_teacher", "save_checkpoint", "weights_sha256"]
