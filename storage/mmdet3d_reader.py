"""Read (and write) mmdetection3d nuScenes info pickles as :class:`~storage.sample.Sample`.

Two layouts are read, both through :func:`storage.safe_pickle.safe_load` (no code from the file
ever runs):

* info_version 1.1 (mmdet3d >= 1.1): ``{metainfo, data_list}``. Per sample: ``token``,
  ``timestamp`` (s), ``ego2global`` (4x4), ``lidar_points.{lidar_path, lidar2ego}``,
  ``images[CAM].{img_path, cam2img, cam2ego, lidar2cam, timestamp (s)[, width, height]}``,
  ``instances[i].{bbox_3d [x,y,z,l,w,h,yaw] lidar frame, bbox_label_3d, bbox_3d_isvalid,
  num_lidar_pts, velocity}``, optional ``lidar_sweeps[j].{timestamp, lidar_points.{lidar_path,
  lidar2sensor}}``. Label ids index ``metainfo.categories`` (mmdet3d's class order).
* v0.x (mmdet3d < 1.0): ``{infos, metadata}``. Per sample: ``token``, ``timestamp`` (us),
  ``lidar_path``, ``lidar2ego_{rotation,translation}``, ``ego2global_{rotation,translation}``
  (quaternions wxyz), ``cams[CAM].{data_path, cam_intrinsic, sensor2ego_*, sensor2lidar_*,
  timestamp (us)}``, ``gt_boxes [x,y,z,w,l,h,yaw_v0]``, ``gt_names``, ``gt_velocity``,
  ``num_lidar_pts``, optional ``sweeps[j].{data_path, sensor2lidar_*, timestamp (us)}``.

Conventions of the Samples produced:

* Boxes: every instance whose class is one of :data:`~storage.sample.NUSCENES_CLASSES` is kept
  (``bbox_label_3d == -1`` / other names are dropped). ``bbox_3d_isvalid`` / ``valid_flag`` do
  **not** filter: mmdet3d sets them to ``num_lidar_pts + num_radar_pts > 0``; callers that want
  mmdet3d's ``use_valid_flag`` behaviour keep ``num_lidar_pts > 0`` (the real keyframe's three
  invalid boxes are exactly its boxes with 0 LiDAR and 0 radar points).
* Scene: the sample's ``scene_name`` / ``scene`` key (written by
  :func:`write_mmdet3d_infos`), else ``metainfo["scene"]``, else ``"unknown"`` (mmdet3d's own
  infos carry no scene name).
* Instance tokens: the instance's ``instance_token`` key when present, else ``""``.
* Image size: the info's ``width``/``height`` when present, else the JPEG header (no decoding).
* Paths: ``p`` absolute, else ``<data_root>/p``, else ``<data_root>/samples/<SENSOR>/<basename>``
  (``sweeps/LIDAR_TOP`` for sweeps): mmdet3d 1.1 stores bare file names relative to its
  ``data_prefix`` folders, v0.x stores ``./data/nuscenes/samples/...``.
"""

from __future__ import annotations

import itertools
import os
import pickle
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from storage.arrays import Float32Array, Float64Array, Int64Array
from storage.boxes import boxes_from_mmdet3d_v0, boxes_from_mmdet3d_v1, boxes_to_mmdet3d_v1
from storage.errors import SampleError
from storage.info_fields import InfoFields
from storage.safe_pickle import safe_load
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES, CameraInfo, Sample, load_points
from storage.transforms import apply_transform, make_transform, transform_from_quaternion

#: mmdet3d's nuScenes class order (``metainfo.categories`` ids); used when writing infos.
MMDET3D_NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian",
    "traffic_cone", "barrier",
)
_CLASS_INDEX = {name: i for i, name in enumerate(NUSCENES_CLASSES)}


def _us(seconds: float) -> int:
    return int(round(float(seconds) * 1e6))


class Mmdet3dInfoReader:
    """:class:`~storage.sample.SampleReader` over an mmdet3d info pickle (v1.1 or v0.x).

    Args:
        info_path: the ``.pkl`` info file.
        data_root: folder the info's relative paths start from (default: the info file's folder).
        sweeps: number of past LiDAR sweeps merged into ``points`` (0: keyframe only). With
            sweeps, column 4 holds the time lag to the keyframe in seconds (0 for keyframe
            points) instead of the ring index, as mmdet3d's ``LoadPointsFromMultiSweeps``.
            Samples with fewer sweeps use those they have.

    Raises:
        FileNotFoundError: the info file does not exist.
        UnsafePickleError: the info pickle references code (see :mod:`storage.safe_pickle`).
        ValueError: the file is not an mmdet3d info pickle, or a sample has no ``token`` (names the file).
    """

    def __init__(self, info_path: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None,
                 sweeps: int = 0) -> None:
        self.info_path = os.path.abspath(info_path)
        self.data_root = os.path.abspath(data_root if data_root is not None else os.path.dirname(self.info_path))
        if sweeps < 0:
            raise ValueError(f"Mmdet3dInfoReader: sweeps must be >= 0, got {sweeps}")
        self.sweeps = int(sweeps)
        self._load()
        self.sample_tokens: tuple[str, ...] = tuple(str(i["token"]) for i in self._infos)  # checked by _load
        self._index = {t: i for i, t in enumerate(self.sample_tokens)}
        version = self._meta.get("version", "unknown")
        self.dataset_id = f"mmdet3d:{version}:{Path(self.info_path).stem}"

    def _load(self) -> None:
        data = safe_load(self.info_path)
        if isinstance(data, dict) and isinstance(data.get("data_list"), list):
            self.layout, self._meta, self._infos = "v1", dict(data.get("metainfo") or {}), data["data_list"]
        elif isinstance(data, dict) and isinstance(data.get("infos"), list):
            self.layout, self._meta, self._infos = "v0", dict(data.get("metadata") or {}), data["infos"]
        else:
            raise ValueError(f"{self.info_path}: not an mmdet3d info file (expected {{metainfo, data_list}} "
                             f"or {{infos, metadata}})")
        key = "data_list" if self.layout == "v1" else "infos"
        for i, info in enumerate(self._infos):
            if not isinstance(info, dict) or not isinstance(info.get("token"), str) or not info["token"]:
                raise ValueError(f"{self.info_path}: {key}[{i}] has no sample token (field token)")
        cats = self._meta.get("categories") or {n: i for i, n in enumerate(MMDET3D_NUSCENES_CLASSES)}
        self._label_map = {int(i): _CLASS_INDEX.get(str(n), -1) for n, i in cats.items()}

    def __getstate__(self) -> dict[str, Any]:  # ship to Ray workers without the parsed infos
        state = dict(self.__dict__)
        for key in ("_infos", "_meta", "_label_map"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def read(self, index_or_token: int | str) -> Sample:
        """Load one sample (points from disk, image headers for sizes).

        Raises:
            IndexError / KeyError: unknown index or token.
            SampleError: a LiDAR/camera file is missing or broken, a camera is absent from the
                info, or a field is missing or not of its type and shape (``lidar_points.lidar2ego``
                not 4x4 numbers, ``instances[3].bbox_3d`` not 7 numbers: :class:`InfoFields`); the
                message names the sample token, the field and the path. Only that sample fails.
        """
        if "_infos" not in self.__dict__:
            self._load()
        if isinstance(index_or_token, str):
            if index_or_token not in self._index:
                raise KeyError(f"{self.info_path}: no sample {index_or_token}")
            index = self._index[index_or_token]
        else:
            index = int(index_or_token)
            if not 0 <= index < len(self):
                raise IndexError(f"{self.info_path}: index {index} out of range [0, {len(self)})")
        info = self._infos[index]
        return self._read_v1(info) if self.layout == "v1" else self._read_v0(info)

    # ---- path resolution -------------------------------------------------------------------
    def _resolve(self, path: str, subdir: str, token: str, field: str) -> str:
        path = str(path)
        candidates = [path] if os.path.isabs(path) else [os.path.join(self.data_root, path)]
        candidates.append(os.path.join(self.data_root, subdir, os.path.basename(path)))
        for c in candidates:
            if os.path.isfile(c):
                return os.path.abspath(c)
        tried = f"missing (also tried {candidates[1]})"
        raise SampleError(token, field, tried, os.path.abspath(candidates[0]))

    def _points(self, path: str, token: str, sweeps: list[tuple[str, Float64Array, float]]) -> Float32Array:
        pts = load_points(path, token)
        if not sweeps:
            return pts
        parts = [pts.copy()]
        parts[0][:, 4] = 0.0
        for sweep_path, lidar_from_sweep, dt in sweeps:
            sp = load_points(sweep_path, token).copy()
            sp[:, :3] = apply_transform(lidar_from_sweep, sp[:, :3].astype(np.float64)).astype(np.float32)
            sp[:, 4] = dt
            parts.append(sp)
        return np.concatenate(parts, axis=0)

    def _image_size(self, path: str, img: InfoFields, cam: str) -> tuple[int, int]:
        if img.raw("width", None) is not None and img.raw("height", None) is not None:
            return (img.integer("width"), img.integer("height"))
        from PIL import Image, UnidentifiedImageError  # lazy: keep `import storage` light

        try:
            with Image.open(path) as im:
                return (int(im.size[0]), int(im.size[1]))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise SampleError(img.sample_token, f"{cam} image", f"unreadable header ({exc})", path) from None

    def _labels(self, raw: Sequence[int]) -> Int64Array:
        return np.array([self._label_map.get(int(r), -1) for r in raw], dtype=np.int64)

    def _fields(self, info: Any) -> InfoFields:
        """Checked access to one sample's info (its ``token`` was checked when the file was opened)."""
        return InfoFields(record=info, sample_token=str(info["token"]), info_path=self.info_path)

    def _camera(self, info: InfoFields, key: str, cam: str) -> InfoFields:
        """``info[key][cam]`` (``images`` / ``cams``).

        Raises:
            SampleError: the camera is absent (``<CAM> calibration missing from the info file``).
        """
        cams = info.raw(key, {})
        if not isinstance(cams, dict) or not isinstance(cams.get(cam), dict):
            raise SampleError(info.sample_token, f"{cam} calibration", "missing from the info file", self.info_path)
        return info.sub(key).sub(cam)

    # ---- v1.1 --------------------------------------------------------------------------------
    def _read_v1(self, raw: dict[str, Any]) -> Sample:
        info = self._fields(raw)
        token = info.sample_token
        lidar = info.sub("lidar_points")
        lidar_path = self._resolve(lidar.text("lidar_path"), "samples/LIDAR_TOP", token, "LiDAR points")
        ts = float(info.numbers("timestamp", ()))
        sweeps = []
        for sw in itertools.islice(info.items("lidar_sweeps"), self.sweeps):
            sw_points = sw.sub("lidar_points")
            sp = self._resolve(sw_points.text("lidar_path"), "sweeps/LIDAR_TOP", token, "LiDAR sweep")
            # mmdet3d stores lidar2sensor = inverse(sweep sensor -> keyframe lidar).
            sweeps.append((sp, np.linalg.inv(sw_points.numbers("lidar2sensor", (4, 4), crop=True)),
                           ts - float(sw.numbers("timestamp", ()))))
        cameras = []
        for cam in CAMERA_NAMES:
            img = self._camera(info, "images", cam)
            if not img.raw("img_path", ""):
                raise SampleError(token, f"{cam} calibration", "missing from the info file", self.info_path)
            path = self._resolve(img.text("img_path"), f"samples/{cam}", token, f"{cam} image")
            cameras.append(CameraInfo(
                name=cam, image_path=path, cam_intrinsic=img.numbers("cam2img", (3, 3), crop=True),
                ego_from_cam=img.numbers("cam2ego", (4, 4), crop=True),
                lidar_from_cam=np.linalg.inv(img.numbers("lidar2cam", (4, 4), crop=True)),
                timestamp_us=_us(float(img.numbers("timestamp", (), ts))), image_size=self._image_size(path, img, cam)))
        inst = list(info.items("instances"))
        labels = self._labels([i.integer("bbox_label_3d") for i in inst])
        kept = [i for i, lab in zip(inst, labels, strict=True) if lab >= 0]
        boxes = boxes_from_mmdet3d_v1(np.array([i.numbers("bbox_3d", (7,)) for i in kept]).reshape(-1, 7),
                                      np.array([i.numbers("velocity", (2,), (0.0, 0.0)) for i in kept]).reshape(-1, 2))
        return Sample(
            sample_token=token, timestamp_us=_us(ts), scene=self._scene(raw), lidar_path=lidar_path,
            points=self._points(lidar_path, token, sweeps), cameras=tuple(cameras),
            ego_from_lidar=lidar.numbers("lidar2ego", (4, 4), crop=True),
            global_from_ego=info.numbers("ego2global", (4, 4), crop=True), gt_boxes=boxes,
            gt_labels=labels[labels >= 0],
            num_lidar_pts=np.array([i.integer("num_lidar_pts", -1) for i in kept], dtype=np.int64),
            instance_tokens=tuple(str(i.raw("instance_token", "")) for i in kept))

    def _scene(self, info: dict[str, Any]) -> str:
        return str(info.get("scene_name") or info.get("scene") or self._meta.get("scene") or "unknown")

    # ---- v0.x --------------------------------------------------------------------------------
    def _read_v0(self, raw: dict[str, Any]) -> Sample:
        info = self._fields(raw)
        token = info.sample_token
        lidar_path = self._resolve(info.text("lidar_path"), "samples/LIDAR_TOP", token, "LiDAR points")
        ts_us = info.integer("timestamp")
        sweeps = []
        for sw in itertools.islice(info.items("sweeps"), self.sweeps):
            sp = self._resolve(sw.text("data_path"), "sweeps/LIDAR_TOP", token, "LiDAR sweep")
            lidar_from_sweep = make_transform(sw.numbers("sensor2lidar_rotation", (3, 3)),
                                              sw.numbers("sensor2lidar_translation", (3,)))
            sweeps.append((sp, lidar_from_sweep, (ts_us - sw.integer("timestamp")) / 1e6))
        cameras = []
        for cam in CAMERA_NAMES:
            c = self._camera(info, "cams", cam)
            path = self._resolve(c.text("data_path"), f"samples/{cam}", token, f"{cam} image")
            cameras.append(CameraInfo(
                name=cam, image_path=path, cam_intrinsic=c.numbers("cam_intrinsic", (3, 3), crop=True),
                ego_from_cam=transform_from_quaternion(c.quaternion("sensor2ego_rotation"),
                                                       c.numbers("sensor2ego_translation", (3,))),
                lidar_from_cam=make_transform(c.numbers("sensor2lidar_rotation", (3, 3)),
                                              c.numbers("sensor2lidar_translation", (3,))),
                timestamp_us=c.integer("timestamp", ts_us), image_size=self._image_size(path, c, cam)))
        names = [str(n) for n in info.raw("gt_names", [])]
        keep = np.array([n in _CLASS_INDEX for n in names], dtype=bool)
        n = len(names)
        gt = info.numbers("gt_boxes", (n, -1), np.zeros((0, 7)))
        if gt.shape[1] < 7:
            raise info.error("gt_boxes", f"is not {n}x7 numbers (got shape {gt.shape})")
        vel = info.numbers("gt_velocity", (n, 2), np.zeros((n, 2)))
        npts = info.numbers("num_lidar_pts", (n,), -np.ones(n)).astype(np.int64)
        tokens = info.raw("instance_tokens", None) or [""] * n
        return Sample(
            sample_token=token, timestamp_us=ts_us, scene=self._scene(raw), lidar_path=lidar_path,
            points=self._points(lidar_path, token, sweeps), cameras=tuple(cameras),
            ego_from_lidar=transform_from_quaternion(info.quaternion("lidar2ego_rotation"),
                                                     info.numbers("lidar2ego_translation", (3,))),
            global_from_ego=transform_from_quaternion(info.quaternion("ego2global_rotation"),
                                                      info.numbers("ego2global_translation", (3,))),
            gt_boxes=boxes_from_mmdet3d_v0(gt[keep, :7], vel[keep]),
            gt_labels=np.array([_CLASS_INDEX[nm] for nm, k in zip(names, keep, strict=True) if k], dtype=np.int64),
            num_lidar_pts=npts[keep], instance_tokens=tuple(str(t) for t, k in zip(tokens, keep, strict=True) if k))


# ---- writer --------------------------------------------------------------------------------
def _rel(path: str, data_root: str) -> str:
    rel = os.path.relpath(os.path.abspath(path), data_root)
    return os.path.abspath(path) if rel.startswith("..") else rel


def _sample_to_v1(s: Sample, index: int, data_root: str) -> dict[str, Any]:
    mm_id = {n: i for i, n in enumerate(MMDET3D_NUSCENES_CLASSES)}
    bbox, vel = boxes_to_mmdet3d_v1(s.gt_boxes)
    tokens = s.instance_tokens or ("",) * len(bbox)
    instances = []
    for b, v, lab, npts, tok in zip(bbox, vel, s.gt_labels, s.num_lidar_pts, tokens, strict=True):
        label = mm_id[NUSCENES_CLASSES[int(lab)]]
        instances.append({"bbox_3d": b.tolist(), "bbox_label_3d": label, "bbox_label": label,
                          "bbox_3d_isvalid": bool(npts > 0), "num_lidar_pts": int(npts),
                          "velocity": v.tolist(), "instance_token": str(tok)})
    images = {c.name: {"img_path": _rel(c.image_path, data_root), "cam2img": np.asarray(c.cam_intrinsic).tolist(),
                       "cam2ego": np.asarray(c.ego_from_cam).tolist(),
                       "lidar2cam": np.linalg.inv(c.lidar_from_cam).tolist(),
                       "timestamp": c.timestamp_us / 1e6, "width": int(c.image_size[0]),
                       "height": int(c.image_size[1])} for c in s.cameras}
    return {"sample_idx": index, "token": s.sample_token, "timestamp": s.timestamp_us / 1e6,
            "scene_name": s.scene, "ego2global": np.asarray(s.global_from_ego).tolist(), "images": images,
            "lidar_points": {"num_pts_feats": int(s.points.shape[1]), "lidar_path": _rel(s.lidar_path, data_root),
                             "lidar2ego": np.asarray(s.ego_from_lidar).tolist()},
            "lidar_sweeps": [], "instances": instances}


def write_mmdet3d_infos(samples: Sequence[Sample], path: str | os.PathLike[str],
                        data_root: str | os.PathLike[str], version: str = "unknown") -> Path:
    """Write ``samples`` as an mmdet3d info_version 1.1 pickle that :class:`Mmdet3dInfoReader` reads back
    into equal Samples (``Sample.differences`` empty; LiDAR points come from the same files).

    Paths are stored relative to ``data_root`` (absolute when outside it). Labels use mmdet3d's
    class order (:data:`MMDET3D_NUSCENES_CLASSES`); ``bbox_3d_isvalid`` is ``num_lidar_pts > 0``.
    bevkd extras kept for the round trip: sample ``scene_name``, instance ``instance_token``,
    image ``width``/``height``. Sweeps are not written.

    Args:
        samples: the samples to write.
        path: output ``.pkl`` (written atomically).
        data_root: the folder the reader will resolve paths against.
        version: dataset version recorded in ``metainfo.version`` (e.g. ``v1.0-mini``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    root = os.path.abspath(data_root)
    out = Path(path)
    data = {"metainfo": {"categories": {n: i for i, n in enumerate(MMDET3D_NUSCENES_CLASSES)},
                         "dataset": "nuscenes", "version": version, "info_version": "1.1"},
            "data_list": [_sample_to_v1(s, i, root) for i, s in enumerate(samples)]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, out)
    return out


__all__ = ["MMDET3D_NUSCENES_CLASSES", "Mmdet3dInfoReader", "write_mmdet3d_infos"]
