"""The reader's fast path: one row's chunks fetched straight from the shards.

Zarr's ``array[row]`` costs a round trip to its event-loop thread per array and re-reads the
shard index every time; a row of the nuScenes target set touches ~10 arrays. Here all chunks of
a row are fetched with one batched call through the same Zarr store (any store kind), shard
indexes are cached per shard (a committed shard does not change; :meth:`ChunkFetcher.clear` after
a ``replace``), and chunks are decoded in the calling thread.

Formats (Zarr v3 spec; the layout :mod:`storage.cache.layout` creates):

* shard index at the end of the shard: :class:`~storage.cache.shard_index.ShardIndex`;
* chunk: C-order little-endian bytes, then either a Zstd frame with a content checksum
  (verified by libzstd on decompression) or the raw bytes followed by their crc32c.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import google_crc32c
import numpy as np
import numpy.typing as npt
from numcodecs import Zstd
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest

from storage.cache._zarr_private import Buffer, default_buffer_prototype, sync
from storage.cache.stores import gather_settled
from storage.cache.shard_index import ShardIndex, ShardIndexError

_ZSTD = Zstd()


@dataclass(frozen=True)
class ChunkRequest:
    """One chunk to fetch: shard ``key``, row within the shard, how to decode it, and optionally
    where to (``out``: a C-contiguous array of exactly ``shape`` and ``dtype``)."""

    key: str
    local: int
    shape: tuple[int, ...]
    dtype: str
    zstd: bool
    out: npt.NDArray[np.generic] | None = field(default=None, compare=False)


class ChunkError(Exception):
    """A chunk is missing or fails its checksum / decoding (the reader adds sample and target)."""


def _decode(raw: bytes, req: ChunkRequest) -> npt.NDArray[np.generic]:
    out = req.out if req.out is not None else np.empty(req.shape, dtype=np.dtype(req.dtype).newbyteorder("<"))
    if req.zstd:
        try:
            n = len(_ZSTD.decode(raw, out=out.reshape(-1).view(np.uint8)))
        except Exception as e:  # corrupt frame, checksum mismatch, or wrong size
            raise ChunkError(f"Zstd frame does not decode ({e})") from None
        if n != out.nbytes:
            raise ChunkError(f"chunk holds {n} bytes, expected {out.nbytes}")
        return out
    data, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
    if int(google_crc32c.value(data)) != crc:
        raise ChunkError("chunk fails its crc32c")
    if len(data) != out.nbytes:
        raise ChunkError(f"chunk holds {len(data)} bytes, expected {out.nbytes}")
    out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
    return out


class ChunkFetcher:
    """Fetches and decodes chunks of one store with cached shard indexes."""

    def __init__(self, store: Store, shard_size: int) -> None:
        self.store = store
        self.shard_size = shard_size
        self._index: dict[str, ShardIndex] = {}

    def clear(self) -> None:
        """Forget cached shard indexes (after shards were rewritten)."""
        self._index.clear()

    def _get_all(self, requests: list[tuple[str, ByteRequest]]) -> list[bytes | None]:
        proto = default_buffer_prototype()

        async def run() -> list[Buffer | None]:
            return await gather_settled(*(self.store.get(k, prototype=proto, byte_range=r) for k, r in requests))
        return [None if b is None else b.to_bytes() for b in sync(run())]

    def fetch(self, requests: list[ChunkRequest]) -> list[npt.NDArray[np.generic] | ChunkError]:
        """Decoded chunk arrays (writable; ``request.out`` when given) or the error of each
        request, in order.

        Raises:
            ValueError: an ``out`` array of the wrong shape, dtype or layout.
        """
        for r in requests:
            if r.out is not None and (r.out.shape != tuple(r.shape) or r.out.dtype != np.dtype(r.dtype)
                                      or not r.out.flags.c_contiguous or not r.out.flags.writeable):
                raise ValueError(f"chunk {r.key}[{r.local}]: out must be a writable C-contiguous "
                                 f"{tuple(r.shape)} {r.dtype} array, got {r.out.shape} {r.out.dtype}")
        errors: dict[str, ChunkError] = {}
        missing = sorted({r.key for r in requests if r.key not in self._index})
        tails = self._get_all([(k, SuffixByteRequest(ShardIndex.nbytes(self.shard_size))) for k in missing])
        for key, tail in zip(missing, tails, strict=True):
            if tail is None:
                errors[key] = ChunkError("shard key does not exist")
                continue
            try:
                self._index[key] = ShardIndex.from_bytes(tail, self.shard_size)
            except ShardIndexError as e:
                errors[key] = ChunkError(str(e))
        out: list[npt.NDArray[np.generic] | ChunkError] = [errors.get(r.key, ChunkError("")) for r in requests]
        todo: list[tuple[int, ChunkRequest, ByteRequest]] = []
        for i, r in enumerate(requests):
            if r.key in errors:
                continue
            byte_range = self._index[r.key].chunk_range(r.local)
            if byte_range is None:
                out[i] = ChunkError(f"chunk {r.local} is absent from the shard index")
            else:
                todo.append((i, r, RangeByteRequest(*byte_range)))
        for (i, r, _), raw in zip(todo, self._get_all([(r.key, rng) for _, r, rng in todo]), strict=True):
            try:
                if raw is None:
                    raise ChunkError("shard key vanished while reading")
                out[i] = _decode(raw, r)
            except ChunkError as e:
                out[i] = e
        return out
