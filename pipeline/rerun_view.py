"""Record a scene's cached teacher targets for the Rerun viewer: ``bevkd show CACHE --rrd out.rrd``.

One time step per sample of the scene, in timestamp order, on two timelines: ``frame``
(sequence 0, 1, ...) and ``timestamp`` (the sample's LiDAR time; only with the dataset).
Entities (3D ones in the row's BEV frame, metres, x forward, z up):

==================================  ===========================================================
``world``                           static ``ViewCoordinates`` RIGHT_HAND_Z_UP
``world/ego``                       ``Transform3D`` global_from_bev (dataset given; else none)
``world/ego/lidar``                 ``Points3D`` LiDAR points, coloured by height (dataset)
``world/ego/gt_boxes``              ``Boxes3D`` GT boxes, green, class labels (dataset)
``world/ego/teacher_boxes``         ``Boxes3D`` teacher boxes with score >= threshold, red,
                                    labels ``<class> <score>``
``world/ego/<CAM>``                 ``Transform3D`` bev_from_cam + ``Pinhole`` (intrinsics,
                                    image size; dataset)
``world/ego/<CAM>/image``           ``EncodedImage`` the camera JPEG (dataset)
``world/ego/<CAM>/lidar_depth``     ``Points2D`` cached LiDAR depth cells on the image, turbo
                                    0-60 m (dataset)
``lidar_depth/<CAM>``               ``DepthImage`` the cached ``lidar_depth`` grid, m
``bev/bev_feature/<stage>/l2_norm`` ``Image`` RGB, channel L2 norm (magma, per-frame max)
``bev/bev_feature/<stage>/pca``     ``Image`` RGB, first three principal components
``bev/heatmap/max``, ``/<class>``   ``Image`` RGB, heatmap (viridis, [0, 1])
``bev/fg_mask``                     ``Image`` L uint8, 255 = foreground
``bev/view_mask``                   ``Image`` RGB, one colour per camera
``bev/gt_boxes``, ``bev/teacher_boxes``  ``LineStrips2D`` box footprints in BEV pixels
``sample``                          ``TextDocument`` token, scene, view, teacher
==================================  ===========================================================

BEV images are flipped so that up is +y (image row 0 = ``y_max``; the cache stores row 0 at
``y_min``); pixel ``(u, v)`` is cell ``(row = H - v, col = u)``. rerun is imported only here,
lazily; without it :class:`ViewerMissingError` says ``pip install bevkd[viz]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.show import DEFAULT_SCORE_THRESHOLD, pca_rgb
from storage.boxes import box_corners, transform_boxes
from storage.cache import CacheReader, CacheRow
from storage.errors import SampleError
from storage.grid import BEVGrid
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES, Sample, SampleReader

#: What to install for ``--rrd``.
VIZ_INSTALL = "pip install bevkd[viz]"
#: Depth range of the camera depth colours, metres.
DEPTH_RANGE_M = (0.0, 60.0)
_CAM_RGB = np.array([[227, 26, 28], [56, 125, 184], [77, 175, 74], [152, 78, 163], [255, 127, 0], [166, 86, 40]],
                    dtype=np.uint8)
_GT_RGB, _TEACHER_RGB = np.array([50, 205, 50], np.uint8), np.array([230, 30, 30], np.uint8)


class ViewerMissingError(ImportError):
    """rerun-sdk is not installed (or too old for this module's API)."""


@dataclass(frozen=True, kw_only=True)
class RecordingSummary:
    """What :func:`record_scene` logged, per frame in timeline order.

    Attributes:
        path: the ``.rrd`` file.
        sample_tokens: the frames' samples, in timestamp order (frame ``i`` = ``sample_tokens[i]``).
        teacher_boxes: teacher boxes with score >= threshold, per frame.
        gt_boxes: GT boxes per frame (0 without the dataset).
        entities: every entity path logged, sorted.
    """

    path: Path
    sample_tokens: tuple[str, ...]
    teacher_boxes: tuple[int, ...]
    gt_boxes: tuple[int, ...]
    entities: tuple[str, ...]


def import_rerun() -> ModuleType:
    """The ``rerun`` module. Raises ViewerMissingError (``pip install bevkd[viz]``) without it."""
    try:
        import rerun as rr
    except ImportError:
        raise ViewerMissingError(f"--rrd needs rerun-sdk: {VIZ_INSTALL}") from None
    if not hasattr(rr, "RecordingStream") or not hasattr(rr, "set_time"):
        raise ViewerMissingError(f"--rrd needs rerun-sdk >= 0.23 (found {getattr(rr, '__version__', '?')}): "
                                 f"{VIZ_INSTALL}")
    return rr


def scene_samples(dataset: SampleReader, sample_token: str, keep: Callable[[str], bool]) -> list[Sample]:
    """The samples of ``sample_token``'s scene that ``keep`` accepts, by timestamp.

    Readers list a scene's samples together, so only the run of neighbours sharing the scene
    is read (not the whole dataset).

    Raises:
        KeyError: ``sample_token`` is not in ``dataset``.
        SampleError: a sample of the scene cannot be read.
    """
    tokens = list(dataset.sample_tokens)
    if sample_token not in tokens:
        raise KeyError(f"sample {sample_token} is not in dataset {dataset.dataset_id}")
    i = tokens.index(sample_token)
    first = dataset.read(sample_token)
    found = [first]
    for step in (-1, 1):
        j = i + step
        while 0 <= j < len(tokens):
            s = dataset.read(tokens[j])
            if s.scene != first.scene:
                break
            found.append(s)
            j += step
    return sorted((s for s in found if keep(s.sample_token)), key=lambda s: s.timestamp_us)


def record_scene(cache: CacheReader, sample_tokens: Sequence[str], out: str | Path, *, view: int = 0,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 samples: Mapping[str, Sample] | None = None) -> RecordingSummary:
    """Write one ``.rrd`` recording of cached rows, one ``frame`` per token (module docstring).

    Args:
        cache: the cache to read.
        sample_tokens: the frames, in timeline order (e.g. :func:`scene_samples`'s).
        out: the ``.rrd`` path (parents created).
        view: view index of every row.
        score_threshold: teacher boxes with a lower score are not logged.
        samples: token -> dataset sample, for points, GT boxes, cameras and timestamps.

    Raises:
        ViewerMissingError: rerun-sdk is not installed.
        KeyError: a token is not in the cache.
        CacheRowError / CacheCorruptError: a row is not readable.
        SampleError: a camera image is missing.
    """
    rr = import_rerun()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = rr.RecordingStream("bevkd", recording_id=f"bevkd-show-{sample_tokens[0] if sample_tokens else 'none'}")
    log = _Logger(rr, rec, cache.schema.grid)
    rows = [cache.read(tok, view=view) for tok in sample_tokens]
    rec.save(str(out), default_blueprint=_blueprint(rows, samples is not None))
    log.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    n_teacher, n_gt = [], []
    for i, t in enumerate(rows):
        sample = (samples or {}).get(t.sample_token)
        rec.set_time("frame", sequence=i)
        if sample is not None:
            rec.set_time("timestamp", timestamp=sample.timestamp_us * 1e-6)
        scene = sample.scene if sample is not None else "?"
        log.log("sample", rr.TextDocument(f"sample {t.sample_token}  view {t.view}  scene {scene}  "
                                          f"teacher {cache.schema.teacher.name}"))
        n_teacher.append(_log_teacher_boxes(log, t, score_threshold))
        _log_bev_maps(log, t)
        if t.lidar_depth is not None:
            for k, name in enumerate(CAMERA_NAMES):
                log.log(f"lidar_depth/{name}", rr.DepthImage(np.asarray(t.lidar_depth[k], np.float32), meter=1.0,
                                                             colormap="turbo", depth_range=list(DEPTH_RANGE_M)))
        n_gt.append(_log_sample(log, t, sample) if sample is not None else 0)
    rec.flush()
    rec.disconnect()
    return RecordingSummary(path=out, sample_tokens=tuple(t.sample_token for t in rows), teacher_boxes=tuple(n_teacher),
                            gt_boxes=tuple(n_gt), entities=tuple(sorted(log.entities)))


class _Logger:
    """The recording stream, the rerun module and the BEV grid; remembers the entity paths."""

    def __init__(self, rr: ModuleType, rec: Any, grid: BEVGrid) -> None:
        self.rr, self.rec, self.grid = rr, rec, grid
        self.entities: set[str] = set()

    def log(self, path: str, item: Any, static: bool = False) -> None:
        self.entities.add(path)
        self.rec.log(path, item, static=static)

    def bev_pixels(self, xy: np.ndarray) -> np.ndarray:
        """``(..., 2)`` metres -> ``(..., 2)`` float ``[u, v]`` pixels of the flipped BEV images."""
        rc = self.grid.metric_to_cell_float(xy)
        return np.stack([rc[..., 1], self.grid.bev_shape[0] - rc[..., 0]], axis=-1)


def _colormap(name: str, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` -> uint8 RGB of the same shape + (3,), scaled from ``[lo, hi]``."""
    from matplotlib import colormaps

    x = np.clip((np.asarray(values, np.float64) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    rgb: np.ndarray = (colormaps[name](x)[..., :3] * 255).astype(np.uint8)
    return rgb


def _bev_rgb(img: np.ndarray) -> np.ndarray:
    """A ``(H, W, ...)`` BEV image (row 0 at y_min) flipped for display (up = +y), contiguous."""
    return np.ascontiguousarray(img[::-1])


def _log_bev_maps(log: _Logger, t: CacheRow) -> None:
    rr = log.rr
    for stage, feat in t.bev_features.items():
        feat = np.asarray(feat, dtype=np.float32)
        norm = np.linalg.norm(feat, axis=0)
        log.log(f"bev/bev_feature/{stage}/l2_norm", rr.Image(_bev_rgb(_colormap("magma", norm, 0.0,
                                                                                  float(norm.max())))))
        log.log(f"bev/bev_feature/{stage}/pca", rr.Image(_bev_rgb((pca_rgb(feat) * 255).astype(np.uint8))))
    if t.heatmap is not None:
        heat = np.asarray(t.heatmap, dtype=np.float32)
        log.log("bev/heatmap/max", rr.Image(_bev_rgb(_colormap("viridis", heat.max(axis=0), 0.0, 1.0))))
        for k in range(heat.shape[0]):
            name = NUSCENES_CLASSES[k] if k < len(NUSCENES_CLASSES) else f"class_{k}"
            log.log(f"bev/heatmap/{name}", rr.Image(_bev_rgb(_colormap("viridis", heat[k], 0.0, 1.0))))
    if t.fg_mask is not None:
        log.log("bev/fg_mask", rr.Image(_bev_rgb(np.asarray(t.fg_mask, bool).astype(np.uint8) * 255)))
    if t.view_mask is not None:
        rgb = np.full((*log.grid.bev_shape, 3), 255.0)
        for k in range(t.view_mask.shape[0]):
            m = np.asarray(t.view_mask[k], bool)
            rgb[m] = 0.5 * rgb[m] + 0.5 * _CAM_RGB[k % len(_CAM_RGB)]
        log.log("bev/view_mask", rr.Image(_bev_rgb(rgb.astype(np.uint8))))


def _log_boxes(log: _Logger, name: str, boxes: np.ndarray, labels: list[str], class_ids: np.ndarray,
               colour: np.ndarray) -> None:
    """``boxes``: ``(M, 9)`` BEV frame -> ``world/ego/<name>`` Boxes3D and ``bev/<name>`` footprints."""
    rr = log.rr
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    yaw = boxes[:, 6]
    zero = np.zeros_like(yaw)
    quat = np.stack([zero, zero, np.sin(yaw / 2), np.cos(yaw / 2)], axis=1)  # xyzw: yaw about +z
    colours = np.repeat(colour[None], len(boxes), axis=0)
    log.log(f"world/ego/{name}", rr.Boxes3D(centers=boxes[:, :3].astype(np.float32),
                                            half_sizes=(boxes[:, 3:6] / 2).astype(np.float32),
                                            quaternions=quat.astype(np.float32), labels=labels,
                                            class_ids=class_ids.astype(np.uint16), colors=colours))
    strips = [log.bev_pixels(np.vstack([c, c[:1]])).astype(np.float32)
              for c in box_corners(boxes)[:, :4, :2]] if len(boxes) else []
    log.log(f"bev/{name}", rr.LineStrips2D(strips, colors=colours, labels=labels))


def _log_teacher_boxes(log: _Logger, t: CacheRow, score_threshold: float) -> int:
    if t.boxes is None or t.scores is None or t.labels is None:
        return 0
    keep = np.asarray(t.scores) >= score_threshold
    labels = np.asarray(t.labels, np.int64)[keep]
    scores = np.asarray(t.scores)[keep]
    text = [f"{_class(k)} {s:.2f}" for k, s in zip(labels, scores, strict=True)]
    _log_boxes(log, "teacher_boxes", np.asarray(t.boxes)[keep], text, labels, _TEACHER_RGB)
    return int(keep.sum())


def _class(k: int) -> str:
    return NUSCENES_CLASSES[k] if 0 <= k < len(NUSCENES_CLASSES) else f"class_{k}"


def _log_sample(log: _Logger, t: CacheRow, sample: Sample) -> int:
    """Pose, points, GT boxes and cameras of ``sample`` in the row's BEV frame; returns the GT count."""
    rr = log.rr
    global_from_bev = sample.global_from_lidar @ np.linalg.inv(t.view_matrix)
    log.log("world/ego", rr.Transform3D(translation=global_from_bev[:3, 3], mat3x3=global_from_bev[:3, :3]))
    pts = np.asarray(sample.points[:, :3], np.float64) @ t.view_matrix[:3, :3].T + t.view_matrix[:3, 3]
    log.log("world/ego/lidar", rr.Points3D(pts.astype(np.float32), radii=np.float32(0.03),
                                           colors=_colormap("turbo", pts[:, 2], -2.0, 3.0)))
    gt = transform_boxes(sample.gt_boxes, t.view_matrix)
    _log_boxes(log, "gt_boxes", gt, [_class(int(k)) for k in sample.gt_labels], sample.gt_labels, _GT_RGB)
    for k, name in enumerate(CAMERA_NAMES):
        _log_camera(log, t, sample, k, name)
    return len(gt)


def _log_camera(log: _Logger, t: CacheRow, sample: Sample, k: int, name: str) -> None:
    rr = log.rr
    try:
        cam = sample.camera(name)
    except KeyError:
        return
    bev_from_cam = t.view_matrix @ cam.lidar_from_cam
    w_img, h_img = cam.image_size
    log.log(f"world/ego/{name}", rr.Transform3D(translation=bev_from_cam[:3, 3], mat3x3=bev_from_cam[:3, :3]))
    log.log(f"world/ego/{name}", rr.Pinhole(image_from_camera=np.asarray(cam.cam_intrinsic, np.float64),
                                            resolution=[w_img, h_img], camera_xyz=rr.ViewCoordinates.RDF))
    try:
        contents = Path(cam.image_path).read_bytes()
    except OSError:
        raise SampleError(sample.sample_token, f"{name} image", "missing", cam.image_path) from None
    log.log(f"world/ego/{name}/image", rr.EncodedImage(contents=contents, media_type="image/jpeg"))
    if t.lidar_depth is None:
        return
    depth = np.asarray(t.lidar_depth[k], dtype=np.float32)
    rows, cols = np.nonzero(depth > 0)
    sy, sx = h_img / depth.shape[0], w_img / depth.shape[1]
    uv = np.stack([(cols + 0.5) * sx, (rows + 0.5) * sy], axis=1).astype(np.float32)
    log.log(f"world/ego/{name}/lidar_depth", rr.Points2D(uv, radii=np.float32(0.5 * min(sx, sy)),
                                                         colors=_colormap("turbo", depth[rows, cols], *DEPTH_RANGE_M)))


def _blueprint(rows: Sequence[CacheRow], with_sample: bool) -> Any:
    """Default layout: 3D world and cameras on the left, one tab per BEV map (with the box
    footprints over it) on the right."""
    import rerun.blueprint as rrb

    first = rows[0] if rows else CacheRow()
    maps = [f"bev/bev_feature/{s}/{kind}" for s in first.bev_features for kind in ("l2_norm", "pca")]
    maps += [m for m, present in (("bev/heatmap/max", first.heatmap is not None),
                                  ("bev/fg_mask", first.fg_mask is not None),
                                  ("bev/view_mask", first.view_mask is not None)) if present]
    bev_views = [rrb.Spatial2DView(name=m.removeprefix("bev/"), origin="bev",
                                   contents=[m, "bev/gt_boxes", "bev/teacher_boxes"]) for m in maps]
    cams = ([rrb.Spatial2DView(name=n, origin=f"world/ego/{n}") for n in CAMERA_NAMES] if with_sample else
            [rrb.Spatial2DView(name=n, origin=f"lidar_depth/{n}") for n in CAMERA_NAMES])
    left = rrb.Vertical(rrb.Spatial3DView(name="world", origin="world"), rrb.Grid(*cams))
    right = rrb.Tabs(*bev_views) if bev_views else rrb.TextDocumentView(origin="sample")
    return rrb.Blueprint(rrb.Horizontal(left, right), collapse_panels=False)


__all__ = ["DEPTH_RANGE_M", "RecordingSummary", "VIZ_INSTALL", "ViewerMissingError", "import_rerun", "record_scene",
           "scene_samples"]
