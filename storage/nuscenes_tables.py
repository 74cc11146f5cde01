"""The nuScenes v1.0 table schema bevkd relies on, and one-line errors for tables that break it.

No devkit import here: :func:`explain_broken_tables` reads the JSON files itself, so it can name the
table, row token and field after the devkit failed with a bare ``KeyError``; :func:`require_fields`
checks one row at the moment a reader uses it, so one bad row fails only its sample.
"""

from __future__ import annotations

import json
import os
from typing import Any
from collections.abc import Iterable

import numpy as np

from storage.arrays import Float64Array
from storage.errors import DatasetTableError, SampleError, numbers_phrase, short_repr

#: Foreign keys of the v1.0 schema: (table, field) -> referenced table.
FOREIGN_KEYS = {
    ("sample_data", "sample_token"): "sample", ("sample_data", "ego_pose_token"): "ego_pose",
    ("sample_data", "calibrated_sensor_token"): "calibrated_sensor",
    ("sample_annotation", "sample_token"): "sample", ("sample_annotation", "instance_token"): "instance",
    ("sample_annotation", "visibility_token"): "visibility", ("sample_annotation", "attribute_tokens"): "attribute",
    ("instance", "category_token"): "category", ("calibrated_sensor", "sensor_token"): "sensor",
    ("sample", "scene_token"): "scene", ("scene", "log_token"): "log",
}
#: Fields the devkit (at load) or the reader (per sample) reads from each row, besides ``token``.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "scene": ("name", "first_sample_token", "log_token"),
    "sample": ("timestamp", "scene_token", "next", "prev"),
    "sample_data": ("sample_token", "ego_pose_token", "calibrated_sensor_token", "filename", "timestamp",
                    "is_key_frame", "prev", "next"),
    "sample_annotation": ("sample_token", "instance_token", "translation", "size", "rotation", "num_lidar_pts",
                          "attribute_tokens", "prev", "next"),
    "ego_pose": ("translation", "rotation"),
    "calibrated_sensor": ("sensor_token", "translation", "rotation", "camera_intrinsic"),
    "sensor": ("channel", "modality"),
    "instance": ("category_token",),
    "category": ("name",),
    "attribute": ("name",),
    "visibility": (),
    "log": (),
}


class NuScenesTableError(DatasetTableError):
    """A nuScenes table file is unreadable, or a row misses a field or references a token that does
    not exist. The message names the table file, the row token and the field."""


def table_path(table_root: str, table: str) -> str:
    """``<table_root>/<table>.json``."""
    return os.path.join(table_root, f"{table}.json")


def require_fields(rec: dict[str, Any], table: str, fields: Iterable[str], table_root: str,
                   sample_token: str | None = None) -> dict[str, Any]:
    """``rec`` itself when it has every field in ``fields``.

    Raises:
        SampleError: with ``sample_token``: ``sample <token>: <table>.<field> missing in record <row> at <path>``.
        NuScenesTableError: without ``sample_token``: ``<path>: record <row> field <field> missing``.
    """
    for fld in fields:
        if fld not in rec:
            path, row = table_path(table_root, table), str(rec.get("token", "<no token>"))
            if sample_token is not None:
                raise SampleError(sample_token, f"{table}.{fld}", f"missing in record {row}", path)
            raise NuScenesTableError(f"{path}: record {row} field {fld} missing", path=path, row_token=row, field=fld)
    return rec


def numeric_field(rec: dict[str, Any], table: str, fld: str, shape: tuple[int, ...], table_root: str,
                  sample_token: str | None = None) -> Float64Array:
    """``rec[fld]`` as a float64 array of ``shape`` (e.g. ``(4,)`` for a quaternion, ``(3, 3)`` for
    ``camera_intrinsic``, ``()`` for a count), checked where the reader converts it.

    Raises:
        SampleError: with ``sample_token``: ``sample <token>: <table>.<field> is not 4 numbers (got
            'north') in record <row> at <path>``; also a missing field, a non-finite value, or a
            zero quaternion (``rotation``).
        NuScenesTableError: the same without ``sample_token``: ``<path>: record <row> field <field> ...``.
    """
    require_fields(rec, table, (fld,), table_root, sample_token)
    what = numbers_phrase(shape)
    problem = ""
    try:
        value = np.asarray(rec[fld], dtype=np.float64)
    except (TypeError, ValueError):
        value, problem = np.zeros(shape), f"is not {what} (got {short_repr(rec[fld])})"
    if not problem and value.shape != shape:
        problem = f"is not {what} (got {short_repr(rec[fld])})"
    elif not problem and not np.isfinite(value).all():
        problem = f"is not {what}: not finite (got {short_repr(rec[fld])})"
    elif not problem and fld == "rotation" and shape == (4,) and not np.linalg.norm(value) > 0:
        problem = "is a zero quaternion"
    if problem:
        path, row = table_path(table_root, table), str(rec.get("token", "<no token>"))
        if sample_token is not None:
            raise SampleError(sample_token, f"{table}.{fld}", f"{problem} in record {row}", path)
        raise NuScenesTableError(f"{path}: record {row} field {fld} {problem}", path=path, row_token=row, field=fld)
    return value


def explain_broken_tables(table_root: str) -> None:
    """Raise the first unreadable table, row without a required field, or dangling foreign key
    found under ``table_root``; return when none is found.

    Raises:
        NuScenesTableError: unreadable table, or a bad row not tied to a sample.
        SampleError: a bad row of a table whose rows carry a ``sample_token`` (names the sample).
    """
    names = set(REQUIRED_FIELDS) | {t for pair in FOREIGN_KEYS.items() for t in (pair[0][0], pair[1])}
    tables: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(names):
        path = table_path(table_root, name)
        try:
            with open(path) as f:
                tables[name] = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise NuScenesTableError(f"nuScenes table {path} unreadable: {exc}", path=path) from None
        if not isinstance(tables[name], list) or not all(isinstance(r, dict) for r in tables[name]):
            raise NuScenesTableError(f"nuScenes table {path} is not a list of records", path=path)
    for name, recs in tables.items():
        for rec in recs:
            sample = rec.get("sample_token") if name not in ("sample", "scene") else None
            require_fields(rec, name, ("token", *REQUIRED_FIELDS.get(name, ())), table_root,
                           str(sample) if sample is not None else None)
    tokens = {name: {r["token"] for r in recs} for name, recs in tables.items()}
    for (table, fld), target in FOREIGN_KEYS.items():
        for rec in tables[table]:
            if fld not in rec:  # optional here (e.g. visibility_token): only required fields must exist
                continue
            refs = rec[fld] if isinstance(rec[fld], list) else [rec[fld]]
            for ref in refs:
                if ref not in tokens[target]:
                    path = table_path(table_root, table)
                    if "sample_token" in rec and table != "sample":
                        raise SampleError(rec["sample_token"], f"{table}.{fld}",
                                          f"references missing {target} token {ref} (record {rec['token']})", path)
                    raise NuScenesTableError(f"{path}: record {rec['token']} field {fld} references missing "
                                             f"{target} token {ref}", path=path, row_token=rec["token"], field=fld)


__all__ = ["FOREIGN_KEYS", "REQUIRED_FIELDS", "NuScenesTableError", "explain_broken_tables", "numeric_field",
           "require_fields", "table_path"]
