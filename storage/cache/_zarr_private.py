"""Every use of Zarr's private API, in one place (zarr is pinned: ``zarr==3.1.5`` in pyproject).

Zarr 3 keeps its event loop bridge and buffer types under ``zarr.core`` and its array metadata
classes private; the cache needs them for batched raw-key I/O and for the self-encoded shards.
Nothing else in bevkd imports a ``zarr.core`` name or reads ``Array.metadata``: when Zarr moves
them, this module is the one to change.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from zarr.abc.codec import Codec
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync as _sync
from zarr.types import AnyArray

T = TypeVar("T")

__all__ = ["Buffer", "array_codecs", "buffer_from_bytes", "chunk_key", "default_buffer_prototype", "sync"]


def sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on Zarr's event-loop thread and return its result."""
    return _sync(coro)


def buffer_from_bytes(data: bytes) -> Buffer:
    """``data`` as the buffer type Zarr stores take."""
    return default_buffer_prototype().buffer.from_bytes(data)


def _v3_metadata(array: AnyArray) -> ArrayV3Metadata:
    meta = array.metadata
    if not isinstance(meta, ArrayV3Metadata):
        raise TypeError(f"array {array.path}: not a Zarr v3 array")
    return meta


def chunk_key(array: AnyArray, chunk_coords: tuple[int, ...]) -> str:
    """Store key of the chunk (or shard) at ``chunk_coords`` of ``array``, relative to the array."""
    return _v3_metadata(array).encode_chunk_key(chunk_coords)


def array_codecs(array: AnyArray) -> tuple[Codec, ...]:
    """The codec pipeline of a Zarr v3 array, as stored in its metadata."""
    return tuple(_v3_metadata(array).codecs)
