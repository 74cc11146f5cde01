"""The Zarr layout of a cache: which arrays exist, their chunking, and where a row's bytes are.

::

    <cache>/zarr.json                         root group; attributes["bevkd_cache"] = schema
    <cache>/index/samples.parquet             sample_index -> sample_token (written at create)
    <cache>/targets/<name>/<component>/       one array per stored component, shape (num_rows, *row_shape),
                                              chunk = 1 row, shard = S rows, write_empty_chunks=True
    <cache>/manifest/shard-<i>.parquet        the commit record of shard i (storage.cache.manifest)

Shard ``i`` of every array lives at the key ``targets/<name>/<component>/c/<i>/0/...``; it ends
with its chunk index (sharding codec, ``index_location=end``), whose format
:class:`~storage.cache.shard_index.ShardIndex` owns.

The writer builds those shard bytes itself (:func:`encode_shard`: each row's C-order
little-endian bytes through the array's Zstd, or with a crc32c appended, chunks in row order,
then the :class:`ShardIndex`), byte for byte what Zarr's sharding codec writes for the same block, and
stores them with one put per shard: Zarr's per-chunk pipeline costs ~0.3 ms a chunk, which
for small teachers (11 arrays x S chunks per shard) outweighed the compression itself.
Arrays whose codecs are not the ones :func:`create_arrays` makes go through Zarr.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.abc.store import Store
from zarr.codecs import BytesCodec, Crc32cCodec, Endian, ShardingCodec, ShardingCodecIndexLocation, ZstdCodec
from zarr.types import AnyArray

from storage.cache import describe, manifest, stores
from storage.cache._zarr_private import array_codecs, chunk_key
from storage.cache.codecs import component_codec, components
from storage.cache.schema import SCHEMA_VERSION, CacheSchema
from storage.cache.shard_index import ShardIndex, crc32c_suffix
from storage.errors import CacheMetadataError, CacheMismatchError, NotACacheError

#: Root attribute holding the cache schema.
ATTR = "bevkd_cache"
#: Root attribute where the cache job records its settings (JSON) next to the schema.
JOB_ATTR = "bevkd_cache_job"
SAMPLES_KEY = "index/samples.parquet"


def array_path(target: str, component: str) -> str:
    return f"targets/{target}/{component}"


def create_arrays(store: Store, schema: CacheSchema, *, overwrite: bool) -> zarr.Group:
    """Create the root group (schema and conventions in its attributes) and, per target, its group
    (decode recipe in its attributes), every component array (with ``dimension_names``) and, for
    BEV targets, the metre coordinate arrays ``x`` / ``y`` (:mod:`storage.cache.describe`)."""
    root = zarr.open_group(store=store, mode="w" if overwrite else "w-", zarr_format=3)
    root.attrs.update({ATTR: schema.to_dict(), describe.CONVENTIONS_ATTR: describe.cache_attrs(schema)})
    n, s = schema.num_rows, schema.shard_size
    for spec in schema.targets:
        group = root.require_group(f"targets/{spec.name}")
        group.attrs[describe.TARGET_ATTR] = describe.target_attrs(spec, schema.grid)
        for comp, (shape, dtype) in components(spec).items():
            codec = component_codec(spec, comp)
            compressor = (ZstdCodec(level=codec.zstd_level, checksum=True) if codec.zstd_level is not None
                          else Crc32cCodec())
            group.create_array(comp, shape=(n, *shape), dtype=dtype, chunks=(1, *shape), shards=(s, *shape),
                               compressors=[compressor], fill_value=0, config={"write_empty_chunks": True},
                               dimension_names=describe.component_dims(spec, comp),
                               attributes=describe.component_attrs(spec, comp))
        for axis, (values, attrs) in describe.coordinates(spec, schema.grid).items():
            group.create_array(axis, data=values, dimension_names=(axis,), attributes=attrs)
    return root


def open_root(store: Store, *, writable: bool = False) -> tuple[zarr.Group, dict[str, Any]]:
    """The root group of an existing cache and its schema attributes (parse with
    :func:`read_schema`, which also checks ``schema_version``).

    The attributes of a cache of this layout version are checked here already (every caller,
    the reader included, gets one line naming ``zarr.json`` and the field, not a traceback
    from deep inside); those of another version are left to the caller to refuse.

    Raises:
        FileNotFoundError: no bevkd cache at the store's location.
        storage.errors.CacheMetadataError: its root ``zarr.json`` is unreadable, a schema field
            is missing or wrong, or the store cannot be reached (each names the file and the cause).
    """
    where = stores.key_location(store, "zarr.json")
    try:
        root = zarr.open_group(store=store, mode="r+" if writable else "r", zarr_format=3)
    except (FileNotFoundError, KeyError) as e:
        raise FileNotFoundError(f"no bevkd cache at {stores.describe(store)} ({e})") from None
    except (ValueError, TypeError) as e:  # json.JSONDecodeError, or metadata of the wrong shape
        raise CacheMetadataError(f"cache {stores.describe(store)}: {where} "
                                 f"is not valid Zarr group metadata ({type(e).__name__}: {_first_line(e)})") from None
    except Exception as e:
        if not stores.is_unreachable(e):
            raise
        raise CacheMetadataError(f"cache {stores.describe(store)}: cannot read {where}: store not reachable or "
                                 f"access refused ({type(e).__name__}: {_first_line(e)})") from None
    attrs = root.attrs.get(ATTR)
    if not isinstance(attrs, Mapping):
        raise FileNotFoundError(f"{stores.describe(store)} is a Zarr group but not a bevkd cache (no '{ATTR}')")
    attrs = dict(attrs)
    version = attrs.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CacheMetadataError(f"cache {stores.describe(store)}: {where} field schema_version: needs an integer, "
                                 f"got {version!r:.80}")
    if version == SCHEMA_VERSION:
        read_schema(store, attrs)
    return root, attrs


def read_schema(store: Store, attrs: dict[str, Any], *, version: int | None = SCHEMA_VERSION) -> CacheSchema:
    """The :class:`CacheSchema` of a cache's root attributes (from :func:`open_root`).

    Args:
        store: the cache's store (for messages).
        attrs: its root attributes :data:`ATTR`.
        version: refuse any other ``schema_version`` (``None`` accepts any).

    Raises:
        storage.errors.CacheMismatchError: another layout version than ``version`` (one line:
            this bevkd reads version N).
        storage.errors.CacheMetadataError: a field missing or wrong (names ``zarr.json`` and the field).
    """
    where = stores.key_location(store, "zarr.json")
    found = attrs.get("schema_version")
    if version is not None and found != version:
        raise CacheMismatchError(f"cache {stores.describe(store)}: schema version {found!r:.40} in {where}, this "
                                 f"bevkd reads version {version} only (written by another bevkd version?)")
    try:
        return CacheSchema.from_dict(attrs)
    except ValueError as e:
        raise CacheMetadataError(f"cache {stores.describe(store)}: {where} {e}") from None


def is_cache(store: Store) -> bool:
    """Whether the store's root ``zarr.json`` is a bevkd cache's: a group whose attributes hold
    :data:`ATTR` (set by :func:`create_arrays`). Never raises for unreadable metadata."""
    data = stores.get_bytes(store, "zarr.json")
    try:
        meta = json.loads(data) if data is not None else None
    except ValueError:
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) and meta.get("node_type") == "group" else None
    return isinstance(attrs, Mapping) and isinstance(attrs.get(ATTR), Mapping)


def check_replaceable(store: Store) -> None:
    """Refuse to delete a location unless it is empty, absent or a bevkd cache (:func:`is_cache`).

    Raises:
        storage.errors.NotACacheError: it holds anything else (the message names one entry).
        NotADirectoryError: a local location that is a file.
    """
    entry = stores.first_entry(store)
    if entry is None or is_cache(store):
        return
    raise NotACacheError(f"{stores.describe(store)} is not a bevkd cache (no '{ATTR}' attributes in its zarr.json; "
                         f"it holds e.g. {entry!r}): --overwrite replaces only a bevkd cache, nothing was deleted; "
                         "choose another --out or remove it yourself")


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
    tokens: list[str] = pq.read_table(io.BytesIO(data)).column("sample_token").to_pylist()
    return tokens


def open_arrays(root: zarr.Group, schema: CacheSchema, targets: list[str] | None = None
                ) -> dict[str, dict[str, AnyArray]]:
    """target name -> component -> array (only ``targets`` if given)."""
    names = targets if targets is not None else [t.name for t in schema.targets]
    # write_empty_chunks is runtime config, not metadata: without it a reopened array skips all-zero
    # chunks (a row with no boxes), and verify / the reader would see an ok row's chunk as missing.
    with zarr.config.set({"array.write_empty_chunks": True}):
        return {name: {comp: _array(root, array_path(name, comp)) for comp in components(schema.target(name))}
                for name in names}


def _array(root: zarr.Group, path: str) -> AnyArray:
    meta = stores.key_location(root.store, f"{path}/zarr.json")
    try:
        node = root[path]
    except KeyError:
        raise CacheMetadataError(f"cache {stores.describe(root.store)}: array metadata {meta} missing") from None
    except (ValueError, TypeError) as e:  # json.JSONDecodeError, or metadata of the wrong shape
        raise CacheMetadataError(f"cache {stores.describe(root.store)}: {meta} is not valid Zarr array metadata "
                                 f"({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(node, zarr.Array):
        raise CacheMetadataError(f"cache {stores.describe(root.store)}: {meta} is a group, not an array")
    return node


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""


def metadata_problems(store: Store, schema: CacheSchema) -> list[str]:
    """What is wrong with a cache's metadata besides its root ``zarr.json``: the sample index
    (missing, unreadable, wrong length), the ``zarr.json`` of every group above the arrays
    (:func:`target_groups`: missing, not JSON, not a group) and of every component array
    (missing, not JSON, not an array, wrong row count). Empty when the cache was completely created.

    :meth:`storage.cache.CacheWriter.create` writes the sample index last, so a cache whose
    creation was interrupted (disk full, kill) lacks it. Each problem names its file.
    """
    problems = []
    index = stores.key_location(store, SAMPLES_KEY)
    try:
        tokens = read_samples(store)
    except FileNotFoundError:
        problems.append(f"sample index {index} missing")
    except (OSError, ValueError, pa.ArrowException) as e:
        problems.append(f"sample index {index} unreadable ({type(e).__name__}: {_first_line(e)})")
    else:
        if len(tokens) * schema.views != schema.num_rows:
            problems.append(f"sample index {index} lists {len(tokens)} samples, the schema "
                            f"{schema.num_rows // max(schema.views, 1)}")
    for group in target_groups(schema):
        meta, problem = _node_metadata(store, group, "group")
        if problem:
            problems.append(problem)
    for spec in schema.targets:
        for comp, (shape, _) in components(spec).items():
            meta, problem = _node_metadata(store, array_path(spec.name, comp), "array")
            if problem:
                problems.append(problem)
            elif list(meta.get("shape") or []) != [schema.num_rows, *shape]:
                problems.append(f"{stores.key_location(store, f'{array_path(spec.name, comp)}/zarr.json')}: shape "
                                f"{meta.get('shape')} but the schema says {[schema.num_rows, *shape]}")
    return problems


def target_groups(schema: CacheSchema) -> list[str]:
    """The group paths above the component arrays: ``targets``, ``targets/<name>`` and, for
    nested names (``bev_features/<stage>``), each level (xarray and Zarr open them)."""
    groups = ["targets"]
    for spec in schema.targets:
        parts = spec.name.split("/")
        groups += [f"targets/{'/'.join(parts[:i])}" for i in range(1, len(parts) + 1)]
    return list(dict.fromkeys(groups))


def _node_metadata(store: Store, path: str, node_type: str) -> tuple[dict[str, Any], str]:
    """The parsed ``<path>/zarr.json`` of a ``node_type`` node, or what is wrong with it (naming the file)."""
    key = f"{path}/zarr.json"
    where = stores.key_location(store, key)
    data = stores.get_bytes(store, key)
    if data is None:
        return {}, f"{node_type} metadata {where} missing"
    try:
        meta = json.loads(data)
    except ValueError as e:
        return {}, f"{where} is not valid JSON ({_first_line(e)})"
    if not isinstance(meta, dict) or meta.get("node_type") != node_type:
        return {}, f"{where} is not Zarr {node_type} metadata (no node_type '{node_type}')"
    return meta, ""


def unfinished_creation(store: Store) -> str | None:
    """Why the bevkd cache at ``store`` counts as half-created, or None.

    Half-created: its root ``zarr.json`` is a bevkd cache's (:func:`is_cache`), no shard is
    committed, and :func:`metadata_problems` finds something (its creation was interrupted).
    Such a cache holds nothing of value: :meth:`storage.cache.CacheWriter.create` replaces it.
    """
    if not is_cache(store) or manifest.committed_shards(store):
        return None
    try:
        _, attrs = open_root(store)
        schema = CacheSchema.from_dict(attrs)
    except (FileNotFoundError, CacheMetadataError, ValueError, KeyError, TypeError) as e:
        return f"its schema is unreadable ({type(e).__name__}: {_first_line(e)})"
    problems = metadata_problems(store, schema)
    return "; ".join(problems) if problems else None


def shard_key(array: AnyArray, shard_index: int) -> str:
    """Store key of shard ``shard_index`` of a row-sharded array."""
    return f"{array.path}/" + chunk_key(array, (shard_index,) + (0,) * (array.ndim - 1))


def shard_chunk_nbytes(store: Store, array: AnyArray, shard_index: int, shard_size: int
                       ) -> npt.NDArray[np.int64] | None:
    """Compressed bytes of each chunk (row) of a shard, ``(S,)`` int64, -1 for a missing chunk;
    ``None`` if the shard key does not exist. The index crc32c is not checked (decoding does)."""
    tail = stores.get_bytes(store, shard_key(array, shard_index), suffix=ShardIndex.nbytes(shard_size))
    if tail is None:
        return None
    return ShardIndex.from_bytes(tail, shard_size, check_crc=False).chunk_nbytes()


@dataclass(frozen=True, eq=False)
class ShardEncoding:
    """How the chunks of one row-sharded component array are encoded (see the module docstring).

    Attributes:
        dtype: stored little-endian dtype.
        shard_size: rows ``S`` per shard.
        zstd: the chunk compressor (the array's Zstd level and checksum flag), or ``None`` for a
            crc32c suffix (uncompressed arrays).
    """

    dtype: np.dtype[Any]
    shard_size: int
    zstd: numcodecs.Zstd | None


def _is_little_bytes(codec: object) -> bool:
    return isinstance(codec, BytesCodec) and (codec.endian is None or codec.endian == Endian.little)


def shard_encoding(array: AnyArray) -> ShardEncoding | None:
    """The encoding :func:`encode_shard` reproduces for ``array``, or ``None`` if its codecs are
    not exactly those of :func:`create_arrays` (one row per chunk, ``BytesCodec`` little-endian,
    then ``ZstdCodec`` or ``Crc32cCodec``; index ``BytesCodec`` + ``Crc32cCodec`` at the end)."""
    codecs = array_codecs(array)
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or array.shards is None:
        return None
    sharding, shard_shape = codecs[0], tuple(array.shards)
    if (tuple(sharding.chunk_shape) != (1, *array.shape[1:]) or shard_shape[1:] != tuple(array.shape[1:])
            or sharding.index_location != ShardingCodecIndexLocation.end
            or len(sharding.index_codecs) != 2 or not _is_little_bytes(sharding.index_codecs[0])
            or not isinstance(sharding.index_codecs[1], Crc32cCodec)
            or len(sharding.codecs) != 2 or not _is_little_bytes(sharding.codecs[0])):
        return None
    inner = sharding.codecs[1]
    zstd: numcodecs.Zstd | None
    if isinstance(inner, ZstdCodec):
        zstd = numcodecs.Zstd(level=inner.level, checksum=inner.checksum)
    elif isinstance(inner, Crc32cCodec):
        zstd = None
    else:
        return None
    return ShardEncoding(dtype=np.dtype(array.dtype).newbyteorder("<"), shard_size=shard_shape[0], zstd=zstd)


def encode_shard(encoding: ShardEncoding, block: npt.NDArray[Any], *, threads: int = 1
                 ) -> tuple[bytes, npt.NDArray[np.int64]]:
    """The stored bytes of one shard whose first ``n`` rows are ``block`` (``n <= S``; the rows
    past ``n`` of a last, partial shard are absent chunks).

    Args:
        encoding: from :func:`shard_encoding`.
        block: ``(n, *row_shape)`` rows of the array's dtype.
        threads: rows compressed in parallel (Zstd releases the GIL; each row is its own chunk, so
            the bytes do not depend on it). Used only when a shard holds at least
            :data:`PARALLEL_MIN_BYTES`.

    Returns:
        ``(shard bytes, (S,) int64 compressed bytes per chunk, -1 for an absent chunk)``.
    """
    rows = np.ascontiguousarray(block, dtype=encoding.dtype).reshape(block.shape[0], -1)
    zstd = encoding.zstd

    def chunk(row: npt.NDArray[Any]) -> bytes:
        raw = row.tobytes()
        return zstd.encode(raw) if zstd is not None else crc32c_suffix(raw)

    if threads > 1 and zstd is not None and len(rows) > 1 and rows.nbytes >= PARALLEL_MIN_BYTES:
        chunks = list(_pool(threads).map(chunk, rows))
    else:
        chunks = [chunk(row) for row in rows]
    index = ShardIndex.from_chunk_sizes([len(c) for c in chunks], encoding.shard_size)
    return b"".join(chunks) + index.to_bytes(), index.chunk_nbytes()


#: Shards smaller than this are compressed in the calling thread (thread hand-off costs more).
PARALLEL_MIN_BYTES = 1 << 20
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One shared pool per thread count (a process's writers reuse it; threads are daemons of the pool)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="bevkd-encode")
    return _POOLS[threads]
