"""The chunk index at the end of every shard (Zarr v3 sharding codec, ``index_location=end``).

One shard of ``S`` chunks ends with ``S`` pairs of little-endian uint64 ``(offset, nbytes)``
(``offset`` from the start of the shard), ``2**64 - 1`` in both for an absent chunk, followed by
the little-endian uint32 crc32c of those ``16 * S`` bytes: the index codecs ``BytesCodec`` +
``Crc32cCodec`` that :func:`storage.cache.layout.create_arrays` gives every array.
:class:`ShardIndex` is the only code that knows this format; the writer encodes it, the
reader's fast path and ``verify`` parse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import google_crc32c
import numpy as np
import numpy.typing as npt


class ShardIndexError(ValueError):
    """Shard index bytes of the wrong length or failing their crc32c."""


def crc32c_suffix(data: bytes) -> bytes:
    """``data`` followed by its little-endian uint32 crc32c (Zarr's ``Crc32cCodec``)."""
    return data + int(google_crc32c.value(data)).to_bytes(4, "little")


@dataclass(frozen=True, eq=False)
class ShardIndex:
    """The ``(offset, nbytes)`` of each chunk of one shard.

    Attributes:
        offsets_and_lengths: ``(S, 2)`` little-endian uint64, ``EMPTY`` rows for absent chunks.
    """

    EMPTY: ClassVar[int] = 2 ** 64 - 1

    offsets_and_lengths: npt.NDArray[np.uint64]

    @staticmethod
    def nbytes(shard_size: int) -> int:
        """Stored size of the index of a shard of ``shard_size`` chunks (its crc32c included)."""
        return shard_size * 16 + 4

    @classmethod
    def from_chunk_sizes(cls, sizes: Sequence[int], shard_size: int) -> ShardIndex:
        """The index of chunks ``0 .. len(sizes) - 1`` stored back to back from offset 0, the
        chunks past ``len(sizes)`` (a last, partial shard) absent."""
        n = len(sizes)
        table = np.full((shard_size, 2), cls.EMPTY, "<u8")
        lengths = np.asarray(sizes, np.int64)
        table[:n, 1] = lengths
        table[:n, 0] = np.cumsum(lengths) - lengths
        return cls(table)

    @classmethod
    def from_bytes(cls, tail: bytes, shard_size: int, *, check_crc: bool = True) -> ShardIndex:
        """Parse the last :meth:`nbytes` bytes of a shard.

        Raises:
            ShardIndexError: ``tail`` is not ``nbytes(shard_size)`` long, or (``check_crc``) its
                crc32c does not match.
        """
        if len(tail) != cls.nbytes(shard_size):
            raise ShardIndexError(f"shard index holds {len(tail)} bytes, expected {cls.nbytes(shard_size)}")
        body = tail[:-4]
        if check_crc and int(google_crc32c.value(body)) != int.from_bytes(tail[-4:], "little"):
            raise ShardIndexError("shard index fails its crc32c")
        return cls(np.frombuffer(body, dtype="<u8").reshape(shard_size, 2))

    def to_bytes(self) -> bytes:
        """The stored index: the table's bytes and their crc32c."""
        return crc32c_suffix(np.ascontiguousarray(self.offsets_and_lengths, "<u8").tobytes())

    def chunk_nbytes(self) -> npt.NDArray[np.int64]:
        """``(S,)`` int64 stored bytes of each chunk, -1 for an absent chunk."""
        table = self.offsets_and_lengths
        return np.where(table[:, 0] == self.EMPTY, -1, table[:, 1].astype(np.int64))

    def chunk_range(self, local: int) -> tuple[int, int] | None:
        """``[start, stop)`` byte range of chunk ``local`` in the shard, ``None`` if it is absent."""
        offset, nbytes = (int(v) for v in self.offsets_and_lengths[local])
        return None if offset == self.EMPTY else (offset, offset + nbytes)


__all__ = ["ShardIndex", "ShardIndexError", "crc32c_suffix"]
