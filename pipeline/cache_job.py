"""The cache job's unit of work, Ray-free: one shard of the cache from a teacher and a reader.

:func:`process_shard` reads the shard's samples, checks their camera images, runs the teacher
in batches (on the BEV-augmented points for views > 0), adds the network-free LiDAR-guided
targets (each row by :func:`teachers.cache_row.build_cache_row`) and writes the whole shard, then its
manifest fragment (:meth:`storage.cache.CacheWriter.write_shard`). A sample whose inputs are
broken (missing file, truncated point cloud, bad JPEG, NaN points) becomes a failed row with its
reason; the rest of the shard is written. :mod:`pipeline.ray_runner` only schedules these units;
:func:`run_loop` runs them in a plain loop (tests, benchmarks, debugging). The stages that
produce a shard's rows (and their overlap, ``CacheJobConfig.prefetch``) live in
:mod:`pipeline.shard_stages`; its public names are re-exported here.

Views (``--views K``): row ``view 0`` is the plain sample; views ``1..K`` are BEV augmentations
(BEVDet §3.3) drawn by :class:`storage.bev_augment.ViewAugmentConfig` from a seed, the sample token and the view
index, so a rerun draws the same matrices. Points, GT boxes and ``lidar_from_cam`` are moved by
the view matrix, so BEV targets (features, heatmap, boxes, masks) are in the view's frame
(``view_matrix @ p_lidar``). Camera-frame targets (``lidar_depth``) do not change under a BEV
augmentation (images are untouched) and are computed once per sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from collections.abc import Iterator

from torch import nn

from pipeline.shard_stages import augment_sample, check_images, job_row, shard_rows, teacher_forward
from storage.bev_augment import ViewAugmentConfig
from storage.cache import CacheWriter, Codec, RowResult, manifest
from storage.image_check import IMAGE_CHECKS
from storage.sample import SampleReader


@dataclass(frozen=True, kw_only=True)
class CacheJobConfig:
    """What the cache job computes and stores (recorded in the cache; see :func:`plan_cache`).

    Args:
        targets: target names to store (``bev_features/<stage>``, ``heatmap``, ``boxes``,
            ``instance_features``, ``fg_mask``, ``view_mask``, ``lidar_depth``, ...); None
            stores everything the teacher and the LiDAR builders produce.
        shard_size: rows per shard (one unit of work, one commit).
        views: BEV-augmented views stored per sample besides the plain one (rows per sample
            is ``1 + views``).
        batch_size: rows per teacher forward.
        image_size: ``(w, h)`` pixels of the student's resized images; the camera-dependent
            targets (``view_mask``, ``lidar_depth``) use the intrinsics scaled to it.
        teacher_image_size: ``(w, h)`` the six images are resized to for a camera teacher
            (``bevfusion``); None gives the teacher points only (LiDAR teachers).
        depth_stride: pixel stride of ``lidar_depth`` (BEVDepth §3.2 uses 16).
        max_depth: frustum depth limit of ``view_mask``, m.
        max_boxes: capacity ``M_max`` of ``boxes`` / ``instance_features``.
        image_check: how camera images are checked so a broken JPEG fails its row:
            ``decode`` (full decode), ``draft`` (JPEG DCT-scaled 1/8 decode: reads the whole
            entropy-coded stream, so truncation and corruption are caught) or ``none``.
        augment: the BEV augmentation of views > 0.
        codecs: target name or field name -> codec overriding the field's default (recorded in
            the schema's target specs).
        torch_threads: ``torch.set_num_threads`` in each worker (Ray sets OMP threads to 1), and
            the rows of a shard Zstd-compresses in parallel (same bytes).
        prefetch: batches read, checked and prepared ahead of the teacher in ``prefetch``
            background threads, the teacher running one batch ahead of row building, encoding
            and writing (:func:`shard_rows`); 0 runs the stages one after the other. Operational:
            the stored rows are the same for every value (not recorded in the cache).
    """

    targets: tuple[str, ...] | None = None
    shard_size: int = 32
    views: int = 0
    batch_size: int = 4
    image_size: tuple[int, int] = (704, 256)
    teacher_image_size: tuple[int, int] | None = None
    depth_stride: int = 16
    max_depth: float = 60.0
    max_boxes: int = 500
    image_check: str = "draft"
    augment: ViewAugmentConfig = field(default_factory=ViewAugmentConfig)
    codecs: dict[str, Codec] = field(default_factory=dict)
    torch_threads: int = 1
    prefetch: int = 0

    def __post_init__(self) -> None:
        if self.image_check not in IMAGE_CHECKS:
            raise ValueError(f"CacheJobConfig.image_check must be one of {IMAGE_CHECKS}, got {self.image_check!r}")
        if self.shard_size < 1 or self.views < 0 or self.batch_size < 1 or self.depth_stride < 1:
            raise ValueError("CacheJobConfig: shard_size, batch_size, depth_stride must be >= 1 and views >= 0")
        if self.prefetch < 0:
            raise ValueError(f"CacheJobConfig.prefetch must be >= 0, got {self.prefetch}")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))


@dataclass(kw_only=True)
class StageTimes:
    """Seconds spent per stage (summed over workers for a job)."""

    read: float = 0.0
    teacher: float = 0.0
    targets: float = 0.0
    encode: float = 0.0
    write: float = 0.0

    def add(self, other: StageTimes) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in dataclasses.fields(self))


@dataclass(kw_only=True)
class ShardResult:
    """What one unit of work reports (its manifest fragment is already committed).

    Attributes:
        shard_index: the shard.
        rows_ok / rows_failed: committed rows by status.
        nbytes: compressed bytes per target written for this shard.
        errors: reasons of the failed rows (``sample <token> ...: <field> <problem> at <path>``).
        times: stage times of this shard.
        skipped: the shard was already committed (resume); no new shard was written (its failed
            rows may have been retried: ``retried``).
        retried: failed rows of the committed shard computed again (:func:`process_shard`).
    """

    shard_index: int
    rows_ok: int = 0
    rows_failed: int = 0
    nbytes: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    times: StageTimes = field(default_factory=StageTimes)
    skipped: bool = False
    retried: int = 0

    @property
    def rows(self) -> int:
        return self.rows_ok + self.rows_failed


def committed_result(writer: CacheWriter, shard_index: int) -> ShardResult | None:
    """The :class:`ShardResult` (``skipped=True``) of an already committed shard, else None."""
    table = manifest.read_fragment(writer.store, shard_index)
    if table is None:
        return None
    status, errors = table.column("status").to_pylist(), table.column("error").to_pylist()
    failed = tuple(e for s, e in zip(status, errors, strict=True) if s != manifest.STATUS_OK)
    return ShardResult(shard_index=shard_index, rows_ok=len(status) - len(failed), rows_failed=len(failed),
                       errors=failed, skipped=True)


def process_shard(teacher: nn.Module, reader: SampleReader, writer: CacheWriter, shard_index: int,
                  config: CacheJobConfig) -> ShardResult:
    """The unit of work: compute and commit shard ``shard_index`` (whole shard, then its
    manifest fragment). Idempotent: a committed shard is skipped (``skipped=True``), except
    that its failed rows are computed again (the input may have been fixed since; ``retried``)
    while its ok rows stay as committed (:meth:`storage.cache.CacheWriter.retry_failed`).

    Args:
        teacher: the loaded teacher (eval mode), ``forward(TeacherInput) -> TeacherOutput``.
        reader: the dataset reader the cache was planned from.
        writer: the open cache (:func:`pipeline.cache_plan.plan_cache`).
        shard_index: which shard.
        config: the job config the cache was planned with.

    Returns:
        the shard's counts, failure reasons, bytes and stage times.

    Raises:
        ValueError: the teacher's output grid differs from the cache's.
        storage.errors.CacheWriteError: the cache cannot be written (disk full, permission).
    """
    writer.encode_threads = config.torch_threads  # the worker's thread budget also compresses rows
    done = committed_result(writer, shard_index)
    if done is not None:
        return _retry_failed(teacher, reader, writer, shard_index, config) if done.rows_failed else done
    times, errors = StageTimes(), []

    def rows() -> Iterator[RowResult]:
        for row in shard_rows(teacher, reader, writer, shard_index, config, times):
            if row.error is not None:
                errors.append(row.error)
            yield row

    report = writer.write_shard(shard_index, rows())
    times.encode, times.write = report.encode_s, report.write_s
    if report.rows_failed != len(errors):  # the writer failed rows too (non-finite targets, too many boxes)
        errors = list(committed_result(writer, shard_index).errors)  # type: ignore[union-attr]
    return ShardResult(shard_index=shard_index, rows_ok=report.rows_ok, rows_failed=report.rows_failed,
                       nbytes=dict(report.nbytes), errors=tuple(errors), times=times)


def _retry_failed(teacher: nn.Module, reader: SampleReader, writer: CacheWriter, shard_index: int,
                  config: CacheJobConfig) -> ShardResult:
    """Compute the failed rows of a committed shard again and commit them, keeping its ok rows."""
    failed = writer.failed_rows(shard_index)
    times = StageTimes()
    report = writer.retry_failed(shard_index, shard_rows(teacher, reader, writer, shard_index, config, times,
                                                         only=failed))
    times.encode, times.write = report.encode_s, report.write_s
    result = committed_result(writer, shard_index)
    assert result is not None  # just committed
    result.retried, result.times = len(failed), times
    return result


__all__ = ["CacheJobConfig", "ShardResult", "StageTimes", "ViewAugmentConfig", "augment_sample", "check_images",
           "committed_result", "job_row", "process_shard", "shard_rows", "teacher_forward"]
