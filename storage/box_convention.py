"""Does a dataset's GT box convention match its LiDAR? Count points inside each box, compare with
``num_lidar_pts``.

mmdetection3d v0.x and v1.x store boxes differently (``w, l`` vs ``l, w`` order, ``yaw_v0 = -yaw - pi/2``),
and mmdet3d's box classes default to a bottom-face centre while its info files hold the gravity
centre. An info file whose boxes were written in another convention than its layout says reads
without an error but trains a detector on wrong boxes. The annotated ``num_lidar_pts`` (nuScenes
``sample_annotation.num_lidar_pts``, mmdet3d ``num_lidar_pts``) gives a ground truth to test
against: the keyframe's points inside each box, counted by :func:`storage.boxes.count_points_in_boxes`,
must agree with it. The check also tries the other conventions (each through its one conversion in
:mod:`storage.boxes`) and, when one fits clearly better than the boxes as read, names it as the
likely cause.

The l/w + yaw confusion turns the box's long axis from ``yaw`` to ``-yaw``; boxes heading along
the LiDAR's x or y axis look the same either way, so the decision rests on the boxes where the
conventions' counts differ (those that are turned), not on the overall agreement alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from storage.arrays import Float64Array, Int64Array
from storage.boxes import (boxes_from_bottom_centre, boxes_from_mmdet3d_v0, boxes_from_mmdet3d_v1,
                           boxes_to_mmdet3d_v0, boxes_to_mmdet3d_v1, count_points_in_boxes)
from storage.errors import SampleError
from storage.sample import SampleReader

#: A box agrees with its annotation when ``|count - num_lidar_pts| <= max(ABS_TOL, REL_TOL * num_lidar_pts)``.
ABS_TOL = 2
REL_TOL = 0.1
#: Two conventions' errors on a box must differ by at least this many points for the box to decide between them.
DECISIVE_POINTS = 2


@dataclass(frozen=True, kw_only=True)
class ConventionFit:
    """How well one reading of the stored boxes fits the annotated point counts.

    Attributes:
        name: short name (``as read``, ``l/w swap + yaw offset``, ``bottom centre``, ...).
        description: the convention in words.
        agreement: fraction of boxes whose point count agrees with ``num_lidar_pts`` (see :data:`ABS_TOL`).
        relative_error: ``sum |count - num_lidar_pts| / sum num_lidar_pts`` over the checked boxes.
        decisive_wins: boxes this reading fits better than the boxes as read by >= :data:`DECISIVE_POINTS`
            points, minus those it fits worse (0 for ``as read``).
    """

    name: str
    description: str
    agreement: float
    relative_error: float
    decisive_wins: int


@dataclass(frozen=True, kw_only=True)
class BoxConventionReport:
    """Result of :func:`check_box_convention`.

    Attributes:
        dataset_id: the reader's dataset id.
        samples_checked: samples whose boxes were counted.
        boxes_checked: boxes with a known ``num_lidar_pts`` (>= 0) in those samples.
        fits: one :class:`ConventionFit` per reading; ``fits[0]`` is the boxes as the reader read them.
        verdict: ``ok`` (the boxes as read fit best and agree), ``mismatch`` (another convention fits
            clearly better: ``likely_cause`` names it), ``poor`` (no convention agrees) or
            ``unchecked`` (too few boxes with ``num_lidar_pts``, e.g. unlabelled frames).
        likely_cause: the better-fitting convention's description (``mismatch`` only).
        note: why the check could not run (``unchecked``), or ``""``.
    """

    dataset_id: str
    samples_checked: int
    boxes_checked: int
    fits: tuple[ConventionFit, ...]
    verdict: str
    likely_cause: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        """False when the boxes disagree with the LiDAR (``mismatch`` or ``poor``)."""
        return self.verdict in ("ok", "unchecked")

    def summary(self) -> str:
        """One line: the verdict, the numbers, and what to do about it."""
        where = f"{self.dataset_id}: box convention check"
        if self.verdict == "unchecked":
            return f"{where} not run ({self.note})"
        read = self.fits[0]
        nums = (f"{100 * read.agreement:.1f}% of {self.boxes_checked} boxes in {self.samples_checked} samples agree "
                f"with num_lidar_pts (point-count error {100 * read.relative_error:.1f}%)")
        if self.verdict == "ok":
            return f"{where} ok: {nums}"
        if self.verdict == "mismatch":
            best = next(f for f in self.fits if f.description == self.likely_cause)
            return (f"{where} failed: {nums} as read, but {100 * best.agreement:.1f}% (error "
                    f"{100 * best.relative_error:.1f}%) when read as {best.name}: likely cause: the boxes are in "
                    f"{best.description}")
        return (f"{where} failed: only {nums}; no other convention fits better (wrong LiDAR frame or points "
                f"from another sample?)")

    def format(self) -> str:
        """Multi-line table of every reading, then :meth:`summary`."""
        lines = [f"box convention ({self.samples_checked} samples, {self.boxes_checked} boxes with num_lidar_pts):"]
        for f in self.fits:
            lines.append(f"  {f.name:<30}{100 * f.agreement:>7.1f}% agree  error {100 * f.relative_error:>6.1f}%  "
                         f"decisive boxes {f.decisive_wins:+d}")
        lines.append(self.summary())
        return "\n".join(lines)


def _readings(layout: str) -> list[tuple[str, str, Callable[[Float64Array], Float64Array]]]:
    """(name, description, boxes as read -> boxes under the hypothesis) for each convention tried."""
    if layout == "v0":  # read as v0.x: the alternative is that the file holds v1.x boxes
        own = "mmdet3d v0.x [x, y, z, w, l, h, yaw_v0], gravity centre"
        swapped = "mmdet3d v1.x [x, y, z, l, w, h, yaw] (never converted to v0.x)"

        def swap(b: Float64Array) -> Float64Array:
            return boxes_from_mmdet3d_v1(boxes_to_mmdet3d_v0(b)[0], b[:, 7:9])
    else:
        own = ("mmdet3d v1.x [x, y, z, l, w, h, yaw], gravity centre" if layout == "v1"
               else "the reader's layout (l, w, yaw; gravity centre)")
        swapped = "mmdet3d v0.x [x, y, z, w, l, h, yaw_v0 = -yaw - pi/2] (never converted to v1.x)"

        def swap(b: Float64Array) -> Float64Array:
            return boxes_from_mmdet3d_v0(boxes_to_mmdet3d_v1(b)[0], b[:, 7:9])
    return [("as read", own, lambda b: b),
            ("l/w swap + yaw offset", swapped, swap),
            ("bottom centre", "z at the bottom-face centre, not the gravity centre", boxes_from_bottom_centre),
            ("l/w swap + bottom centre", swapped + " with z at the bottom-face centre",
             lambda b: boxes_from_bottom_centre(swap(b)))]


def _sample_order(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over ``n`` samples, every third first (so the first few
    already span the dataset), each once."""
    spread = np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int)).tolist() if n > 0 else []
    return spread[::3] + [i for j, i in enumerate(spread) if j % 3]


def check_box_convention(reader: SampleReader, *, max_samples: int = 4, min_agreement: float = 0.8,
                         min_boxes: int = 5, better_ratio: float = 0.75) -> BoxConventionReport:
    """Count LiDAR points inside the GT boxes of a few samples and compare with ``num_lidar_pts``.

    Args:
        reader: any :class:`~storage.sample.SampleReader`; its ``layout`` attribute (``"v0"``/``"v1"``,
            mmdet3d readers) names the convention the boxes were read in, and with ``sweeps > 0`` only the
            keyframe points (column 4 == 0) are counted, as ``num_lidar_pts`` is.
        max_samples: labelled samples to count (spread over the dataset; unreadable ones are skipped).
        min_agreement: fraction of agreeing boxes below which the boxes as read are ``poor``.
        min_boxes: fewer boxes with ``num_lidar_pts`` than this leaves the check ``unchecked``.
        better_ratio: another reading is the likely cause when its point-count error is at most this
            times the error as read and it wins at least 2 more decisive boxes than it loses.

    Returns:
        A :class:`BoxConventionReport`; never raises for a broken sample (it is skipped).
    """
    readings = _readings(str(getattr(reader, "layout", "")))
    keyframe_only = int(getattr(reader, "sweeps", 0) or 0) > 0
    counts: list[list[Int64Array]] = [[] for _ in readings]
    annotated: list[Int64Array] = []
    samples, skipped = 0, 0
    for index in _sample_order(len(reader), 3 * max_samples):
        if samples >= max_samples:
            break
        try:
            s = reader.read(index)
        except SampleError:
            skipped += 1
            continue
        known = s.num_lidar_pts >= 0
        if not s.labelled or not known.any():
            skipped += 1
            continue
        pts = s.points[s.points[:, 4] == 0] if keyframe_only else s.points
        for slot, (_, _, convert) in zip(counts, readings, strict=True):
            slot.append(count_points_in_boxes(pts[:, :3].astype(np.float64), convert(s.gt_boxes[known])))
        annotated.append(s.num_lidar_pts[known])
        samples += 1
    ann = np.concatenate(annotated) if annotated else np.zeros(0, dtype=np.int64)
    if len(ann) < min_boxes:
        return BoxConventionReport(dataset_id=str(reader.dataset_id), samples_checked=samples,
                                   boxes_checked=len(ann), fits=(), verdict="unchecked",
                                   note=f"{len(ann)} boxes with num_lidar_pts in {samples} labelled samples read, "
                                        f"fewer than {min_boxes}")
    errors = [np.abs(np.concatenate(c) - ann) for c in counts]
    tol = np.maximum(ABS_TOL, REL_TOL * ann)
    total = max(int(ann.sum()), 1)
    fits = []
    for (name, desc, _), err in zip(readings, errors, strict=True):
        decisive = np.abs(err - errors[0]) >= DECISIVE_POINTS
        wins = int((decisive & (err < errors[0])).sum() - (decisive & (err > errors[0])).sum())
        fits.append(ConventionFit(name=name, description=desc, agreement=float((err <= tol).mean()),
                                  relative_error=float(err.sum()) / total, decisive_wins=wins))
    better = [f for f in fits[1:] if f.relative_error <= better_ratio * fits[0].relative_error
              and f.decisive_wins >= 2]
    verdict, cause = "ok", None
    if better:
        verdict, cause = "mismatch", min(better, key=lambda f: f.relative_error).description
    elif fits[0].agreement < min_agreement:
        verdict = "poor"
    return BoxConventionReport(dataset_id=str(reader.dataset_id), samples_checked=samples, boxes_checked=len(ann),
                               fits=tuple(fits), verdict=verdict, likely_cause=cause)


__all__ = ["ABS_TOL", "REL_TOL", "BoxConventionReport", "ConventionFit", "check_box_convention"]
