"""The cache job on Ray: the only bevkd module that imports ``ray``.

Ray only schedules the Ray-free unit of work :func:`pipeline.cache_job.process_shard`: one
:class:`ShardWorker` actor per GPU (``num_gpus=1``) or per CPU slot loads the teacher and the
reader once (Ray Data's predictor pattern: load in ``__init__``, work in ``__call__``) and
processes shard indices. Plain actors were chosen over an ``ActorPool`` / Ray Data pipeline by
measurement: ~3 s less fixed cost per job here, and per-shard commits need no shuffling.

Planning happens in the first actor (the teacher's imports, e.g. spconv's ~15 s kernel table,
stay out of the driver): it returns the cache schema, the driver creates or reopens the cache
(:func:`pipeline.cache_plan.open_or_create`, refusing a mismatching one) and hands out the
pending shards, at most two queued per actor.

Fault tolerance: actors restart after a crash (``max_restarts``) and their calls are retried,
also on Python exceptions (``max_task_retries`` with ``retry_exceptions``); the driver hands a
shard lost with its actor to the next actor (:class:`_Dispatcher`). A retried shard is rewritten
whole (only a manifest fragment commits it, and a committed shard is skipped). A shard that
still fails stays uncommitted, counts as failed rows, and a rerun retries it.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from typing import Any

import ray
import torch

from pipeline.cache_job import CacheJobConfig, ShardResult, committed_result, process_shard
from pipeline.cache_plan import CacheJobSummary, TeacherSource, build_schema, open_or_create
from storage.cache import CacheSchema, CacheWriter, stores
from storage.errors import CacheMismatchError
from storage.sample import SampleReader

#: Restarts of a crashed actor; Ray's retries of one call (crash or exception); the driver's attempts
#: per shard after actor crashes, and its wait before handing a crashed shard out again.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 2
MAX_SHARD_ATTEMPTS = 4
RETRY_DELAY_S = 2.0
#: Object store of a local Ray started by the job (results are small; readers are pickled once).
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 ** 2

warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray(\.|$)")


class ShardWorker:
    """One worker of the job (a Ray actor in :func:`run_cache_job`; a plain object in tests).

    Args:
        teacher_source: the teacher to load.
        reader: the dataset reader (pickled to the actor).
        out: the cache location (opened on the first shard, after planning created it).
        config: the job config.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, teacher_source: TeacherSource, reader: SampleReader, out: str, config: CacheJobConfig,
                 device: str = "cpu") -> None:
        torch.set_num_threads(config.torch_threads)  # Ray sets OMP_NUM_THREADS=1 in workers
        self.teacher, self.info = teacher_source.load(device)
        self.reader, self.out, self.config = reader, out, config
        self.writer: CacheWriter | None = None

    def schema(self) -> CacheSchema:
        """The schema of the cache this worker's teacher produces (one forward on one sample)."""
        return build_schema(self.teacher, self.info, self.reader, self.config)

    @ray.method(max_task_retries=MAX_TASK_RETRIES, retry_exceptions=True)
    def process(self, shard_index: int) -> ShardResult:
        """:func:`process_shard` on this worker's teacher, reader and writer.

        Raises:
            CacheMismatchError: the cache holds another teacher's weights than this worker loaded.
        """
        if self.writer is None:
            writer = CacheWriter.open(self.out)
            if writer.schema.teacher.weights_sha256 != self.info.weights_sha256:
                raise CacheMismatchError(f"cache {self.out}: teacher weights sha256 "
                                         f"{writer.schema.teacher.weights_sha256} but this worker loaded "
                                         f"{self.info.weights_sha256}")
            self.writer = writer
        return process_shard(self.teacher, self.reader, self.writer, shard_index, self.config)

    __call__ = process


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to Ray: keep an initialised one, join ``address`` (``auto``, ``ray://host:10001``),
    or start a local Ray sized to the machine. Returns True when this call started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kwargs)
    return True


def _actors(teacher_source: TeacherSource, reader: SampleReader, out: str, config: CacheJobConfig,
            max_workers: int | None, cpus_per_worker: float) -> list[Any]:
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        n, opts, device = gpus, {"num_gpus": 1, "num_cpus": cpus_per_worker}, "cuda"
    else:
        n, opts, device = max(1, int(res.get("CPU", 1) // cpus_per_worker)), {"num_cpus": cpus_per_worker}, "cpu"
    n = max(1, min(n, max_workers or n))
    cls = ray.remote(max_restarts=MAX_RESTARTS)(ShardWorker)
    return [cls.options(**opts).remote(teacher_source, reader, out, config, device) for _ in range(n)]


def _lost_shard(writer: CacheWriter, shard: int, exc: BaseException) -> ShardResult:
    rows = len(writer.schema.shard_rows(shard))
    return ShardResult(shard_index=shard, rows_failed=rows,
                       errors=(f"shard {shard} ({rows} rows) not committed after retries: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",))


class _Dispatcher:
    """Hands out pending shards, at most two queued per actor, and collects their results.

    A shard whose actor crashed (``RayActorError``: died, or unavailable while restarting) is
    handed again, after ``RETRY_DELAY_S``, to the next actor, up to ``MAX_SHARD_ATTEMPTS`` times;
    Ray's own retries (``max_task_retries``) can be spent while the actor is still restarting.
    A shard whose task raised after Ray's retries (``RayTaskError``) is reported lost.
    """

    def __init__(self, actors: list[Any], writer: CacheWriter, pending: list[int], summary: CacheJobSummary) -> None:
        self.actors, self.writer, self.summary = actors, writer, summary
        self.queue: deque[int] = deque(pending)
        self.inflight: dict[Any, tuple[int, int]] = {}  # ref -> (actor index, shard)
        self.later: list[tuple[float, int, int]] = []  # (not before, actor index, shard)
        self.attempts: dict[int, int] = {}

    def submit(self, a: int, shard: int | None = None) -> None:
        if shard is None:
            if not self.queue:
                return
            shard = self.queue.popleft()
        self.attempts[shard] = self.attempts.get(shard, 0) + 1
        self.inflight[self.actors[a].process.remote(shard)] = (a, shard)

    def run(self, bar: Any) -> None:
        for _ in range(2):
            for a in range(len(self.actors)):
                self.submit(a)
        while self.inflight or self.later:
            now = time.monotonic()
            for item in [x for x in self.later if x[0] <= now]:
                self.later.remove(item)
                self.submit(item[1], item[2])
            if not self.inflight:
                time.sleep(0.1)
                continue
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
            if done:
                self.collect(done[0], bar)

    def collect(self, ref: Any, bar: Any) -> None:
        a, shard = self.inflight.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if self.attempts[shard] < MAX_SHARD_ATTEMPTS:
                nxt = (a + 1) % len(self.actors)
                self.later.append((time.monotonic() + RETRY_DELAY_S, nxt, shard))
                return
            result = _lost_shard(self.writer, shard, exc)
        except ray.exceptions.RayError as exc:
            result = _lost_shard(self.writer, shard, exc)
        self.summary.add(result)
        bar.update(result.rows)
        bar.set_postfix(failed=self.summary.rows_failed)
        self.submit(a)


def _dispatch(actors: list[Any], writer: CacheWriter, pending: list[int], summary: CacheJobSummary,
              progress: bool) -> None:
    from tqdm import tqdm

    total = sum(len(writer.schema.shard_rows(i)) for i in pending)
    unit = "sample" if writer.schema.views == 1 else "row"
    with tqdm(total=total, unit=unit, desc="cache", disable=not progress, smoothing=0.1) as bar:
        _Dispatcher(actors, writer, pending, summary).run(bar)


def run_cache_job(config: CacheJobConfig, reader: SampleReader, teacher_source: TeacherSource, out: str, *,
                  address: str | None = None, overwrite: bool = False, progress: bool = True,
                  max_workers: int | None = None, cpus_per_worker: float = 1.0) -> CacheJobSummary:
    """Run a teacher once over a dataset into the cache at ``out``, on Ray; resumable.

    Args:
        config: what to compute and store.
        reader: the dataset (picklable :class:`storage.sample.SampleReader`).
        teacher_source: the teacher (name / checkpoint) every worker loads.
        out: cache location (directory or fsspec URL visible to every worker).
        address: Ray cluster to join (``auto``, ``ray://host:10001``); None starts a local Ray
            sized to the machine unless one is already initialised (then it is used as is).
        overwrite: replace an existing cache made with another teacher / grid / targets / dataset.
        progress: show a progress bar (rows/s and ETA).
        max_workers: cap on the actors (default: one per GPU, else one per ``cpus_per_worker`` CPUs).
        cpus_per_worker: CPUs reserved per actor.

    Returns:
        the job summary (rows of the whole cache, rows written now, bytes, stage times).

    Raises:
        CacheMismatchError: ``out`` holds a cache made differently and not ``overwrite``.
    """
    start = time.perf_counter()
    out = str(out) if "://" in str(out) else os.path.abspath(out)  # workers may run elsewhere than here
    started = ensure_ray(address)
    actors: list[Any] = []
    try:
        actors = _actors(teacher_source, reader, out, config, max_workers, cpus_per_worker)
        schema = ray.get(actors[0].schema.remote())
        writer = open_or_create(out, schema, reader.sample_tokens, config, overwrite=overwrite)
        summary = CacheJobSummary(out=stores.describe(writer.store), workers=len(actors),
                                  startup_s=time.perf_counter() - start)
        pending = writer.pending_shards()
        for shard in sorted(set(range(schema.num_shards)) - set(pending)):
            done = committed_result(writer, shard)
            if done is not None:
                summary.add(done)
        _dispatch(actors, writer, pending, summary, progress)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    summary.wall_s = time.perf_counter() - start
    return summary
