"""The Zarr layout of a cache: which arrays exist, their chunking, and where a row's bytes are.

::

    <cache>/zarr.json                         root group; attributes["bevkd_cache"] = schema
    <cache>/index/samples.parquet             sample_index -> sample_token (written at create)
    <cache>/targets/<name>/<component>/       one array per stored component, shape (num_rows, *row_shape),
                                              chunk = 1 row, shard = S rows, write_empty_chunks=True
    <cache>/manifest/shard-<i>.parquet        the commit record of shard i (storage.cache.manifest)

Shard ``i`` of every array lives at the key ``targets/<name>/<component>/c/<i>/0/...``; its
chunk index (sharding codec, ``index_location=end``) is ``S`` pairs of little-endian uint64
``(offset, nbytes)`` followed by a crc32c, as the Zarr v3 sharding spec defines.

The writer builds those shard bytes itself (:func:`encode_shard`: each row's C-order
little-endian bytes through the array's Zstd, or with a crc32c appended, chunks in row order,
then the index), byte for byte what Zarr's sharding codec writes for the same block, and
stores them with one put per shard: Zarr's per-chunk pipeline costs ~0.3 ms a chunk, which
for small teachers (11 arrays x S chunks per shard) outweighed the compression itself.
Arrays whose codecs are not the ones :func:`create_arrays` makes go through Zarr.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import google_crc32c
import numcodecs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.abc.store import Store
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.codecs.sharding import ShardingCodecIndexLocation

from storage.cache import stores
from storage.cache.codecs import component_codec, components
from storage.cache.schema import CacheSchema

ATTR = "bevkd_cache"
SAMPLES_KEY = "index/samples.parquet"
_EMPTY = np.uint64(2 ** 64 - 1)


def array_path(target: str, component: str) -> str:
    return f"targets/{target}/{component}"


def create_arrays(store: Store, schema: CacheSchema, *, overwrite: bool) -> zarr.Group:
    """Create the root group (schema in its attributes) and every component array."""
    root = zarr.open_group(store=store, mode="w" if overwrite else "w-", zarr_format=3)
    root.attrs[ATTR] = schema.to_dict()
    n, s = schema.num_rows, schema.shard_size
    for spec in schema.targets:
        for comp, (shape, dtype) in components(spec).items():
            codec = component_codec(spec, comp)
            compressor = (ZstdCodec(level=codec.zstd_level, checksum=True) if codec.zstd_level is not None
                          else Crc32cCodec())
            root.create_array(array_path(spec.name, comp), shape=(n, *shape), dtype=dtype,
                              chunks=(1, *shape), shards=(s, *shape), compressors=[compressor],
                              fill_value=0, config={"write_empty_chunks": True})
    return root


def open_root(store: Store, *, writable: bool = False) -> tuple[zarr.Group, dict]:
    """The root group of an existing cache and its schema attributes (parse with
    ``CacheSchema.from_dict`` after checking ``schema_version``).

    Raises:
        FileNotFoundError: no bevkd cache at the store's location.
    """
    try:
        root = zarr.open_group(store=store, mode="r+" if writable else "r", zarr_format=3)
    except (FileNotFoundError, KeyError) as e:
        raise FileNotFoundError(f"no bevkd cache at {stores.describe(store)} ({e})") from None
    attrs = root.attrs.get(ATTR)
    if attrs is None:
        raise FileNotFoundError(f"{stores.describe(store)} is a Zarr group but not a bevkd cache (no '{ATTR}')")
    return root, dict(attrs)


def write_samples(store: Store, sample_tokens: list[str]) -> None:
    table = pa.table({"sample_index": pa.array(np.arange(len(sample_tokens)), pa.int64()),
                      "sample_token": pa.array(sample_tokens, pa.string())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    stores.put_bytes(store, SAMPLES_KEY, buf.getvalue())


def read_samples(store: Store) -> list[str]:
    """Sample tokens in sample-index order. Raises FileNotFoundError if the index is missing."""
    data = stores.get_bytes(store, SAMPLES_KEY)
    if data is None:
        raise FileNotFoundError(f"cache {stores.describe(store)}: sample index {SAMPLES_KEY} missing")
    return pq.read_table(io.BytesIO(data)).column("sample_token").to_pylist()


def open_arrays(root: zarr.Group, schema: CacheSchema, targets: list[str] | None = None
                ) -> dict[str, dict[str, zarr.Array]]:
    """target name -> component -> array (only ``targets`` if given)."""
    names = targets if targets is not None else [t.name for t in schema.targets]
    # write_empty_chunks is runtime config, not metadata: without it a reopened array skips all-zero
    # chunks (a row with no boxes), and verify / the reader would see an ok row's chunk as missing.
    with zarr.config.set({"array.write_empty_chunks": True}):
        return {name: {comp: root[array_path(name, comp)] for comp in components(schema.target(name))}
                for name in names}


def shard_key(array: zarr.Array, shard_index: int) -> str:
    """Store key of shard ``shard_index`` of a row-sharded array."""
    return f"{array.path}/" + array.metadata.encode_chunk_key((shard_index,) + (0,) * (array.ndim - 1))


def shard_chunk_nbytes(store: Store, array: zarr.Array, shard_index: int, shard_size: int) -> np.ndarray | None:
    """Compressed bytes of each chunk (row) of a shard, ``(S,)`` int64, -1 for a missing chunk;
    ``None`` if the shard key does not exist."""
    tail = stores.get_bytes(store, shard_key(array, shard_index), suffix=shard_size * 16 + 4)
    if tail is None:
        return None
    index = np.frombuffer(tail[:-4], dtype="<u8").reshape(shard_size, 2)
    return np.where(index[:, 0] == _EMPTY, -1, index[:, 1].astype(np.int64))


@dataclass(frozen=True, eq=False)
class ShardEncoding:
    """How the chunks of one row-sharded component array are encoded (see the module docstring).

    Attributes:
        dtype: stored little-endian dtype.
        shard_size: rows ``S`` per shard.
        zstd: the chunk compressor (the array's Zstd level and checksum flag), or ``None`` for a
            crc32c suffix (uncompressed arrays).
    """

    dtype: np.dtype
    shard_size: int
    zstd: numcodecs.Zstd | None


def _is_little_bytes(codec: object) -> bool:
    return isinstance(codec, BytesCodec) and (codec.endian is None or codec.endian == Endian.little)


def shard_encoding(array: zarr.Array) -> ShardEncoding | None:
    """The encoding :func:`encode_shard` reproduces for ``array``, or ``None`` if its codecs are
    not exactly those of :func:`create_arrays` (one row per chunk, ``BytesCodec`` little-endian,
    then ``ZstdCodec`` or ``Crc32cCodec``; index ``BytesCodec`` + ``Crc32cCodec`` at the end)."""
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    shard_shape = tuple(array.metadata.chunk_grid.chunk_shape)  # type: ignore[attr-defined]
    if (tuple(sharding.chunk_shape) != (1, *array.shape[1:]) or shard_shape[1:] != tuple(array.shape[1:])
            or sharding.index_location != ShardingCodecIndexLocation.end
            or len(sharding.index_codecs) != 2 or not _is_little_bytes(sharding.index_codecs[0])
            or not isinstance(sharding.index_codecs[1], Crc32cCodec)
            or len(sharding.codecs) != 2 or not _is_little_bytes(sharding.codecs[0])):
        return None
    inner = sharding.codecs[1]
    if isinstance(inner, ZstdCodec):
        zstd = numcodecs.Zstd(level=inner.level, checksum=inner.checksum)
    elif isinstance(inner, Crc32cCodec):
        zstd = None
    else:
        return None
    return ShardEncoding(dtype=np.dtype(array.dtype).newbyteorder("<"), shard_size=shard_shape[0], zstd=zstd)


def _crc32c_suffix(data: bytes) -> bytes:
    return data + int(google_crc32c.value(data)).to_bytes(4, "little")


def encode_shard(encoding: ShardEncoding, block: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The stored bytes of one shard whose first ``n`` rows are ``block`` (``n <= S``; the rows
    past ``n`` of a last, partial shard are absent chunks).

    Args:
        encoding: from :func:`shard_encoding`.
        block: ``(n, *row_shape)`` rows of the array's dtype.

    Returns:
        ``(shard bytes, (S,) int64 compressed bytes per chunk, -1 for an absent chunk)``.
    """
    rows = np.ascontiguousarray(block, dtype=encoding.dtype)
    chunks = []
    for row in rows.reshape(rows.shape[0], -1):
        raw = row.tobytes()
        chunks.append(encoding.zstd.encode(raw) if encoding.zstd is not None else _crc32c_suffix(raw))
    sizes = np.full(encoding.shard_size, -1, np.int64)
    sizes[:len(chunks)] = [len(c) for c in chunks]
    index = np.full((encoding.shard_size, 2), _EMPTY, "<u8")
    index[:len(chunks), 1] = sizes[:len(chunks)]
    index[:len(chunks), 0] = np.cumsum(sizes[:len(chunks)]) - sizes[:len(chunks)]
    return b"".join(chunks) + _crc32c_suffix(index.tobytes()), sizes
