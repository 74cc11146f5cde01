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
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.abc.store import Store
from zarr.codecs import Crc32cCodec, ZstdCodec

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
