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
from dataclasses import dataclass
from typing import Any

import numpy as np

_TOL = 1e-6


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

    def with_stride(self, stride: int) -> "BEVGrid":
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

    # ---- metric <-> cell ------------------------------------------------------------------
    def cell_centers(self) -> np.ndarray:
        """Cell centres, ``(H, W, 2)`` float64 ``[x, y]`` metres in ``frame``."""
        h, w = self.bev_shape
        x = self.point_cloud_range[0] + (np.arange(w) + 0.5) * self.voxel_size[0]
        y = self.point_cloud_range[1] + (np.arange(h) + 0.5) * self.voxel_size[1]
        xx, yy = np.meshgrid(x, y)  # (H, W)
        return np.stack([xx, yy], axis=-1)

    def metric_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """Cell of each point.

        Args:
            xy: ``(N, >=2)`` metres ``[x, y, ...]`` in ``frame``.

        Returns:
            ``(N, 2)`` int64 ``[row, col]`` (row along +y). Points outside the range get cells
            outside ``[0, H) x [0, W)``; use :meth:`in_range`.
        """
        xy = np.asarray(xy, dtype=np.float64)
        col = np.floor((xy[:, 0] - self.point_cloud_range[0]) / self.voxel_size[0])
        row = np.floor((xy[:, 1] - self.point_cloud_range[1]) / self.voxel_size[1])
        return np.stack([row, col], axis=1).astype(np.int64)

    def cell_to_metric(self, cells: np.ndarray) -> np.ndarray:
        """Centre of each ``[row, col]`` cell, ``(N, 2)`` float64 ``[x, y]`` metres."""
        cells = np.asarray(cells, dtype=np.float64)
        x = self.point_cloud_range[0] + (cells[:, 1] + 0.5) * self.voxel_size[0]
        y = self.point_cloud_range[1] + (cells[:, 0] + 0.5) * self.voxel_size[1]
        return np.stack([x, y], axis=1)

    def in_range(self, points: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: points ``(N, >=3)`` inside ``point_cloud_range`` (max exclusive)."""
        p = np.asarray(points)
        lo, hi = np.asarray(self.point_cloud_range[:3]), np.asarray(self.point_cloud_range[3:])
        return np.all((p[:, :3] >= lo) & (p[:, :3] < hi), axis=1)

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"point_cloud_range": list(self.point_cloud_range), "voxel_size": list(self.voxel_size),
                "frame": self.frame}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BEVGrid":
        return cls(point_cloud_range=tuple(d["point_cloud_range"]), voxel_size=tuple(d["voxel_size"]),
                   frame=d.get("frame", "lidar"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def same_as(self, other: "BEVGrid") -> bool:
        """Equal up to float round-off (1e-9 m)."""
        return (self.frame == other.frame
                and all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(self.point_cloud_range, other.point_cloud_range))
                and all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(self.voxel_size, other.voxel_size)))


#: nuScenes CenterPoint grid (mmdetection3d centerpoint_voxel0075): 1440x1440x40 voxels, BEV 180x180 at stride 8.
NUSCENES_GRID = BEVGrid(point_cloud_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), voxel_size=(0.075, 0.075, 0.2))
#: A small grid for the demo and tests on generated data: 256x256x20 voxels, BEV 32x32 at stride 8.
DEMO_GRID = BEVGrid(point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=(0.4, 0.4, 0.4))
