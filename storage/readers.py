"""Opening a dataset reader: a nuScenes dataroot (devkit) or an mmdet3d info file.

Readers are imported only when chosen (the devkit is heavy). The command-line flags that select
one live in :mod:`pipeline.dataset_args`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from storage.sample import SampleReader


def read_scene_list(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Scene names from a text file: one per line; blank lines and ``#`` comments are skipped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file names no scene (names the file).
    """
    with open(path, encoding="utf-8") as f:
        names = tuple(dict.fromkeys(line.split("#", 1)[0].strip() for line in f))
    names = tuple(n for n in names if n)
    if not names:
        raise ValueError(f"scene list {os.fspath(path)} names no scene (one scene name per line)")
    return names


def open_reader(*, dataroot: str | os.PathLike[str] | None = None, info: str | os.PathLike[str] | None = None,
                version: str = "v1.0-mini", split: str = "mini_val", data_root: str | os.PathLike[str] | None = None,
                sweeps: int = 0, frames: str = "keyframes", scenes: Sequence[str] | None = None) -> SampleReader:
    """The reader of a nuScenes ``dataroot`` or of an mmdet3d ``info`` pickle (exactly one given).

    Args:
        dataroot: nuScenes dataroot holding ``<version>/*.json``, ``samples/`` and ``sweeps/``.
        info: mmdetection3d info pickle (info_version 1.1 or v0.x).
        version: nuScenes table version folder (with ``dataroot``).
        split: nuScenes devkit split, or ``all`` for every scene in the tables (with ``dataroot``).
        data_root: with ``info``, the folder its relative file paths start from (default: its folder).
        sweeps: past LiDAR sweeps merged into each sample's points.
        frames: with ``dataroot``, ``keyframes``, ``sweeps`` (unannotated non-keyframe frames) or
            ``all`` (see :class:`storage.nuscenes_reader.NuScenesReader`).
        scenes: with ``dataroot``, the scene names to read instead of ``split`` (see :func:`read_scene_list`).

    Raises:
        ValueError: neither ``dataroot`` nor ``info`` was given, or the reader refused them.
    """
    if dataroot:
        from storage.nuscenes_reader import NuScenesReader

        return NuScenesReader(dataroot, version=version, split=split, sweeps=sweeps, frames=frames, scenes=scenes)
    if scenes is not None:
        raise ValueError("a scene list needs a nuScenes dataroot (an mmdet3d info file has no scene table)")
    if frames != "keyframes":
        raise ValueError(f"frames={frames!r} needs a nuScenes dataroot (an mmdet3d info file lists keyframes only)")
    if info:
        from storage.mmdet3d_reader import Mmdet3dInfoReader

        return Mmdet3dInfoReader(info, data_root=data_root, sweeps=sweeps)
    raise ValueError("no dataset given: pass --dataroot DIR (nuScenes) or --info FILE (mmdet3d info pickle)")


__all__ = ["open_reader", "read_scene_list"]
