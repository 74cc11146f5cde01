"""The one BEV grid every part of bevkd shares.

Conventions (house style, STYLE.md §7-8):

* ``point_cloud_range`` is ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in metres, in ``frame``.
* ``voxel_size`` is ``(x, y, z)`` in metres.
* ``grid_size`` is ``(nx, ny, nz)`` (x fastest, as in OpenPCDet / mmdetection3d).
* ``sparse_shape`` is ``(nz, ny, nx)``: spconv indices are ``[batch, z, y, x]``.
* ``bev_shape`` is ``(H, W) = (ny, nx)``: BEV tensors are ``(B, C, H, W)`` with H along +y,
  W along +x and row 0 at ``y_min``.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from storage.arrays import Float64Array

_TOL = 1e-6


def _is_tensor(a: Any) -> bool:
    """True for a torch tensor; torch is never imported here (``import storage`` stays light)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def _as_float(a: Any) -> Any:
    """torch: floating tensors unchanged, others as float32; anything else: numpy float64."""
    if _is_tensor(a):
        return a if a.is_floating_point() else a.float()
    return np.asarray(a, dtype=np.float64)


def _stack(parts: list[Any]) -> Any:
    if _is_tensor(parts[0]):
        import torch

        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


@dataclass(frozen=True, kw_only=True)
class BEVGrid:
    """A metric voxel/BEV grid.

    Args:
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres.
        voxel_size: ``(x, y, z)`` metres.
        frame: coordinate frame the range is expressed in (``"lidar"`` or ``"ego"``).

    Raises:
        ValueError: if the range is empty, a voxel size is not positive, or the range is not
            an integer multiple of the voxel size along an axis (tolerance 1e-6 cells).
    """

    point_cloud_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    frame: str = "lidar"

    def __post_init__(self) -> None:
        pcr = tuple(float(v) for v in self.point_cloud_range)
        vs = tuple(float(v) for v in self.voxel_size)
        if len(pcr) != 6:
            raise ValueError(f"BEVGrid.point_cloud_range needs 6 values, got {len(pcr)}: {pcr}")
        if len(vs) != 3:
            raise ValueError(f"BEVGrid.voxel_size needs 3 values, got {len(vs)}: {vs}")
        for axis in range(3):
            extent = pcr[axis + 3] - pcr[axis]
            if extent <= 0:
                raise ValueError(f"BEVGrid.point_cloud_range: axis {'xyz'[axis]} max <= min in {pcr}")
            if vs[axis] <= 0:
                raise ValueError(f"BEVGrid.voxel_size: axis {'xyz'[axis]} must be > 0, got {vs}")
            cells = extent / vs[axis]
            if abs(cells - round(cells)) > _TOL * max(1.0, cells):
                raise ValueError(
                    f"BEVGrid: range {extent:g} m along {'xyz'[axis]} is not a multiple of "
                    f"voxel_size {vs[axis]:g} m ({cells:.6f} cells)"
                )
        object.__setattr__(self, "point_cloud_range", pcr)
        object.__setattr__(self, "voxel_size", vs)

    # ---- derived values -------------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int, int]:
        """``(nx, ny, nz)`` number of voxels along x, y, z."""
        pcr, vs = self.point_cloud_range, self.voxel_size
        return tuple(int(round((pcr[a + 3] - pcr[a]) / vs[a])) for a in range(3))  # type: ignore[return-value]

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        """``(nz, ny, nx)``: the spconv spatial shape matching ``[batch, z, y, x]`` indices."""
        nx, ny, nz = self.grid_size
        return (nz, ny, nx)

    @property
    def bev_shape(self) -> tuple[int, int]:
        """``(H, W) = (ny, nx)``."""
        nx, ny, _ = self.grid_size
        return (ny, nx)

    def with_stride(self, stride: int) -> BEVGrid:
        """The same range with x/y cells ``stride`` times larger (e.g. a detector's output map).

        Raises:
            ValueError: if the BEV shape is not divisible by ``stride``.
        """
        h, w = self.bev_shape
        if stride < 1 or h % stride or w % stride:
            raise ValueError(f"BEVGrid.with_stride: bev_shape {self.bev_shape} not divisible by {stride}")
        vx, vy, vz = self.voxel_size
        return BEVGrid(point_cloud_range=self.point_cloud_range, voxel_size=(vx * stride, vy * stride, vz),
                       frame=self.frame)

    # ---- metric <-> cell <-> grid_sample (numpy or torch, dispatched on the input's type) ---
    def cell_centers(self, like: Any = None) -> Any:
        """Cell centres, ``(H, W, 2)`` float64 ``[x, y]`` metres in ``frame``.

        Args:
            like: None for a numpy array, or a torch tensor whose device the result (a float64
                tensor) is put on.
        """
        h, w = self.bev_shape
        (x0, y0), (vx, vy) = self.point_cloud_range[:2], self.voxel_size[:2]
        if _is_tensor(like):
            import torch

            kw = {"dtype": torch.float64, "device": like.device}
            x = x0 + (torch.arange(w, **kw) + 0.5) * vx
            y = y0 + (torch.arange(h, **kw) + 0.5) * vy
            yy, xx = torch.meshgrid(y, x, indexing="ij")  # (H, W)
            return torch.stack([xx, yy], dim=-1)
        xs = x0 + (np.arange(w) + 0.5) * vx
        ys = y0 + (np.arange(h) + 0.5) * vy
        xx_np, yy_np = np.meshgrid(xs, ys)  # (H, W)
        return np.stack([xx_np, yy_np], axis=-1)

    def z_centers(self) -> Float64Array:
        """Centres of the z voxels, ``(nz,)`` float64 metres in ``frame``, bottom to top."""
        z0, vz = self.point_cloud_range[2], self.voxel_size[2]
        return z0 + (np.arange(self.grid_size[2]) + 0.5) * vz

    def metric_to_cell_float(self, xy: Any) -> Any:
        """Continuous cell coordinates of points: cell ``(r, c)`` spans ``[r, r + 1) x [c, c + 1)``,
        its centre is at ``(r + 0.5, c + 0.5)``.

        Args:
            xy: ``(..., >=2)`` metres ``[x, y, ...]`` in ``frame``; numpy (computed in float64)
                or torch (computed in the tensor's dtype).

        Returns:
            ``(..., 2)`` float ``[row, col]`` (row along +y), same array type as ``xy``.
        """
        (x0, y0), (vx, vy) = self.point_cloud_range[:2], self.voxel_size[:2]
        xy = _as_float(xy)
        return _stack([(xy[..., 1] - y0) / vy, (xy[..., 0] - x0) / vx])

    def metric_to_cell(self, xy: Any) -> Any:
        """Cell of each point.

        Args:
            xy: ``(..., >=2)`` metres ``[x, y, ...]`` in ``frame`` (numpy or torch).

        Returns:
            ``(..., 2)`` int64 ``[row, col]`` (row along +y). Points outside the range get cells
            outside ``[0, H) x [0, W)``; use :meth:`in_range` or :meth:`cell_in_grid`.
        """
        rc = self.metric_to_cell_float(xy)
        return rc.floor().long() if _is_tensor(rc) else np.floor(rc).astype(np.int64)

    def cell_float_to_metric(self, cells: Any) -> Any:
        """Inverse of :meth:`metric_to_cell_float`: ``(..., 2)`` ``[row, col]`` -> ``(..., 2)``
        ``[x, y]`` metres (numpy float64, or torch in the input's floating dtype)."""
        (x0, y0), (vx, vy) = self.point_cloud_range[:2], self.voxel_size[:2]
        cells = _as_float(cells)
        return _stack([cells[..., 1] * vx + x0, cells[..., 0] * vy + y0])

    def cell_to_metric(self, cells: Any) -> Any:
        """Centre of each ``[row, col]`` cell, ``(..., 2)`` ``[x, y]`` metres (numpy float64 or
        torch, as :meth:`cell_float_to_metric`)."""
        return self.cell_float_to_metric(_as_float(cells) + 0.5)

    def metric_to_voxel(self, points: Any) -> Any:
        """Voxel of each point, ``(..., 3)`` int64 ``[ix, iy, iz]`` (x fastest, as ``grid_size``;
        spconv indices are the reverse, ``[z, y, x]``). ``points``: ``(..., >=3)`` metres, numpy
        (float64) or torch (its dtype); outside voxels fall outside ``[0, grid_size)``."""
        p = _as_float(points)
        ijk = [(p[..., a] - self.point_cloud_range[a]) / self.voxel_size[a] for a in range(3)]
        out = _stack(ijk)
        return out.floor().long() if _is_tensor(out) else np.floor(out).astype(np.int64)

    def cell_in_grid(self, cells: Any) -> Any:
        """``(...)`` bool: ``[row, col]`` cells ``(..., 2)`` inside ``[0, H) x [0, W)``."""
        h, w = self.bev_shape
        return (cells[..., 0] >= 0) & (cells[..., 0] < h) & (cells[..., 1] >= 0) & (cells[..., 1] < w)

    def grid_sample_coords(self, xy: Any) -> Any:
        """Normalised ``torch.nn.functional.grid_sample`` coordinates of metric points, for
        ``align_corners=False``: -1 and +1 are the outer edges of the map (``x_min``/``x_max``
        along W, ``y_min``/``y_max`` along H), so cell ``(r, c)``'s centre is at
        ``((2c + 1) / W - 1, (2r + 1) / H - 1)``.

        Args:
            xy: ``(..., >=2)`` metres ``[x, y, ...]`` (numpy float64, or torch in its dtype).

        Returns:
            ``(..., 2)`` ``[gx, gy]`` (grid_sample's x then y order).
        """
        x0, y0, _, x1, y1, _ = self.point_cloud_range
        xy = _as_float(xy)
        return _stack([(xy[..., 0] - x0) / (x1 - x0) * 2 - 1, (xy[..., 1] - y0) / (y1 - y0) * 2 - 1])

    def in_range(self, points: Any) -> Any:
        """``(...)`` bool: points ``(..., >=3)`` inside ``point_cloud_range`` (max exclusive);
        numpy or torch."""
        pcr = self.point_cloud_range
        p = points if _is_tensor(points) else np.asarray(points)
        inside = (p[..., 0] >= pcr[0]) & (p[..., 0] < pcr[3])
        for a in (1, 2):
            inside = inside & (p[..., a] >= pcr[a]) & (p[..., a] < pcr[a + 3])
        return inside

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"point_cloud_range": list(self.point_cloud_range), "voxel_size": list(self.voxel_size),
                "frame": self.frame}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BEVGrid:
        """The grid of :meth:`to_dict`'s output (e.g. read from a cache's ``zarr.json``).

        Raises:
            ValueError: a field missing or not what it must be; the message starts with the
                field's name (``voxel_size: needs 3 numbers, got 'big'``), or the grid's own check.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"needs an object with point_cloud_range, voxel_size and frame, got {d!r:.80}")
        frame = d.get("frame", "lidar")
        if not isinstance(frame, str):
            raise ValueError(f"frame: needs a string, got {frame!r:.80}")
        pcr = cast("tuple[float, float, float, float, float, float]", _numbers(d, "point_cloud_range", 6))
        return cls(point_cloud_range=pcr, voxel_size=cast("tuple[float, float, float]", _numbers(d, "voxel_size", 3)),
                   frame=frame)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def same_as(self, other: BEVGrid) -> bool:
        """Equal up to float round-off (1e-9 m)."""
        return (self.frame == other.frame
                and all(math.isclose(a, b, abs_tol=1e-9)
                        for a, b in zip(self.point_cloud_range, other.point_cloud_range, strict=True))
                and all(math.isclose(a, b, abs_tol=1e-9)
                        for a, b in zip(self.voxel_size, other.voxel_size, strict=True)))


def _numbers(d: Mapping[str, Any], name: str, n: int) -> tuple[float, ...]:
    """Field ``name`` of ``d`` as ``n`` floats. Raises ValueError naming the field."""
    if name not in d:
        raise ValueError(f"{name}: missing")
    v = d[name]
    if (not isinstance(v, list | tuple | np.ndarray) or len(v) != n
            or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)):
        raise ValueError(f"{name}: needs {n} numbers, got {v!r:.80}")
    return tuple(float(x) for x in v)


#: nuScenes CenterPoint grid (mmdetection3d centerpoint_voxel0075): 1440x1440x40 voxels, BEV 180x180 at stride 8.
NUSCENES_GRID = BEVGrid(point_cloud_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), voxel_size=(0.075, 0.075, 0.2))
#: A small square grid for tests and the tiny configs on generated data: 256x256x20 voxels, BEV
#: 32x32 at stride 8 (cells of 3.2 m: too coarse to learn from; the demo uses ROAD_GRID).
DEMO_GRID = BEVGrid(point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=(0.4, 0.4, 0.4))
#: The demo's grid. The generated world is a road strip (every object within |y| < 16 m of the
#: road axis), so the range is 102.4 m along x by 51.2 m across: 512x256x20 voxels of 0.2 x 0.2 x
#: 0.4 m; the demo teacher voxelises at 0.4 m and its BEV maps (and the demo student's) are
#: ``ROAD_GRID.with_stride(4)``: 128 x 64 cells of 0.8 m.
ROAD_GRID = BEVGrid(point_cloud_range=(-51.2, -25.6, -5.0, 51.2, 25.6, 3.0), voxel_size=(0.2, 0.2, 0.4))
