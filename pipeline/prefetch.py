"""Ordered, bounded background maps: the cache worker's stages overlap without changing results.

:func:`ordered_map` is ``map(fn, items)`` whose calls run ahead in a small thread pool, at most
``depth`` items beyond the one the consumer holds, and whose results come back in input order.
:func:`pipeline.cache_job.shard_rows` chains two of them so that, while the teacher runs batch
``k``, a pool reads, checks and prepares the samples of batch ``k + 1`` and the consumer builds
and encodes the rows of batch ``k - 1``:

    read + check images + lidar_depth / masks / augmentation   (``prefetch`` threads)
      -> teacher forward                                         (one thread, one batch ahead)
        -> teacher part of the rows, encode, write               (the consumer: the shard writer)

Threads, not processes: the expensive calls release the GIL (torch and CUDA kernels, PIL
decoding, NumPy on large arrays, file reads), and the samples and teacher outputs stay in one
address space (no copies through an object store). ``depth=0`` runs everything inline, in order,
in the caller's thread: the reference the prefetching path is compared with, bit for bit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], depth: int, *, workers: int | None = None,
                name: str = "bevkd-prefetch") -> Iterator[R]:
    """``fn(x)`` for each ``x`` of ``items``, in input order, computed up to ``depth`` items ahead.

    ``items`` is pulled lazily in the caller's thread (it may itself be a generator, e.g. another
    :func:`ordered_map`); ``fn`` runs in the pool. Memory stays bounded: at most ``depth + 1``
    calls are submitted and not yet consumed.

    Args:
        fn: the work per item; thread-safe with respect to the other calls in flight.
        items: the inputs.
        depth: items computed ahead of the consumer; 0 runs ``fn`` inline in the caller's thread
            when the result is asked for (no threads at all).
        workers: pool threads (default ``depth``; 1 keeps the calls sequential, e.g. one teacher).
        name: thread name prefix (visible in py-spy and debuggers).

    Yields:
        ``fn(x)`` in the order of ``items``.

    Raises:
        Exception: whatever ``fn`` raised, when its result is reached (later items may have been
            computed already; their results are dropped). Closing the generator early cancels
            the calls not started and waits for the running ones.
    """
    if depth < 0:
        raise ValueError(f"ordered_map: depth must be >= 0, got {depth}")
    if depth == 0:
        for x in items:
            yield fn(x)
        return
    pool = ThreadPoolExecutor(max_workers=max(1, workers or depth), thread_name_prefix=name)
    futures: deque[Future[R]] = deque()
    try:
        for x in items:
            futures.append(pool.submit(fn, x))
            if len(futures) > depth:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()
    finally:
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True)


__all__ = ["ordered_map"]
