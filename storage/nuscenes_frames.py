"""Which frames a :class:`~storage.nuscenes_reader.NuScenesReader` yields, from the devkit tables.

Scenes: a devkit split (:func:`split_scene_names`), every scene (:data:`ALL_SCENES`) or a list of
names (:func:`select_scenes`; its ``dataset_id`` part: :func:`scene_list_id`). Frames
(:data:`FRAMES`): the annotated keyframes (walked by the reader along ``sample.next``) and the
non-keyframe sweep frames, one per ``is_key_frame: false`` :data:`SWEEP_KEY_CHANNEL` sample_data
row, every other channel taking its row nearest in time (:func:`frame_tokens`). Part of the devkit
reader: the devkit is imported lazily, for its split table only.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

from storage.nuscenes_tables import require_fields
from storage.sample import CAMERA_NAMES

if TYPE_CHECKING:
    from nuscenes import NuScenes  # untyped devkit: Any to mypy

LIDAR_CHANNEL = "LIDAR_TOP"
#: Which frames a reader yields: annotated keyframes, non-keyframe camera sweeps, or both.
FRAMES = ("keyframes", "sweeps", "all")
#: The channel whose non-keyframe sample_data rows define (and key) the sweep frames.
SWEEP_KEY_CHANNEL = "CAM_FRONT"
#: ``split`` value selecting every scene in the tables (custom nuScenes-format datasets).
ALL_SCENES = "all"


def split_scene_names(split: str, version: str) -> list[str]:
    """Scene names of a devkit split.

    Raises:
        ValueError: unknown split (lists the valid ones) or a split of another version.
    """
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise ValueError(f"unknown nuScenes split {split!r}; valid: {', '.join(sorted(splits))}")
    want = "mini" if split.startswith("mini") else "test" if split == "test" else "trainval"
    if not version.endswith(want):
        raise ValueError(f"split {split!r} belongs to a *-{want} version, not {version!r}")
    return list(splits[split])


def select_scenes(nusc: NuScenes, dataroot: str, version: str, split: str, names: Sequence[str] | None
                  ) -> list[dict[str, Any]]:
    """Scene rows of ``names`` (when given), of every scene (``split == "all"``) or of a devkit split.

    Args:
        nusc: the devkit database of ``<dataroot>/<version>``.
        dataroot: the (absolute) dataroot, named in errors.
        version: the tables' version, e.g. ``v1.0-mini``.
        split: a devkit split or :data:`ALL_SCENES`; ignored when ``names`` is given.
        names: scene names to select instead of ``split``.

    Raises:
        ValueError: a name the scene table lacks, an empty list, no scene at all, an unknown split or
            no scene of the split (names the table file or the dataroot).
        NuScenesTableError: a scene row without ``token`` / ``name`` / ``first_sample_token``.
    """
    table_root = os.path.join(dataroot, version)
    rows = [require_fields(s, "scene", ("token", "name", "first_sample_token"), table_root)
            for s in nusc.scene]
    if names is not None:
        missing = [n for n in dict.fromkeys(names) if n not in {s["name"] for s in rows}]
        if missing or not names:
            raise ValueError(f"{os.path.join(table_root, 'scene.json')}: no scene named "
                             f"{', '.join(missing[:5]) or '(empty scene list)'}"
                             f"{f' (+{len(missing) - 5} more)' if len(missing) > 5 else ''}; "
                             f"it has {len(rows)} scenes, e.g. {', '.join(s['name'] for s in rows[:3])}")
        return [s for s in rows if s["name"] in set(names)]
    if split == ALL_SCENES:
        if not rows:
            raise ValueError(f"{os.path.join(table_root, 'scene.json')}: no scenes")
        return rows
    wanted = set(split_scene_names(split, version))
    scenes = [s for s in rows if s["name"] in wanted]
    if not scenes:
        have = sorted(s["name"] for s in rows)
        raise ValueError(f"{dataroot}: no scene of split {split!r} (dataset has {', '.join(have[:10])}"
                         f"{f', ... {len(have)} in all' if len(have) > 10 else ''}; --split all reads "
                         f"every scene, --scenes FILE a list)")
    return scenes


def frame_tokens(nusc: NuScenes, scenes: list[dict[str, Any]], frames: str
                 ) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Frame tokens in time order per scene (keyframes by sample token with ``frames="all"``,
    sweeps by their CAM_FRONT sample_data token) and each sweep frame's nearest rows.

    Args:
        nusc: the devkit database.
        scenes: scene rows (:func:`select_scenes`).
        frames: ``sweeps`` or ``all`` (:data:`FRAMES`; keyframes alone are walked by the reader).

    Returns:
        the frame tokens, and sweep frame token -> channel -> token of that channel's sample_data
        row nearest in time to the frame's CAM_FRONT image ('' when the channel has no row).
    """
    channels = (LIDAR_CHANNEL, *CAMERA_NAMES)
    scene_tokens = {s["token"] for s in scenes}
    scene_of = {r["token"]: r["scene_token"] for r in nusc.sample if r["scene_token"] in scene_tokens}
    chains: dict[tuple[str, str], list[tuple[int, str, bool, str]]] = {}
    for sd in nusc.sample_data:
        scene = scene_of.get(sd["sample_token"])
        if scene is not None and sd["channel"] in channels:
            chains.setdefault((scene, sd["channel"]), []).append(
                (int(sd["timestamp"]), sd["token"], bool(sd["is_key_frame"]), sd["sample_token"]))
    for chain in chains.values():
        chain.sort()
    tokens: list[str] = []
    sweep_frames: dict[str, dict[str, str]] = {}
    for scene in scenes:
        for ts, tok, key, sample_token in chains.get((scene["token"], SWEEP_KEY_CHANNEL), []):
            if key:
                if frames == "all":
                    tokens.append(sample_token)
                continue
            sweep_frames[tok] = {ch: _nearest(chains.get((scene["token"], ch), []), ts) for ch in channels}
            tokens.append(tok)
    return tokens, sweep_frames


def scene_list_id(names: Sequence[str]) -> str:
    """``scenes-<count>-<10 hex of sha1 of the sorted unique names>``: the same list, the same id."""
    unique = sorted(set(names))
    return f"scenes-{len(unique)}-{hashlib.sha1(chr(10).join(unique).encode()).hexdigest()[:10]}"


def _nearest(chain: list[tuple[int, str, bool, str]], timestamp: int) -> str:
    """Token of the time-sorted ``(timestamp, token, ...)`` row nearest to ``timestamp`` ('' if none;
    ties go to the earlier row)."""
    if not chain:
        return ""
    i = bisect.bisect_left(chain, (timestamp,))
    best = min((j for j in (i - 1, i) if 0 <= j < len(chain)), key=lambda j: abs(chain[j][0] - timestamp))
    return chain[best][1]


__all__ = ["ALL_SCENES", "FRAMES", "LIDAR_CHANNEL", "SWEEP_KEY_CHANNEL", "frame_tokens", "scene_list_id",
           "select_scenes", "split_scene_names"]
