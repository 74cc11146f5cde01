"""``verify``: re-read every committed row and check it against the manifest.

For each committed shard and target component: the shard key must exist, every ok row's
chunk must be present in the shard index, decode (Zarr checks the Zstd content checksum /
crc32c and the shard-index crc32c) and match the manifest's crc32c of the decompressed bytes.
Each problem names the row, sample token, view, target and key. Shards with data but no
fragment are listed too (they are invisible to readers; the cache job rewrites them).

Metadata is checked first (:func:`storage.cache.layout.metadata_problems`: the sample index and
every group's and array's ``zarr.json``, each problem naming its file). A target whose arrays
cannot be opened counts every checked row as bad; a committed shard whose manifest fragment is
unreadable is named and its rows are not checked. A cache is *complete* when its
creation finished and every shard is committed; an incomplete one may still be fully sound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from zarr.types import AnyArray

from storage.arrays import AnyDtypeArray
from storage.cache import layout, manifest, stores
from storage.cache.inspect import open_read_only
from storage.cache.schema import CacheSchema
from storage.cache.shard_index import ShardIndexError
from storage.cache.writer import row_checksum
from storage.errors import CacheMetadataError


@dataclass(kw_only=True)
class RowProblem:
    """A committed ok row that does not read back as written.

    Attributes:
        row: global row index.
        sample_token: the sample.
        view: view index.
        target: target name.
        problem: ``missing`` (no shard key or chunk) or ``corrupt`` (decode or checksum failure).
        detail: what failed.
        path: the shard key's location.
    """

    row: int
    sample_token: str
    view: int
    target: str
    problem: str
    detail: str
    path: str

    def __str__(self) -> str:
        return (f"sample {self.sample_token} view {self.view} (row {self.row}): target {self.target} "
                f"{self.problem} at {self.path}: {self.detail}")


@dataclass(kw_only=True)
class VerifyReport:
    """Result of :func:`verify_cache`."""

    location: str
    rows_checked: int = 0
    rows_failed_in_job: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    uncommitted_shards: list[int] = field(default_factory=list)
    #: broken or missing metadata files (each names the file), unreadable manifest fragments included
    metadata_problems: list[str] = field(default_factory=list)
    #: targets whose arrays cannot be opened (name -> why): none of their rows could be read
    unreadable_targets: dict[str, str] = field(default_factory=dict)
    #: committed shards whose manifest fragment is unreadable (their rows are not checked)
    unreadable_fragments: list[int] = field(default_factory=list)
    num_shards: int = 0
    shards_committed: int = 0

    @property
    def ok(self) -> bool:
        """Every committed ok row reads back as written and no metadata file is broken."""
        return not self.problems and not self.metadata_problems and not self.unreadable_targets

    @property
    def bad_rows(self) -> int:
        """Committed ok rows that do not read back: those with a :class:`RowProblem`, and every
        checked row when a target is unreadable."""
        return self.rows_checked if self.unreadable_targets else len({p.row for p in self.problems})

    @property
    def target_problems(self) -> int:
        """(row, target) pairs that do not read back: one per :class:`RowProblem`, plus every
        checked row of each unreadable target."""
        return len(self.problems) + self.rows_checked * len(self.unreadable_targets)

    @property
    def creation_unfinished(self) -> bool:
        """The cache's creation did not finish (metadata missing, nothing committed): rerunning
        the cache job completes it."""
        return bool(self.metadata_problems) and self.shards_committed == 0

    @property
    def complete(self) -> bool:
        """Creation finished and every shard is committed."""
        return not self.creation_unfinished and self.shards_committed == self.num_shards


def _uncommitted(store: Any, arrays: dict[str, dict[str, AnyArray]], committed: set[int]) -> list[int]:
    arr = next(iter(next(iter(arrays.values())).values()))
    pattern = re.compile(re.escape(arr.path) + r"/c/(\d+)/")
    found = {int(m.group(1)) for k in stores.list_prefix(store, arr.path + "/c/") if (m := pattern.match(k))}
    return sorted(found - committed)


def _read_rows(arr: AnyArray, rows: range, ok_local: list[int]) -> tuple[AnyDtypeArray, dict[int, str]]:
    """The shard block, or per-row reads with the errors of the rows that fail."""
    try:
        return np.asarray(arr[rows.start:rows.stop]), {}
    except Exception:  # find the failing rows one by one
        block: AnyDtypeArray = np.zeros((len(rows), *arr.shape[1:]), arr.dtype)
        errors: dict[int, str] = {}
        for j in ok_local:
            try:
                block[j] = arr[rows.start + j]
            except Exception as e:
                errors[j] = f"cannot decode chunk ({type(e).__name__}: {e})"
        return block, errors


def _check_target(store: Any, schema: CacheSchema, name: str, comps: dict[str, AnyArray], shard: int,
                  frag: dict[str, list[Any]], ok_local: list[int]) -> list[RowProblem]:
    rows = schema.shard_rows(shard)
    found: dict[int, tuple[str, str, str]] = {}  # local row -> (problem, detail, path)
    blocks: dict[str, AnyDtypeArray] = {}
    for comp, arr in comps.items():
        path = stores.key_location(store, layout.shard_key(arr, shard))
        try:
            sizes = layout.shard_chunk_nbytes(store, arr, shard, schema.shard_size)
        except ShardIndexError as e:  # e.g. a zero-byte or truncated shard file: no row of it reads
            found.update({j: ("corrupt", f"component {comp}: shard index unreadable ({e})", path)
                          for j in ok_local if j not in found})
            continue
        if sizes is None:
            found.update({j: ("missing", f"shard key of component {comp} does not exist", path)
                          for j in ok_local if j not in found})
            continue
        for j in ok_local:
            if sizes[j] < 0 and j not in found:
                found[j] = ("missing", f"chunk of component {comp} absent from the shard index", path)
        block, errors = _read_rows(arr, rows, ok_local)
        for j, detail in errors.items():
            found.setdefault(j, ("corrupt", f"component {comp}: {detail}", path))
        blocks[comp] = block
    path = stores.key_location(store, layout.shard_key(next(iter(comps.values())), shard))
    crcs = frag.get(f"crc32c:{name}")
    if crcs is None:
        frag_path = stores.key_location(store, manifest.fragment_key(shard))
        found.update({j: ("corrupt", f"manifest fragment {frag_path} has no column crc32c:{name}", path)
                      for j in ok_local if j not in found})
        crcs = []
    for j in ok_local:
        if j in found or len(blocks) != len(comps):
            continue
        got = row_checksum({c: b[j] for c, b in blocks.items()})
        if got != crcs[j]:
            found[j] = ("corrupt", f"checksum mismatch (crc32c {got:#010x}, manifest {crcs[j]:#010x})", path)
    return [RowProblem(row=rows.start + j, sample_token=frag["sample_token"][j], view=frag["view"][j],
                       target=name, problem=p, detail=d, path=k) for j, (p, d, k) in sorted(found.items())]


def verify_cache(location: stores.StoreLike, *, storage_options: dict[str, Any] | None = None,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Re-read every committed row of a cache.

    Args:
        location: directory, fsspec URL or Zarr store.
        storage_options: fsspec options.
        progress: called with 1 after each shard (e.g. ``tqdm.update``).

    Returns:
        a :class:`VerifyReport`; ``report.ok`` is False when any committed ok row is missing
        or corrupt or a metadata file is broken; ``report.complete`` is False when shards are
        not committed yet or the cache's creation did not finish.

    Raises:
        FileNotFoundError: no bevkd cache at ``location``.
        storage.errors.CacheMetadataError: its root ``zarr.json`` is unreadable or a schema field
            is wrong (names the file and the field), or the store cannot be reached.
        storage.errors.CacheMismatchError: another schema version than this bevkd reads.
    """
    store, root, schema = open_read_only(location, storage_options=storage_options)
    committed = manifest.committed_shards(store)
    report = VerifyReport(location=stores.describe(store), num_shards=schema.num_shards,
                          shards_committed=len(committed), metadata_problems=layout.metadata_problems(store, schema))
    if report.creation_unfinished:
        return report
    arrays: dict[str, dict[str, AnyArray]] = {}
    for spec in schema.targets:  # a target whose metadata is broken: reported above, its rows counted bad
        try:
            arrays.update(layout.open_arrays(root, schema, [spec.name]))
        except CacheMetadataError as e:
            report.unreadable_targets[spec.name] = str(e).removeprefix(f"cache {report.location}: ")
    if arrays:
        report.uncommitted_shards = _uncommitted(store, arrays, set(committed))
    for shard in committed:
        try:
            table = manifest.read_fragment(store, shard)
        except CacheMetadataError as e:  # its rows are unknown: named, not checked
            report.unreadable_fragments.append(shard)
            report.metadata_problems.append(str(e).removeprefix(f"cache {report.location}: "))
            table = None
        if table is not None:
            _check_shard(report, store, schema, arrays, shard, table)
        if progress is not None:
            progress(1)
    return report


def _check_shard(report: VerifyReport, store: Any, schema: CacheSchema, arrays: dict[str, dict[str, AnyArray]],
                 shard: int, table: pa.Table) -> None:
    """Check every ok row of one committed shard (its fragment ``table``) in every openable target."""
    frag = table.sort_by("row").to_pydict()
    ok_local = [j for j, s in enumerate(frag["status"]) if s == manifest.STATUS_OK]
    report.rows_checked += len(ok_local)
    report.rows_failed_in_job += len(frag["status"]) - len(ok_local)
    for name, comps in arrays.items():
        report.problems += _check_target(store, schema, name, comps, shard, frag, ok_local)
