"""What a cache's bytes mean, written beside them for readers without bevkd (plain zarr, xarray).

:func:`storage.cache.layout.create_arrays` stores, for every target ``targets/<name>``:

* on each component array, Zarr v3 ``dimension_names`` (:func:`component_dims`, e.g.
  ``["row", "channel", "y", "x"]``) and short attributes (``long_name``, ``units``,
  ``description``; :func:`component_attrs`);
* on a target whose logical value has BEV axes (trailing ``(H, W)``, also the bit-packed masks),
  metre coordinate arrays ``x`` ``(W,)`` and ``y`` ``(H,)`` float64: the cell centres of the
  cache's :class:`~storage.grid.BEVGrid` (:meth:`~storage.grid.BEVGrid.cell_centers`), so
  ``xarray.open_zarr(cache, group="targets/heatmap", consolidated=False)`` labels its axes in metres;
* on the target group, ``attributes["bevkd_target"]`` (:func:`target_attrs`): logical shape,
  dims and dtype, frame, units, the codec and its decode formula with the ``qparams`` layout,
  ``unit_u8`` scale, ``bitpack`` order, the box columns, class names in label order, the BEV
  orientation and the row-status convention. Decoding with these alone gives what
  :class:`~storage.cache.reader.CacheReader` returns (tests/test_self_describing.py).

The root group's ``attributes["bevkd_conventions"]`` (:func:`cache_attrs`) repeats the
conventions that hold for every target. Nothing here changes what is stored; the dimension
names are derived from the shape rules of :data:`~storage.cache.schema.TARGET_FIELDS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage.cache.codecs import components
from storage.cache.schema import BOX_COLUMN_UNITS, CacheSchema, TargetSpec
from storage.grid import BEVGrid
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES

#: Target group attribute holding :func:`target_attrs`.
TARGET_ATTR = "bevkd_target"
#: Root attribute holding :func:`cache_attrs`.
CONVENTIONS_ATTR = "bevkd_conventions"
#: Dimension name of each shape-rule symbol of :data:`~storage.cache.schema.TARGET_FIELDS`.
DIM_NAMES = {"C": "channel", "K": "class", "H": "y", "W": "x", "M": "box", "9": "box_column", "6": "camera",
             "D": "depth_bin", "h": "v", "w": "u"}
#: Where valid rows are recorded and what the others hold.
ROW_STATUS = ("Axis 'row' is row = sample_index * views + view (index/samples.parquet maps sample_index to "
              "sample_token; manifest column 'view_matrix' holds the row's 4x4 BEV augmentation). A row is valid "
              "only when a fragment manifest/shard-<i>.parquet lists it with column 'status' == 'ok'. Rows with "
              "status 'failed' (reason in column 'error') and rows of shards without a fragment read as zeros.")
#: BEV axis orientation of every ``(H, W)`` map.
BEV_ORIENTATION = ("(H, W) = (y, x): row 0 at y_min, H along +y, W along +x; coordinates x, y are cell centres "
                   "in metres in the grid's frame")
_UNITS = {"bev_features": "1", "heatmap": "1", "instance_features": "1", "lidar_depth": "m", "depth_probs": "1",
          "fg_mask": "1", "view_mask": "1", "boxes": "see box_column_units"}
_MEANING = {
    "bev_features": "teacher BEV feature map of one stage",
    "heatmap": "teacher class heatmap in [0, 1], one channel per class (class_names)",
    "boxes": "teacher box predictions, score and label per box",
    "instance_features": "teacher features at the box centres, row i belongs to box i",
    "lidar_depth": "LiDAR depth per camera pixel (depth stride), metres, 0 = no point",
    "depth_probs": "teacher depth distribution per camera pixel, softmax over depth bins",
    "fg_mask": "foreground cells (inside a ground-truth or teacher box)",
    "view_mask": "BEV cells seen by each camera",
}


def logical_dims(spec: TargetSpec) -> tuple[str, ...]:
    """Dimension names of one row's logical value, e.g. ``("channel", "y", "x")``."""
    return tuple(DIM_NAMES.get(rule, rule.lower()) for rule in spec.field.shape)


def component_dims(spec: TargetSpec, component: str) -> tuple[str, ...]:
    """Zarr ``dimension_names`` of a component array (first axis ``row``).

    ``qparams``: ``(row, qparam, <axis 0 of the value>)``; bit-packed ``data``:
    ``(row, packed_byte)``; ``boxes`` ``count``: ``(row,)``.
    """
    dims = logical_dims(spec)
    if component == "qparams":
        return ("row", "qparam", dims[0])
    if component == "count":
        return ("row",)
    if spec.codec is not None and spec.codec.kind == "bitpack":
        return ("row", "packed_byte")
    return ("row", *dims)


def has_bev_axes(spec: TargetSpec) -> bool:
    """The logical value ends with the grid's ``(H, W)``."""
    return spec.field.bev_map


def coordinates(spec: TargetSpec, grid: BEVGrid) -> dict[str, tuple[np.ndarray[Any, np.dtype[np.float64]],
                                                                     dict[str, Any]]]:
    """Coordinate arrays of a target: ``{"x": ((W,) float64 m, attrs), "y": ((H,) float64 m, attrs)}``
    for BEV targets (cell centres of ``grid``), ``{}`` otherwise."""
    if not has_bev_axes(spec):
        return {}
    centres = grid.cell_centers()  # (H, W, 2) [x, y]
    return {axis: (np.ascontiguousarray(values, dtype=np.float64),
                   {"units": "m", "long_name": f"{axis} of the BEV cell centre",
                    "description": f"cell centres along {axis} in the {grid.frame} frame; {BEV_ORIENTATION}"})
            for axis, values in (("x", centres[0, :, 0]), ("y", centres[:, 0, 1]))}


def decode_attrs(spec: TargetSpec) -> dict[str, Any]:
    """How to get the logical value of one row from its stored components (plain numpy)."""
    codec = spec.codec
    assert codec is not None
    kind = codec.kind
    if spec.kind == "boxes":
        return {"decode": ("n = count[row]; boxes = data[row, :n, :9]; scores = data[row, :n, 9]; "
                           "labels = int64(data[row, :n, 10]) (index into class_names); rows past n are zeros"),
                "box_columns": list(spec.field.columns), "box_column_units": list(BOX_COLUMN_UNITS),
                "count_component": "count"}
    out: dict[str, Any]
    if kind in ("quant_u8", "sqrt_u8"):
        power = 2 if kind == "sqrt_u8" else 1
        out = {"decode": f"x = float32(code){'**2' if power == 2 else ''} * scale + offset, per index of axis 0 "
                         f"({logical_dims(spec)[0]}), broadcast over the other axes",
               "power": power,
               "qparams": {"component": "qparams", "dims": list(component_dims(spec, "qparams")),
                           "index": {"scale": 0, "offset": 1}}}
    elif kind == "unit_u8":
        out = {"decode": "x = float32(code) * scale + offset", "power": 1, "scale": 1.0 / 255.0, "offset": 0.0}
    elif kind == "bitpack":
        n = int(np.prod(spec.shape))
        out = {"decode": "x = unpackbits(data[row], count=prod(shape), bitorder='big').reshape(shape).astype(bool)",
               "bitpack": {"order": "C", "bitorder": "big", "count": n}}
    else:
        out = {"decode": "x = float32(data)"}
    if spec.kind == "instance_features":
        out["valid_rows"] = "the first targets/boxes/count[row] boxes; the rest is zero padding"
    return out


def target_attrs(spec: TargetSpec, grid: BEVGrid) -> dict[str, Any]:
    """The ``bevkd_target`` attributes of a target group (JSON-ready)."""
    assert spec.codec is not None
    frame = (f"bev: the sample's {grid.frame} frame moved by the row's view_matrix (identity for view 0)"
             if spec.frame == "bev" else f"camera: per camera ({', '.join(CAMERA_NAMES)}), pixel rows v, columns u")
    attrs: dict[str, Any] = {
        "name": spec.name, "kind": spec.kind, "meaning": _MEANING[spec.kind], "shape": list(spec.shape),
        "dims": list(logical_dims(spec)), "dtype": spec.dtype, "units": _UNITS[spec.kind], "frame": frame,
        "codec": spec.codec.kind, "compressor": str(spec.codec),
        "components": {c: {"shape": ["row", *shape], "dtype": dtype, "dims": list(component_dims(spec, c))}
                       for c, (shape, dtype) in components(spec).items()},
        "row_status": ROW_STATUS, **decode_attrs(spec)}
    if has_bev_axes(spec):
        attrs["bev_orientation"] = BEV_ORIENTATION
        attrs["coordinates"] = {"x": "x (W,) float64 m", "y": "y (H,) float64 m"}
    if spec.kind == "heatmap":
        attrs["class_names"] = list(NUSCENES_CLASSES[:spec.shape[0]])
    if spec.kind == "boxes":
        attrs["class_names"] = list(NUSCENES_CLASSES)
    if "camera" in attrs["dims"]:
        attrs["camera_names"] = list(CAMERA_NAMES)
    return attrs


def component_attrs(spec: TargetSpec, component: str) -> dict[str, Any]:
    """Short per-array attributes (``long_name``, ``units``, ``description``) read by xarray."""
    if component == "qparams":
        return {"long_name": f"{spec.name} dequantisation parameters", "units": "1",
                "description": "qparam 0 = scale, 1 = offset (see the group's bevkd_target.decode)"}
    if component == "count":
        return {"long_name": "number of valid boxes", "units": "1"}
    stored = {"quant_u8": "uint8 codes", "sqrt_u8": "uint8 codes", "unit_u8": "uint8 codes",
              "bitpack": "bits packed 8 per byte"}
    assert spec.codec is not None
    what = stored.get(spec.codec.kind, "values")
    attrs: dict[str, Any] = {"long_name": f"{spec.name}: {_MEANING[spec.kind]}", "units": _UNITS[spec.kind],
                             "description": f"{what}; {decode_attrs(spec)['decode']}"}
    if spec.kind == "boxes":
        attrs["box_columns"] = list(spec.field.columns)
    return attrs


def cache_attrs(schema: CacheSchema) -> dict[str, Any]:
    """The ``bevkd_conventions`` root attributes: what holds for every target of the cache."""
    return {"row_status": ROW_STATUS, "bev_orientation": BEV_ORIENTATION, "grid_frame": schema.grid.frame,
            "class_names": list(NUSCENES_CLASSES), "camera_names": list(CAMERA_NAMES),
            "target_attribute": f"targets/<name>/zarr.json attributes['{TARGET_ATTR}']: decode recipe per target",
            "manifest": "manifest/shard-*.parquet (one fragment per committed shard)",
            "sample_index": "index/samples.parquet"}


__all__ = ["BEV_ORIENTATION", "CONVENTIONS_ATTR", "DIM_NAMES", "ROW_STATUS", "TARGET_ATTR", "cache_attrs",
           "component_attrs", "component_dims", "coordinates", "decode_attrs", "logical_dims", "target_attrs"]
