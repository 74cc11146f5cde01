"""The stages that turn one shard's samples into rows, Ray-free: read, check, prepare, teacher, build.

:func:`shard_rows` reads the shard's samples and checks their camera images
(:func:`check_images`), prepares each view (:func:`augment_sample`, the network-free LiDAR-guided
targets), runs the teacher in batches (:func:`teacher_forward`) and builds each row
(:func:`job_row`, i.e. :func:`teachers.cache_row.build_cache_row`). A sample whose inputs are
broken fails only its rows, with the reason. :func:`pipeline.cache_job.process_shard` writes
the rows it yields; :mod:`pipeline.cache_job` re-exports the public names here.

Overlap (``CacheJobConfig.prefetch``, :mod:`pipeline.prefetch`): background threads read, check
and prepare samples (LiDAR depth, ``fg_mask``, ``view_mask``, view augmentation) while the teacher
runs in its own thread one batch ahead of the caller, which builds and encodes the previous batch's
rows; the rows, their order, failures and checksums are those of the sequential run.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.prefetch import ordered_map
from storage.boxes import transform_boxes
from storage.cache import CacheRow, CacheWriter, RowResult
from storage.errors import SampleError
from storage.image_check import broken_images
from storage.sample import Sample, SampleReader
from teachers.cache_row import build_cache_row
from teachers.input import TeacherInput
from teachers.output import TeacherOutput

if TYPE_CHECKING:
    from pipeline.cache_job import CacheJobConfig, StageTimes


def check_images(sample: Sample, mode: str = "draft") -> None:
    """Open (and decode, see :class:`~pipeline.cache_job.CacheJobConfig` ``image_check``) the six camera images:
    :func:`storage.image_check.broken_images` (the check ``bevkd info`` runs), first problem raised.

    Raises:
        SampleError: an image is missing, empty, undecodable, or its size differs from the recorded one.
    """
    problems = broken_images(sample, mode)
    if problems:
        raise problems[0]


def augment_sample(sample: Sample, view_matrix: np.ndarray) -> Sample:
    """The sample seen in a BEV view: points, GT boxes and ``lidar_from_cam`` moved by
    ``view_matrix`` (``(4, 4)`` float64 ``aug_from_lidar``); the identity returns ``sample``."""
    if np.array_equal(view_matrix, np.eye(4)):
        return sample
    pts = sample.points.copy()
    xyz = sample.points[:, :3].astype(np.float64) @ view_matrix[:3, :3].T + view_matrix[:3, 3]
    pts[:, :3] = xyz.astype(np.float32)
    cams = tuple(dataclasses.replace(c, lidar_from_cam=view_matrix @ c.lidar_from_cam) for c in sample.cameras)
    return dataclasses.replace(sample, points=pts, gt_boxes=transform_boxes(sample.gt_boxes, view_matrix),
                               cameras=cams)


def job_row(output: TeacherOutput | None, view: Sample, config: CacheJobConfig, **kwargs: Any) -> CacheRow:
    """:func:`teachers.cache_row.build_cache_row` with the job's image size, depth stride and
    frustum depth (``kwargs``: its other keyword arguments)."""
    return build_cache_row(output, view, image_wh=config.image_size, depth_stride=config.depth_stride,
                           max_depth=config.max_depth, **kwargs)


def teacher_forward(teacher: nn.Module, views: Sequence[Sample], image_size: tuple[int, int] | None = None
                    ) -> TeacherOutput:
    """One teacher forward on ``views`` (on the teacher's device), with the six images resized
    to ``image_size`` ``(w, h)`` for camera teachers (None: points only).

    Raises:
        SampleError: an image cannot be loaded (camera teachers).
    """
    device = next(iter(teacher.parameters()), torch.empty(0)).device
    batch = TeacherInput.from_samples(views, image_size=image_size, device=device)
    with torch.inference_mode():
        return teacher(batch)


@dataclass(kw_only=True, eq=False)
class _Pending:
    """One row waiting for the teacher: the augmented sample and what the row needs besides
    (its network-free targets, built ahead in the prefetch stage)."""

    view: Sample
    index: int
    matrix: np.ndarray
    lidar_depth: np.ndarray | None
    masks: CacheRow | None = None


@dataclass(kw_only=True, eq=False)
class _Forwarded:
    """The teacher's output on some pending rows, or why the forward failed (one row then)."""

    items: list[_Pending]
    output: TeacherOutput | None = None
    error: str | None = None


@dataclass(kw_only=True, eq=False)
class _Step:
    """One step of a shard's pipeline, in row order: rows that failed before the teacher, or one
    teacher batch (``forwarded`` and ``teacher_s`` filled by the teacher stage)."""

    failed: list[RowResult] = field(default_factory=list)
    batch: list[_Pending] = field(default_factory=list)
    forwarded: list[_Forwarded] = field(default_factory=list)
    teacher_s: float = 0.0


@dataclass(kw_only=True, eq=False)
class _Prepared:
    """One sample after the prefetch stage: its pending rows, or its failed rows; stage seconds."""

    pending: list[_Pending] = field(default_factory=list)
    failed: list[RowResult] = field(default_factory=list)
    read_s: float = 0.0
    targets_s: float = 0.0


def _failed_rows(sample_token: str, views: Sequence[int], reason: str, config: CacheJobConfig) -> list[RowResult]:
    return [RowResult(sample_token=sample_token, view=v, view_matrix=config.augment.matrix(sample_token, v),
                      error=reason) for v in views]


def _forward(teacher: nn.Module, items: list[_Pending], config: CacheJobConfig) -> tuple[list[_Forwarded], float]:
    """Teacher forward on ``items`` and its seconds. A batch whose forward raises is retried
    sample by sample so one bad sample fails alone (its reason: the exception)."""
    t0 = time.perf_counter()
    try:
        out = teacher_forward(teacher, [it.view for it in items], config.teacher_image_size)
    except (SampleError, RuntimeError, ValueError, IndexError, TypeError) as exc:
        spent = time.perf_counter() - t0
        if len(items) > 1:
            parts = [_forward(teacher, [it], config) for it in items]
            return [f for fs, _ in parts for f in fs], spent + sum(s for _, s in parts)
        it = items[0]
        reason = str(exc) if isinstance(exc, SampleError) else (
            f"sample {it.view.sample_token} view {it.index}: teacher failed ({type(exc).__name__}: {exc})")
        return [_Forwarded(items=items, error=reason)], spent
    return [_Forwarded(items=items, output=out)], time.perf_counter() - t0


def _rows(fwd: _Forwarded, writer: CacheWriter, config: CacheJobConfig, times: StageTimes) -> list[RowResult]:
    """The rows of a forwarded batch: the teacher's targets plus the network-free ones."""
    if fwd.output is None:
        it = fwd.items[0]
        return _failed_rows(it.view.sample_token, [it.index], fwd.error or "teacher failed", config)
    out = fwd.output
    if not out.bev_grid.same_as(writer.schema.grid):
        raise ValueError(f"teacher output grid {out.bev_grid.to_dict()} differs from the cache grid "
                         f"{writer.schema.grid.to_dict()}")
    t0 = time.perf_counter()
    wanted = {s.name for s in writer.schema.targets}
    rows = []
    for j, it in enumerate(fwd.items):
        ahead = {n for n in _AHEAD if it.masks is not None and getattr(it.masks, n) is not None}
        try:
            row = job_row(out, it.view, config, index=j, view_matrix=it.matrix, lidar_targets=wanted - ahead,
                          lidar_depth=it.lidar_depth)
        except Exception as exc:  # noqa: BLE001 - one sample's unusable input fails its row only
            rows += _failed_rows(it.view.sample_token, [it.index], _read_failure(it.view.sample_token, exc), config)
            continue
        for n in ahead:
            setattr(row, n, getattr(it.masks, n))
        rows.append(RowResult(sample_token=it.view.sample_token, view=it.index, scene=it.view.scene,
                              timestamp_us=it.view.timestamp_us, view_matrix=it.matrix, targets=row,
                              labelled=it.view.labelled))
    times.targets += time.perf_counter() - t0
    return rows


def _grouped(rows: Sequence[tuple[str, int]]) -> list[tuple[str, list[int]]]:
    out: list[tuple[str, list[int]]] = []
    for token, view in rows:
        if out and out[-1][0] == token:
            out[-1][1].append(view)
        else:
            out.append((token, [view]))
    return out


def _read_failure(token: str, exc: Exception) -> str:
    """The reason of a row whose sample could not be read or used: a :class:`SampleError` as is;
    any other exception (a malformed table row, a dangling token, a broken calibration) with its type."""
    if isinstance(exc, SampleError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"sample {token}: unusable input ({type(exc).__name__}: {first})"


#: Network-free targets built in the prefetch stage, before the teacher runs (``fg_mask`` only for
#: labelled samples: an unlabelled one takes its boxes from the teacher).
_AHEAD = ("fg_mask", "view_mask")


def _prepare(sample: Sample, views: Sequence[int], writer: CacheWriter, config: CacheJobConfig,
             wanted: set[str]) -> list[_Pending]:
    """The pending rows of a sample's views (camera-frame ``lidar_depth`` computed once; the
    view's ``fg_mask`` / ``view_mask`` built by :func:`job_row` without the teacher)."""
    grid = writer.schema.grid
    depth = None  # camera frame: the same for every view of the sample
    if "lidar_depth" in wanted:
        depth = job_row(None, sample, config, bev_grid=grid, lidar_targets=("lidar_depth",)).lidar_depth
    ahead = {n for n in _AHEAD if n in wanted and (sample.labelled or n != "fg_mask")}
    out = []
    for v in views:
        m = config.augment.matrix(sample.sample_token, v)
        view = augment_sample(sample, m)
        masks = job_row(None, view, config, bev_grid=grid, view_matrix=m, lidar_targets=ahead) if ahead else None
        out.append(_Pending(view=view, index=v, matrix=m, lidar_depth=depth, masks=masks))
    return out


def _read_prepare(reader: SampleReader, token: str, views: list[int], writer: CacheWriter, config: CacheJobConfig,
                  wanted: set[str], read_lock: threading.Lock) -> _Prepared:
    """Read one sample, check its images and prepare its rows (the prefetch stage's unit; runs in
    a background thread when ``config.prefetch``). ``reader.read`` runs under ``read_lock``
    (readers are not promised to be thread-safe); image checks and preparing run in parallel. A
    sample whose reading or preparing raises fails only its rows, with the reason."""
    t0 = time.perf_counter()
    try:
        with read_lock:
            sample = reader.read(token)
        check_images(sample, config.image_check)
    except Exception as exc:  # noqa: BLE001 - one bad sample (file or table row) fails its rows only
        return _Prepared(failed=_failed_rows(token, views, _read_failure(token, exc), config),
                         read_s=time.perf_counter() - t0)
    read_s, t0 = time.perf_counter() - t0, time.perf_counter()
    try:
        pending = _prepare(sample, views, writer, config, wanted)
    except Exception as exc:  # noqa: BLE001 - bad calibration etc.: the sample's rows fail, not the shard
        return _Prepared(failed=_failed_rows(token, views, _read_failure(token, exc), config), read_s=read_s,
                         targets_s=time.perf_counter() - t0)
    return _Prepared(pending=pending, read_s=read_s, targets_s=time.perf_counter() - t0)


def _steps(prepared: Iterator[_Prepared], batch_size: int, times: StageTimes) -> Iterator[_Step]:
    """Failed rows as soon as they are known, pending rows in batches of ``batch_size`` (the last
    one shorter), in the order of the sequential job; the prefetch stage's seconds go to ``times``."""
    pending: list[_Pending] = []
    for p in prepared:
        times.read += p.read_s
        times.targets += p.targets_s
        if p.failed:
            yield _Step(failed=p.failed)
        pending += p.pending
        while len(pending) >= batch_size:
            yield _Step(batch=pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        yield _Step(batch=pending)


def shard_rows(teacher: nn.Module, reader: SampleReader, writer: CacheWriter, shard_index: int,
               config: CacheJobConfig, times: StageTimes, only: Sequence[tuple[str, int]] | None = None
               ) -> Iterator[RowResult]:
    """The :class:`RowResult` of every row of a shard (or of the rows ``only``), produced batch by
    batch (so only encoded rows stay in memory); stage times are added to ``times`` (with
    ``config.prefetch`` the stages overlap, so their sum exceeds the wall time). A sample whose
    reading raises fails only its rows, with the reason.

    With ``config.prefetch = N > 0`` the stages overlap (:func:`pipeline.prefetch.ordered_map`):
    N threads read, check and prepare up to N batches ahead, and the teacher runs one batch
    ahead of the caller, which builds the rows of the previous batch and encodes them. The rows,
    their order, failures and values are those of ``prefetch = 0`` (everything in the caller's
    thread, one stage after the other).
    """
    wanted = {s.name for s in writer.schema.targets}
    groups = _grouped(writer.shard_rows(shard_index) if only is None else only)
    depth, read_lock = config.prefetch, threading.Lock()

    def prepare(group: tuple[str, list[int]]) -> _Prepared:
        return _read_prepare(reader, group[0], group[1], writer, config, wanted, read_lock)

    def forward(step: _Step) -> _Step:
        if step.batch:
            step.forwarded, step.teacher_s = _forward(teacher, step.batch, config)
        return step

    prepared = ordered_map(prepare, groups, depth * config.batch_size, workers=depth, name="bevkd-read")
    for step in ordered_map(forward, _steps(prepared, config.batch_size, times), min(depth, 1), workers=1,
                            name="bevkd-teacher"):
        times.teacher += step.teacher_s
        yield from step.failed
        for fwd in step.forwarded:
            yield from _rows(fwd, writer, config, times)


__all__ = ["augment_sample", "check_images", "job_row", "shard_rows", "teacher_forward"]
