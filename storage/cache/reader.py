"""Reading a cache: random access to committed rows, typed as :class:`storage.cache.row.CacheRow`.

Only rows of committed shards (those with a manifest fragment, or rows in the compacted
manifest) are visible; a manifest row index that does not fit the cache is refused when the
manifest is read. Every read is
checked twice: each chunk's Zstd content checksum (or crc32c when uncompressed) and the shard
index crc32c (:mod:`storage.cache.chunks`), and the crc32c of the decompressed bytes against
the manifest's (a missing or stale shard fails here). Any failure raises
:class:`storage.errors.CacheCorruptError` naming the sample,
the target and the key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import zarr

from storage.arrays import AnyDtypeArray, Int64Array
from storage.cache import layout, manifest, stores
from storage.cache.chunks import ChunkError, ChunkFetcher, ChunkRequest
from storage.cache.codecs import component_codec, decode
from storage.cache.row import CacheRow
from storage.cache.schema import SCHEMA_VERSION, CacheSchema, DatasetInfo, fields_where
from storage.cache.writer import row_checksum
from storage.errors import CacheCorruptError, CacheMismatchError, CacheRowError
from storage.grid import BEVGrid


#: Ragged targets besides ``boxes`` (their valid rows: the box count).
RAGGED_FIELDS = tuple(f for f in fields_where(ragged=True) if f.name != "boxes")


class CacheReader:
    """Random access to a cache's committed rows.

    Args:
        location: directory, fsspec URL or Zarr store.
        expect_grid: refuse a cache whose grid differs (``BEVGrid.same_as``).
        expect_dataset: refuse a cache of another dataset id / version / split.
        expect_schema_version: refuse another layout version (None accepts any).
        targets: read only these targets (default all); ``instance_features`` brings ``boxes``.
        verify_checksums: compare each read's crc32c with the manifest (cheap; default on).
        storage_options: fsspec options for URLs.

    Raises:
        FileNotFoundError: no cache at ``location``.
        CacheMismatchError: schema version, grid or dataset differ from what was asked.
        KeyError: a requested target is not stored.
    """

    def __init__(self, location: stores.StoreLike, *, expect_grid: BEVGrid | None = None,
                 expect_dataset: DatasetInfo | None = None, expect_schema_version: int | None = SCHEMA_VERSION,
                 targets: list[str] | None = None, verify_checksums: bool = True,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.store = stores.open_store(location, read_only=True, storage_options=storage_options)
        self.location = stores.describe(self.store)
        root, attrs = layout.open_root(self.store)
        self._check_expectations(attrs, expect_grid, expect_dataset, expect_schema_version)
        self.schema = CacheSchema.from_dict(attrs)
        self.target_names = list(targets) if targets is not None else [t.name for t in self.schema.targets]
        if any(f.name in self.target_names for f in RAGGED_FIELDS) and "boxes" not in self.target_names:
            self.target_names.append("boxes")  # their count says how many rows of a ragged target are valid
        self._arrays = layout.open_arrays(root, self.schema, self.target_names)
        self.verify_checksums = verify_checksums
        self._fetcher = ChunkFetcher(self.store, self.schema.shard_size)
        self._zstd = {(name, comp): component_codec(self.schema.target(name), comp).zstd_level is not None
                      for name in self.target_names for comp in self._arrays[name]}
        self.sample_tokens = layout.read_samples(self.store)
        self._sample_index = {t: i for i, t in enumerate(self.sample_tokens)}
        self.refresh()

    def _check_expectations(self, attrs: dict[str, Any], grid: BEVGrid | None, dataset: DatasetInfo | None,
                            version: int | None) -> None:
        found = int(attrs.get("schema_version", -1))
        if version is not None and found != version:
            raise CacheMismatchError(f"cache {self.location}: schema version {found}, expected {version}")
        if grid is not None and not BEVGrid.from_dict(attrs["grid"]).same_as(grid):
            raise CacheMismatchError(f"cache {self.location}: grid {attrs['grid']} differs from the expected "
                                     f"{grid.to_dict()}")
        if dataset is not None and DatasetInfo(**attrs["dataset"]) != dataset:
            raise CacheMismatchError(f"cache {self.location}: dataset {attrs['dataset']} differs from the "
                                     f"expected {dataset.to_dict()}")

    def refresh(self) -> None:
        """Reload the manifest (to see shards committed or replaced since opening): the compacted
        manifest plus the fragments committed since (:mod:`storage.cache.manifest`).

        Raises:
            CacheCorruptError: a manifest row index outside the cache or its shard (names the
                manifest file and the row).
        """
        self._fetcher.clear()
        fits = manifest.RowLayout(num_rows=self.schema.num_rows, shard_size=self.schema.shard_size,
                                  views=self.schema.views)
        self.rows: pa.Table = manifest.read_manifest(self.store, [t.name for t in self.schema.targets], layout=fits)
        row = self.rows.column("row").to_numpy()
        self._pos = {int(r): i for i, r in enumerate(row)}
        self._meta_cols = {c: self.rows.column(c).to_pylist() for c in ("sample_token", "view", "status", "error")}
        self._crc = {t.name: self.rows.column(f"crc32c:{t.name}").to_pylist() for t in self.schema.targets}
        ok = np.asarray(self._meta_cols["status"], dtype=object) == manifest.STATUS_OK
        self.ok_rows: Int64Array = row[ok].astype(np.int64)
        """Global row indices of the committed rows with status ok, ascending."""
        labelled = (self.rows.column("labelled").to_pylist() if "labelled" in self.rows.column_names
                    else [True] * len(row))
        self._unlabelled = {int(r) for r, lab in zip(row, labelled, strict=True) if lab is False}

    def is_labelled(self, row: int) -> bool:
        """Whether global row ``row``'s sample is annotated (manifest ``labelled``; True for rows
        of fragments written before that column existed)."""
        return int(row) not in self._unlabelled

    def __len__(self) -> int:
        """Number of committed rows with status ok."""
        return len(self.ok_rows)

    def __getitem__(self, i: int) -> CacheRow:
        """The ``i``-th ok row (dataset-style index into :attr:`ok_rows`)."""
        return self.read(int(self.ok_rows[i]))

    def row_index(self, sample_token: str, view: int = 0) -> int:
        """Global row of ``(sample_token, view)``. Raises KeyError for an unknown token."""
        if sample_token not in self._sample_index:
            raise KeyError(f"cache {self.location}: sample {sample_token} is not in this cache")
        if not 0 <= view < self.schema.views:
            raise KeyError(f"cache {self.location}: sample {sample_token}: view {view} "
                           f"outside [0, {self.schema.views})")
        return self._sample_index[sample_token] * self.schema.views + view

    def stored_layout(self, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """Per-row shape and dtype of target ``name``'s stored data (what ``read(into=...)`` fills)."""
        arr = self._arrays[name]["data"]
        return tuple(arr.shape[1:]), np.dtype(arr.dtype)

    def read(self, row_or_token: int | str, view: int = 0, *, decode: bool = True,
             into: dict[str, AnyDtypeArray] | None = None) -> CacheRow:
        """Read one row.

        Args:
            row_or_token: global row index, or a sample token (with ``view``).
            view: view of a sample token (ignored for a row index).
            decode: False returns uint8 targets as :class:`QuantizedArray` and float16 as
                float16, to ship small data and dequantise late (e.g. on the GPU).
            into: target name -> array of :meth:`stored_layout` to decompress that target's data
                into (e.g. row ``j`` of a shared-memory batch: no copy on the way to the trainer).
                With ``decode=False`` the returned uint8 / float16 value is that array.

        Raises:
            CacheRowError: the row is not committed, or committed as failed (with its reason).
            CacheCorruptError: a chunk fails its checksum or cannot be decoded.
        """
        r = self.row_index(row_or_token, view) if isinstance(row_or_token, str) else int(row_or_token)
        meta = self._meta(r)
        out = CacheRow(sample_token=meta["sample_token"], row=r, view=meta["view"],
                       view_matrix=manifest.view_matrix_of(self.rows, self._pos[r]))
        values = self._read_targets(r, meta, decode, into or {})
        for name in self.target_names:
            out.set_target(name, values[name])
        for f in RAGGED_FIELDS:  # valid rows of a ragged target: the row's box count
            if out.boxes is not None and getattr(out, f.name) is not None:
                setattr(out, f.name, getattr(out, f.name)[:len(out.boxes)])
        return out

    def _meta(self, r: int) -> dict[str, Any]:
        if r not in self._pos:
            if not 0 <= r < self.schema.num_rows:
                raise CacheRowError(f"cache {self.location}: row {r} outside [0, {self.schema.num_rows})")
            token = self.sample_tokens[r // self.schema.views]
            raise CacheRowError(f"cache {self.location}: sample {token} view {r % self.schema.views} (row {r}) "
                                f"is not committed: shard {r // self.schema.shard_size} has no manifest rows")
        i = self._pos[r]
        meta = {c: col[i] for c, col in self._meta_cols.items()}
        if meta["status"] != manifest.STATUS_OK:
            raise CacheRowError(f"cache {self.location}: sample {meta['sample_token']} view {meta['view']} "
                                f"(row {r}) failed in the cache job: {meta['error']}")
        return meta

    def _read_targets(self, r: int, meta: dict[str, Any], dequantize_values: bool,
                      into: dict[str, AnyDtypeArray]) -> dict[str, Any]:
        """name -> decoded value of every selected target of row ``r`` (one batched fetch)."""
        shard, local = divmod(r, self.schema.shard_size)
        where = [(name, comp, arr) for name in self.target_names for comp, arr in self._arrays[name].items()]
        got = self._fetcher.fetch([ChunkRequest(key=layout.shard_key(arr, shard), local=local, shape=arr.shape[1:],
                                                dtype=str(arr.dtype), zstd=self._zstd[name, comp],
                                                out=into.get(name) if comp == "data" else None)
                                   for name, comp, arr in where])
        comps: dict[str, dict[str, AnyDtypeArray]] = {name: {} for name in self.target_names}
        for (name, comp, arr), value in zip(where, got, strict=True):
            if isinstance(value, ChunkError):
                raise self._corrupt(meta, name, arr, r, f"component {comp}: {value}")
            comps[name][comp] = value
        out = {}
        for name in self.target_names:
            if self.verify_checksums:
                expected, found = self._crc[name][self._pos[r]], row_checksum(comps[name])
                if expected != found:
                    arr = next(iter(self._arrays[name].values()))
                    raise self._corrupt(meta, name, arr, r, f"checksum mismatch (crc32c {found:#010x}, manifest "
                                        f"{expected if expected is None else hex(expected)})")
            out[name] = decode(self.schema.target(name), comps[name], dequantize_values=dequantize_values)
        return out

    def _corrupt(self, meta: dict[str, Any], name: str, arr: zarr.Array[Any], r: int,
                 problem: str) -> CacheCorruptError:
        key = layout.shard_key(arr, r // self.schema.shard_size)
        return CacheCorruptError(meta["sample_token"], name, stores.key_location(self.store, key),
                                 f"view {meta['view']} (row {r}): {problem}")
