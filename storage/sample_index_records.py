"""The driver side of the sample index: a source reader resolved into records, and records into rows.

:func:`source_records` walks a :class:`~storage.nuscenes_reader.NuScenesReader` or
:class:`~storage.mmdet3d_reader.Mmdet3dInfoReader` without reading a point cloud or an image: one
:data:`Record` per sample (the Sample without points, its sweeps, or the ``SampleError`` the source
reader raised for it). :func:`index_row` turns a record into one row of the index (the columns of
:data:`storage.sample_index.SCHEMA`); a malformed value fails its sample alone, naming the field.
:mod:`storage.sample_index` writes the rows and reads them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from storage.arrays import Float32Array, Float64Array
from storage.errors import SampleError
from storage.sample import Sample, SampleReader
from storage.transforms import invert_transform

#: ``(path, lidar_from_sweep (4, 4) float64, time lag s)`` of one past sweep.
Sweep = tuple[str, Float64Array, float]
#: One sample resolved: the Sample without points, whether sweeps merge, the sweeps, and the
#: error the source reader raised for it (then the Sample is a placeholder).
Record = tuple[Sample, bool, list[Sweep], SampleError | None]

_MALFORMED = (ValueError, TypeError, IndexError, KeyError)

def _nuscenes_records(reader: Any) -> Iterator[Record]:
    """Every frame of a NuScenesReader without reading point clouds (mirrors ``NuScenesReader.read``)."""
    for token in reader.sample_tokens:
        try:
            yield _nuscenes_record(reader, token)
        except SampleError as exc:
            yield _failed(token, exc)
        except _MALFORMED as exc:  # a table value of the wrong type or size: this sample only
            yield _failed(token, SampleError(token, "tables", f"malformed ({type(exc).__name__}: {exc})"))


def _nuscenes_record(reader: Any, token: str) -> Record:
    """One frame: ``NuScenesReader.read_without_points`` plus its sweeps' paths and transforms."""
    from storage.nuscenes_reader import LIDAR_CHANNEL

    frame = reader.read_without_points(token)
    lidar_from_global = invert_transform(frame.global_from_ego @ frame.ego_from_lidar)
    sweeps: list[Sweep] = reader._sweeps_of(reader._frame_rows(token)[LIDAR_CHANNEL], lidar_from_global, token)
    return frame, reader.sweeps > 0, sweeps, None


def _mmdet3d_records(reader: Any) -> Iterator[Record]:
    """Every sample of an Mmdet3dInfoReader without reading point clouds: the reader's own
    ``_read_v1`` / ``_read_v0`` on a copy whose ``_points`` hook records the sweeps instead."""
    from storage.mmdet3d_reader import Mmdet3dInfoReader

    class _NoPoints(Mmdet3dInfoReader):
        last_sweeps: list[Sweep] = []

        def _points(self, path: str, token: str, sweeps: list[Sweep]) -> Float32Array:
            self.last_sweeps = list(sweeps)
            return np.zeros((0, 5), np.float32)

    meta = _NoPoints.__new__(_NoPoints)
    meta.__dict__.update(reader.__dict__)  # shares the parsed infos (loaded if the reader was unpickled)
    for i in range(len(meta)):
        try:
            sample = meta.read(i)
        except SampleError as exc:
            yield _failed(meta.sample_tokens[i], exc)
            continue
        except _MALFORMED as exc:  # an info value of the wrong type or size: this sample only
            token = meta.sample_tokens[i]
            yield _failed(token, SampleError(token, "info", f"malformed ({type(exc).__name__}: {exc})",
                                             getattr(reader, "info_path", None)))
            continue
        yield sample, bool(meta.last_sweeps), meta.last_sweeps, None


def _failed(token: str, exc: SampleError) -> Record:
    """The index row of a sample the source reader cannot read: ``IndexReader.read`` raises ``exc`` again."""
    return (Sample(sample_token=token, timestamp_us=0, scene="", lidar_path="", points=np.zeros((0, 5), np.float32),
                   cameras=(), ego_from_lidar=np.eye(4), global_from_ego=np.eye(4), gt_boxes=np.zeros((0, 9)),
                   gt_labels=np.zeros(0, np.int64), num_lidar_pts=np.zeros(0, np.int64)), False, [], exc)


def source_records(reader: SampleReader) -> Iterator[Record]:
    """Every sample of ``reader`` as a :data:`Record`, in its order. Raises TypeError for another
    reader type."""
    from storage.mmdet3d_reader import Mmdet3dInfoReader
    from storage.nuscenes_reader import NuScenesReader

    if isinstance(reader, NuScenesReader):
        return _nuscenes_records(reader)
    if isinstance(reader, Mmdet3dInfoReader):
        return _mmdet3d_records(reader)
    raise TypeError(f"build_sample_index: cannot index a {type(reader).__name__} (NuScenesReader or "
                    "Mmdet3dInfoReader expected)")


class _MalformedField(ValueError):
    """A value of the wrong size in a sample's field (``field``: the Sample/CameraInfo name)."""

    def __init__(self, field: str, exc: BaseException) -> None:
        self.field = field
        super().__init__(f"{field}: {exc}")


def _m(a: Any, n: int, field: str) -> list[float]:
    """``a`` flattened to ``n`` floats. Raises :class:`_MalformedField` naming ``field``."""
    try:
        return [float(v) for v in np.asarray(a, np.float64).reshape(n)]
    except _MALFORMED as exc:
        raise _MalformedField(field, exc) from None


def _values(record: Record) -> dict[str, Any]:
    """One index row. Raises ValueError/TypeError when a field has the wrong size (e.g. a
    ``camera_intrinsic`` that is not 3x3)."""
    s, merge, sweeps, error = record
    return {
        "sample_token": s.sample_token, "scene": s.scene, "timestamp_us": int(s.timestamp_us),
        "labelled": bool(s.labelled), "lidar_path": s.lidar_path,
        "ego_from_lidar": _m(s.ego_from_lidar, 16, "ego_from_lidar"),
        "global_from_ego": _m(s.global_from_ego, 16, "global_from_ego"), "merge_sweeps": merge,
        "sweep_paths": [p for p, _, _ in sweeps],
        "lidar_from_sweep": [_m(t, 16, "lidar_from_sweep") for _, t, _ in sweeps],
        "sweep_dt_s": [float(dt) for _, _, dt in sweeps],
        "cam_name": [c.name for c in s.cameras], "image_path": [c.image_path for c in s.cameras],
        "cam_intrinsic": [_m(c.cam_intrinsic, 9, "camera_intrinsic") for c in s.cameras],
        "ego_from_cam": [_m(c.ego_from_cam, 16, "ego_from_cam") for c in s.cameras],
        "lidar_from_cam": [_m(c.lidar_from_cam, 16, "lidar_from_cam") for c in s.cameras],
        "cam_timestamp_us": [int(c.timestamp_us) for c in s.cameras],
        "image_size": [[int(c.image_size[0]), int(c.image_size[1])] for c in s.cameras],
        "gt_boxes": _gt_boxes(s.gt_boxes),
        "gt_labels": [int(v) for v in s.gt_labels], "num_lidar_pts": [int(v) for v in s.num_lidar_pts],
        "instance_tokens": list(s.instance_tokens),
        "error_field": error.field if error else None, "error_problem": error.problem if error else None,
        "error_path": error.path if error else None}


def index_row(record: Record) -> dict[str, Any]:
    """:func:`_values`, or the row of a failed sample when a field is malformed: that sample
    fails alone (its error names the field and the offending size), the index build goes on."""
    try:
        return _values(record)
    except _MALFORMED as exc:
        token = record[0].sample_token
        field = exc.field if isinstance(exc, _MalformedField) else "sample"
        return _values(_failed(token, SampleError(token, field, f"malformed in the source tables ({exc})")))


def _gt_boxes(boxes: Any) -> list[list[float]]:
    """``(N, 9)`` boxes as lists. Raises :class:`_MalformedField` (``gt_boxes``) on another width."""
    try:
        return np.asarray(boxes, np.float64).reshape(-1, 9).tolist()  # type: ignore[no-any-return]
    except _MALFORMED as exc:
        raise _MalformedField("gt_boxes", exc) from None


__all__ = ["Record", "Sweep", "index_row", "source_records"]
