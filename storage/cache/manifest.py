"""The manifest: one Parquet fragment per committed shard, the union of which lists every row.

Commit protocol: a writer writes shard ``i`` of every target array first, then the fragment
``manifest/shard-<i:06d>.parquet`` (atomically, :func:`storage.cache.stores.put_bytes`).
A shard counts only when its fragment exists; readers never see rows of a shard without one.

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

import io
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from zarr.abc.store import Store

from storage.arrays import Float64Array
from storage.cache import stores

MANIFEST_PREFIX = "manifest/"
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
    """Commit a shard: write its fragment in one atomic put."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    stores.put_bytes(store, fragment_key(shard_index), buf.getvalue())


def committed_shards(store: Store) -> list[int]:
    """Indices of the shards whose fragment exists, sorted."""
    out = []
    for key in stores.list_prefix(store, MANIFEST_PREFIX):
        m = _FRAGMENT.match(key)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def read_fragment(store: Store, shard_index: int) -> pa.Table | None:
    data = stores.get_bytes(store, fragment_key(shard_index))
    return None if data is None else pq.read_table(io.BytesIO(data))


def read_manifest(store: Store, target_names: list[str]) -> pa.Table:
    """The union of all fragments, sorted by ``row`` (an empty table if nothing is committed)."""
    tables = [t for i in committed_shards(store) if (t := read_fragment(store, i)) is not None]
    if not tables:
        return fragment_table([], target_names)
    return pa.concat_tables(tables, promote_options="default").sort_by("row")


def view_matrix_of(table: pa.Table, index: int) -> Float64Array:
    """``(4, 4)`` float64 view matrix of table row ``index``."""
    return np.asarray(table.column("view_matrix")[index].as_py(), np.float64).reshape(4, 4)
