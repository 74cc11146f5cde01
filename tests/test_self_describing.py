"""A cache explains itself: plain zarr + numpy (no bevkd) decode every target from the stored
attributes alone and get what ``CacheReader`` returns; xarray opens every target group with
named dimensions and metre coordinates (storage/cache/describe.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from kd_cache import write_teacher_cache

from storage.cache import CacheReader, Codec
from storage.cache.describe import TARGET_ATTR
from storage.cache.schema import BOX_COLUMNS

#: Every codec kind appears at least once across the two caches.
CODECS = {"default": {}, "other": {"bev_features": Codec(kind="quant_u8"), "heatmap": Codec(kind="sqrt_u8"),
                                   "lidar_depth": Codec(kind="float32", zstd_level=None),
                                   "instance_features": Codec(kind="float32")}}

#: Run in a fresh interpreter, in a folder outside the repository: only zarr, numpy and the attributes.
DECODER = r"""
import json, sys
import numpy as np, zarr
root = zarr.open_group(sys.argv[1], mode="r")
names, rows = json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}

def decode(g, a, r):
    data = g["data"][r]
    if "bitpack" in a:
        b = a["bitpack"]
        assert b["order"] == "C"
        return np.unpackbits(data, count=b["count"], bitorder=b["bitorder"]).reshape(a["shape"]).astype(bool)
    x = data.astype(np.float32)
    if a.get("power") == 2:
        x = x * x
    if "qparams" in a:
        q = g[a["qparams"]["component"]][r]
        scale, offset = q[a["qparams"]["index"]["scale"]], q[a["qparams"]["index"]["offset"]]
    elif "scale" in a:
        scale, offset = np.full(a["shape"][0], a["scale"], np.float32), np.full(a["shape"][0], a["offset"], np.float32)
    else:
        return x
    b = (-1,) + (1,) * (x.ndim - 1)
    return x * scale.reshape(b) + offset.reshape(b)

for name in names:
    g = root["targets/" + name]
    a = g.attrs["bevkd_target"]
    for r in rows:
        key = f"{name}|{r}"
        if a["kind"] == "boxes":
            cols = a["box_columns"]
            n = int(g[a["count_component"]][r])
            d = g["data"][r, :n]
            out[key + "|boxes"] = d[:, :cols.index("vy") + 1]
            out[key + "|scores"] = d[:, cols.index("score")]
            out[key + "|labels"] = d[:, cols.index("label")].astype(np.int64)
            continue
        x = decode(g, a, r)
        if "valid_rows" in a:
            x = x[:int(root["targets/boxes/count"][r])]
        out[key] = x
np.savez(sys.argv[4], **out)
assert not any(m == "storage" or m.startswith(("storage.", "teachers", "student", "pipeline")) for m in sys.modules)
print("bevkd-free", len(out))
"""


@pytest.fixture(scope="module")
def caches(tmp_path_factory, synth_val_reader, tiny_teacher, one_thread):
    root = tmp_path_factory.mktemp("selfdesc")
    return {k: write_teacher_cache(root / k, synth_val_reader, tiny_teacher, image_size=(176, 64), codecs=c)
            for k, c in CODECS.items()}


@pytest.mark.parametrize("which", sorted(CODECS))
def test_plain_zarr_decode_from_attributes_equals_cache_reader(caches, which, tmp_path):
    assert_plain_decode_equals_reader(caches[which], tmp_path)


def assert_plain_decode_equals_reader(cache, tmp_path) -> None:
    """Decode three rows of every target of ``cache`` in a bevkd-free subprocess (zarr + numpy +
    the attributes) and compare with :class:`CacheReader` (also used on the demo's cache)."""
    reader = CacheReader(cache)
    names = [t.name for t in reader.schema.targets]
    kinds = {str(t.codec) for t in reader.schema.targets}
    rows = sorted({int(reader.ok_rows[i]) for i in (0, len(reader.ok_rows) // 2, -1)})  # several shards
    assert len(rows) == min(3, len(reader.ok_rows)) and "boxes" in names
    assert any(n.startswith("bev_features/") for n in names)
    out = tmp_path / "decoded.npz"
    proc = subprocess.run([sys.executable, "-c", DECODER, str(cache), json.dumps(names), json.dumps(rows),
                           str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    decoded = np.load(out)
    compared = 0
    for r in rows:
        row = reader.read(r)
        for name in names:
            expected = row.target(name)
            if name == "boxes":
                for part, want in zip(("boxes", "scores", "labels"), expected, strict=True):
                    np.testing.assert_array_equal(decoded[f"{name}|{r}|{part}"], want, err_msg=f"{name} {part} row {r}")
                compared += 1
                continue
            got = decoded[f"{name}|{r}"]
            assert got.shape == np.shape(expected) and got.dtype == np.asarray(expected).dtype, name
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=f"{name} row {r} ({kinds})")
            compared += 1
    assert compared == len(rows) * len(names)
    # the decode was not trivially empty: some boxes, and a non-constant feature map
    assert any(len(decoded[f"boxes|{r}|boxes"]) for r in rows)


def test_box_layout_is_one_truth(caches):
    import zarr

    reader = CacheReader(caches["default"])
    spec = reader.schema.target("boxes")
    group = zarr.open_group(str(caches["default"]), mode="r")["targets/boxes"]
    stored = group["data"]
    assert spec.shape[1] == 9 and spec.stored_shape == (spec.shape[0], len(BOX_COLUMNS)) == tuple(stored.shape[1:])
    assert group.attrs[TARGET_ATTR]["box_columns"] == list(BOX_COLUMNS) == spec.to_dict()["columns"]
    assert stored.metadata.dimension_names == ("row", "box", "box_column")


def test_xarray_opens_every_target_with_metre_coordinates(caches):
    assert_xarray_opens(caches["default"])


def assert_xarray_opens(cache) -> None:
    """xarray opens every target group of ``cache`` with metre coordinates (also used on the demo's cache)."""
    xr = pytest.importorskip("xarray", reason="xarray is an optional test dependency (pip install xarray)")
    reader = CacheReader(cache)
    grid = reader.schema.grid
    centres = grid.cell_centers()
    h, w = grid.bev_shape
    bev = 0
    for spec in reader.schema.targets:
        ds = xr.open_zarr(str(cache), group=f"targets/{spec.name}", consolidated=False,
                          zarr_format=3, decode_cf=True)
        data = ds["data"]
        assert data.dims[0] == "row" and data.sizes["row"] == reader.schema.num_rows, spec.name
        assert ds.attrs[TARGET_ATTR]["codec"] == spec.codec.kind
        if spec.field.bev_map:
            np.testing.assert_allclose(ds["x"].values, centres[0, :, 0])
            np.testing.assert_allclose(ds["y"].values, centres[:, 0, 1])
            assert ds["x"].attrs["units"] == "m" and ds["y"].values[0] < ds["y"].values[-1]  # row 0 at y_min
            assert ds["x"].values[0] == pytest.approx(grid.point_cloud_range[0] + grid.voxel_size[0] / 2)
            if spec.codec.kind != "bitpack":
                assert data.dims[-2:] == ("y", "x") and data.shape[-2:] == (h, w)
                # label-based selection by metres picks the cell containing the point
                cell = data.isel(row=0).sel(x=grid.point_cloud_range[0] + 1e-3, y=0.0, method="nearest")
                assert cell.x.item() == centres[0, 0, 0]
            bev += 1
        if spec.name == "heatmap":
            assert data.dims == ("row", "class", "y", "x")
            assert len(ds.attrs[TARGET_ATTR]["class_names"]) == data.sizes["class"]
            # zeros stay zeros: the fill value is not turned into a NaN mask
            assert not np.isnan(data.isel(row=0).values.astype(np.float64)).any()
    assert bev >= 3
