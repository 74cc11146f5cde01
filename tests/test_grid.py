"""BEVGrid: validation, derived shapes, metric <-> cell round trip (STYLE.md §7-8)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storage.grid import DEMO_GRID, NUSCENES_GRID, BEVGrid


def _grid(**kw) -> BEVGrid:
    args = {"point_cloud_range": (-4.0, -2.0, -1.0, 4.0, 6.0, 3.0), "voxel_size": (0.5, 0.25, 0.5)}
    args.update(kw)
    return BEVGrid(**args)


@pytest.mark.parametrize("kw, match", [
    ({"point_cloud_range": (0, 0, 0, 1, 1)}, "6 values"),
    ({"voxel_size": (0.5, 0.5)}, "3 values"),
    ({"point_cloud_range": (4.0, -2.0, -1.0, -4.0, 6.0, 3.0)}, "axis x max <= min"),
    ({"point_cloud_range": (-4.0, -2.0, 3.0, 4.0, 6.0, 3.0)}, "axis z max <= min"),
    ({"voxel_size": (0.5, 0.0, 0.5)}, "axis y must be > 0"),
    ({"voxel_size": (0.5, -0.25, 0.5)}, "axis y must be > 0"),
    ({"voxel_size": (0.3, 0.25, 0.5)}, "not a multiple of voxel_size 0.3"),
    ({"voxel_size": (0.5, 0.25, 0.3)}, "along z"),
])
def test_invalid_grids_raise_naming_the_problem(kw, match):
    with pytest.raises(ValueError, match=match):
        _grid(**kw)


def test_derived_shapes_follow_the_axis_conventions():
    g = _grid()  # 8 m / 0.5 = 16 along x, 8 m / 0.25 = 32 along y, 4 m / 0.5 = 8 along z
    assert g.grid_size == (16, 32, 8)
    assert g.sparse_shape == (8, 32, 16)
    assert g.bev_shape == (32, 16)
    assert NUSCENES_GRID.grid_size == (1440, 1440, 40)
    assert NUSCENES_GRID.with_stride(8).bev_shape == (180, 180)
    assert DEMO_GRID.with_stride(8).bev_shape == (32, 32)


def test_float_round_off_in_the_range_is_accepted():
    g = BEVGrid(point_cloud_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), voxel_size=(0.075, 0.075, 0.2))
    assert g.grid_size == (1440, 1440, 40)  # 108 / 0.075 = 1440.0000000000002 in float64


def test_values_are_stored_as_float_tuples():
    g = BEVGrid(point_cloud_range=[-4, -2, -1, 4, 6, 3], voxel_size=[1, 1, 1])
    assert g.point_cloud_range == (-4.0, -2.0, -1.0, 4.0, 6.0, 3.0)
    assert all(isinstance(v, float) for v in g.voxel_size)
    with pytest.raises(AttributeError):
        g.frame = "ego"  # type: ignore[misc]


def test_cell_centres_rows_along_y_from_y_min():
    g = _grid()
    c = g.cell_centers()
    assert c.shape == (32, 16, 2)
    np.testing.assert_allclose(c[0, 0], [-3.75, -1.875])
    np.testing.assert_allclose(c[0, 1], [-3.25, -1.875])  # next column: +x
    np.testing.assert_allclose(c[1, 0], [-3.75, -1.625])  # next row: +y
    np.testing.assert_allclose(c[-1, -1], [3.75, 5.875])


def test_metric_to_cell_hand_computed():
    g = _grid()
    xy = np.array([[-4.0, -2.0], [-3.51, -1.76], [0.0, 0.0], [3.99, 5.99], [4.0, 6.0], [-4.01, 0.0]])
    cells = g.metric_to_cell(xy)
    assert cells.dtype == np.int64
    np.testing.assert_array_equal(cells, [[0, 0], [0, 0], [8, 8], [31, 15], [32, 16], [8, -1]])


def test_metric_cell_metric_round_trip():
    g = _grid()
    rng = np.random.default_rng(0)
    lo, hi = np.array(g.point_cloud_range[:2]), np.array(g.point_cloud_range[3:5])
    xy = rng.uniform(lo, hi, size=(1000, 2))
    cells = g.metric_to_cell(xy)
    h, w = g.bev_shape
    assert (cells[:, 0] >= 0).all() and (cells[:, 0] < h).all()
    assert (cells[:, 1] >= 0).all() and (cells[:, 1] < w).all()
    back = g.cell_to_metric(cells)
    # the cell centre is within half a cell of the point, per axis
    assert (np.abs(back - xy) <= np.array(g.voxel_size[:2]) / 2 + 1e-12).all()
    # cell -> metric -> cell is the identity on every cell
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    all_cells = np.stack([rows.ravel(), cols.ravel()], axis=1)
    np.testing.assert_array_equal(g.metric_to_cell(g.cell_to_metric(all_cells)), all_cells)
    # and agrees with cell_centers' (H, W) layout
    np.testing.assert_allclose(g.cell_to_metric(all_cells).reshape(h, w, 2), g.cell_centers())


def test_in_range_max_is_exclusive():
    g = _grid()
    pts = np.array([[-4.0, -2.0, -1.0], [3.999, 5.999, 2.999], [4.0, 0.0, 0.0], [0.0, 6.0, 0.0],
                    [0.0, 0.0, 3.0], [0.0, 0.0, -1.01]])
    np.testing.assert_array_equal(g.in_range(pts), [True, True, False, False, False, False])


def test_with_stride_keeps_range_and_scales_xy():
    g = _grid()
    s = g.with_stride(4)
    assert s.point_cloud_range == g.point_cloud_range
    assert s.voxel_size == (2.0, 1.0, 0.5)
    assert s.bev_shape == (8, 4)
    assert s.frame == g.frame
    # a strided cell covers exactly stride x stride fine cells
    fine = g.cell_centers().reshape(-1, 2)
    coarse = s.metric_to_cell(fine)
    np.testing.assert_array_equal(coarse, g.metric_to_cell(fine) // 4)
    for bad in (0, 3, 32, -2):
        with pytest.raises(ValueError, match="not divisible"):
            g.with_stride(bad)


def test_serialisation_round_trip_and_same_as():
    g = _grid(frame="ego")
    d = json.loads(g.to_json())
    assert d == {"point_cloud_range": [-4.0, -2.0, -1.0, 4.0, 6.0, 3.0], "voxel_size": [0.5, 0.25, 0.5],
                 "frame": "ego"}
    back = BEVGrid.from_dict(d)
    assert back == g and back.same_as(g)
    assert not g.same_as(_grid())  # frame differs
    assert not g.same_as(_grid(frame="ego", voxel_size=(0.5, 0.5, 0.5)))
    assert g.same_as(_grid(frame="ego", point_cloud_range=(-4.0 + 1e-12, -2.0, -1.0, 4.0, 6.0, 3.0)))


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_metric_cell_metric_round_trip_numpy_and_torch(xp):
    torch = pytest.importorskip("torch")
    g = _grid()
    rng = np.random.default_rng(1)
    lo, hi = np.array(g.point_cloud_range[:2]), np.array(g.point_cloud_range[3:5])
    xy = rng.uniform(lo, hi, size=(500, 2))
    arr = torch.from_numpy(xy) if xp == "torch" else xy
    cells = g.metric_to_cell(arr)
    cont = g.metric_to_cell_float(arr)
    back = g.cell_float_to_metric(cont)
    centres = g.cell_to_metric(cells)
    if xp == "torch":  # torch in, torch out (same dtype and device)
        assert isinstance(cells, torch.Tensor) and cells.dtype == torch.int64
        assert isinstance(back, torch.Tensor) and back.dtype == torch.float64
        cells, cont, back, centres = (t.numpy() for t in (cells, cont, back, centres))
    # continuous cells: floor is the cell; hand-computed for one point
    np.testing.assert_array_equal(np.floor(cont).astype(np.int64), cells)
    np.testing.assert_allclose(cont[0], [(xy[0, 1] + 2.0) / 0.25, (xy[0, 0] + 4.0) / 0.5])
    # metric -> continuous cell -> metric is the identity; -> cell -> centre is within half a cell
    np.testing.assert_allclose(back, xy, atol=1e-12)
    assert (np.abs(centres - xy) <= np.array(g.voxel_size[:2]) / 2 + 1e-12).all()
    assert bool(g.cell_in_grid(cells).all())
    # torch and numpy agree exactly (float64)
    np.testing.assert_array_equal(g.metric_to_cell(torch.from_numpy(xy)).numpy(), g.metric_to_cell(xy))
    np.testing.assert_array_equal(g.cell_centers(like=torch.zeros(1)).numpy(), g.cell_centers())


def test_metric_to_voxel_and_in_range_take_torch():
    torch = pytest.importorskip("torch")
    g = _grid()
    pts = np.array([[-4.0, -2.0, -1.0], [3.99, 5.99, 2.99], [0.26, 0.3, 0.6], [4.0, 0.0, 0.0]])
    np.testing.assert_array_equal(g.metric_to_voxel(pts), [[0, 0, 0], [15, 31, 7], [8, 9, 3], [16, 8, 2]])
    np.testing.assert_array_equal(g.metric_to_voxel(torch.from_numpy(pts).float()).numpy(), g.metric_to_voxel(pts))
    assert g.in_range(torch.from_numpy(pts)).tolist() == [True, True, True, False]


def test_grid_sample_at_cell_centres_returns_the_cell_values():
    torch = pytest.importorskip("torch")
    g = _grid()  # 32 x 16 cells, non-square, so x / y mix-ups fail
    h, w = g.bev_shape
    maps = torch.arange(2 * h * w, dtype=torch.float64).reshape(1, 2, h, w)
    centres = g.cell_centers(like=maps)  # (H, W, 2)
    coords = g.grid_sample_coords(centres)[None]  # (1, H, W, 2)
    for mode in ("bilinear", "nearest"):
        out = torch.nn.functional.grid_sample(maps, coords, mode=mode, align_corners=False)
        torch.testing.assert_close(out, maps, rtol=0, atol=1e-9)
    # the range edges are -1 / +1 (align_corners=False), numpy gives the same numbers
    edges = np.array([[-4.0, -2.0], [4.0, 6.0], [0.0, 2.0]])
    np.testing.assert_allclose(g.grid_sample_coords(edges), [[-1, -1], [1, 1], [0, 0]])
    np.testing.assert_allclose(g.grid_sample_coords(torch.from_numpy(edges)).numpy(), g.grid_sample_coords(edges))
    # a point one cell right of cell (3, 5)'s centre reads cell (3, 6)
    p = g.cell_to_metric(np.array([[3, 5]])) + np.array([[0.5, 0.0]])
    val = torch.nn.functional.grid_sample(maps, g.grid_sample_coords(torch.from_numpy(p)).view(1, 1, 1, 2),
                                          align_corners=False)
    assert float(val[0, 0, 0, 0]) == float(maps[0, 0, 3, 6])


def test_storage_grid_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, storage.grid, storage.bev_augment; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_z_centers_are_the_middles_of_the_z_voxels():
    grid = BEVGrid(point_cloud_range=(-4.0, -4.0, -5.0, 4.0, 4.0, 3.0), voxel_size=(1.0, 1.0, 2.0))
    z = grid.z_centers()
    assert z.dtype == np.float64 and z.shape == (grid.grid_size[2],)
    np.testing.assert_allclose(z, [-4.0, -2.0, 0.0, 2.0])
