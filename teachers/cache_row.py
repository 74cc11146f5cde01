"""A sample's cache row: the teacher's output plus the network-free LiDAR-guided targets (numpy).

:func:`build_cache_row` is the one function that assembles a row; the cache job, schema planning
(:func:`pipeline.cache_plan.build_schema`), the online-teacher loader
(:class:`student.dataset.StudentDataset`) and the tests call it. The LiDAR-guided targets:

* Foreground masks on the BEV grid: from GT boxes (BEV-LGKD, Li et al. 2022, §3.2 "LiDAR-guided
  foreground mask"; BEVDistill, Chen et al. ICLR 2023, §3.2 foreground-guided feature
  distillation), from LiDAR points inside GT boxes (DistillBEV, Wang et al. ICCV 2023, §3.2
  region decomposition), and Gaussian (CenterPoint radius, Yin et al. CVPR 2021 §3).
* View-dependent masks: BEV cells inside each camera's frustum (BEV-LGKD §3.3 view-adaptive
  distillation).
* Per-camera LiDAR depth maps at a stride (BEVDepth, Li et al. AAAI 2023, §3.2 explicit depth
  supervision: the minimum depth of the points falling in each stride x stride patch).

Conventions: BEV masks are ``(H, W)`` on ``bev_grid`` (row = +y, col = +x, lidar frame);
cameras in :data:`storage.sample.CAMERA_NAMES` order; depth is the distance along the camera's
optical axis (+z of the OpenCV camera frame), metres, 0 = no point.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from storage.boxes import points_in_boxes
from storage.cache.row import CacheRow
from storage.grid import BEVGrid
from storage.sample import CAMERA_NAMES, Sample
from storage.transforms import invert_transform
from teachers.center_gt import build_center_targets
from teachers.input import resize_intrinsic
from teachers.output import TeacherOutput

#: The network-free targets :func:`build_cache_row` adds to the teacher's.
LIDAR_TARGETS = ("fg_mask", "view_mask", "lidar_depth")


def fg_mask_from_boxes(gt_boxes: np.ndarray, bev_grid: BEVGrid) -> np.ndarray:
    """``(H, W)`` bool: cells whose centre lies inside a box's BEV footprint, plus each box's
    centre cell (so boxes smaller than a cell still mark one cell). BEV-LGKD §3.2.

    Args:
        gt_boxes: ``(M, 9)`` ``[x, y, z, l, w, h, yaw, vx, vy]``, bev_grid frame, m.
    """
    h, w = bev_grid.bev_shape
    mask = np.zeros((h, w), dtype=bool)
    boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 9)
    if len(boxes) == 0:
        return mask
    centres = bev_grid.cell_centers().reshape(-1, 2)
    flat = np.concatenate([centres, np.zeros((len(centres), 1))], axis=1)
    flat_boxes = boxes.copy()
    flat_boxes[:, 2], flat_boxes[:, 5] = 0.0, 1.0  # BEV test: ignore height
    mask |= points_in_boxes(flat, flat_boxes).any(axis=1).reshape(h, w)
    rc = bev_grid.metric_to_cell(boxes[:, :2])
    ok = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
    mask[rc[ok, 0], rc[ok, 1]] = True
    return mask


def fg_mask_from_points(points: np.ndarray, gt_boxes: np.ndarray, bev_grid: BEVGrid) -> np.ndarray:
    """``(H, W)`` bool: cells holding at least one LiDAR point that lies inside a GT box (DistillBEV §3.2).

    Args:
        points: ``(N, >=3)`` lidar frame, m. gt_boxes: ``(M, 9)``, same frame.
    """
    h, w = bev_grid.bev_shape
    mask = np.zeros((h, w), dtype=bool)
    boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 9)
    if len(boxes) == 0 or len(points) == 0:
        return mask
    pts = np.asarray(points)[:, :3]
    inside = np.zeros(len(pts), dtype=bool)
    for start in range(0, len(pts), 65536):
        inside[start:start + 65536] = points_in_boxes(pts[start:start + 65536], boxes).any(axis=1)
    rc = bev_grid.metric_to_cell(pts[inside])
    ok = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
    mask[rc[ok, 0], rc[ok, 1]] = True
    return mask


def gaussian_fg_heatmap(gt_boxes: np.ndarray, gt_labels: np.ndarray, bev_grid: BEVGrid, min_overlap: float = 0.1,
                        min_radius: int = 2) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: max over classes of the CenterPoint Gaussian heatmap (CenterPoint §3;
    the soft foreground weight of BEVDistill §3.2)."""
    boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 9)
    labels = np.zeros(len(boxes), dtype=np.int64)  # one channel: every class
    t = build_center_targets([boxes], [labels], bev_grid, [(0,)], min_overlap=min_overlap, min_radius=min_radius,
                             max_objs=max(len(boxes), 1))[0]
    return t.heatmap[0, 0].numpy()


def _project(points: np.ndarray, cam_intrinsic: np.ndarray, lidar_from_cam: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` pixels ``[u, v]`` and ``(N,)`` depth (m) of lidar-frame points (uv NaN behind)."""
    cf = invert_transform(lidar_from_cam)
    p = np.asarray(points, dtype=np.float64)[:, :3] @ cf[:3, :3].T + cf[:3, 3]
    depth = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = p @ np.asarray(cam_intrinsic, dtype=np.float64).T
        uv = uvw[:, :2] / np.where(depth[:, None] > 0, uvw[:, 2:3], np.nan)
    return uv, depth


def view_masks(cam_intrinsic: np.ndarray, lidar_from_cam: np.ndarray, image_size: tuple[int, int],
               bev_grid: BEVGrid, max_depth: float = 60.0, min_depth: float = 0.1,
               heights: np.ndarray | None = None) -> np.ndarray:
    """``(C, H, W)`` bool: BEV cells inside each camera's viewing frustum (BEV-LGKD §3.3).

    A cell is visible to a camera when any point of its vertical column (cell centre at each of
    ``heights``, default: the centres of the grid's z voxels) projects inside the image
    ``0 <= u < w, 0 <= v < h`` with depth in ``(min_depth, max_depth]`` m.

    Computed per column, not per point: in the camera frame a column is the line
    ``p(z) = p(0) + z * dp/dz``, so each frustum face is one linear inequality in ``z`` and a
    column's visible heights are an interval (:func:`_column_view`). Cells whose interval test is
    within a relative 1e-9 of a face are projected point by point as in :func:`_project`, so the
    masks equal those of projecting every (cell, height) point.

    Args:
        cam_intrinsic: ``(C, 3, 3)`` pixels, for images of ``image_size``.
        lidar_from_cam: ``(C, 4, 4)``.
        image_size: ``(w, h)`` pixels.
    """
    h, w = bev_grid.bev_shape
    if heights is None:
        heights = bev_grid.z_centers()
    xy = bev_grid.cell_centers().reshape(-1, 2)
    out = np.zeros((len(cam_intrinsic), h, w), dtype=bool)
    for c, (k, l2c) in enumerate(zip(cam_intrinsic, lidar_from_cam, strict=True)):
        out[c] = _column_view(xy, heights, k, l2c, image_size, max_depth, min_depth).reshape(h, w)
    return out


def _points_view(xy: np.ndarray, heights: np.ndarray, cam_intrinsic: np.ndarray, lidar_from_cam: np.ndarray,
                 image_size: tuple[int, int], max_depth: float, min_depth: float) -> np.ndarray:
    """``(N,)`` bool, point by point: any of the column points ``[x, y, z]`` (``xy (N, 2)`` x ``heights``,
    height-major) projects inside the image with depth in ``(min_depth, max_depth]``."""
    col = np.concatenate([np.concatenate([xy, np.full((len(xy), 1), z)], 1) for z in heights])
    uv, depth = _project(col, cam_intrinsic, lidar_from_cam)
    with np.errstate(invalid="ignore"):
        vis = ((depth > min_depth) & (depth <= max_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < image_size[0])
               & (uv[:, 1] >= 0) & (uv[:, 1] < image_size[1]))
    return np.asarray(vis.reshape(len(heights), len(xy)).any(axis=0))


def _column_view(xy: np.ndarray, heights: np.ndarray, cam_intrinsic: np.ndarray, lidar_from_cam: np.ndarray,
                 image_size: tuple[int, int], max_depth: float, min_depth: float) -> np.ndarray:
    """:func:`_points_view` of one camera from the z interval of each column (see :func:`view_masks`).

    With ``K[2] == [0, 0, 1]``, ``u = q0 / depth`` (``q = K[:2] @ p``) and the six frustum tests are
    ``a + c z > 0`` (``>=`` for some): ``c`` per camera, ``a (N,)`` per cell. Each is decided with a
    margin ``tol`` (1e-9 of the largest term, far above float64 rounding): ``sure`` cells have a
    height that passes every test by ``tol``, cells without ``maybe`` have none within ``tol``; the
    rest (none on real calibrations) go through :func:`_points_view`. Other intrinsics, a negative
    ``min_depth`` or non-finite inputs go through :func:`_points_view` entirely.
    """
    k = np.asarray(cam_intrinsic, dtype=np.float64)
    cf = invert_transform(lidar_from_cam)
    hs = np.sort(np.asarray(heights, dtype=np.float64).ravel())
    if (len(hs) == 0 or not np.array_equal(k[2], [0.0, 0.0, 1.0]) or min_depth < 0
            or not np.isfinite([max_depth, min_depth, *hs, *k.ravel(), *cf.ravel()]).all()):
        return _points_view(xy, heights, k, lidar_from_cam, image_size, max_depth, min_depth)
    wi, hi = float(image_size[0]), float(image_size[1])
    base = xy @ cf[:3, :2].T + cf[:3, 3]  # (N, 3) camera frame at z = 0
    slope = cf[:3, 2]  # (3,) d p / d z
    q, dq = base @ k[:2].T, k[:2] @ slope
    depth, dd = base[:, 2], slope[2]
    p_max = np.abs(cf[:3, :3]).sum() * (np.abs(xy).max(initial=0.0) + np.abs(hs).max()) + np.abs(cf[:3, 3]).sum()
    tol_m = 1e-9 * (p_max + max_depth)
    tol_px = 1e-9 * p_max * (np.abs(k[:2]).sum() + wi + hi)
    tests = ((depth - min_depth, dd, tol_m), (max_depth - depth, -dd, tol_m),
             (q[:, 0], dq[0], tol_px), (wi * depth - q[:, 0], wi * dd - dq[0], tol_px),
             (q[:, 1], dq[1], tol_px), (hi * depth - q[:, 1], hi * dd - dq[1], tol_px))
    lo = np.full((2, len(xy)), -np.inf)  # [sure, maybe] lowest visible height per cell
    up = np.full((2, len(xy)), np.inf)  # [sure, maybe] highest
    undecided = np.zeros(len(xy), dtype=bool)
    for a, c, tol in tests:
        undecided |= _fold_test(a, float(c), float(tol), lo, up)
    sure = np.searchsorted(hs, lo[0], "left") < np.searchsorted(hs, up[0], "right")
    maybe = np.searchsorted(hs, lo[1], "left") < np.searchsorted(hs, up[1], "right")
    undecided |= sure != maybe
    vis = sure & ~undecided
    if undecided.any():
        vis[undecided] = _points_view(xy[undecided], heights, k, lidar_from_cam, image_size, max_depth, min_depth)
    return vis


def _fold_test(a: np.ndarray, c: float, tol: float, lo: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Narrow the ``(2, N)`` [sure, maybe] height bounds ``lo``/``up`` in place to where
    ``a + c z > 0`` holds with margin ``tol`` (sure) or within it (maybe); returns ``(N,)`` bool:
    cells undecided because ``c`` is 0 (or too small to divide by) and ``|a| <= tol``."""
    margin = tol / abs(c) if c != 0.0 else np.inf
    if not np.isfinite(margin):  # the same at every height: all, nothing, or undecided
        lo[:, a < -tol] = np.inf
        return np.asarray(np.abs(a) <= tol)
    root = -a / c
    if c > 0:  # holds above the root
        np.maximum(lo[0], root + margin, out=lo[0])
        np.maximum(lo[1], root - margin, out=lo[1])
    else:  # holds below the root
        np.minimum(up[0], root - margin, out=up[0])
        np.minimum(up[1], root + margin, out=up[1])
    return np.zeros(len(a), dtype=bool)


def lidar_depth_maps(points: np.ndarray, cam_intrinsic: np.ndarray, lidar_from_cam: np.ndarray,
                     image_size: tuple[int, int], stride: int, min_depth: float = 0.1) -> np.ndarray:
    """``(C, h // stride, w // stride)`` float32 minimum LiDAR depth per patch, m; 0 = no point (BEVDepth §3.2).

    Args:
        points: ``(N, >=3)`` lidar frame, m.
        cam_intrinsic: ``(C, 3, 3)`` for images of ``image_size`` ``(w, h)``.
        lidar_from_cam: ``(C, 4, 4)``.
        stride: patch size in pixels; a point at pixel ``(u, v)`` falls in patch ``(v // stride, u // stride)``.
    """
    wi, hi = image_size
    hs, ws = hi // stride, wi // stride
    out = np.full((len(cam_intrinsic), hs, ws), np.inf, dtype=np.float64)
    for c, (k, l2c) in enumerate(zip(cam_intrinsic, lidar_from_cam, strict=True)):
        uv, depth = _project(points, k, l2c)
        with np.errstate(invalid="ignore"):
            ok = ((depth > min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < ws * stride) & (uv[:, 1] >= 0)
                  & (uv[:, 1] < hs * stride))
        r = (uv[ok, 1] // stride).astype(np.int64)
        q = (uv[ok, 0] // stride).astype(np.int64)
        np.minimum.at(out[c], (r, q), depth[ok])
    out[np.isinf(out)] = 0.0
    return out.astype(np.float32)


def scaled_cameras(sample: Sample, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(6, 3, 3)`` intrinsics rescaled to ``image_size (w, h)`` and ``(6, 4, 4)`` lidar_from_cam,
    cameras in :data:`CAMERA_NAMES` order (see :func:`teachers.input.resize_intrinsic`)."""
    ks, l2c = [], []
    for name in CAMERA_NAMES:
        cam = sample.camera(name)
        ks.append(resize_intrinsic(cam.cam_intrinsic, cam.image_size, image_size))
        l2c.append(np.asarray(cam.lidar_from_cam, dtype=np.float64))
    return np.stack(ks), np.stack(l2c)


def build_cache_row(teacher_output: TeacherOutput | None, sample: Sample, *, image_wh: tuple[int, int],
                    index: int = 0, bev_grid: BEVGrid | None = None, depth_stride: int = 16, max_depth: float = 60.0,
                    view_matrix: np.ndarray | None = None, lidar_targets: Collection[str] = LIDAR_TARGETS,
                    lidar_depth: np.ndarray | None = None, unlabelled_fg_min_score: float = 0.3) -> CacheRow:
    """The cache row of one ``(sample, view)``: sample ``index`` of ``teacher_output`` (numpy) plus
    the LiDAR-guided targets of ``sample``.

    Args:
        teacher_output: the teacher's batch output on ``sample``, or None for the network-free
            part only (online distillation: the network part comes from the live teacher).
        sample: the sample as the row sees it: for a BEV-augmented view, points, GT boxes and
            ``lidar_from_cam`` already moved by ``view_matrix`` (:func:`pipeline.cache_job.augment_sample`).
        image_wh: ``(w, h)`` pixels of the student's resized images; ``view_mask`` and
            ``lidar_depth`` use the intrinsics scaled to it.
        index: the sample's index in ``teacher_output``'s batch.
        bev_grid: the grid of the masks; default ``teacher_output.bev_grid``.
        depth_stride: pixel stride of ``lidar_depth`` (BEVDepth §3.2 uses 16).
        max_depth: frustum depth limit of ``view_mask``, m.
        view_matrix: ``(4, 4)`` float64 ``aug_from_lidar`` of the row; default identity.
        lidar_targets: which of :data:`LIDAR_TARGETS` to build.
        lidar_depth: the sample's ``(6, h // stride, w // stride)`` depth maps when already built
            (camera frame: the same for every view of a sample).
        unlabelled_fg_min_score: for an unlabelled sample (``sample.labelled`` False, no GT boxes),
            ``fg_mask`` comes from the teacher's boxes scoring at least this (empty without a
            teacher output).

    Returns:
        the row: the teacher's targets, ``fg_mask (H, W)`` (:func:`fg_mask_from_boxes`),
        ``view_mask (6, H, W)`` (:func:`view_masks`), ``lidar_depth`` (:func:`lidar_depth_maps`).

    Raises:
        ValueError: neither ``teacher_output`` nor ``bev_grid`` is given.
    """
    grid = bev_grid if bev_grid is not None else (teacher_output.bev_grid if teacher_output is not None else None)
    if grid is None:
        raise ValueError(f"sample {sample.sample_token}: build_cache_row needs a teacher output or a bev_grid")
    row = teacher_output.row(index) if teacher_output is not None else CacheRow()
    row.sample_token = sample.sample_token
    if view_matrix is not None:
        row.view_matrix = np.asarray(view_matrix, dtype=np.float64)
    if "fg_mask" in lidar_targets:
        fg_boxes = sample.gt_boxes
        if not sample.labelled and row.boxes is not None and row.scores is not None:
            fg_boxes = np.asarray(row.boxes)[np.asarray(row.scores) >= unlabelled_fg_min_score]
        row.fg_mask = fg_mask_from_boxes(fg_boxes, grid)
    if "view_mask" in lidar_targets or ("lidar_depth" in lidar_targets and lidar_depth is None):
        ks, l2c = scaled_cameras(sample, image_wh)
        if "view_mask" in lidar_targets:
            row.view_mask = view_masks(ks, l2c, image_wh, grid, max_depth=max_depth)
        if "lidar_depth" in lidar_targets and lidar_depth is None:
            lidar_depth = lidar_depth_maps(sample.points, ks, l2c, image_wh, depth_stride)
    if "lidar_depth" in lidar_targets:
        row.lidar_depth = lidar_depth
    return row


__all__ = ["LIDAR_TARGETS", "build_cache_row", "fg_mask_from_boxes", "fg_mask_from_points", "gaussian_fg_heatmap",
           "lidar_depth_maps", "scaled_cameras", "view_masks"]
