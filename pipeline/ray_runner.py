"""The cache job on Ray: the only bevkd module that imports ``ray``.

Ray only schedules the Ray-free unit of work :func:`pipeline.cache_job.process_shard`: one
:class:`ShardWorker` actor per GPU (``num_gpus=1``, or a fraction of one: :func:`actor_plan`) or
per CPU slot loads the teacher and the reader once (Ray Data's predictor pattern: load in
``__init__``, work in ``__call__``) and processes shard indices. Plain actors were chosen over an
``ActorPool`` / Ray Data pipeline by measurement: ~3 s less fixed cost per job here, and per-shard
commits need no shuffling.

Planning happens in the first actor (the teacher's imports, e.g. spconv's ~15 s kernel table,
stay out of the driver): it returns the cache schema, the driver creates or reopens the cache
(:func:`pipeline.cache_plan.open_or_create`, refusing a mismatching one) and hands out the
pending shards, at most two queued per actor.

Fault tolerance: actors restart after a crash (``max_restarts``) and their calls are retried,
also on Python exceptions (``max_task_retries`` with ``retry_exceptions``); the driver hands a
shard lost with its actor to the next actor (:class:`_Dispatcher`). A retried shard is rewritten
whole (only a manifest fragment commits it, and a committed shard is skipped). A shard that
still fails stays uncommitted, counts as failed rows, and a rerun retries it; so are the failed
rows of committed shards (their ok rows are kept).

Errors reach the user as one line: the teacher and checkpoint are checked in the driver before
any actor starts (:func:`check_teacher_source`); an exception inside an actor (also in its
``__init__``) is unwrapped from Ray's ``RayTaskError`` to its cause; a write failure (disk full)
or a cache mismatch stops the job. A local Ray started here dies with the driver, also on
``kill -9`` (:mod:`pipeline.ray_watchdog`).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections import deque
from typing import Any

import ray
import torch

from pipeline.cache_job import CacheJobConfig, ShardResult, committed_result, process_shard
from pipeline import ray_watchdog
from pipeline.cache_plan import CacheJobSummary, TeacherSource, build_schema, open_or_create
from storage import sample_index
from storage.cache import CacheSchema, CacheWriter, manifest, stores
from storage.checkpoint import load_checkpoint
from storage.errors import CacheMismatchError, CacheWriteError, CheckpointError
from storage.sample import SampleReader
from teachers.registry import TEACHERS

#: Restarts of a crashed actor; Ray's retries of one call (crash or exception); the driver's attempts
#: per shard after actor crashes, and its wait before handing a crashed shard out again.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 2
MAX_SHARD_ATTEMPTS = 4
RETRY_DELAY_S = 2.0
#: Batches a GPU actor prefetches when the user did not choose (``auto_prefetch``): its teacher waits
#: on the GPU, so the CPU stages can overlap it. CPU actors keep ``config.prefetch`` (0 by default: there
#: the teacher needs the cores itself; bench/cache_job.py measured prefetch slower on a 2-core machine).
AUTO_GPU_PREFETCH = 2
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
        self.reader, self.out, self.config = reader, out, config
        self.writer: CacheWriter | None = None
        # a failing load is raised by the first call, so the driver gets it as a RayTaskError with
        # its cause (an exception in __init__ only reaches it as a multi-line ActorDiedError text)
        self.load_error: Exception | None = None
        try:
            self.teacher, self.info = teacher_source.load(device)
        except Exception as exc:  # noqa: BLE001 - re-raised by every call
            self.load_error = exc

    def _loaded(self) -> None:
        if self.load_error is not None:
            raise self.load_error

    def schema(self) -> CacheSchema:
        """The schema of the cache this worker's teacher produces (one forward on one sample)."""
        self._loaded()
        return build_schema(self.teacher, self.info, self.reader, self.config)

    @ray.method(max_task_retries=MAX_TASK_RETRIES, retry_exceptions=True)
    def process(self, shard_index: int) -> ShardResult:
        """:func:`process_shard` on this worker's teacher, reader and writer.

        Raises:
            CacheMismatchError: the cache holds another teacher's weights than this worker loaded.
        """
        self._loaded()
        if self.writer is None:
            writer = CacheWriter.open(self.out)
            if writer.schema.teacher.weights_sha256 != self.info.weights_sha256:
                raise CacheMismatchError(f"cache {self.out}: teacher weights sha256 "
                                         f"{writer.schema.teacher.weights_sha256} but this worker loaded "
                                         f"{self.info.weights_sha256}")
            self.writer = writer
        return process_shard(self.teacher, self.reader, self.writer, shard_index, self.config)

    __call__ = process


class RayJobError(RuntimeError):
    """The Ray job failed for a reason that is not the user's input (an actor died while planning)."""


def unwrap(exc: BaseException) -> BaseException:
    """The exception raised inside a Ray task or actor call (``RayTaskError.cause``, nested
    ones too), or ``exc`` itself when it carries no cause."""
    while isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    return exc


def describe_error(exc: BaseException) -> str:
    """``Type: first line of the message`` of an (unwrapped) exception."""
    cause = unwrap(exc)
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first}"


def check_teacher_source(source: TeacherSource) -> None:
    """Check in the driver, before any actor starts, what would make every actor fail: a
    checkpoint that is missing, unreadable or refused, a teacher name that is neither registered
    nor ``package.module:factory`` with an importable module (the factory itself is imported by
    the actors only), and no name at all.

    Raises:
        storage.errors.CheckpointError: the checkpoint cannot be used (names the file).
        ValueError: the teacher name cannot be resolved.
    """
    import importlib.util

    name = source.name
    if source.checkpoint is not None:
        ckpt = load_checkpoint(source.checkpoint)
        stored = ckpt.get("teacher") if isinstance(ckpt, dict) else None
        if name is None and stored is not None and stored not in TEACHERS:
            raise CheckpointError(f"checkpoint {source.checkpoint}: names teacher {str(stored)[:100]!r}, which is "
                                  f"not registered ({', '.join(TEACHERS)}); a checkpoint's name is never imported, "
                                  "pass --teacher package.module:factory yourself if you trust it")
        name = name if name is not None else stored
    if name is None:
        raise ValueError("give --teacher NAME or a --checkpoint that records a registered teacher name")
    if name in TEACHERS:
        return
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"teacher {name!r}: expected a registered name ({', '.join(TEACHERS)}) "
                         "or 'package.module:factory'")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"teacher {name!r}: cannot import factory ({exc})") from None
    if found is None:
        raise ValueError(f"teacher {name!r}: cannot import factory (No module named {module!r})")


#: The watchdog of the local Ray this process started (:mod:`pipeline.ray_watchdog`).
_WATCHDOG: list[Any] = []


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to Ray: keep an initialised one, join ``address`` (``auto``, ``ray://host:10001``),
    or start a local Ray sized to the machine, which dies with this process even on ``kill -9``
    (:mod:`pipeline.ray_watchdog`). Returns True when this call started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kwargs)
        _WATCHDOG.append(ray_watchdog.start())
    return True


def shutdown_ray() -> None:
    """``ray.shutdown()`` and stop the watchdog of a local Ray started by :func:`ensure_ray`."""
    ray.shutdown()
    while _WATCHDOG:
        ray_watchdog.stop(_WATCHDOG.pop())


def actor_plan(resources: dict[str, float], *, cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None,
               max_workers: int | None = None) -> tuple[int, dict[str, float], str]:
    """How many :class:`ShardWorker` actors a cluster with ``resources`` (``ray.cluster_resources()``)
    gets, the Ray resources each requests (``num_cpus``, ``num_gpus``) and their torch device.

    ``gpus_per_worker`` None: one actor per whole GPU when the cluster has one, else one per
    ``cpus_per_worker`` CPUs; 0: CPU actors even on GPU nodes; ``g > 0``: ``num_gpus=g`` per actor,
    ``floor(GPUs / g)`` actors (a fraction shares a GPU: 0.5 puts two actors, two teachers, on each).

    Raises:
        ValueError: ``gpus_per_worker`` negative, fractional above 1 (Ray refuses it), or positive
            on a cluster without that many GPUs; ``cpus_per_worker`` not positive.
    """
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if cpus_per_worker <= 0:
        raise ValueError(f"--cpus-per-worker must be > 0, got {cpus_per_worker:g}")
    g = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if g < 0 or (g > 1 and not float(g).is_integer()):
        raise ValueError(f"--gpus-per-worker must be 0, a fraction below 1 or a whole number, got {g:g}")
    if g > 0 and gpus < g:
        raise ValueError(f"--gpus-per-worker {g:g}: the Ray cluster has {gpus:g} GPUs (CPU {cpus:g}); "
                         "pass --gpus-per-worker 0 or omit it to run on CPUs")
    if g > 0:
        n, opts, device = int(gpus / g + 1e-9), {"num_gpus": g, "num_cpus": cpus_per_worker}, "cuda"
    else:
        n, opts, device = max(1, int(cpus // cpus_per_worker)), {"num_cpus": cpus_per_worker}, "cpu"
    return max(1, min(n, max_workers or n)), opts, device


def _actors(teacher_source: TeacherSource, reader: SampleReader, out: str, config: CacheJobConfig,
            max_workers: int | None, cpus_per_worker: float, gpus_per_worker: float | None = None,
            auto_prefetch: bool = False) -> list[Any]:
    n, opts, device = actor_plan(ray.cluster_resources(), cpus_per_worker=cpus_per_worker,
                                 gpus_per_worker=gpus_per_worker, max_workers=max_workers)
    if auto_prefetch and device == "cuda":
        config = dataclasses.replace(config, prefetch=AUTO_GPU_PREFETCH)
    cls = ray.remote(max_restarts=MAX_RESTARTS)(ShardWorker)
    reader = sample_index.indexed_reader(reader, sample_index.job_index_path(out))  # actors read no devkit tables
    return [cls.options(**opts).remote(teacher_source, reader, out, config, device) for _ in range(n)]


def _lost_shard(writer: CacheWriter, shard: int, exc: BaseException) -> ShardResult:
    rows = len(writer.schema.shard_rows(shard))
    return ShardResult(shard_index=shard, rows_failed=rows,
                       errors=(f"shard {shard} ({rows} rows) not committed after retries: {describe_error(exc)}",))


class _Dispatcher:
    """Hands out pending shards, at most two queued per actor, and collects their results.

    A shard whose actor crashed (``RayActorError``: died, or unavailable while restarting) is
    handed again, after ``RETRY_DELAY_S``, to the next actor, up to ``MAX_SHARD_ATTEMPTS`` times;
    Ray's own retries (``max_task_retries``) can be spent while the actor is still restarting.
    A shard whose task raised after Ray's retries (``RayTaskError``) is reported lost with the
    cause, except a write failure (disk full) or a cache mismatch, which stops the job: every
    other shard would fail the same way.
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
            cause = unwrap(exc)
            if isinstance(cause, (CacheWriteError, CacheMismatchError)):
                raise cause from None
            result = _lost_shard(self.writer, shard, exc)
        self.summary.add(result)
        bar.update(result.rows)
        bar.set_postfix(failed=self.summary.rows_failed)
        self.submit(a)


def _plan(actor: Any) -> CacheSchema:
    """The schema from the planning actor; its errors unwrapped to their cause."""
    try:
        schema: CacheSchema = ray.get(actor.schema.remote())
    except ray.exceptions.RayTaskError as exc:
        raise unwrap(exc) from None
    except ray.exceptions.RayActorError as exc:
        raise RayJobError(f"the planning actor died: {describe_error(exc)}") from None
    return schema


def _dispatch(actors: list[Any], writer: CacheWriter, pending: list[int], summary: CacheJobSummary,
              progress: bool) -> None:
    from tqdm import tqdm

    total = sum(len(writer.schema.shard_rows(i)) for i in pending)
    unit = "sample" if writer.schema.views == 1 else "row"
    with tqdm(total=total, unit=unit, desc="cache", disable=not progress, smoothing=0.1) as bar:
        _Dispatcher(actors, writer, pending, summary).run(bar)


def run_cache_job(config: CacheJobConfig, reader: SampleReader, teacher_source: TeacherSource, out: str, *,
                  address: str | None = None, overwrite: bool = False, progress: bool = True,
                  max_workers: int | None = None, cpus_per_worker: float = 1.0,
                  gpus_per_worker: float | None = None, auto_prefetch: bool = False) -> CacheJobSummary:
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
        gpus_per_worker: GPUs per actor (fractional shares a GPU); None: one per GPU if any, else
            CPU actors (:func:`actor_plan`).
        auto_prefetch: GPU actors prefetch :data:`AUTO_GPU_PREFETCH` batches whatever
            ``config.prefetch`` says (the rows are the same either way).

    Returns:
        the job summary (rows of the whole cache, rows written now, bytes, stage times).

    Raises:
        CacheMismatchError: ``out`` holds a cache made differently and not ``overwrite``.
        storage.errors.CheckpointError / ValueError: the teacher or checkpoint cannot be used
            (checked before any actor starts), or the actors' planning failed (its cause).
        storage.errors.CacheWriteError: the cache cannot be written (disk full, permission).
        RayJobError: an actor died while planning.
    """
    start = time.perf_counter()
    out = str(out) if "://" in str(out) else os.path.abspath(out)  # workers may run elsewhere than here
    check_teacher_source(teacher_source)
    started = ensure_ray(address)
    actors: list[Any] = []
    try:
        actors = _actors(teacher_source, reader, out, config, max_workers, cpus_per_worker, gpus_per_worker,
                         auto_prefetch)
        schema = _plan(actors[0])
        writer = open_or_create(out, schema, reader.sample_tokens, config, overwrite=overwrite)
        summary = CacheJobSummary(out=stores.describe(writer.store), workers=len(actors),
                                  startup_s=time.perf_counter() - start)
        pending = writer.pending_shards()
        for shard in sorted(set(range(schema.num_shards)) - set(pending)):
            done = committed_result(writer, shard)
            if done is not None and done.rows_failed:  # retried by an actor, ok rows kept
                pending.append(shard)
            elif done is not None:
                summary.add(done)
        _dispatch(actors, writer, pending, summary, progress)
        manifest.compact_manifest(writer.store, [t.name for t in schema.targets])  # opening reads one file
    finally:
        for actor in actors:
            ray.kill(actor)
        sample_index.remove_index(sample_index.job_index_path(out))
        if started:
            shutdown_ray()
    summary.wall_s = time.perf_counter() - start
    return summary
