"""``inspect``: what a cache holds, how big it is, and who can reuse it (manifest only, no chunk reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from storage.cache import layout, manifest, stores
from storage.cache.schema import CacheSchema

if TYPE_CHECKING:
    import zarr
    from zarr.abc.store import Store


@dataclass(kw_only=True)
class TargetSummary:
    """Sizes of one target over the committed ok rows.

    Attributes:
        name: target name.
        shape: logical per-row shape.
        codec: codec string, e.g. ``quant_u8+zstd1``.
        raw_bytes: bytes of one row in its logical dtype (float32 / bool).
        stored_bytes: mean compressed bytes per row (nan if no ok row).
    """

    name: str
    shape: tuple[int, ...]
    codec: str
    raw_bytes: int
    stored_bytes: float

    @property
    def ratio(self) -> float:
        """Compression ratio raw / stored."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes > 0 else float("nan")


@dataclass(kw_only=True)
class CacheSummary:
    """Result of :func:`inspect_cache`."""

    location: str
    schema: CacheSchema
    shards_committed: int
    rows_ok: int
    rows_failed: int
    targets: list[TargetSummary]
    failures: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    #: broken or missing metadata files (:func:`storage.cache.layout.metadata_problems`), each naming its file
    problems: list[str] = field(default_factory=list)

    @property
    def stored_bytes_per_row(self) -> float:
        return float(sum(t.stored_bytes for t in self.targets))

    @property
    def raw_bytes_per_row(self) -> int:
        return sum(t.raw_bytes for t in self.targets)


def _hints(s: CacheSchema, shards: int, ok: int, failed: int, problems: list[str]) -> list[str]:
    h, w = s.grid.bev_shape
    hints = [f"reusable by any student on grid range {list(s.grid.point_cloud_range)} with BEV {h}x{w} "
             f"(voxel {s.grid.voxel_size[0]:g} m, frame {s.grid.frame}); "
             "coarser students can pool by an integer stride",
             f"CacheReader(..., expect_grid=<grid>, expect_dataset=DatasetInfo(dataset_id={s.dataset.dataset_id!r}, "
             f"version={s.dataset.version!r}, split={s.dataset.split!r})) refuses mismatched caches",
             "read a subset with CacheReader(..., targets=[...]); "
             "decode=False ships uint8 + scales for GPU dequantisation"]
    if s.views > 1:
        hints.append(f"{s.views} views per sample: rows carry view_matrix; "
                     "apply the same BEV augmentation to the student input")
    if problems and not shards:
        hints.append("its creation did not finish (metadata missing, nothing committed): rerun the same "
                     "bevkd cache command to complete it")
    elif problems:
        hints.append(f"{len(problems)} metadata file(s) broken (listed above): bevkd verify names the targets "
                     "and rows they make unreadable")
    elif shards < s.num_shards:
        hints.append(f"{s.num_shards - shards} of {s.num_shards} shards pending: rerun the cache job to resume")
    if failed:
        hints.append(f"{failed} failed rows: reasons are in the manifest 'error' column (first few below)")
    return hints


def open_read_only(location: stores.StoreLike, *, storage_options: dict[str, Any] | None = None
                   ) -> tuple[Store, zarr.Group, CacheSchema]:
    """An existing cache opened read-only, as :func:`inspect_cache` and
    :func:`storage.cache.verify.verify_cache` read it: its store, root group and schema.

    Raises:
        FileNotFoundError: no bevkd cache at ``location``.
        storage.errors.CacheMetadataError: its root ``zarr.json`` is unreadable or a schema field
            is wrong (names the file and the field), or the store cannot be reached.
        storage.errors.CacheMismatchError: its ``schema_version`` is not the one this bevkd reads
            (:data:`storage.cache.schema.SCHEMA_VERSION`), as :class:`storage.cache.CacheReader` refuses it.
    """
    store = stores.open_store(location, read_only=True, storage_options=storage_options)
    root, attrs = layout.open_root(store)
    return store, root, layout.read_schema(store, attrs)


def inspect_cache(location: stores.StoreLike, *, storage_options: dict[str, Any] | None = None,
                  max_failures: int = 5) -> CacheSummary:
    """Summarise a cache from its attributes and manifest, and check its metadata files
    (``summary.problems``).

    Raises:
        FileNotFoundError: no bevkd cache at ``location``.
        storage.errors.CacheMetadataError: its root ``zarr.json`` or a manifest fragment is
            unreadable, or a schema field is wrong (names the file), or the store cannot be reached.
        storage.errors.CacheMismatchError: another schema version (:func:`open_read_only`).
    """
    store, _, schema = open_read_only(location, storage_options=storage_options)
    problems = layout.metadata_problems(store, schema)
    table = manifest.read_manifest(store, [t.name for t in schema.targets])
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == manifest.STATUS_OK
    targets = []
    for t in schema.targets:
        nbytes = table.column(f"nbytes:{t.name}").to_numpy(zero_copy_only=False)[ok]
        targets.append(TargetSummary(name=t.name, shape=t.shape, codec=str(t.codec), raw_bytes=t.raw_nbytes,
                                     stored_bytes=float(np.mean(nbytes)) if len(nbytes) else float("nan")))
    errors = table.column("error").to_pylist()
    failures = [e for e, s in zip(errors, status, strict=True) if s != manifest.STATUS_OK][:max_failures]
    shards = len(manifest.committed_shards(store))
    return CacheSummary(location=stores.describe(store), schema=schema, shards_committed=shards,
                        rows_ok=int(ok.sum()), rows_failed=int((~ok).sum()), targets=targets, failures=failures,
                        hints=_hints(schema, shards, int(ok.sum()), int((~ok).sum()), problems), problems=problems)


def format_summary(s: CacheSummary) -> str:
    """The human-readable report printed by ``bevkd inspect``."""
    sc = s.schema
    lines = [f"cache      {s.location}  (schema v{sc.schema_version})",
             f"teacher    {sc.teacher.name}  weights sha256 {sc.teacher.weights_sha256 or '-'}",
             f"dataset    {sc.dataset.dataset_id} {sc.dataset.version} split {sc.dataset.split}",
             f"grid       range {list(sc.grid.point_cloud_range)} voxel {list(sc.grid.voxel_size)} "
             f"bev {sc.grid.bev_shape} frame {sc.grid.frame}",
             f"rows       {s.rows_ok} ok, {s.rows_failed} failed, of {sc.num_rows} "
             f"({sc.num_samples} samples x {sc.views} views); shards {s.shards_committed}/{sc.num_shards} "
             f"committed (S={sc.shard_size})",
             "", f"{'target':<28}{'shape':<20}{'codec':<18}{'raw/row':>12}{'stored/row':>13}{'ratio':>8}"]
    for t in s.targets:
        lines.append(f"{t.name:<28}{str(t.shape):<20}{t.codec:<18}{_mb(t.raw_bytes):>12}{_mb(t.stored_bytes):>13}"
                     f"{t.ratio:>7.1f}x")
    total_ratio = s.raw_bytes_per_row / s.stored_bytes_per_row if s.stored_bytes_per_row > 0 else float("nan")
    lines.append(f"{'total':<66}{_mb(s.raw_bytes_per_row):>12}{_mb(s.stored_bytes_per_row):>13}{total_ratio:>7.1f}x")
    if sc.views > 1:
        lines.append(f"per sample ({sc.views} views): {_mb(s.stored_bytes_per_row * sc.views)} stored")
    if s.problems:
        lines += ["", "metadata problems:"] + [f"  {p}" for p in s.problems]
    if s.failures:
        lines += ["", "failed rows (first few):"] + [f"  {f}" for f in s.failures]
    lines += ["", "reuse hints:"] + [f"  - {h}" for h in s.hints]
    return "\n".join(lines)


def _mb(n: float) -> str:
    if n != n:  # nan
        return "-"
    return f"{n / 1e6:.3f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
