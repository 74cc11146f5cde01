"""Reads a nuScenes dataroot through the official devkit into :class:`~storage.sample.Sample` s.

Frames follow the devkit: annotations are global; boxes are converted to the keyframe's LiDAR
frame only through :func:`storage.boxes.boxes_from_nuscenes` with ``lidar_from_global``.
Which scenes and frames a reader yields (splits, scene lists, sweep frames) is decided in
:mod:`storage.nuscenes_frames`, whose names are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast
from collections.abc import Sequence

import numpy as np

from storage.arrays import Float32Array, Float64Array, Int64Array
from storage.boxes import boxes_from_nuscenes
from storage.errors import SampleError
from storage.nuscenes_frames import (ALL_SCENES, FRAMES, LIDAR_CHANNEL, SWEEP_KEY_CHANNEL, frame_tokens,
                                     scene_list_id, select_scenes, split_scene_names)
from storage.nuscenes_tables import (FOREIGN_KEYS, REQUIRED_FIELDS, NuScenesTableError, explain_broken_tables,
                                     numeric_field, require_fields)
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES, CameraInfo, Sample, load_points
from storage.transforms import invert_transform, transform_from_quaternion

if TYPE_CHECKING:
    from nuscenes import NuScenes  # untyped devkit: Any to mypy


@dataclass(frozen=True, kw_only=True, eq=False)
class Annotations:
    """The detection-class annotations of one sample, LiDAR frame.

    Attributes:
        gt_boxes: ``(M, 9)`` float64 ``[x, y, z, l, w, h, yaw, vx, vy]``, lidar frame (velocity
            as the devkit's ``box_velocity``, NaN -> 0; see :meth:`NuScenesReader._velocity`).
        gt_labels: ``(M,)`` int64 indices into NUSCENES_CLASSES.
        num_lidar_pts: ``(M,)`` int64.
        instance_tokens: ``M`` instance ids.
        attribute_names: ``M`` attribute names ('' when the annotation has none).
    """

    gt_boxes: Float64Array
    gt_labels: Int64Array
    num_lidar_pts: Int64Array
    instance_tokens: tuple[str, ...]
    attribute_names: tuple[str, ...]


def load_nuscenes(dataroot: str, version: str) -> NuScenes:
    """The devkit's ``NuScenes`` (quiet), with load failures turned into errors that name the
    table file, field and token.

    Raises:
        FileNotFoundError: no ``<dataroot>/<version>`` folder.
        SampleError: a sample_data / sample_annotation record references a missing token.
        NuScenesTableError: another table is unreadable or has a dangling reference.
    """
    from nuscenes import NuScenes

    table_root = os.path.join(dataroot, version)
    if not os.path.isdir(table_root):
        raise FileNotFoundError(f"nuScenes tables not found: {table_root} (check --dataroot / --version)")
    try:
        return NuScenes(version=version, dataroot=dataroot, verbose=False)
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        explain_broken_tables(table_root)
        raise NuScenesTableError(f"nuScenes devkit failed to load {table_root}: {exc!r}") from exc


class NuScenesReader:
    """:class:`~storage.sample.SampleReader` over a nuScenes dataroot (real or synthetic).

    Args:
        dataroot: folder holding ``<version>/*.json``, ``samples/``, ``sweeps/``.
        version: ``v1.0-mini``, ``v1.0-trainval``, ...
        split: a devkit split (``mini_val``, ``mini_train``, ``train``, ``val``, ...) or ``all``
            (:data:`ALL_SCENES`: every scene in the tables, e.g. a custom dataset with its own scene names).
        scenes: scene names to read instead of ``split`` (e.g. the lines of ``--scenes FILE``); the
            ``dataset_id`` then ends in ``scenes-<count>-<hash of the names>``.
        sweeps: past LiDAR sweeps merged into ``points`` (0: keyframe only). With sweeps, column
            4 holds the time lag to the keyframe in seconds (0 for keyframe points) instead of
            the ring index, as mmdet3d's ``LoadPointsFromMultiSweeps``; a keyframe near the
            start of its scene uses the sweeps it has.
        frames: ``keyframes`` (annotated samples, keyed by sample token), ``sweeps`` (the
            non-keyframe frames: one per ``is_key_frame: false`` CAM_FRONT sample_data row, keyed
            by that row's token; each other camera and the LiDAR are the rows of their channel
            nearest in time to that CAM_FRONT image; no annotations, ``Sample.labelled`` False)
            or ``all`` (both, in time order per scene). Other than ``keyframes``, the
            ``dataset_id`` ends in ``:<frames>`` so a cache of one is never read as the other.

    Picklable: the devkit database is dropped when pickled and reloaded lazily.

    Raises:
        ValueError: unknown split (lists the valid ones), no scene of the split in the data, or a
            name in ``scenes`` that the scene table lacks (names the table file).
        FileNotFoundError / SampleError / NuScenesTableError: see :func:`load_nuscenes`; also a scene
            row without ``name`` / ``first_sample_token`` (NuScenesTableError naming file, row and field).
    """

    def __init__(self, dataroot: str | os.PathLike[str], version: str = "v1.0-mini", split: str = "mini_val",
                 sweeps: int = 0, frames: str = "keyframes", scenes: Sequence[str] | None = None) -> None:
        if sweeps < 0:
            raise ValueError(f"NuScenesReader: sweeps must be >= 0, got {sweeps}")
        if frames not in FRAMES:
            raise ValueError(f"NuScenesReader: frames must be one of {FRAMES}, got {frames!r}")
        self.dataroot = os.path.abspath(dataroot)
        self.version, self.sweeps, self.frames = version, int(sweeps), frames
        self.split = split if scenes is None else scene_list_id(scenes)
        self.dataset_id = f"nuscenes:{version}:{self.split}" + ("" if frames == "keyframes" else f":{frames}")
        self._nusc: NuScenes | None = None
        scene_rows = select_scenes(self.nusc, self.dataroot, self.version, split, scenes)
        tokens: list[str] = []
        #: sweep frame token -> channel -> sample_data token of that channel's row nearest in time.
        self._sweep_frames: dict[str, dict[str, str]] = {}
        if frames == "keyframes":
            for scene in scene_rows:
                tok = scene["first_sample_token"]
                while tok:
                    tokens.append(tok)
                    tok = self._get("sample", tok, tok, "sample", "next")["next"]
        else:
            tokens, self._sweep_frames = frame_tokens(self.nusc, scene_rows, frames)
            if not tokens:
                raise ValueError(f"{self.dataroot}: split {split!r} has no {frames} frames (no is_key_frame=false "
                                 f"{SWEEP_KEY_CHANNEL} sample_data)")
        self.sample_tokens: tuple[str, ...] = tuple(tokens)
        self._index = {t: i for i, t in enumerate(tokens)}

    def is_labelled(self, index_or_token: int | str) -> bool:
        """True for an annotated keyframe, False for a sweep frame."""
        return self.token_of(index_or_token) not in self._sweep_frames

    @property
    def nusc(self) -> NuScenes:
        """The devkit ``NuScenes`` database (loaded on first use)."""
        if self._nusc is None:
            self._nusc = load_nuscenes(self.dataroot, self.version)
        return self._nusc

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_nusc"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def token_of(self, index_or_token: int | str) -> str:
        """Sample token of an index or token. Raises IndexError / KeyError naming the dataset."""
        if isinstance(index_or_token, (int, np.integer)):
            if not -len(self) <= index_or_token < len(self):
                raise IndexError(f"{self.dataset_id}: index {index_or_token} out of range ({len(self)} samples)")
            return self.sample_tokens[index_or_token]
        if index_or_token not in self._index:
            raise KeyError(f"{self.dataset_id}: no sample {index_or_token}")
        return str(index_or_token)

    def _get(self, table: str, token: str, sample_token: str, referrer: str, fld: str,
             row: str = "") -> dict[str, Any]:
        """``nusc.get`` of a row with every field of :data:`REQUIRED_FIELDS`.

        Raises:
            SampleError: ``token`` is missing (names the referring table, field and, when given, the
                referring ``row``), or the row lacks a required field (names table, row token, field).
        """
        try:
            rec = cast("dict[str, Any]", self.nusc.get(table, token))
        except KeyError:
            path = os.path.join(self.dataroot, self.version, f"{referrer}.json")
            of = f" (record {row})" if row else ""
            raise SampleError(sample_token, f"{referrer}.{fld}", f"references missing {table} token {token}{of}",
                              path) from None
        return require_fields(rec, table, REQUIRED_FIELDS.get(table, ()), os.path.join(self.dataroot, self.version),
                              sample_token)

    def _numbers(self, rec: dict[str, Any], table: str, fld: str, shape: tuple[int, ...],
                 sample_token: str) -> Float64Array:
        """:func:`~storage.nuscenes_tables.numeric_field` of this dataset (SampleError naming the row)."""
        return numeric_field(rec, table, fld, shape, os.path.join(self.dataroot, self.version), sample_token)

    def _transform(self, rec: dict[str, Any], table: str, sample_token: str) -> Float64Array:
        """``(4, 4)`` float64 of a row's ``rotation`` (4 numbers, wxyz) and ``translation`` (3 numbers, m)."""
        return transform_from_quaternion(self._numbers(rec, table, "rotation", (4,), sample_token),
                                         self._numbers(rec, table, "translation", (3,), sample_token))

    def _pose(self, sd: dict[str, Any], sample_token: str) -> tuple[Float64Array, Float64Array]:
        """``(ego_from_sensor, global_from_ego)`` of a sample_data record."""
        cs = self._get("calibrated_sensor", sd["calibrated_sensor_token"], sample_token, "sample_data",
                       "calibrated_sensor_token", sd["token"])
        pose = self._get("ego_pose", sd["ego_pose_token"], sample_token, "sample_data", "ego_pose_token", sd["token"])
        return self._transform(cs, "calibrated_sensor", sample_token), self._transform(pose, "ego_pose", sample_token)

    def _velocity(self, ann: dict[str, Any], sample_token: str) -> Float64Array:
        """``(2,)`` float64 global-frame velocity (m/s) of an annotation, as the devkit's
        ``box_velocity``: the centred difference of its ``prev`` and ``next`` rows, one-sided
        when one is absent, NaN when both are or they lie more than 1.5 s (centred: 3 s) apart.
        A neighbour row without a usable ``translation`` / sample timestamp counts as absent: it
        is that row's own sample which fails, naming it (one broken row, one error).

        Raises:
            SampleError: ``prev`` / ``next`` references a token the table lacks (names the record).
        """
        root = os.path.join(self.dataroot, self.version)

        def at(rec: dict[str, Any]) -> tuple[Float64Array, float] | None:
            try:
                position = numeric_field(rec, "sample_annotation", "translation", (3,), root)
                return position, 1e-6 * float(self.nusc.get("sample", rec["sample_token"])["timestamp"])
            except (KeyError, ValueError, TypeError):  # NuScenesTableError is a ValueError
                return None

        ends: list[tuple[Float64Array, float] | None] = []
        for fld in ("prev", "next"):
            ref = ann[fld]
            try:
                ends.append(at(self.nusc.get("sample_annotation", ref)) if ref else None)
            except KeyError:
                path = os.path.join(root, "sample_annotation.json")
                raise SampleError(sample_token, f"sample_annotation.{fld}",
                                  f"references missing sample_annotation token {ref} (record {ann['token']})",
                                  path) from None
        own = at(ann)
        first, last = ends[0] or own, ends[1] or own
        if first is None or last is None or (ends[0] is None and ends[1] is None):
            return np.full(2, np.nan)
        dt = last[1] - first[1]
        if dt > (3.0 if ends[0] is not None and ends[1] is not None else 1.5):
            return np.full(2, np.nan)
        out: Float64Array = ((last[0] - first[0]) / dt)[:2]
        return out

    def _sample_data(self, sample: dict[str, Any], channel: str) -> dict[str, Any]:
        token = sample["data"].get(channel)
        if token is None:
            path = os.path.join(self.dataroot, self.version, "sample_data.json")
            raise SampleError(sample["token"], f"{channel} sample_data", "missing", path)
        return self._get("sample_data", token, sample["token"], "sample", f"data[{channel}]", sample["token"])

    def annotations(self, index_or_token: int | str) -> Annotations:
        """Detection-class annotations of a sample in its LiDAR frame (no point cloud read).

        Raises:
            SampleError: a referenced record is missing (names the table file and token).
        """
        from nuscenes.eval.detection.utils import category_to_detection_name

        token = self.token_of(index_or_token)
        if token in self._sweep_frames:
            return Annotations(gt_boxes=np.zeros((0, 9)), gt_labels=np.zeros(0, dtype=np.int64),
                               num_lidar_pts=np.zeros(0, dtype=np.int64), instance_tokens=(), attribute_names=())
        sample = self._get("sample", token, token, "sample", "token")
        ego_from_lidar, global_from_ego = self._pose(self._sample_data(sample, LIDAR_CHANNEL), token)
        lidar_from_global = invert_transform(global_from_ego @ ego_from_lidar)
        rows, labels, pts, inst, attrs = [], [], [], [], []
        for ann_token in sample["anns"]:
            ann = self._get("sample_annotation", ann_token, token, "sample", "anns", token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            rows.append((*(self._numbers(ann, "sample_annotation", f, n, token)
                           for f, n in (("translation", (3,)), ("size", (3,)), ("rotation", (4,)))),
                         self._velocity(ann, token)))
            labels.append(NUSCENES_CLASSES.index(name))
            pts.append(int(self._numbers(ann, "sample_annotation", "num_lidar_pts", (), token)))
            inst.append(ann["instance_token"])
            attrs.append(",".join(self._get("attribute", a, token, "sample_annotation", "attribute_tokens",
                                            ann_token)["name"]
                                  for a in ann["attribute_tokens"]))
        if rows:
            t, s, r, v = (np.array([row[i] for row in rows], dtype=np.float64) for i in range(4))
            boxes = boxes_from_nuscenes(t, s, r, v, lidar_from_global)
        else:
            boxes = np.zeros((0, 9))
        return Annotations(gt_boxes=boxes, gt_labels=np.array(labels, dtype=np.int64),
                           num_lidar_pts=np.array(pts, dtype=np.int64), instance_tokens=tuple(inst),
                           attribute_names=tuple(attrs))

    def global_from_lidar(self, index_or_token: int | str) -> Float64Array:
        """``(4, 4)`` float64 pose of the sample's LiDAR (keyframe, or a sweep frame's nearest sweep)."""
        token = self.token_of(index_or_token)
        ego_from_lidar, global_from_ego = self._pose(self._frame_rows(token)[LIDAR_CHANNEL], token)
        out: Float64Array = global_from_ego @ ego_from_lidar
        return out

    def read(self, index_or_token: int | str) -> Sample:
        """Load one sample (keyframe points, six cameras, boxes).

        Raises:
            SampleError: missing / truncated point cloud, missing record or camera (names the
                sample, field and path). Images are read later by ``CameraInfo.load_image``.
        """
        token = self.token_of(index_or_token)
        rows = self._frame_rows(token)
        frame = self._frame_sample(token, rows)
        points = load_points(frame.lidar_path, token)
        if self.sweeps:
            lidar_from_global = invert_transform(frame.global_from_ego @ frame.ego_from_lidar)
            points = self._with_sweeps(points, rows[LIDAR_CHANNEL], lidar_from_global, token)
        return replace(frame, points=points)

    def read_without_points(self, index_or_token: int | str) -> Sample:
        """The sample of :meth:`read` with ``points`` empty ``(0, 5)`` float32: tables only, no
        file is opened (the sample index is built from it).

        Raises:
            SampleError: a missing record or camera row (names the sample, table and field).
        """
        token = self.token_of(index_or_token)
        return self._frame_sample(token, self._frame_rows(token))

    def _frame_sample(self, token: str, rows: dict[str, dict[str, Any]]) -> Sample:
        """A frame's Sample from its ``sample_data`` rows (:meth:`_frame_rows`), points empty."""
        lidar_sd = rows[LIDAR_CHANNEL]
        ego_from_lidar, global_from_ego = self._pose(lidar_sd, token)
        lidar_from_global = invert_transform(global_from_ego @ ego_from_lidar)
        cameras = []
        for name in CAMERA_NAMES:
            sd = rows[name]
            ego_from_cam, global_from_ego_cam = self._pose(sd, token)
            cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            cameras.append(CameraInfo(
                name=name, image_path=os.path.join(self.dataroot, sd["filename"]),
                cam_intrinsic=self._numbers(cs, "calibrated_sensor", "camera_intrinsic", (3, 3), token),
                ego_from_cam=ego_from_cam,
                lidar_from_cam=lidar_from_global @ global_from_ego_cam @ ego_from_cam,
                timestamp_us=int(sd["timestamp"]), image_size=(int(sd["width"]), int(sd["height"]))))
        ann = self.annotations(token)
        labelled = token not in self._sweep_frames
        sample = self._get("sample", token if labelled else rows[SWEEP_KEY_CHANNEL]["sample_token"], token,
                           "sample" if labelled else "sample_data", "token" if labelled else "sample_token")
        scene = self._get("scene", sample["scene_token"], token, "sample", "scene_token")
        timestamp = sample["timestamp"] if labelled else lidar_sd["timestamp"]
        return Sample(sample_token=token, timestamp_us=int(timestamp), scene=scene["name"],
                      lidar_path=os.path.join(self.dataroot, lidar_sd["filename"]),
                      points=np.zeros((0, 5), np.float32), cameras=tuple(cameras), ego_from_lidar=ego_from_lidar,
                      global_from_ego=global_from_ego, gt_boxes=ann.gt_boxes, gt_labels=ann.gt_labels,
                      num_lidar_pts=ann.num_lidar_pts, instance_tokens=ann.instance_tokens, labelled=labelled)

    def _frame_rows(self, token: str) -> dict[str, dict[str, Any]]:
        """Channel -> sample_data record of a frame: the keyframe's ``sample.data``, or a sweep
        frame's rows nearest in time to its CAM_FRONT image.

        Raises:
            SampleError: a channel has no row or references a missing record.
        """
        frame = self._sweep_frames.get(token)
        if frame is None:
            sample = self._get("sample", token, token, "sample", "token")
            return {ch: self._sample_data(sample, ch) for ch in (LIDAR_CHANNEL, *CAMERA_NAMES)}
        out = {}
        for ch, sd_token in frame.items():
            if not sd_token:
                path = os.path.join(self.dataroot, self.version, "sample_data.json")
                raise SampleError(token, f"{ch} sample_data", "missing (no row of the channel in the scene)", path)
            out[ch] = self._get("sample_data", sd_token, token, "sample_data", "token")
        return out

    def _sweeps_of(self, lidar_sd: dict[str, Any], lidar_from_global: Float64Array, token: str
                   ) -> list[tuple[str, Float64Array, float]]:
        """Up to ``sweeps`` past LiDAR sweeps of a frame, newest first: ``(path, (4, 4)
        key_from_sweep, time lag s)``; tables only, no file is opened."""
        out = []
        sd = lidar_sd
        for _ in range(self.sweeps):
            if not sd["prev"]:
                break
            sd = self._get("sample_data", sd["prev"], token, "sample_data", "prev", sd["token"])
            ego_from_lidar, global_from_ego = self._pose(sd, token)
            key_from_sweep = lidar_from_global @ global_from_ego @ ego_from_lidar
            out.append((os.path.join(self.dataroot, sd["filename"]), key_from_sweep,
                        (lidar_sd["timestamp"] - sd["timestamp"]) / 1e6))
        return out

    def _with_sweeps(self, points: Float32Array, lidar_sd: dict[str, Any], lidar_from_global: Float64Array,
                     token: str) -> Float32Array:
        """Keyframe points plus up to ``sweeps`` past sweeps in the keyframe LiDAR frame;
        column 4 = time lag (s)."""
        key = points.copy()
        key[:, 4] = 0.0
        out = [key]
        for path, key_from_sweep, lag_s in self._sweeps_of(lidar_sd, lidar_from_global, token):
            pts = load_points(path, token)
            moved = pts.copy()
            moved[:, :3] = (pts[:, :3].astype(np.float64) @ key_from_sweep[:3, :3].T + key_from_sweep[:3, 3])
            moved[:, 4] = lag_s
            out.append(moved)
        return np.concatenate(out, axis=0).astype(np.float32)


__all__ = ["ALL_SCENES", "FOREIGN_KEYS", "FRAMES", "LIDAR_CHANNEL", "REQUIRED_FIELDS", "SWEEP_KEY_CHANNEL",
           "Annotations", "NuScenesReader", "NuScenesTableError", "explain_broken_tables", "load_nuscenes",
           "split_scene_names"]
