"""Planning and summing up a cache job (Ray-free): which teacher, which cache, resume or refuse.

:func:`plan_cache` creates the cache for a job, or reopens it to resume when it was made by the
same teacher (name, config, weights sha256), grid, target set, dataset, views, shard size and job
config; otherwise it refuses, naming what differs, unless ``overwrite``. :func:`run_loop` is the
whole job as a plain loop over :func:`pipeline.cache_job.process_shard` (the reference the Ray
job is compared with); :class:`CacheJobSummary` is what either returns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Sequence

import torch
import zarr
from torch import nn
from tqdm import tqdm

from pipeline.cache_job import CacheJobConfig, ShardResult, StageTimes, job_row, process_shard, teacher_forward
from storage.cache import CacheRow, CacheSchema, CacheWriter, DatasetInfo, TeacherInfo, stores, target_specs_for
from storage.cache import manifest
from storage.cache.layout import JOB_ATTR, unfinished_creation
from storage.errors import CacheMismatchError, SampleError
from storage.grid import BEVGrid
from storage.sample import SampleReader
from teachers import registry



@dataclass(frozen=True, kw_only=True)
class TeacherSource:
    """Where a job's teacher comes from; every worker loads its own copy with :meth:`load`.

    Args:
        name: registry name (``centerpoint``), ``package.module:factory``, or None to take the
            name stored in ``checkpoint``.
        checkpoint: weights written by :func:`teachers.registry.save_checkpoint` (or a state dict).
        init_seed: torch seed for the initial weights, so untrained teachers are identical in
            every worker (the weights sha256 is checked against the cache's).
        device: ``cpu`` or ``cuda`` (Ray actors with a GPU use ``cuda``).
    """

    name: str | None = None
    checkpoint: str | None = None
    init_seed: int = 0
    device: str = "cpu"

    def load(self, device: str | None = None) -> tuple[nn.Module, TeacherInfo]:
        """The teacher in eval mode on ``device`` (default ``self.device``) and its info."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            module, info = registry.load_teacher(self.name, self.checkpoint)
        return module.to(device or self.device), info


def example_row(teacher: nn.Module, reader: SampleReader, config: CacheJobConfig) -> tuple[CacheRow, BEVGrid]:
    """The cache row of the first readable sample (its targets and shapes make the schema) and
    the teacher's output grid.

    Raises:
        ValueError: no sample of the reader can be read (the message gives the first sample's reason).
    """
    first: str | None = None
    for tried, token in enumerate(reader.sample_tokens):
        if tried == 16:  # sixteen broken samples in a row: the dataset or the teacher is broken, say why
            break
        try:
            sample = reader.read(token)
            out = teacher_forward(teacher, [sample], config.teacher_image_size)
            return job_row(out, sample, config), out.bev_grid
        except SampleError as exc:  # a broken sample: plan from the next one
            first = first or str(exc)
        except (ValueError, IndexError, TypeError, KeyError) as exc:  # malformed input (or a teacher bug)
            first = first or f"sample {token}: unusable input ({type(exc).__name__}: {exc})"
    raise ValueError(f"{reader.dataset_id}: none of the first {min(len(reader), 16)} samples could be read; "
                     f"nothing to cache (first: {first})")


def job_attrs(config: CacheJobConfig) -> dict[str, Any]:
    """The job config as JSON (what changes the stored values; operational flags excluded)."""
    d = dataclasses.asdict(config)
    d.pop("torch_threads")
    d.pop("prefetch")
    d.pop("codecs")  # recorded (and compared) in the schema's target specs
    return json.loads(json.dumps(d))


def build_schema(teacher: nn.Module, info: TeacherInfo, reader: SampleReader, config: CacheJobConfig) -> CacheSchema:
    """The schema of the cache a job writes.

    Raises:
        ValueError: ``config.targets`` names a target the teacher and LiDAR builders do not produce.
    """
    example, grid = example_row(teacher, reader, config)
    specs = target_specs_for(example, max_boxes=config.max_boxes, codecs=config.codecs, only=config.targets)
    if config.targets is not None:
        missing = sorted(set(config.targets) - {s.name for s in specs})
        if missing:
            raise ValueError(f"targets {missing} are not produced by teacher {info.name!r} "
                             f"(available: {example.target_names()})")
    views = 1 + config.views
    return CacheSchema(grid=grid, teacher=info, dataset=DatasetInfo.from_reader_id(reader.dataset_id), targets=specs,
                       num_rows=len(reader.sample_tokens) * views, views=views, shard_size=config.shard_size)


def schema_differences(old: CacheSchema, new: CacheSchema, old_tokens: list[str], new_tokens: list[str]) -> list[str]:
    """What differs between an existing cache and the one a job asks for (empty: resumable)."""
    diffs = []
    if old.teacher.name != new.teacher.name:
        diffs.append(f"teacher name ({old.teacher.name!r} stored, {new.teacher.name!r} asked)")
    if old.teacher.weights_sha256 != new.teacher.weights_sha256:
        diffs.append(f"teacher weights (sha256 {old.teacher.weights_sha256[:12]}… stored, "
                     f"{new.teacher.weights_sha256[:12]}… asked)")
    if old.teacher.config != new.teacher.config:
        diffs.append("teacher config")
    if not old.grid.same_as(new.grid):
        diffs.append(f"grid ({old.grid.to_dict()} stored, {new.grid.to_dict()} asked)")
    if [t.to_dict() for t in old.targets] != [t.to_dict() for t in new.targets]:
        diffs.append(f"target set ({[str(t.name) for t in old.targets]} stored, "
                     f"{[str(t.name) for t in new.targets]} asked, or their shapes/codecs)")
    if old.dataset != new.dataset or old_tokens != new_tokens:
        diffs.append(f"dataset ({old.dataset.to_dict()} with {len(old_tokens)} samples stored, "
                     f"{new.dataset.to_dict()} with {len(new_tokens)} asked)")
    if old.views != new.views or old.shard_size != new.shard_size:
        diffs.append(f"views/shard size ({old.views}/{old.shard_size} stored, {new.views}/{new.shard_size} asked)")
    return diffs


def plan_cache(out: stores.StoreLike, reader: SampleReader, teacher: nn.Module, info: TeacherInfo,
               config: CacheJobConfig, *, overwrite: bool = False) -> CacheWriter:
    """Create the job's cache at ``out``, or reopen it to resume (:func:`open_or_create` with the
    schema of :func:`build_schema`)."""
    return open_or_create(out, build_schema(teacher, info, reader, config), reader.sample_tokens, config,
                          overwrite=overwrite)


def open_or_create(out: stores.StoreLike, schema: CacheSchema, sample_tokens: Sequence[str], config: CacheJobConfig,
                   *, overwrite: bool = False) -> CacheWriter:
    """Create the cache ``schema`` describes at ``out``, or reopen an existing one to resume.

    Raises:
        CacheMismatchError: a cache exists at ``out`` made with another teacher, weights, grid,
            target set, dataset, views/shard size or job config, and not ``overwrite``; the
            message names what differs.
    """
    tokens = [str(t) for t in sample_tokens]
    store = stores.open_store(out)
    if stores.exists(store, "zarr.json") and not overwrite and unfinished_creation(store) is None:  # else: create
        writer = CacheWriter.open(store)
        diffs = schema_differences(writer.schema, schema, writer.sample_tokens, tokens)
        root = zarr.open_group(store=store, mode="r+", zarr_format=3)
        stored_job, asked_job = root.attrs.get(JOB_ATTR), job_attrs(config)
        if stored_job is not None and stored_job != asked_job:
            changed = sorted(k for k in asked_job
                             if not isinstance(stored_job, dict) or stored_job.get(k) != asked_job[k])
            diffs.append(f"job config ({', '.join(changed)})")
        if diffs:
            raise CacheMismatchError(f"cache {stores.describe(store)} was made with a different "
                                     f"{'; '.join(diffs)}. Pass --overwrite to replace it, or choose another --out")
        if stored_job is None:
            root.attrs[JOB_ATTR] = asked_job
        return writer
    writer = CacheWriter.create(store, schema, tokens, overwrite=overwrite)
    zarr.open_group(store=store, mode="r+", zarr_format=3).attrs[JOB_ATTR] = job_attrs(config)
    return writer


@dataclass(kw_only=True)
class CacheJobSummary:
    """The outcome of a cache job.

    Attributes:
        out: the cache location.
        rows_ok / rows_failed: rows of the whole cache after the job, by status (rows_failed also
            counts the rows of shards that stayed uncommitted after their retries).
        rows_written: rows this run committed (the rest were committed by an earlier run).
        shards_written / shards_skipped: shards committed by this run / found committed.
        nbytes: compressed bytes this run wrote.
        times: stage times summed over workers (read, teacher, targets, encode, write), s.
        wall_s: wall-clock time of the job, s (planning, workers and all).
        startup_s: of which before the first shard could start: Ray start, teacher loading (spconv
            builds its kernel table at import, ~5-15 s per process), planning the cache.
        workers: parallel workers (1 for the plain loop).
        errors: reasons of every failed row.
    """

    out: str
    rows_ok: int = 0
    rows_failed: int = 0
    rows_written: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    nbytes: int = 0
    times: StageTimes = field(default_factory=StageTimes)
    wall_s: float = 0.0
    startup_s: float = 0.0
    workers: int = 1
    errors: tuple[str, ...] = ()

    @property
    def failed_fraction(self) -> float:
        total = self.rows_ok + self.rows_failed
        return self.rows_failed / total if total else 0.0

    def add(self, result: ShardResult) -> None:
        self.rows_ok += result.rows_ok
        self.rows_failed += result.rows_failed
        self.errors += result.errors
        if result.skipped:
            self.shards_skipped += 1
            return
        self.rows_written += result.rows
        self.shards_written += 1
        self.nbytes += sum(result.nbytes.values())
        self.times.add(result.times)

    def format(self, max_errors: int = 20) -> str:
        """The closing summary printed by ``bevkd cache``."""
        t = self.times
        stage = ", ".join(f"{n} {getattr(t, n):.1f}s ({100 * getattr(t, n) / t.total if t.total else 0:.0f}%)"
                          for n in ("read", "teacher", "targets", "encode", "write"))
        lines = [f"cache {self.out}: {self.rows_ok} rows ok, {self.rows_failed} failed "
                 f"({100 * self.failed_fraction:.1f}%); this run wrote {self.rows_written} rows in "
                 f"{self.shards_written} shards ({self.shards_skipped} already committed), "
                 f"{self.nbytes / 1e6:.2f} MB, {self.wall_s:.1f}s wall ({self.startup_s:.1f}s startup) with "
                 f"{self.workers} worker(s)",
                 f"time per stage (summed over workers): {stage}"]
        lines += [f"FAILED: {e}" for e in self.errors[:max_errors]]
        if len(self.errors) > max_errors:
            lines.append(f"... and {len(self.errors) - max_errors} more failed rows")
        return "\n".join(lines)


def run_loop(config: CacheJobConfig, reader: SampleReader, teacher_source: TeacherSource, out: stores.StoreLike, *,
             overwrite: bool = False, progress: bool = False) -> CacheJobSummary:
    """The whole cache job as a plain in-process loop over the pending shards (no Ray)."""
    start = time.perf_counter()
    teacher, info = teacher_source.load()
    writer = plan_cache(out, reader, teacher, info, config, overwrite=overwrite)
    summary = CacheJobSummary(out=stores.describe(writer.store), startup_s=time.perf_counter() - start)
    with tqdm(total=writer.schema.num_rows, unit="row", desc="cache (loop)", disable=not progress) as bar:
        for shard in range(writer.schema.num_shards):
            result = process_shard(teacher, reader, writer, shard, config)
            summary.add(result)
            bar.update(result.rows)
    manifest.compact_manifest(writer.store, [t.name for t in writer.schema.targets])  # opening reads one file
    summary.wall_s = time.perf_counter() - start
    return summary
