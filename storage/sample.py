"""The typed driving sample every reader yields, whatever the dataset's format.

Frames: ``lidar`` (the top LiDAR), ``ego`` (vehicle body at the LiDAR timestamp), ``global``
(map), ``cam`` (OpenCV camera: +z forward, +x right, +y down). Transforms are 4x4 float64
``<dst>_from_<src>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Protocol
from collections.abc import Sequence

import numpy as np

from storage.arrays import Float32Array, Float64Array, Int64Array, UInt8Array
from storage.errors import SampleError

#: The 10 nuScenes detection classes, in mmdetection3d's order (label ids index this tuple).
NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
    "pedestrian", "traffic_cone",
)
#: The six nuScenes cameras, in the order bevkd stores per-camera targets.
CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)
#: Values per LiDAR point: x, y, z (m, lidar frame), intensity, ring index (or time lag for sweeps).
POINT_DIM = 5


@dataclass(frozen=True, kw_only=True, eq=False)
class CameraInfo:
    """One camera of a sample.

    Attributes:
        name: ``CAM_FRONT`` ... (see :data:`CAMERA_NAMES`).
        image_path: absolute path to the JPEG.
        cam_intrinsic: ``(3, 3)`` float64 pinhole matrix, pixels.
        ego_from_cam: ``(4, 4)`` float64, ego frame at the camera timestamp.
        lidar_from_cam: ``(4, 4)`` float64, camera to the sample's LiDAR frame (through global
            when the camera and LiDAR timestamps differ).
        timestamp_us: capture time, microseconds.
        image_size: ``(width, height)`` pixels.
    """

    name: str
    image_path: str
    cam_intrinsic: Float64Array
    ego_from_cam: Float64Array
    lidar_from_cam: Float64Array
    timestamp_us: int
    image_size: tuple[int, int]

    def load_image(self, sample_token: str = "?") -> UInt8Array:
        """``(H, W, 3)`` uint8 RGB.

        Raises:
            SampleError: the file is missing or not a decodable image.
        """
        from PIL import Image, UnidentifiedImageError  # lazy: keep `import storage` light

        try:
            with Image.open(self.image_path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise SampleError(sample_token, f"{self.name} image", "missing", self.image_path) from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise SampleError(sample_token, f"{self.name} image", f"unreadable ({exc})", self.image_path) from None


@dataclass(frozen=True, kw_only=True, eq=False)
class Sample:
    """One frame: a keyframe, or an unannotated frame (``labelled`` False).

    Attributes:
        sample_token: the dataset's sample id.
        timestamp_us: LiDAR timestamp, microseconds.
        scene: scene name (``scene-0061``).
        lidar_path: absolute path of the keyframe point cloud.
        points: ``(N, 5)`` float32 ``[x, y, z, intensity, ring_or_dt]``, lidar frame, m.
        cameras: six :class:`CameraInfo` in :data:`CAMERA_NAMES` order.
        ego_from_lidar: ``(4, 4)`` float64.
        global_from_ego: ``(4, 4)`` float64.
        gt_boxes: ``(M, 9)`` float64 ``[x, y, z, l, w, h, yaw, vx, vy]``, lidar frame.
        gt_labels: ``(M,)`` int64 indices into :data:`NUSCENES_CLASSES`.
        num_lidar_pts: ``(M,)`` int64 annotated LiDAR points per box.
        instance_tokens: ``(M,)`` str instance ids (tracking across keyframes), may be empty strings.
        labelled: True for an annotated keyframe; False for a frame without annotations (a
            nuScenes non-keyframe sweep, an unlabelled log): its ``gt_boxes`` are empty because
            nobody annotated it, not because the scene is empty, so detection losses skip it.
    """

    sample_token: str
    timestamp_us: int
    scene: str
    lidar_path: str
    points: Float32Array
    cameras: tuple[CameraInfo, ...]
    ego_from_lidar: Float64Array
    global_from_ego: Float64Array
    gt_boxes: Float64Array
    gt_labels: Int64Array
    num_lidar_pts: Int64Array
    instance_tokens: tuple[str, ...] = field(default=())
    labelled: bool = True

    @property
    def global_from_lidar(self) -> Float64Array:
        out: Float64Array = self.global_from_ego @ self.ego_from_lidar
        return out

    def camera(self, name: str) -> CameraInfo:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"sample {self.sample_token}: no camera {name}")

    def differences(self, other: Sample, atol: float = 1e-6) -> list[str]:
        """Names of fields that differ (arrays compared with ``atol``); empty when equal."""
        return _diff(self, other, atol, prefix="")


def _diff(a: object, b: object, atol: float, prefix: str) -> list[str]:
    out: list[str] = []
    for f in fields(a):  # type: ignore[arg-type]
        va, vb = getattr(a, f.name), getattr(b, f.name)
        name = prefix + f.name
        if isinstance(va, tuple) and va and isinstance(va[0], CameraInfo):
            if len(va) != len(vb):
                out.append(name)
            else:
                for ca, cb in zip(va, vb, strict=True):
                    out += _diff(ca, cb, atol, prefix=f"{name}[{ca.name}].")
        elif isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            xa, xb = np.asarray(va), np.asarray(vb)
            if xa.shape != xb.shape or (xa.size and not np.allclose(xa, xb, atol=atol, equal_nan=True)):
                out.append(name)
        elif va != vb:
            out.append(name)
    return out


class SampleReader(Protocol):
    """What every dataset reader provides (nuScenes devkit, mmdet3d infos, ...).

    Readers are picklable so Ray can ship them to workers.
    """

    @property
    def dataset_id(self) -> str:
        """e.g. ``"nuscenes:v1.0-mini:mini_val"``, recorded in caches."""
        ...

    @property
    def sample_tokens(self) -> Sequence[str]:
        """Tokens of the readable samples, in reading order."""
        ...

    def __len__(self) -> int: ...

    def read(self, index_or_token: int | str) -> Sample:
        """Load one sample. Raises :class:`SampleError` naming sample, field and path."""
        ...


def load_points(path: str, sample_token: str, point_dim: int = POINT_DIM, keep_dim: int = POINT_DIM) -> Float32Array:
    """Read a nuScenes ``.pcd.bin`` (float32 x ``point_dim`` per point).

    Returns:
        ``(N, keep_dim)`` float32, lidar frame.

    Raises:
        SampleError: file missing, size not a multiple of ``point_dim * 4`` bytes (truncated),
            or non-finite coordinates.
    """
    try:
        raw = np.fromfile(path, dtype=np.float32)
        nbytes = os.path.getsize(path)  # np.fromfile drops a trailing partial float
    except FileNotFoundError:
        raise SampleError(sample_token, "LiDAR points", "missing", path) from None
    except OSError as exc:
        raise SampleError(sample_token, "LiDAR points", f"unreadable ({exc})", path) from None
    if nbytes % (point_dim * 4):
        raise SampleError(sample_token, "LiDAR points",
                          f"truncated ({nbytes} bytes is not a multiple of {point_dim * 4})", path)
    pts = raw.reshape(-1, point_dim)[:, :keep_dim]
    if not np.isfinite(pts[:, :3]).all():
        raise SampleError(sample_token, "LiDAR points", "contain NaN/inf coordinates", path)
    return pts
