"""Frozen configs of the reference teachers (one small dataclass per component, STYLE.md §4-6).

Derived values (``sparse_shape``, ``bev_in_channels``, ``out_stride``, ``out_grid``) are
properties. Every config serialises with :func:`config_to_dict` / :func:`centerpoint_config_from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from storage.grid import DEMO_GRID, NUSCENES_GRID, ROAD_GRID, BEVGrid
from teachers.centerhead import NUSCENES_TASKS, CenterHeadConfig


@dataclass(frozen=True, kw_only=True)
class VoxelizationConfig:
    """Points -> voxels with a mean voxel feature encoder (mmdet3d ``HardSimpleVFE`` / ``DynamicSimpleVFE``).

    Attributes:
        mode: ``"hard"`` (at most ``max_points_per_voxel`` points per voxel, at most ``max_voxels``
            voxels, first come first kept) or ``"dynamic"`` (every point, no caps).
        max_points_per_voxel: mmdet3d nuScenes CenterPoint: 10.
        max_voxels: per sample, (train, eval); mmdet3d nuScenes: (90000, 120000).
    """

    mode: str = "hard"
    max_points_per_voxel: int = 10
    max_voxels: tuple[int, int] = (90000, 120000)


@dataclass(frozen=True, kw_only=True)
class SparseEncoderConfig:
    """SECOND-style sparse 3D encoder (mmdet3d ``SparseEncoder``, ``block_type='basicblock'``).

    Stage ``i`` holds ``len(encoder_channels[i]) - 1`` sparse basic blocks then (except the
    last stage) a stride-2 ``SparseConv3d`` with padding ``encoder_paddings[i][-1]``.
    """

    base_channels: int = 16
    output_channels: int = 128
    encoder_channels: tuple[tuple[int, ...], ...] = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128))
    encoder_paddings: tuple[tuple[Any, ...], ...] = ((0, 0, 1), (0, 0, 1), (0, 0, (0, 1, 1)), (0, 0))

    @property
    def downsample_stages(self) -> int:
        return len(self.encoder_channels) - 1


@dataclass(frozen=True, kw_only=True)
class SECONDConfig:
    """SECOND 2D backbone (Yan et al., Sensors 2018, §2.3): per stage a strided conv + ``layer_nums`` convs."""

    out_channels: tuple[int, ...] = (128, 256)
    layer_nums: tuple[int, ...] = (5, 5)
    layer_strides: tuple[int, ...] = (1, 2)


@dataclass(frozen=True, kw_only=True)
class SECONDFPNConfig:
    """SECOND FPN neck: per backbone stage a (de)conv to ``upsample_strides`` then concatenation."""

    out_channels: tuple[int, ...] = (256, 256)
    upsample_strides: tuple[int, ...] = (1, 2)


@dataclass(frozen=True, kw_only=True)
class CenterPointConfig:
    """The CenterPoint LiDAR teacher (Yin et al., CVPR 2021) on one :class:`BEVGrid`.

    Attributes:
        grid: voxel grid (range, voxel size) in the lidar frame.
        in_channels: values per point fed to the voxel encoder (x, y, z, intensity, ring/dt).
        voxelization / encoder / backbone / neck: component configs.
        tasks: class ids per head task; ``shared_channels`` / ``head_channels``: head widths.
        num_classes: K.
        score_threshold / max_boxes / pre_max: decoding (mmdet3d: 0.1, 83 after NMS, 1000).
    """

    grid: BEVGrid
    in_channels: int = 5
    voxelization: VoxelizationConfig = field(default_factory=VoxelizationConfig)
    encoder: SparseEncoderConfig = field(default_factory=SparseEncoderConfig)
    backbone: SECONDConfig = field(default_factory=SECONDConfig)
    neck: SECONDFPNConfig = field(default_factory=SECONDFPNConfig)
    num_classes: int = 10
    tasks: tuple[tuple[int, ...], ...] = NUSCENES_TASKS
    shared_channels: int = 64
    head_channels: int = 64
    score_threshold: float = 0.1
    max_boxes: int = 83
    pre_max: int = 1000

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        """``(nz + 1, ny, nx)``: mmdet3d pads z by one voxel (41 for 40 cells on nuScenes) so the
        encoder's z strides end at an even depth; spconv indices are ``[batch, z, y, x]``."""
        nz, ny, nx = self.grid.sparse_shape
        return (nz + 1, ny, nx)

    @property
    def encoder_out_depth(self) -> int:
        """z cells left after the encoder (2 on nuScenes), flattened into BEV channels.

        Raises:
            ValueError: the grid is too shallow for the encoder's z strides.
        """
        d = self.sparse_shape[0]
        for paddings in self.encoder.encoder_paddings[:-1]:
            pad = paddings[-1]
            pz = pad[0] if isinstance(pad, (tuple, list)) else pad
            d = (d + 2 * pz - 3) // 2 + 1
        d = (d - 3) // 2 + 1  # conv_out: kernel (3,1,1), stride (2,1,1), no padding
        if d < 1:
            raise ValueError(f"CenterPointConfig: grid with {self.grid.sparse_shape[0]} z cells is too shallow "
                             f"for encoder paddings {self.encoder.encoder_paddings}")
        return d

    @property
    def bev_in_channels(self) -> int:
        """Channels of the encoder's BEV map (``output_channels * encoder_out_depth``)."""
        return self.encoder.output_channels * self.encoder_out_depth

    @property
    def out_stride(self) -> int:
        """Output stride of the neck/head relative to ``grid`` cells (8 on nuScenes)."""
        s = 2 ** self.encoder.downsample_stages * self.backbone.layer_strides[0]
        return int(round(s / self.neck.upsample_strides[0]))

    @property
    def out_grid(self) -> BEVGrid:
        """The grid of every BEV map the teacher outputs."""
        return self.grid.with_stride(self.out_stride)

    @property
    def head(self) -> CenterHeadConfig:
        return CenterHeadConfig(in_channels=sum(self.neck.out_channels), num_classes=self.num_classes,
                                tasks=self.tasks, shared_channels=self.shared_channels,
                                head_channels=self.head_channels)


def centerpoint_voxel0075() -> CenterPointConfig:
    """mmdetection3d ``centerpoint_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d`` (NUSCENES_GRID,
    sparse shape 41x1440x1440, BEV 180x180 at stride 8)."""
    return CenterPointConfig(grid=NUSCENES_GRID)


def centerpoint_tiny(grid: BEVGrid = DEMO_GRID) -> CenterPointConfig:
    """A small CenterPoint for tests and CPU training on generated data.

    Voxels are 2x coarser in x/y than ``grid`` (DEMO_GRID: 128x128x20 voxels of 0.8 x 0.8 x 0.4 m)
    and the encoder downsamples twice, so the output grid equals ``grid.with_stride(8)``
    (DEMO_GRID: 32x32 cells of 3.2 m), the grid the demo cache and student use. spconv's CPU
    path is slow, so the voxel count is what keeps CPU training within minutes.
    """
    vx, vy, vz = grid.voxel_size
    coarse = BEVGrid(point_cloud_range=grid.point_cloud_range, voxel_size=(2 * vx, 2 * vy, vz), frame=grid.frame)
    return CenterPointConfig(
        grid=coarse,
        voxelization=VoxelizationConfig(mode="hard", max_points_per_voxel=10, max_voxels=(20000, 30000)),
        encoder=SparseEncoderConfig(base_channels=16, output_channels=32,
                                    encoder_channels=((16,), (32,), (32, 32)),
                                    encoder_paddings=((1,), (1,), (0, 0))),
        backbone=SECONDConfig(out_channels=(64, 128), layer_nums=(3, 3), layer_strides=(1, 2)),
        neck=SECONDFPNConfig(out_channels=(64, 64), upsample_strides=(1, 2)),
        tasks=(tuple(range(10)),), shared_channels=64, head_channels=64, max_boxes=100)


def centerpoint_road(grid: BEVGrid = ROAD_GRID) -> CenterPointConfig:
    """The demo's reference LiDAR teacher (CPU-trainable) on :data:`storage.grid.ROAD_GRID`.

    Voxels of 0.4 x 0.4 x 0.4 m (2x ``grid``'s x/y voxel), one strided sparse stage, so the
    BEV maps are ``grid.with_stride(4)`` (ROAD_GRID: 128 x 64 cells of 0.8 m, the demo student's
    grid); a slim SECOND (48/96 channels, 2 layers per stage) and SECOND FPN (2 x 48 = 96-channel
    ``neck``). Sized so a CPU trains it in tens of minutes: ``teachers/checkpoints/README.md``.
    """
    vx, vy, vz = grid.voxel_size
    coarse = BEVGrid(point_cloud_range=grid.point_cloud_range, voxel_size=(2 * vx, 2 * vy, vz), frame=grid.frame)
    return CenterPointConfig(
        grid=coarse,
        voxelization=VoxelizationConfig(mode="hard", max_points_per_voxel=10, max_voxels=(20000, 30000)),
        encoder=SparseEncoderConfig(base_channels=16, output_channels=32, encoder_channels=((32,), (32,)),
                                    encoder_paddings=((1,), (0,))),
        backbone=SECONDConfig(out_channels=(48, 96), layer_nums=(2, 2), layer_strides=(1, 2)),
        neck=SECONDFPNConfig(out_channels=(48, 48), upsample_strides=(1, 2)),
        tasks=(tuple(range(10)),), shared_channels=64, head_channels=64, max_boxes=100)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a (nested) config dataclass; grids become their ``to_dict``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, BEVGrid):
            out[f.name] = v.to_dict()
        elif dataclasses.is_dataclass(v):
            out[f.name] = config_to_dict(v)
        else:
            out[f.name] = _jsonable(v)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def centerpoint_config_from_dict(d: dict[str, Any]) -> CenterPointConfig:
    """Inverse of :func:`config_to_dict` for :class:`CenterPointConfig`."""
    subs = {"voxelization": VoxelizationConfig, "encoder": SparseEncoderConfig, "backbone": SECONDConfig,
            "neck": SECONDFPNConfig}
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k == "grid":
            kw[k] = BEVGrid.from_dict(v)
        elif k in subs:
            kw[k] = subs[k](**{kk: _tuplify(vv) for kk, vv in v.items()})
        else:
            kw[k] = _tuplify(v)
    return CenterPointConfig(**kw)
