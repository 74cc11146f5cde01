"""BEVFusion-style camera + LiDAR fusion teacher (Liu et al., "BEVFusion: Multi-Task Multi-Sensor
Fusion with Unified Bird's-Eye View Representation", ICRA 2023): LiDAR voxels -> sparse encoder ->
``lidar_bev``; images -> LSS view transform -> ``camera_bev`` on the same grid (§3.1-3.2); a
convolutional fuser (concatenation + 3x3 conv, §3.3) -> ``fused_bev`` -> SECOND + SECONDFPN ->
CenterHead (§3.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from storage.grid import DEMO_GRID, BEVGrid
from teachers.bev_backbone import SECOND, SECONDFPN
from teachers.camera_branch import CameraBranchConfig, LSSCameraBranch
from teachers.centerhead import CenterHead, CenterHeadLosses, decode_boxes, merge_heatmaps
from teachers.bev_sampling import sample_bev
from teachers.blocks import ConvFuser
from teachers.config import CenterPointConfig, centerpoint_config_from_dict, centerpoint_tiny
from teachers.input import TeacherInput
from teachers.output import TeacherOutput
from teachers.sparse_encoder import SparseEncoder
from teachers.voxelize import voxelize


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """Attributes:
        lidar: the LiDAR branch (voxels, sparse encoder) and the shared backbone/neck/head widths.
        camera: the camera branch.
        fused_channels: output channels of the conv fuser.
    """

    lidar: CenterPointConfig
    camera: CameraBranchConfig = field(default_factory=CameraBranchConfig)
    fused_channels: int = 64

    @property
    def out_grid(self) -> BEVGrid:
        """The grid of ``camera_bev``, ``lidar_bev`` and ``fused_bev``."""
        return self.lidar.out_grid


def fusion_tiny(grid: BEVGrid = DEMO_GRID) -> FusionConfig:
    """Small fusion teacher for tests and CPU training (LiDAR branch of :func:`centerpoint_tiny`)."""
    return FusionConfig(lidar=centerpoint_tiny(grid),
                        camera=CameraBranchConfig(channels=(16, 32, 64, 64), feature_stride=16, bev_channels=32,
                                                  depth_bins=(1.0, 61.0, 4.0)),
                        fused_channels=64)


def fusion_config_from_dict(d: dict[str, Any]) -> FusionConfig:
    cam: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["camera"].items()}
    return FusionConfig(lidar=centerpoint_config_from_dict(d["lidar"]), camera=CameraBranchConfig(**cam),
                        fused_channels=int(d["fused_channels"]))


@dataclass(kw_only=True, eq=False)
class FusionMaps:
    """Maps of one forward on ``out_grid``: ``camera_bev``, ``lidar_bev``, ``fused_bev``, ``neck``
    ``(B, C, H, W)``; ``head`` per task; ``depth_probs (B, 6, D, h, w)``."""

    camera_bev: torch.Tensor
    lidar_bev: torch.Tensor
    fused_bev: torch.Tensor
    neck: torch.Tensor
    head: list
    depth_probs: torch.Tensor


class BEVFusionTeacher(nn.Module):
    """Camera + LiDAR teacher; ``forward(TeacherInput)`` needs images and camera calibration."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        lc = config.lidar
        self.pts_middle_encoder = SparseEncoder(lc)
        self.camera_branch = LSSCameraBranch(config.camera, lc.out_grid)
        self.fuser = ConvFuser(config.camera.bev_channels, lc.bev_in_channels, config.fused_channels)
        self.pts_backbone = SECOND(config.fused_channels, lc.backbone)
        self.pts_neck = SECONDFPN(lc.backbone.out_channels, lc.neck)
        self.pts_bbox_head = CenterHead(lc.head)

    @property
    def out_grid(self) -> BEVGrid:
        return self.config.out_grid

    def maps(self, batch: TeacherInput) -> FusionMaps:
        """All intermediate maps. Raises ValueError when the batch has no images."""
        if batch.images is None or batch.cam_intrinsic is None or batch.lidar_from_cam is None:
            raise ValueError(f"BEVFusionTeacher: samples {batch.sample_tokens[:3]} have no images; build the "
                             "TeacherInput with image_size=(w, h)")
        lc = self.config.lidar
        vox = voxelize([p[:, :lc.in_channels] for p in batch.points], lc.grid, lc.voxelization.mode,
                       lc.voxelization.max_points_per_voxel, lc.voxelization.max_voxels[0 if self.training else 1])
        lidar_bev = self.pts_middle_encoder(vox.features, vox.coords, vox.batch_size)
        camera_bev, depth = self.camera_branch(batch.images, batch.cam_intrinsic, batch.lidar_from_cam)
        fused = self.fuser(camera_bev, lidar_bev)
        neck = self.pts_neck(self.pts_backbone(fused))
        return FusionMaps(camera_bev=camera_bev, lidar_bev=lidar_bev, fused_bev=fused, neck=neck,
                          head=self.pts_bbox_head(neck), depth_probs=depth)

    def loss(self, batch: TeacherInput) -> CenterHeadLosses:
        """Detection loss of the fused head (BEVFusion trains the detector end to end, §4)."""
        maps = self.maps(batch)
        targets = self.pts_bbox_head.build_targets(batch.gt_boxes, batch.gt_labels, self.out_grid)
        return self.pts_bbox_head.loss(maps.head, targets)

    def forward(self, batch: TeacherInput) -> TeacherOutput:
        """TeacherOutput with ``camera_bev``, ``lidar_bev``, ``fused_bev``, ``neck`` and ``depth_probs``."""
        maps = self.maps(batch)
        lc = self.config.lidar
        boxes, scores, labels = decode_boxes(maps.head, self.out_grid, score_threshold=lc.score_threshold,
                                             max_boxes=lc.max_boxes, pre_max=lc.pre_max)
        return TeacherOutput(
            bev_grid=self.out_grid,
            bev_features={"camera_bev": maps.camera_bev, "lidar_bev": maps.lidar_bev, "fused_bev": maps.fused_bev,
                          "neck": maps.neck},
            heatmap=merge_heatmaps(maps.head, lc.num_classes), boxes=boxes, scores=scores, labels=labels,
            instance_features=sample_bev(maps.neck, self.out_grid, boxes), depth_probs=maps.depth_probs)


__all__ = ["BEVFusionTeacher", "FusionConfig", "FusionMaps", "fusion_config_from_dict", "fusion_tiny"]

