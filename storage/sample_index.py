"""The sample index: a dataset resolved once into one Parquet file that workers read.

Opening a nuScenes dataroot loads the devkit tables (GBs at trainval scale) in every process
that reads it. The driver of a job instead resolves the dataset once, through its reader
(:class:`~storage.nuscenes_reader.NuScenesReader` or
:class:`~storage.mmdet3d_reader.Mmdet3dInfoReader`), into a columnar index
(:func:`build_sample_index`); workers open it with :class:`IndexReader`, a
:class:`~storage.sample.SampleReader` whose ``read`` returns Samples equal to the source
reader's (``Sample.differences`` empty). An :class:`IndexReader` keeps only the sample tokens
in memory and decodes one Parquet row group (:data:`ROW_GROUP_SAMPLES` samples) at a time, so
its memory does not grow with the dataset beyond the tokens. How a source reader's samples
become rows (without reading point clouds) lives in :mod:`storage.sample_index_records`.

Layout: one file, conventionally named ``samples.parquet`` in a folder of its own; never a
``manifest/`` folder (a ``manifest/*.parquet`` glob lists cache manifests only, see
:mod:`storage.cache.manifest`). One row per sample, in the source reader's order:

* ``sample_token``, ``scene``, ``lidar_path`` string; ``timestamp_us`` int64; ``labelled`` bool;
* ``ego_from_lidar``, ``global_from_ego``: ``fixed_size_list<float64>[16]``, row-major 4x4;
* sweeps merged into the points: ``merge_sweeps`` bool (the keyframe's column 4 becomes 0 and
  the listed sweeps follow, as the source reader does), ``sweep_paths`` list<string>,
  ``lidar_from_sweep`` list<fixed_size_list<float64>[16]>, ``sweep_dt_s`` list<float64> (s);
* cameras (``cam_*`` lists, one entry per camera, :data:`~storage.sample.CAMERA_NAMES` order):
  ``cam_name``, ``image_path``, ``cam_intrinsic`` (``[9]`` float64, row-major 3x3, px),
  ``ego_from_cam``, ``lidar_from_cam`` (``[16]``), ``cam_timestamp_us`` int64,
  ``image_size`` (``[2]`` int32, width, height px);
* annotations: ``gt_boxes`` list<``[9]`` float64> (``[x, y, z, l, w, h, yaw, vx, vy]``, lidar
  frame), ``gt_labels`` list<int64>, ``num_lidar_pts`` list<int64>, ``instance_tokens``
  list<string>;
* ``error_field``, ``error_problem``, ``error_path`` string: null, or the
  :class:`~storage.errors.SampleError` the source reader raised for the sample (a dangling
  table record): :meth:`IndexReader.read` raises it again, so one bad record fails one sample.

The schema metadata key ``bevkd_sample_index`` holds JSON ``{"version", "dataset_id",
"source"}``. Paths are absolute, as the source reader resolved them when the index was built.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.arrays import Float32Array, Float64Array
from storage.errors import SampleError
from storage.sample import CameraInfo, Sample, SampleReader, load_points
from storage.sample_index_records import Record, Sweep, index_row, source_records
from storage.transforms import apply_transform

INDEX_VERSION = 1
METADATA_KEY = b"bevkd_sample_index"
#: Samples per Parquet row group: what an :class:`IndexReader` decodes at once.
ROW_GROUP_SAMPLES = 256

_M16 = pa.list_(pa.float64(), 16)
SCHEMA = pa.schema([
    ("sample_token", pa.string()), ("scene", pa.string()), ("timestamp_us", pa.int64()), ("labelled", pa.bool_()),
    ("lidar_path", pa.string()), ("ego_from_lidar", _M16), ("global_from_ego", _M16),
    ("merge_sweeps", pa.bool_()), ("sweep_paths", pa.list_(pa.string())), ("lidar_from_sweep", pa.list_(_M16)),
    ("sweep_dt_s", pa.list_(pa.float64())),
    ("cam_name", pa.list_(pa.string())), ("image_path", pa.list_(pa.string())),
    ("cam_intrinsic", pa.list_(pa.list_(pa.float64(), 9))), ("ego_from_cam", pa.list_(_M16)),
    ("lidar_from_cam", pa.list_(_M16)), ("cam_timestamp_us", pa.list_(pa.int64())),
    ("image_size", pa.list_(pa.list_(pa.int32(), 2))),
    ("gt_boxes", pa.list_(pa.list_(pa.float64(), 9))), ("gt_labels", pa.list_(pa.int64())),
    ("num_lidar_pts", pa.list_(pa.int64())), ("instance_tokens", pa.list_(pa.string())),
    ("error_field", pa.string()), ("error_problem", pa.string()), ("error_path", pa.string()),
])


def _table(batch: list[Record]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for record in batch:
        for name, value in index_row(record).items():
            cols[name].append(value)
    return pa.table(cols, schema=SCHEMA)


def build_sample_index(reader: SampleReader, path: str | os.PathLike[str]) -> int:
    """Resolve every sample of ``reader`` (tables only, no point cloud or image is read) into the
    index at ``path`` (schema in the module docstring), streamed one row group at a time.

    Written atomically: a local path through a temporary file and a rename, an fsspec URL
    (``s3://...``) in one put.

    Args:
        reader: a :class:`~storage.nuscenes_reader.NuScenesReader` or
            :class:`~storage.mmdet3d_reader.Mmdet3dInfoReader`.
        path: the ``.parquet`` file to write (parent folders are created).

    Returns:
        the number of samples indexed.

    Raises:
        TypeError: another reader type.
        OSError: ``path`` cannot be written (nothing is left behind).

    A sample the reader cannot resolve (a dangling table record: ``SampleError``) does not stop
    the build: its error is stored and :meth:`IndexReader.read` raises it again.
    """
    meta = {"version": INDEX_VERSION, "dataset_id": reader.dataset_id, "source": type(reader).__name__}
    schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(meta).encode()})
    url = "://" in str(path)
    target = str(path) if url else os.path.abspath(path)
    tmp = target if url else f"{target}.tmp-{os.getpid()}"
    if not url:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    records = source_records(reader)  # TypeError before any file is opened
    count = 0
    try:
        with _open(tmp, "wb") as f, pq.ParquetWriter(f, schema, compression="zstd") as writer:
            batch: list[Record] = []
            for record in records:
                batch.append(record)
                if len(batch) == ROW_GROUP_SAMPLES:
                    writer.write_table(_table(batch).replace_schema_metadata(schema.metadata))
                    count, batch = count + len(batch), []
            if batch or not count:
                writer.write_table(_table(batch).replace_schema_metadata(schema.metadata))
                count += len(batch)
    except BaseException:
        if not url:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise
    if not url:
        os.replace(tmp, target)
    return count


def _open(path: str, mode: str) -> Any:
    if "://" in path:
        import fsspec  # lazy: local indexes need no fsspec

        return fsspec.open(path, mode).open()
    return open(path, mode)


# ---- reading (worker side) -------------------------------------------------------------------
class IndexReader:
    """:class:`~storage.sample.SampleReader` over a sample index written by :func:`build_sample_index`.

    Args:
        path: the index file (local path or fsspec URL).

    Memory: the sample tokens, plus one decoded row group. Picklable as its path alone: a worker
    opens the file itself.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a bevkd sample index, or of another version (names the file).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path) if "://" in str(path) else os.path.abspath(path)
        self._open()

    def _open(self) -> None:
        if "://" not in self.path and not os.path.isfile(self.path):
            raise FileNotFoundError(f"sample index {self.path} not found")
        self._file = pq.ParquetFile(_open(self.path, "rb") if "://" in self.path else self.path)
        raw = (self._file.schema_arrow.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{self.path}: not a bevkd sample index (no {METADATA_KEY.decode()} metadata)")
        meta = json.loads(raw)
        if meta.get("version") != INDEX_VERSION:
            raise ValueError(f"{self.path}: sample index version {meta.get('version')}, expected {INDEX_VERSION}")
        self.dataset_id: str = str(meta["dataset_id"])
        md = self._file.metadata
        self._starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
        self._tokens: tuple[str, ...] | None = None
        self._index: dict[str, int] = {}
        self._group: tuple[int, pa.Table] | None = None  # the last row group read
        self._lock = threading.Lock()  # prefetch threads share one reader: one file read at a time

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._open()

    @property
    def sample_tokens(self) -> Sequence[str]:
        """Tokens in the source reader's order (read from the file on first use)."""
        if self._tokens is None:
            self._tokens = tuple(self._file.read(columns=["sample_token"]).column(0).to_pylist())
            self._index = {t: i for i, t in enumerate(self._tokens)}
        return self._tokens

    def __len__(self) -> int:
        return int(self._starts[-1])

    def index_of(self, index_or_token: int | str) -> int:
        """Position of an index or token. Raises IndexError / KeyError naming the index file."""
        if isinstance(index_or_token, str):
            self.sample_tokens  # noqa: B018  (loads the token map)
            if index_or_token not in self._index:
                raise KeyError(f"sample index {self.path}: no sample {index_or_token}")
            return self._index[index_or_token]
        i = int(index_or_token)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {self.path}: index {i} out of range ({len(self)} samples)")
        return i % len(self)

    def _row(self, i: int) -> dict[str, Any]:
        g = int(np.searchsorted(self._starts, i, side="right")) - 1
        with self._lock:  # thread-safe: the cached group is swapped whole, and read under the lock
            group = self._group
            if group is None or group[0] != g:
                group = self._group = (g, self._file.read_row_group(g))
        row: dict[str, Any] = group[1].slice(i - int(self._starts[g]), 1).to_pylist()[0]
        return row

    def read_without_points(self, index_or_token: int | str) -> Sample:
        """The sample with ``points`` empty ``(0, 5)`` float32: no file is opened."""
        row = self._row(self.index_of(index_or_token))
        _raise_recorded(row)
        return self._sample(row, np.zeros((0, 5), np.float32))

    def read(self, index_or_token: int | str) -> Sample:
        """Load one sample: its point cloud (and merged sweeps) from disk, the rest from the index.

        Raises:
            IndexError / KeyError: unknown index or token.
            SampleError: a point cloud is missing or broken, or the source reader could not resolve
                the sample when the index was built (names sample, field and path).
        """
        row = self._row(self.index_of(index_or_token))
        _raise_recorded(row)
        return self._sample(row, self._points(row))

    @staticmethod
    def _points(row: dict[str, Any]) -> Float32Array:
        token = row["sample_token"]
        points = load_points(row["lidar_path"], token)
        if not row["merge_sweeps"]:
            return points
        key = points.copy()
        key[:, 4] = 0.0
        parts = [key]
        for path, lidar_from_sweep, dt in zip(row["sweep_paths"], row["lidar_from_sweep"], row["sweep_dt_s"],
                                              strict=True):
            moved = load_points(path, token).copy()
            moved[:, :3] = apply_transform(np.asarray(lidar_from_sweep, np.float64).reshape(4, 4),
                                           moved.astype(np.float64))
            moved[:, 4] = dt
            parts.append(moved)
        return np.concatenate(parts, axis=0).astype(np.float32)

    @staticmethod
    def _sample(row: dict[str, Any], points: Float32Array) -> Sample:
        def m4(v: Any) -> Float64Array:
            return np.asarray(v, np.float64).reshape(4, 4)

        cameras = tuple(CameraInfo(name=name, image_path=path, cam_intrinsic=np.asarray(k, np.float64).reshape(3, 3),
                                   ego_from_cam=m4(e), lidar_from_cam=m4(lc), timestamp_us=int(ts),
                                   image_size=(int(size[0]), int(size[1])))
                        for name, path, k, e, lc, ts, size in zip(
                            row["cam_name"], row["image_path"], row["cam_intrinsic"], row["ego_from_cam"],
                            row["lidar_from_cam"], row["cam_timestamp_us"], row["image_size"], strict=True))
        return Sample(sample_token=row["sample_token"], timestamp_us=int(row["timestamp_us"]), scene=row["scene"],
                      lidar_path=row["lidar_path"], points=points, cameras=cameras,
                      ego_from_lidar=m4(row["ego_from_lidar"]), global_from_ego=m4(row["global_from_ego"]),
                      gt_boxes=np.asarray(row["gt_boxes"], np.float64).reshape(-1, 9),
                      gt_labels=np.asarray(row["gt_labels"], np.int64),
                      num_lidar_pts=np.asarray(row["num_lidar_pts"], np.int64),
                      instance_tokens=tuple(row["instance_tokens"]), labelled=bool(row["labelled"]))


def _raise_recorded(row: dict[str, Any]) -> None:
    if row["error_problem"] is not None:
        raise SampleError(row["sample_token"], row["error_field"], row["error_problem"], row["error_path"])


# ---- a job's index ---------------------------------------------------------------------------
def job_index_path(out: str) -> str:
    """Where a cache job writing to ``out`` (a directory or fsspec URL) keeps its sample index
    while it runs: beside the cache, ``<out>.sample_index/samples.parquet``; never inside it
    (the cache's own Parquet files stay globbable apart, see :mod:`storage.cache.manifest`)."""
    return f"{str(out).rstrip('/')}.sample_index/samples.parquet"


def indexed_reader(reader: SampleReader, path: str) -> SampleReader:
    """An :class:`IndexReader` over ``reader``'s samples, indexed at ``path`` now; ``reader``
    itself when it is already one or cannot be indexed (another reader type)."""
    from storage.mmdet3d_reader import Mmdet3dInfoReader
    from storage.nuscenes_reader import NuScenesReader

    if not isinstance(reader, (NuScenesReader, Mmdet3dInfoReader)):
        return reader
    build_sample_index(reader, path)
    return IndexReader(path)


def remove_index(path: str) -> None:
    """Delete an index written by :func:`build_sample_index` and its folder when empty (no error
    when absent)."""
    if "://" in path:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        if fs.exists(p):
            fs.rm(p)
        return
    if os.path.exists(path):
        os.remove(path)
    with contextlib.suppress(OSError):  # not empty: someone else's files
        os.rmdir(os.path.dirname(path))


__all__ = ["INDEX_VERSION", "ROW_GROUP_SAMPLES", "IndexReader", "Record", "Sweep", "build_sample_index",
           "indexed_reader", "job_index_path", "remove_index"]
