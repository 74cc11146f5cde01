"""CenterPoint LiDAR teacher (Yin et al., "Center-based 3D Object Detection and Tracking",
CVPR 2021): voxels -> sparse 3D encoder -> SECOND + SECONDFPN -> CenterHead.

Submodule names are mmdetection3d's (``pts_middle_encoder``, ``pts_backbone``, ``pts_neck``,
``pts_bbox_head``) so :mod:`teachers.mmdet3d_convert` maps official checkpoints by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from storage.grid import BEVGrid
from teachers.bev_backbone import SECOND, SECONDFPN
from teachers.bev_sampling import sample_bev
from teachers.centerhead import CenterHead, CenterHeadLosses, CenterHeadOutput, decode_boxes, merge_heatmaps
from teachers.config import CenterPointConfig
from teachers.input import TeacherInput
from teachers.output import TeacherOutput
from teachers.sparse_encoder import SparseEncoder
from teachers.voxelize import voxelize


@dataclass(kw_only=True, eq=False)
class CenterPointMaps:
    """Intermediate maps of one forward: ``lidar_bev (B, C_enc, H, W)`` encoder BEV map, ``neck``
    ``(B, C_neck, H, W)``, ``head``: one :class:`CenterHeadOutput` per task (all on ``out_grid``)."""

    lidar_bev: torch.Tensor
    neck: torch.Tensor
    head: list[CenterHeadOutput]


class CenterPointTeacher(nn.Module):
    """The LiDAR teacher. ``forward(TeacherInput) -> TeacherOutput`` on ``config.out_grid``."""

    def __init__(self, config: CenterPointConfig) -> None:
        super().__init__()
        self.config = config
        self.pts_middle_encoder = SparseEncoder(config)
        self.pts_backbone = SECOND(config.bev_in_channels, config.backbone)
        self.pts_neck = SECONDFPN(config.backbone.out_channels, config.neck)
        self.pts_bbox_head = CenterHead(config.head)

    @property
    def out_grid(self) -> BEVGrid:
        return self.config.out_grid

    def maps(self, points: list[torch.Tensor]) -> CenterPointMaps:
        """Encoder, neck and head maps for per-sample ``(N_i, >=in_channels)`` lidar-frame points."""
        vc = self.config.voxelization
        vox = voxelize([p[:, :self.config.in_channels] for p in points], self.config.grid, vc.mode,
                       vc.max_points_per_voxel, vc.max_voxels[0 if self.training else 1])
        lidar_bev = self.pts_middle_encoder(vox.features, vox.coords, vox.batch_size)
        neck = self.pts_neck(self.pts_backbone(lidar_bev))
        return CenterPointMaps(lidar_bev=lidar_bev, neck=neck, head=self.pts_bbox_head(neck))

    def loss(self, batch: TeacherInput) -> CenterHeadLosses:
        """CenterPoint training loss on ``batch.gt_boxes`` / ``batch.gt_labels`` (CenterPoint §3)."""
        maps = self.maps(batch.points)
        targets = self.pts_bbox_head.build_targets(batch.gt_boxes, batch.gt_labels, self.out_grid)
        return self.pts_bbox_head.loss(maps.head, targets)

    def forward(self, batch: TeacherInput) -> TeacherOutput:
        """Run the teacher.

        Returns:
            :class:`TeacherOutput` on ``config.out_grid`` with ``bev_features`` ``lidar_bev``
            (encoder BEV map) and ``neck``, ``heatmap`` (sigmoid, global class order), decoded
            boxes/scores/labels (lidar frame) and ``instance_features`` (neck sampled at box centres).
        """
        maps = self.maps(batch.points)
        cfg = self.config
        boxes, scores, labels = decode_boxes(maps.head, self.out_grid, score_threshold=cfg.score_threshold,
                                             max_boxes=cfg.max_boxes, pre_max=cfg.pre_max)
        return TeacherOutput(
            bev_grid=self.out_grid,
            bev_features={"lidar_bev": maps.lidar_bev, "neck": maps.neck},
            heatmap=merge_heatmaps(maps.head, cfg.num_classes),
            boxes=boxes, scores=scores, labels=labels,
            instance_features=sample_bev(maps.neck, self.out_grid, boxes),
        )
