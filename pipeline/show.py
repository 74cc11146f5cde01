"""Render what the teacher stored for one sample: ``bevkd show``.

One figure, two rows of BEV panels on top (x to the right, y up, lidar/view frame, metres; their
heights follow the grid's aspect) and the six cameras below:

* first row, BEV feature: one stored stage (``stage``; default the first), PCA of its occupied
  cells' channels to RGB (:func:`pca_rgb`; empty cells black), and its per-cell L2 norm (with a
  colour bar); heatmap: max over classes (colour bar);
* second row, boxes (two thirds of the width): LiDAR points (grey), foreground mask (yellow), GT
  boxes (green, needs the dataset reader) and teacher boxes with score >= ``score_threshold``
  (red, alpha = score); view masks: each camera's frustum cells in its own colour;
* per-camera LiDAR depth cells over the camera images (needs the dataset reader for images),
  one depth colour bar (m).

``bevkd show --rrd`` writes the same targets, for a whole scene, as a Rerun recording instead
(:mod:`pipeline.rerun_view`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.boxes import box_corners, transform_boxes
from storage.cache import CacheReader, CacheRow
from storage.grid import BEVGrid
from storage.sample import CAMERA_NAMES, Sample
from storage.transforms import apply_transform

#: Teacher boxes with a lower score are not drawn (``bevkd show --score-threshold``; also the ``--rrd`` default).
DEFAULT_SCORE_THRESHOLD = 0.3
_CAM_COLOURS = np.array([[0.89, 0.10, 0.11], [0.22, 0.49, 0.72], [0.30, 0.69, 0.29],
                         [0.60, 0.31, 0.64], [1.00, 0.50, 0.00], [0.65, 0.34, 0.16]])


@dataclass(frozen=True, kw_only=True)
class ShowResult:
    """What :func:`render_sample` drew: the PNG and the numbers a test can check."""

    path: Path
    bev_stage: str | None
    gt_boxes_drawn: int
    teacher_boxes_drawn: int  # teacher boxes with score >= the threshold
    gt_boxes_on_foreground: float  # fraction of drawn GT boxes (with LiDAR points) whose centre cell is foreground
    colour_bars: tuple[str, ...] = ()  # labels of the colour bars drawn


#: A cell is occupied when its channel L2 norm exceeds this fraction of the map's largest norm.
PCA_OCCUPIED_FRACTION = 0.01
#: With fewer occupied cells than this, the PCA is fit on (and colours) every cell.
PCA_MIN_OCCUPIED = 8
#: Each principal component is scaled from these percentiles (over the fitted cells) to [0, 1], then clipped.
PCA_PERCENTILES = (2.0, 98.0)


def pca_rgb(feature: np.ndarray) -> np.ndarray:
    """A BEV feature map as colours: its first three principal components as R, G, B.

    The PCA is fit on the occupied cells only (channel L2 norm > ``PCA_OCCUPIED_FRACTION`` x the
    map's largest norm), so the many empty cells of a sparse LiDAR map do not dominate it. Each
    component is scaled from its ``PCA_PERCENTILES`` (2nd, 98th) over those cells to [0, 1] and
    clipped, so one outlier does not saturate it; its sign is fixed (largest loading positive),
    so similar maps get similar colours. With fewer than ``PCA_MIN_OCCUPIED`` occupied cells
    (e.g. an all-zero map) the PCA is fit on every cell and no cell is drawn as empty. With
    ``C < 3`` channels the missing components are 0.

    Args:
        feature: ``(C, H, W)`` float, any frame (H along +y, W along +x).

    Returns:
        ``(H, W, 3)`` float64 in [0, 1]; empty cells are 0 (black).
    """
    c, h, w = feature.shape
    x = feature.reshape(c, -1).T.astype(np.float64)
    norm = np.linalg.norm(x, axis=1)
    occupied = norm > PCA_OCCUPIED_FRACTION * norm.max()
    if occupied.sum() < PCA_MIN_OCCUPIED:
        occupied = np.ones(len(x), dtype=bool)
    fit = x[occupied]
    mean = fit.mean(axis=0, keepdims=True)
    k = min(3, c)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    comps = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
    proj = (fit - mean) @ comps.T
    lo, hi = np.percentile(proj, PCA_PERCENTILES, axis=0)
    proj = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    rgb = np.zeros((h * w, 3))
    rgb[occupied, :k] = proj
    return rgb.reshape(h, w, 3)


def _footprints(ax, boxes: np.ndarray, colour: str, alphas: np.ndarray | None = None) -> None:
    if len(boxes) == 0:
        return
    corners = box_corners(np.asarray(boxes, dtype=np.float64))[:, :4, :2]
    for i, poly in enumerate(corners):
        closed = np.vstack([poly, poly[:1]])
        alpha = 1.0 if alphas is None else float(np.clip(alphas[i], 0.2, 1.0))
        ax.plot(closed[:, 0], closed[:, 1], color=colour, lw=0.9, alpha=alpha)
        front = poly[[0, 3]].mean(axis=0)  # heading tick: centre -> front face
        centre = poly.mean(axis=0)
        ax.plot([centre[0], front[0]], [centre[1], front[1]], color=colour, lw=0.9, alpha=alpha)


def _bev_image(ax, img: np.ndarray, grid: BEVGrid, title: str, **kw):
    pcr = grid.point_cloud_range
    im = ax.imshow(img, origin="lower", extent=(pcr[0], pcr[3], pcr[1], pcr[4]), interpolation="nearest", **kw)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("x (m)", fontsize=7)
    ax.set_ylabel("y (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    return im


def _gt_on_foreground(gt: np.ndarray, num_pts: np.ndarray, fg: np.ndarray | None, grid: BEVGrid) -> float:
    if fg is None or len(gt) == 0:
        return float("nan")
    keep = (num_pts > 0) & grid.in_range(gt[:, :3])
    if not keep.any():
        return float("nan")
    cells = grid.metric_to_cell(gt[keep, :2])
    return float(fg[cells[:, 0], cells[:, 1]].mean())


def render_sample(reader: CacheReader, sample_token: str, out: str | Path, *, view: int = 0,
                  sample: Sample | None = None, stage: str | None = None,
                  score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> ShowResult:
    """Draw one cached row (and, when ``sample`` is given, its GT boxes, points and images).

    Args:
        out: the image file; without a suffix ``.png`` is appended (``ShowResult.path`` is the file
            written). Other suffixes pick matplotlib's format (``.jpg``, ``.pdf``, ``.svg``).
        stage: the ``bev_features/<stage>`` map to draw (default: the first stored).
        score_threshold: teacher boxes with a lower score are not drawn.

    Raises:
        KeyError: ``sample_token`` is not in the cache, or ``stage`` is not stored.
        IsADirectoryError: ``out`` (after the suffix) is an existing folder.
        ValueError: ``out`` has a suffix matplotlib cannot write.
        storage.errors.CacheCorruptError: a stored chunk fails its checksum.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = image_path(out)

    t: CacheRow = reader.read(sample_token, view=view)
    grid = reader.schema.grid
    heights = _row_heights(grid)
    fig = plt.figure(figsize=(16, sum(heights) + 0.5))
    gs = fig.add_gridspec(4, 6, height_ratios=heights)
    if stage is not None and stage not in t.bev_features:
        raise KeyError(f"cache {reader.location}: no BEV stage {stage!r} (stored: {', '.join(t.bev_features)})")
    stage = stage if stage is not None else next(iter(t.bev_features), None)
    bars: list[str] = []
    ax = fig.add_subplot(gs[0, 0:2])
    if stage is not None:
        feat = np.asarray(t.bev_features[stage], dtype=np.float32)
        _bev_image(ax, pca_rgb(feat), grid, f"{stage} {feat.shape}: PCA->RGB of occupied cells (empty: black)")
        ax = fig.add_subplot(gs[0, 2:4])
        im = _bev_image(ax, np.linalg.norm(feat, axis=0), grid, f"{stage} L2 norm", cmap="magma")
        bars.append(_colour_bar(fig, im, ax, "channel L2 norm"))
    ax = fig.add_subplot(gs[0, 4:6])
    if t.heatmap is not None:
        im = _bev_image(ax, np.asarray(t.heatmap).max(axis=0), grid, "heatmap max over classes", cmap="viridis",
                        vmin=0, vmax=1)
        bars.append(_colour_bar(fig, im, ax, "heatmap"))
    gt_drawn, n_teacher, frac = _draw_boxes_panel(fig.add_subplot(gs[1, 0:4]), t, grid, sample, score_threshold)
    ax = fig.add_subplot(gs[1, 4:6])
    if t.view_mask is not None:
        rgb = np.ones((*grid.bev_shape, 3))
        for k in range(t.view_mask.shape[0]):
            rgb[t.view_mask[k]] = 0.5 * rgb[t.view_mask[k]] + 0.5 * _CAM_COLOURS[k % 6]
        _bev_image(ax, rgb, grid, "view masks (one colour per camera)")
    if _draw_cameras(fig, gs, t, sample):
        bars.append("lidar depth (m)")
    fig.suptitle(f"sample {sample_token}  view {view}  teacher {reader.schema.teacher.name}  "
                 f"teacher boxes score >= {score_threshold:g}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, format=out.suffix[1:].lower())
    plt.close(fig)
    return ShowResult(path=out, bev_stage=stage, gt_boxes_drawn=gt_drawn, teacher_boxes_drawn=n_teacher,
                      gt_boxes_on_foreground=frac, colour_bars=tuple(bars))


def image_path(out: str | Path) -> Path:
    """The file :func:`render_sample` writes for ``out``: ``out`` itself, or ``out.png`` without a suffix.

    Raises:
        IsADirectoryError: that path is an existing folder (e.g. ``--out some_dir``).
        ValueError: a suffix matplotlib cannot write (lists those it can).
    """
    from matplotlib.figure import Figure

    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give an image file name such as {path / 'show.png'}")
    path = path if path.suffix else path.with_name(path.name + ".png")
    if path.is_dir():
        raise IsADirectoryError(f"--out {out}: {path} is a folder; give another image file name")
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise ValueError(f"--out {out}: cannot write {path.suffix!r} images (known: {', '.join(sorted(formats))})")
    return path


def _row_heights(grid: BEVGrid) -> list[float]:
    """Figure row heights (inches) for a 16 in wide figure: BEV maps (three across), boxes + view
    masks, two camera rows; BEV rows follow the grid's aspect (y extent / x extent)."""
    pcr = grid.point_cloud_range
    aspect = (pcr[4] - pcr[1]) / (pcr[3] - pcr[0])
    maps = float(np.clip(4.2 * aspect, 1.5, 4.5)) + 0.8  # a third of the width, less labels and colour bar
    boxes = float(np.clip(9.0 * aspect, 3.0, 6.5)) + 0.8  # two thirds of the width
    return [maps, boxes, 3.4, 3.4]


def _colour_bar(fig, mappable, ax, label: str) -> str:
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return label


def _draw_boxes_panel(ax, t: CacheRow, grid: BEVGrid, sample: Sample | None,
                      score_threshold: float) -> tuple[int, int, float]:
    """Points, foreground, GT and teacher boxes (score >= ``score_threshold``) over the BEV; returns
    (GT drawn, teacher drawn, fraction of GT boxes with points whose centre cell is foreground)."""
    gt_drawn, frac = 0, float("nan")
    if t.fg_mask is not None:
        _bev_image(ax, np.where(t.fg_mask, 1.0, np.nan), grid, "", cmap="Wistia", vmin=0, vmax=1.5, alpha=0.8)
    if sample is not None:
        pts = apply_transform(t.view_matrix, sample.points.astype(np.float64))
        pts = pts[grid.in_range(pts)]
        ax.scatter(pts[:, 0], pts[:, 1], s=0.05, c="0.45", linewidths=0)
        gt = transform_boxes(sample.gt_boxes, t.view_matrix)
        _footprints(ax, gt, "limegreen")
        gt_drawn = len(gt)
        frac = _gt_on_foreground(gt, sample.num_lidar_pts, t.fg_mask, grid)
    n_teacher = 0
    if t.boxes is not None and t.scores is not None:
        keep = np.asarray(t.scores) >= score_threshold
        n_teacher = int(keep.sum())
        _footprints(ax, np.asarray(t.boxes)[keep], "red", np.asarray(t.scores)[keep])
    pcr = grid.point_cloud_range
    ax.set_xlim(pcr[0], pcr[3])
    ax.set_ylim(pcr[1], pcr[4])
    ax.set_aspect("equal")
    ax.set_title(f"points, foreground (yellow), GT (green, {gt_drawn}), teacher (red, {n_teacher}, "
                 f"score >= {score_threshold:g})", fontsize=8)
    return gt_drawn, n_teacher, frac


def _draw_cameras(fig, gs, t: CacheRow, sample: Sample | None) -> bool:
    """The six cameras with their LiDAR depth cells; returns whether a depth colour bar was drawn."""
    if t.lidar_depth is None and sample is None:
        return False
    dots = None
    for k, name in enumerate(CAMERA_NAMES):
        ax = fig.add_subplot(gs[2 + k // 3, 2 * (k % 3):2 * (k % 3) + 2])
        ax.set_axis_off()
        ax.set_title(name, fontsize=8)
        if sample is not None:
            cam = sample.camera(name)
            w_img, h_img = cam.image_size
            ax.imshow(cam.load_image(sample.sample_token), extent=(0, w_img, h_img, 0))
        elif t.lidar_depth is not None:
            h_img, w_img = t.lidar_depth.shape[1:]
        if t.lidar_depth is None:
            continue
        depth = np.asarray(t.lidar_depth[k], dtype=np.float32)
        rows, cols = np.nonzero(depth > 0)
        sy, sx = h_img / depth.shape[0], w_img / depth.shape[1]
        dots = ax.scatter((cols + 0.5) * sx, (rows + 0.5) * sy, c=depth[rows, cols], s=7, cmap="turbo", vmin=0,
                          vmax=60, linewidths=0)
        ax.set_xlim(0, w_img)
        ax.set_ylim(h_img, 0)
    if dots is None:
        return False
    _colour_bar(fig, dots, fig.axes[-1], "lidar depth (m)")
    return True
