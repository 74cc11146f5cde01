"""Writing a cache: create it once, then commit whole shards, each from exactly one writer.

Typical use (the cache job; one task per shard, in any order, from any process)::

    writer = CacheWriter.create("s3://bucket/cache", schema, sample_tokens)   # once
    writer = CacheWriter.open("s3://bucket/cache")                            # in each worker
    for i in writer.pending_shards():
        rows = [RowResult(sample_token=t, view=v, targets=...) for t, v in writer.shard_rows(i)]
        writer.write_shard(i, rows)

Two writers must never write the same shard (each write replaces the whole shard key, so the
second would drop the first's rows); distinct shards are independent keys and safe.

The writer encodes each component's shard itself, byte for byte as Zarr's sharding codec would
(:func:`storage.cache.layout.encode_shard`), and stores it with one put: per row that costs the
codecs and Zstd only, not Zarr's per-chunk pipeline (which dominated for small teachers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Sequence

import google_crc32c
import numpy as np
import zarr

from storage.arrays import AnyDtypeArray, Int64Array
from storage.cache import layout, manifest, stores
from storage.cache import overwrite as overwrite_rules
from storage.cache.codecs import components, encode
from storage.cache.row import CacheRow
from storage.cache.schema import CacheSchema
from storage.errors import CacheIncompleteError, CacheWriteError


@dataclass(kw_only=True, eq=False)
class RowResult:
    """What the cache job hands the writer for one ``(sample, view)`` row: the row's targets and
    its manifest record (scene, time, view matrix), or why the row failed.

    Attributes:
        sample_token: the sample.
        view: view index in ``[0, schema.views)``.
        scene: scene name (for the manifest).
        timestamp_us: sample time, microseconds.
        view_matrix: ``(4, 4)`` float64 BEV augmentation; ``None`` takes
            ``targets.view_matrix`` (identity by default).
        targets: the row's targets, or ``None`` for a failed row.
        error: why the row failed (required when ``targets`` is None).
        labelled: the sample is annotated (False: an unlabelled frame; recorded in the manifest).
    """

    sample_token: str
    view: int = 0
    scene: str = ""
    timestamp_us: int = 0
    view_matrix: AnyDtypeArray | None = None
    targets: CacheRow | None = None
    error: str | None = None
    labelled: bool = True

    def __post_init__(self) -> None:
        if (self.targets is None) == (self.error is None):
            raise ValueError(f"RowResult for sample {self.sample_token} view {self.view}: "
                             "give exactly one of targets or error")


@dataclass(kw_only=True)
class ShardReport:
    """Outcome of one :meth:`CacheWriter.write_shard`: counts and compressed bytes per target.

    ``encode_s`` is the time spent encoding rows (codecs, checksums; not the time the ``rows``
    iterable takes to produce them); ``write_s`` the time compressing (Zstd) and storing the shard
    and its fragment.
    """

    shard_index: int
    rows_ok: int
    rows_failed: int
    nbytes: dict[str, int] = field(default_factory=dict)
    encode_s: float = 0.0
    write_s: float = 0.0


def write_error(store: Any, what: str, exc: OSError) -> CacheWriteError:
    """The one-line :class:`CacheWriteError` for an ``OSError`` raised while writing ``what``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" at {exc.filename}" if exc.filename else ""
    return CacheWriteError(exc.errno, f"cache {stores.describe(store)}: cannot write {what}: {reason}{where}; "
                                      "nothing committed is lost, free space or fix permissions and rerun to resume")


def _manifest_rows(table: Any, target_names: list[str]) -> dict[int, manifest.ManifestRow]:
    """row -> :class:`manifest.ManifestRow` of a committed fragment (the inverse of
    :func:`manifest.fragment_table`)."""
    d = table.to_pydict()
    out = {}
    for j, r in enumerate(d["row"]):
        ok = d["status"][j] == manifest.STATUS_OK
        out[int(r)] = manifest.ManifestRow(
            sample_token=d["sample_token"][j], row=int(r), shard=int(d["shard"][j]), scene=d["scene"][j],
            timestamp_us=int(d["timestamp_us"][j]), view=int(d["view"][j]),
            view_matrix=np.asarray(d["view_matrix"][j], np.float64).reshape(4, 4), status=d["status"][j],
            error=d["error"][j], crc32c={n: int(d[f"crc32c:{n}"][j]) for n in target_names} if ok else {},
            nbytes={n: int(d[f"nbytes:{n}"][j]) for n in target_names} if ok else {},
            labelled=bool(d["labelled"][j]) if "labelled" in d else True)
    return out


def row_checksum(comps: dict[str, AnyDtypeArray]) -> int:
    """crc32c of the stored, uncompressed component bytes (component order, C order)."""
    crc = 0
    for arr in comps.values():
        view = np.ascontiguousarray(arr).view()
        view.setflags(write=False)  # google_crc32c reads read-only buffers without a copy
        crc = google_crc32c.extend(crc, view.reshape(-1).view(np.uint8))
    return int(crc)


class CacheWriter:
    """Creates a cache and commits shards. Use :meth:`create` or :meth:`open`."""

    def __init__(self, store: Any, root: zarr.Group, schema: CacheSchema, sample_tokens: list[str]) -> None:
        self.store = store
        self.schema = schema
        self.sample_tokens = sample_tokens
        self._arrays = layout.open_arrays(root, schema)
        self._encodings = {name: {comp: enc if enc is not None and enc.shard_size == schema.shard_size else None
                                  for comp, arr in comps.items() for enc in [layout.shard_encoding(arr)]}
                           for name, comps in self._arrays.items()}
        self._sample_index = {t: i for i, t in enumerate(sample_tokens)}
        #: rows compressed in parallel per shard component (:func:`layout.encode_shard`); the bytes
        #: written do not depend on it. The cache job sets it to its worker's thread budget.
        self.encode_threads = 1

    @classmethod
    def create(cls, location: stores.StoreLike, schema: CacheSchema, sample_tokens: Sequence[str], *,
               overwrite: bool = False, storage_options: dict[str, Any] | None = None) -> CacheWriter:
        """Create an empty cache for ``sample_tokens`` (``schema.num_rows`` must equal
        ``len(sample_tokens) * schema.views``).

        Raises:
            ValueError: token count mismatch or duplicate tokens.
            zarr.errors.ContainsGroupError / ContainsArrayError: a cache exists and not ``overwrite``.
            storage.errors.NotACacheError: ``overwrite`` and the location holds something other
                than a bevkd cache, or (``overwrite`` or a half-created cache) a bevkd cache and
                files that are not the cache's (:func:`storage.cache.overwrite.check_overwritable`;
                nothing is deleted).
            storage.errors.CacheWriteError: the location cannot be written (disk full, permission).

        Creation is resumable: the sample index is written last, so a cache whose creation was
        interrupted (disk full, kill) lacks it and is recognised as half-created
        (:func:`storage.cache.layout.unfinished_creation`: a bevkd cache's root metadata and no
        committed shard); creating over it replaces it, with or without ``overwrite``. Replacing
        deletes only the cache's own entries (:mod:`storage.cache.overwrite`).
        """
        tokens = [str(t) for t in sample_tokens]
        if len(tokens) * schema.views != schema.num_rows or len(set(tokens)) != len(tokens):
            raise ValueError(f"CacheWriter.create: {len(tokens)} unique tokens x {schema.views} views "
                             f"must equal schema.num_rows {schema.num_rows}")
        store = stores.open_store(location, storage_options=storage_options)
        try:
            if overwrite:
                overwrite_rules.check_overwritable(store)  # only ever delete a bevkd cache and nothing else
                overwrite_rules.delete_own_entries(store)
            elif layout.unfinished_creation(store) is not None:  # ours, nothing committed: complete it afresh
                overwrite_rules.check_overwritable(store)  # never with a user's files next to it
                overwrite_rules.delete_own_entries(store)
            # never mode "w": Zarr would empty the whole location, foreign files included
            root = layout.create_arrays(store, schema, overwrite=False)
            layout.write_samples(store, tokens)  # last: its presence marks a completely created cache
        except OSError as e:
            if isinstance(e, (CacheWriteError, FileNotFoundError, NotADirectoryError)):
                raise
            raise write_error(store, "its metadata (creating the cache; a rerun completes it)", e) from None
        return cls(store, root, schema, tokens)

    @classmethod
    def open(cls, location: stores.StoreLike, *, storage_options: dict[str, Any] | None = None) -> CacheWriter:
        """Open an existing cache for writing more shards (resume, or another worker).

        Raises:
            FileNotFoundError: no cache at ``location``.
            storage.errors.CacheIncompleteError: its creation did not finish and nothing is
                committed (:meth:`create` over it completes it; ``bevkd cache`` does so on rerun).
            storage.errors.CacheMetadataError: a metadata file is missing or unreadable (names it).
        """
        store = stores.open_store(location, storage_options=storage_options)
        unfinished = layout.unfinished_creation(store)
        if unfinished is not None:
            raise CacheIncompleteError(f"cache {stores.describe(store)}: its creation did not finish ({unfinished}); "
                                       "nothing was committed: rerun the same bevkd cache command to complete it")
        root, attrs = layout.open_root(store, writable=True)
        schema = CacheSchema.from_dict(attrs)
        return cls(store, root, schema, layout.read_samples(store))

    # ---- what goes where ------------------------------------------------------------------
    def row_index(self, sample_token: str, view: int = 0) -> int:
        """``sample_index * views + view``. Raises KeyError / IndexError for an unknown token / view."""
        if not 0 <= view < self.schema.views:
            raise IndexError(f"sample {sample_token}: view {view} outside [0, {self.schema.views})")
        return self._sample_index[sample_token] * self.schema.views + view

    def shard_rows(self, shard_index: int) -> list[tuple[str, int]]:
        """``(sample_token, view)`` of every row of a shard, in row order."""
        v = self.schema.views
        return [(self.sample_tokens[r // v], r % v) for r in self.schema.shard_rows(shard_index)]

    def committed_shards(self) -> list[int]:
        """Shards whose manifest fragment exists (done; skip them on resume)."""
        return manifest.committed_shards(self.store)

    def pending_shards(self) -> list[int]:
        done = set(self.committed_shards())
        return [i for i in range(self.schema.num_shards) if i not in done]

    def failed_rows(self, shard_index: int) -> list[tuple[str, int]]:
        """``(sample_token, view)`` of the rows a committed shard holds as failed (empty when the
        shard is not committed or all its rows are ok), in row order."""
        table = manifest.read_fragment(self.store, shard_index)
        if table is None:
            return []
        d = table.sort_by("row").select(["sample_token", "view", "status"]).to_pydict()
        return [(t, int(v)) for t, v, st in zip(d["sample_token"], d["view"], d["status"], strict=True)
                if st != manifest.STATUS_OK]

    # ---- commit ---------------------------------------------------------------------------
    def write_shard(self, shard_index: int, rows: Iterable[RowResult], *, replace: bool = False) -> ShardReport:
        """Write shard ``shard_index`` whole, then commit it with its manifest fragment.

        Rows whose targets cannot be stored (missing target, wrong shape, non-finite, too
        many boxes) are committed as failed rows with the reason; they never raise.

        Args:
            shard_index: which shard.
            rows: exactly the rows of :meth:`shard_rows` (any order); consumed one by one, so a
                generator keeps only the encoded (small) data alive.
            replace: rewrite a committed shard (its fragment is removed first, so readers
                stop seeing it until the new commit).

        Raises:
            IndexError: shard outside the cache.
            ValueError: rows missing, duplicated or not belonging to the shard.
            FileExistsError: the shard is committed and not ``replace``.
        """
        expected = self.schema.shard_rows(shard_index)
        key = manifest.fragment_key(shard_index)
        if stores.exists(self.store, key):
            if not replace:
                raise FileExistsError(f"cache {stores.describe(self.store)}: shard {shard_index} already "
                                      f"committed ({key}); pass replace=True to rewrite it")
            stores.delete(self.store, key)
        blocks = self._empty_blocks(len(expected))
        records: dict[int, manifest.ManifestRow] = {}
        encode_s = 0.0
        for result in rows:
            t0 = time.perf_counter()
            r = self._row_of(result, expected)
            if r in records:
                raise ValueError(f"shard {shard_index}: row {r} (sample {result.sample_token} view "
                                 f"{result.view}) given twice")
            records[r] = self._encode_row(result, r, shard_index, blocks, r - expected.start)
            encode_s += time.perf_counter() - t0
        missing = [self.shard_rows(shard_index)[r - expected.start] for r in expected if r not in records]
        if missing:
            raise ValueError(f"shard {shard_index}: rows missing for (sample_token, view) {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}; give a RowResult with error= for failed rows")
        return self._store_shard(shard_index, expected, blocks, records, encode_s)

    def retry_failed(self, shard_index: int, rows: Iterable[RowResult]) -> ShardReport:
        """Rewrite the failed rows of a committed shard, keeping its ok rows as committed.

        The ok rows are read back and stored again byte for byte, so the old fragment describes
        the stored data at every moment until the new fragment replaces it (one atomic put): an
        interruption (disk full, kill) loses nothing committed.

        Args:
            shard_index: a committed shard.
            rows: a new result for each of its failed rows (:meth:`failed_rows`), any order.

        Returns:
            the shard's report (counts of the whole shard after the retry).

        Raises:
            FileNotFoundError: the shard is not committed.
            ValueError: ``rows`` are not exactly the shard's failed rows.
            storage.errors.CacheWriteError: the shard or its fragment cannot be written.
        """
        table = manifest.read_fragment(self.store, shard_index)
        if table is None:
            raise FileNotFoundError(f"cache {stores.describe(self.store)}: shard {shard_index} is not committed")
        expected = self.schema.shard_rows(shard_index)
        records = _manifest_rows(table, [s.name for s in self.schema.targets])
        failed = {r for r, rec in records.items() if rec.status != manifest.STATUS_OK}
        blocks = {name: {comp: np.array(arr[expected.start:expected.stop]) for comp, arr in comps.items()}
                  for name, comps in self._arrays.items()}
        retried: set[int] = set()
        encode_s = 0.0
        for result in rows:
            t0 = time.perf_counter()
            r = self._row_of(result, expected)
            if r not in failed or r in retried:
                raise ValueError(f"shard {shard_index}: row {r} (sample {result.sample_token} view {result.view}) "
                                 "is not a failed row of the shard, or is given twice")
            retried.add(r)
            records[r] = self._encode_row(result, r, shard_index, blocks, r - expected.start)
            encode_s += time.perf_counter() - t0
        if retried != failed:
            raise ValueError(f"shard {shard_index}: failed rows {sorted(failed - retried)[:5]} not given")
        return self._store_shard(shard_index, expected, blocks, records, encode_s)

    def _store_shard(self, shard_index: int, expected: range, blocks: dict[str, dict[str, AnyDtypeArray]],
                     records: dict[int, manifest.ManifestRow], encode_s: float) -> ShardReport:
        t0 = time.perf_counter()
        try:
            sizes = self._write_blocks(shard_index, expected, blocks)
            report = self._commit(shard_index, expected, records, sizes)
        except OSError as e:
            raise write_error(self.store, f"shard {shard_index}", e) from None
        report.encode_s, report.write_s = encode_s, time.perf_counter() - t0
        return report

    def _write_blocks(self, shard_index: int, expected: range, blocks: dict[str, dict[str, AnyDtypeArray]]
                      ) -> dict[tuple[str, str], Int64Array]:
        """Store every component's shard; returns the per-chunk compressed sizes of the shards
        encoded here (:func:`layout.encode_shard`, one put each); the others go through Zarr."""
        puts: dict[str, bytes] = {}
        sizes: dict[tuple[str, str], Int64Array] = {}
        for name, comps in blocks.items():
            for comp, block in comps.items():
                array, encoding = self._arrays[name][comp], self._encodings[name][comp]
                if encoding is None:
                    array[expected.start:expected.stop] = block
                else:
                    puts[layout.shard_key(array, shard_index)], sizes[name, comp] = layout.encode_shard(
                        encoding, block, threads=self.encode_threads)
        stores.put_many(self.store, puts)
        return sizes

    def _empty_blocks(self, n: int) -> dict[str, dict[str, AnyDtypeArray]]:
        return {spec.name: {c: np.zeros((n, *shape), dtype) for c, (shape, dtype) in components(spec).items()}
                for spec in self.schema.targets}

    def _row_of(self, result: RowResult, expected: range) -> int:
        try:
            r = self.row_index(result.sample_token, result.view)
        except (KeyError, IndexError) as e:
            raise ValueError(f"sample {result.sample_token} view {result.view}: not in this cache ({e})") from None
        if r not in expected:
            raise ValueError(f"sample {result.sample_token} view {result.view}: row {r} is not in shard "
                             f"rows [{expected.start}, {expected.stop})")
        return r

    def _encode_row(self, result: RowResult, r: int, shard_index: int,
                    blocks: dict[str, dict[str, AnyDtypeArray]], local: int) -> manifest.ManifestRow:
        error, crcs = result.error, {}
        if result.targets is not None:
            try:
                encoded = {s.name: encode(s, result.targets.target(s.name)) for s in self.schema.targets}
            except ValueError as e:  # TargetValueError or a shape mismatch: the row fails, the shard commits
                error = f"sample {result.sample_token} view {result.view}: {e}"
            else:
                for name, comps in encoded.items():
                    for comp, arr in comps.items():
                        blocks[name][comp][local] = arr
                    crcs[name] = row_checksum(comps)
        vm = result.view_matrix if result.view_matrix is not None else (
            result.targets.view_matrix if result.targets is not None else np.eye(4))
        return manifest.ManifestRow(
            sample_token=result.sample_token, row=r, shard=shard_index, scene=result.scene,
            timestamp_us=int(result.timestamp_us), view=result.view, view_matrix=np.asarray(vm, np.float64),
            status=manifest.STATUS_FAILED if error else manifest.STATUS_OK, error=error, crc32c=crcs, nbytes={},
            labelled=bool(result.labelled))

    def _commit(self, shard_index: int, expected: range, records: dict[int, manifest.ManifestRow],
                known_sizes: dict[tuple[str, str], Int64Array]) -> ShardReport:
        report = ShardReport(shard_index=shard_index, rows_ok=0, rows_failed=0)
        per_row = np.zeros((len(self.schema.targets), len(expected)), np.int64)
        for t, spec in enumerate(self.schema.targets):
            for comp, arr in self._arrays[spec.name].items():
                sizes = known_sizes.get((spec.name, comp))
                if sizes is None:
                    sizes = layout.shard_chunk_nbytes(self.store, arr, shard_index, self.schema.shard_size)
                if sizes is not None:
                    per_row[t] += np.maximum(sizes[:len(expected)], 0)
            report.nbytes[spec.name] = int(per_row[t].sum())
        ordered = [records[r] for r in expected]
        for j, rec in enumerate(ordered):
            if rec.status == manifest.STATUS_OK:
                rec.nbytes = {s.name: int(per_row[t, j]) for t, s in enumerate(self.schema.targets)}
                report.rows_ok += 1
            else:
                report.rows_failed += 1
        table = manifest.fragment_table(ordered, [s.name for s in self.schema.targets])
        manifest.write_fragment(self.store, shard_index, table)
        return report
