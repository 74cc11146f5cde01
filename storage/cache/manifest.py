"""The manifest: one Parquet fragment per committed shard, the union of which lists every row,
plus a compacted copy of them all in one file.

Commit protocol: a writer writes shard ``i`` of every target array first, then the fragment
``manifest/shard-<i:06d>.parquet`` (atomically, :func:`storage.cache.stores.put_bytes`).
A shard counts only when its fragment exists; readers never see rows of a shard without one.

Compaction (:func:`compact_manifest`: at the end of a cache job, and ``bevkd compact``): the
rows of every fragment, sorted by ``row``, are written to ``manifest.parquet`` at the cache root
in one atomic put (a local store writes a temporary ``*.partial`` file and renames it). The
fragments stay: they remain the commit record (resume, ``verify`` and a shard's rewrite work on
them as before), and the compacted file is a copy that opens in one read. Readers take a shard's
rows from the compacted file when the shard has a fragment and is in the file, and read the
fragments of the shards it lacks (committed since); a shard with no fragment is not committed,
whatever the file says. Writing a fragment deletes the compacted file first, so a rewritten
shard never reads stale rows (the next compaction writes it again). Compact while no job
writes to the cache; rerunning is always safe.

Globbing, one pattern per thing, each row once: ``manifest/*.parquet`` = the fragments = the
manifest; ``manifest.parquet`` = the same rows in one file; ``index/samples.parquet`` = the
cache's sample list (:mod:`storage.cache.layout`). A job's dataset index
(:mod:`storage.sample_index`) is never stored in the cache. Never glob ``**/*.parquet``.

Fragment columns (one row per cache row of the shard):

* ``sample_token`` string, ``row`` int64, ``shard`` int32, ``scene`` string,
  ``timestamp_us`` int64, ``view`` int32,
* ``view_matrix`` ``fixed_size_list<float64>[16]``: the row's 4x4 BEV augmentation, row-major,
* ``status`` string (``ok`` / ``failed``), ``error`` string (null when ok),
* ``labelled`` bool: the row's sample is annotated (False: an unlabelled frame, e.g. a nuScenes
  non-keyframe sweep, trained on by distillation only). Missing in fragments written before the
  column existed; readers take those rows as labelled.
* per target ``<name>``: ``crc32c:<name>`` uint32, the crc32c of the row's stored,
  uncompressed component bytes (components in :func:`storage.cache.codecs.components` order,
  C order) — independent of the compressor, so it checks what the reader gets after
  decompression; ``nbytes:<name>`` int64, the compressed bytes the row occupies in its shards.
  Both are null for failed rows.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from zarr.abc.store import Store

from storage.arrays import Float64Array
from storage.cache import stores
from storage.errors import CacheCorruptError, CacheMetadataError

MANIFEST_PREFIX = "manifest/"
#: The compacted manifest: every fragment's rows at the last compaction, in one file.
COMPACTED_KEY = "manifest.parquet"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
_FRAGMENT = re.compile(r"^manifest/shard-(\d+)\.parquet$")


def fragment_key(shard_index: int) -> str:
    return f"{MANIFEST_PREFIX}shard-{shard_index:06d}.parquet"


@dataclass(kw_only=True, eq=False)
class ManifestRow:
    """One row of a fragment.

    Attributes:
        sample_token: nuScenes sample token.
        row: global row index ``sample_index * views + view``.
        shard: shard index.
        scene: scene name or token ("" if unknown).
        timestamp_us: sample time, microseconds.
        view: view index in ``[0, views)``.
        view_matrix: ``(4, 4)`` float64 BEV augmentation.
        status: ``ok`` or ``failed``.
        error: failure reason, or None.
        crc32c: target name -> checksum (empty when failed).
        nbytes: target name -> compressed bytes (empty when failed).
        labelled: the sample is annotated (:attr:`storage.sample.Sample.labelled`).
    """

    sample_token: str
    row: int
    shard: int
    scene: str
    timestamp_us: int
    view: int
    view_matrix: Float64Array
    status: str
    error: str | None
    crc32c: dict[str, int]
    nbytes: dict[str, int]
    labelled: bool = True


def fragment_table(rows: list[ManifestRow], target_names: list[str]) -> pa.Table:
    """The Arrow table of one fragment (schema in the module docstring)."""
    cols: dict[str, pa.Array] = {
        "sample_token": pa.array([r.sample_token for r in rows], pa.string()),
        "row": pa.array([r.row for r in rows], pa.int64()),
        "shard": pa.array([r.shard for r in rows], pa.int32()),
        "scene": pa.array([r.scene for r in rows], pa.string()),
        "timestamp_us": pa.array([r.timestamp_us for r in rows], pa.int64()),
        "view": pa.array([r.view for r in rows], pa.int32()),
        "view_matrix": pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate([np.zeros(0)] + [np.asarray(r.view_matrix, np.float64).reshape(16)
                                                     for r in rows]), pa.float64()), 16),
        "status": pa.array([r.status for r in rows], pa.string()),
        "error": pa.array([r.error for r in rows], pa.string()),
        "labelled": pa.array([r.labelled for r in rows], pa.bool_()),
    }
    for name in target_names:
        cols[f"crc32c:{name}"] = pa.array([r.crc32c.get(name) for r in rows], pa.uint32())
        cols[f"nbytes:{name}"] = pa.array([r.nbytes.get(name) for r in rows], pa.int64())
    return pa.table(cols)


def write_fragment(store: Store, shard_index: int, table: pa.Table) -> None:
    """Commit a shard: write its fragment in one atomic put (after deleting the compacted
    manifest, which may hold an older version of the shard)."""
    if stores.exists(store, COMPACTED_KEY):
        stores.delete(store, COMPACTED_KEY)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    stores.put_bytes(store, fragment_key(shard_index), buf.getvalue())


def committed_shards(store: Store) -> list[int]:
    """Indices of the shards whose fragment exists, sorted (one listing)."""
    out = []
    for key in stores.list_prefix(store, MANIFEST_PREFIX):
        m = _FRAGMENT.match(key)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


@dataclass(frozen=True, kw_only=True, eq=False)
class _Compacted:
    digest: bytes
    table: pa.Table
    by_shard: dict[int, tuple[int, int]]  # shard -> (first table row, row count); table sorted by row


_LAST_COMPACTED: list[_Compacted] = []  # one entry, keyed by content: re-reads of one file parse once


def _compacted(store: Store) -> _Compacted | None:
    """The compacted manifest of ``store`` (None if absent or unreadable: then the fragments are
    read); parsed once per distinct content."""
    data = stores.get_bytes(store, COMPACTED_KEY)
    if data is None:
        return None
    digest = hashlib.blake2b(data, digest_size=16).digest()
    if _LAST_COMPACTED and _LAST_COMPACTED[0].digest == digest:
        return _LAST_COMPACTED[0]
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError):
        return None  # a copy only: the fragments hold every committed row
    shards = table.column("shard").to_numpy()
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]) if len(shards) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(shards)])
    entry = _Compacted(digest=digest, table=table,
                       by_shard={int(shards[s]): (int(s), int(c)) for s, c in zip(starts, counts, strict=True)})
    _LAST_COMPACTED[:] = [entry]
    return entry


#: Columns every fragment has (the per-target ones are checked by their readers).
REQUIRED_COLUMNS = ("sample_token", "row", "shard", "view", "status", "error")


def read_fragment(store: Store, shard_index: int) -> pa.Table | None:
    """The fragment of shard ``shard_index``; None when the shard is not committed.

    Raises:
        CacheMetadataError: the fragment is not readable Parquet (truncated, overwritten) or
            lacks a column of :data:`REQUIRED_COLUMNS`; one line naming the file.
    """
    key = fragment_key(shard_index)
    data = stores.get_bytes(store, key)
    if data is None:
        return None
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CacheMetadataError(f"cache {stores.describe(store)}: manifest fragment {stores.key_location(store, key)} "
                                 f"unreadable ({type(e).__name__}: {text}): shard {shard_index}'s rows cannot be read; "
                                 "delete the file and rerun the bevkd cache command to rewrite the shard") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise CacheMetadataError(f"cache {stores.describe(store)}: manifest fragment {stores.key_location(store, key)} "
                                 f"unreadable (no column {missing[0]!r})")
    return table


def read_manifest(store: Store, target_names: list[str], *, layout: RowLayout | None = None) -> pa.Table:
    """Every committed row, sorted by ``row`` (an empty table if nothing is committed): from the
    compacted manifest for the committed shards it holds, from the fragments for the others.

    Args:
        store: the cache's store.
        target_names: the cache's targets (columns of the empty table).
        layout: when given, every file's rows are checked against it (:func:`check_rows`).

    Raises:
        CacheCorruptError: (with ``layout``) a row index outside the cache or its shard; the
            message names the manifest file and the row.
    """
    shards = committed_shards(store)
    compacted = _compacted(store)
    sources: list[tuple[str, pa.Table, int | None]] = []
    covered: set[int] = set()
    if compacted is not None:
        covered = set(compacted.by_shard) & set(shards)
        base = compacted.table
        if len(covered) < len(compacted.by_shard):  # rows of shards uncommitted since: not visible
            keep = np.isin(base.column("shard").to_numpy(), np.fromiter(covered, np.int64, len(covered)))
            base = base.filter(pa.array(keep))
        sources.append((COMPACTED_KEY, base, None))
    for i in shards:
        if i not in covered and (t := read_fragment(store, i)) is not None:
            sources.append((fragment_key(i), t, i))
    if layout is not None:
        for key, table, shard in sources:
            check_rows(table, stores.key_location(store, key), layout, shard=shard)
    if not sources:
        return fragment_table([], target_names)
    if len(sources) == 1 and compacted is not None:
        return sources[0][1]  # written sorted
    return pa.concat_tables([t for _, t, _ in sources], promote_options="default").sort_by("row")


@dataclass(frozen=True, kw_only=True)
class RowLayout:
    """Where a cache's rows may be: ``row`` in ``[0, num_rows)``, ``shard = row // shard_size``,
    ``view = row % views`` (see :class:`storage.cache.schema.CacheSchema`)."""

    num_rows: int
    shard_size: int
    views: int


def check_rows(table: pa.Table, where: str, layout: RowLayout, *, shard: int | None = None) -> None:
    """Refuse a manifest table whose row indices do not fit the cache: a ``row`` outside
    ``[0, num_rows)`` or repeated, a ``shard`` / ``view`` that is not the row's (or, for a
    fragment, not the fragment's shard).

    Raises:
        CacheCorruptError: naming the sample, the manifest file ``where`` and the table row.
    """
    rows = table.column("row").to_numpy().astype(np.int64)
    shards = table.column("shard").to_numpy().astype(np.int64)
    views = table.column("view").to_numpy().astype(np.int64)
    inside = (rows >= 0) & (rows < layout.num_rows)
    bad = ~inside | (shards != rows // layout.shard_size) | (views != rows % max(layout.views, 1))
    if shard is not None:
        bad |= shards != shard
    problem = ""
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        problem = (f"manifest row {j}: row {rows[j]} (shard {shards[j]}, view {views[j]}) does not fit "
                   f"{layout.num_rows} rows, {layout.shard_size} per shard, {layout.views} views"
                   + (f" in fragment of shard {shard}" if shard is not None else ""))
    else:
        order = np.argsort(rows, kind="stable")
        dup = np.flatnonzero(rows[order][1:] == rows[order][:-1])
        if len(dup):
            j = int(order[dup[0] + 1])
            problem = f"manifest row {j}: row {rows[j]} listed twice"
    if problem:
        token = str(table.column("sample_token")[j].as_py())
        raise CacheCorruptError(token, "manifest", where, problem)


@dataclass(frozen=True, kw_only=True)
class CompactionReport:
    """What :func:`compact_manifest` did.

    Attributes:
        rows: rows in the compacted manifest.
        shards: shards it covers.
        fragments_merged: fragments merged (they are kept).
        nbytes: size of the compacted file, bytes.
    """

    rows: int
    shards: int
    fragments_merged: int
    nbytes: int


def compact_manifest(store: Store, target_names: list[str], *, layout: RowLayout | None = None) -> CompactionReport:
    """Write every committed row to :data:`COMPACTED_KEY` in one atomic put (see the module
    docstring); the fragments stay. Idempotent; with nothing committed, writes nothing.

    Args:
        store: the cache's store (writable).
        target_names: the cache's targets (their checksum columns exist even when empty).
        layout: when given, every fragment's rows are checked first (:func:`check_rows`).

    Raises:
        CacheCorruptError: (with ``layout``) a fragment row that does not fit the cache; nothing
            is written (the message names the fragment file and the row).
    """
    frags = [(i, t) for i in committed_shards(store) if (t := read_fragment(store, i)) is not None]
    if layout is not None:
        for shard, table in frags:
            check_rows(table, stores.key_location(store, fragment_key(shard)), layout, shard=shard)
    tables = [t for _, t in frags]
    if not tables:
        return CompactionReport(rows=0, shards=0, fragments_merged=0, nbytes=0)
    table = pa.concat_tables(tables, promote_options="default").sort_by("row")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=64 * 1024)
    data = buf.getvalue()
    stores.put_bytes(store, COMPACTED_KEY, data)
    return CompactionReport(rows=table.num_rows, shards=len(tables), fragments_merged=len(tables), nbytes=len(data))


def view_matrix_of(table: pa.Table, index: int) -> Float64Array:
    """``(4, 4)`` float64 view matrix of table row ``index``."""
    return np.asarray(table.column("view_matrix")[index].as_py(), np.float64).reshape(4, 4)
