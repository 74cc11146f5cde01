"""The camera-only BEV student: BEVDepth / LSS style (Li et al., "BEVDepth", AAAI 2023, §3;
Philion & Fidler, "Lift, Splat, Shoot", ECCV 2020), with an optional SimDistill branch.

Pipeline: ResNet -> FPN (stride 16) -> depth net (D bins + context) -> lift (frustum through
``img_aug``, ``cam_intrinsic``, ``lidar_from_cam`` and ``bev_aug``) -> splat (index_add onto
``config.bev_grid``) -> [SimDistill: geometry compensation + fuser] -> BEV encoder -> CenterHead
(the teacher's head class, :mod:`teachers.centerhead`, so outputs share one format).
"""

from __future__ import annotations

import torch
from torch import nn

from student.config import StudentConfig
from student.model.bev_encoder import BEVEncoder
from student.model.fpn import FPN
from student.model.depth_net import DepthNet, camera_params
from student.model.resnet import ResNet, load_torchvision_weights
from student.model.simdistill import GeometryCompensation
from student.model.types import StudentBatch, StudentOutput
from teachers.blocks import ConvFuser
from teachers.centerhead import NUSCENES_NMS_RADIUS, CenterHead, CenterHeadConfig, decode_boxes
from teachers.lss import depth_bin_centers, frustum_points, voxel_pool


class StudentModel(nn.Module):
    """Camera-only BEV detector.

    Args:
        config: :class:`student.config.StudentConfig` (``StudentConfig.tiny()`` for tests).
        tasks: CenterHead class groups (default: one task with all classes).

    Attributes:
        pretrained_loaded: whether torchvision ImageNet weights were copied into the backbone.
    """

    depth_centers: torch.Tensor  # (D,) depth-bin centres, m (buffer)

    def __init__(self, config: StudentConfig, tasks: tuple[tuple[int, ...], ...] | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.backbone.depth, config.backbone.base_width)
        self.pretrained_loaded = load_torchvision_weights(self.backbone) if config.backbone.pretrained else False
        c2, c3, c4, c5 = self.backbone.out_channels
        self.neck = FPN(c4, c5, config.fpn_channels)
        d = config.depth
        self.depth_net = DepthNet(config.fpn_channels, d.mid_channels, config.context_channels, d.num_depth_bins,
                                  d.camera_aware)
        self.register_buffer("depth_centers", depth_bin_centers(d.depth_bins), persistent=False)
        enc_in = config.context_channels
        if config.simdistill:
            self.geometry = GeometryCompensation(config.context_channels, config.bev_channels)
            self.fuser = ConvFuser(config.context_channels, config.bev_channels, config.bev_channels)
            enc_in = config.bev_channels
        self.bev_encoder = BEVEncoder(enc_in, config.bev_channels)
        self.head = CenterHead(CenterHeadConfig(in_channels=config.bev_channels, num_classes=config.num_classes,
                                                tasks=tasks, shared_channels=config.head_channels,
                                                head_channels=config.head_channels))

    @property
    def bev_channels(self) -> dict[str, int]:
        """Channels of each BEV map of :class:`StudentOutput` (for :mod:`student.adapters`)."""
        c = self.config
        out = {"camera_bev": c.context_channels, "bev_feature": c.bev_channels}
        if c.simdistill:
            out.update(sim_lidar_bev=c.bev_channels, fused_bev=c.bev_channels)
        return out

    def _check(self, batch: StudentBatch) -> None:
        b, n, _, h, w = batch.images.shape
        c = self.config
        if (h, w) != tuple(c.image_hw) or n != c.num_cameras:
            raise ValueError(f"StudentModel: images {tuple(batch.images.shape)} (samples {batch.sample_tokens[:3]}) "
                             f"do not match config (B, {c.num_cameras}, 3, {c.image_hw[0]}, {c.image_hw[1]})")
        for name in ("cam_intrinsic", "lidar_from_cam", "img_aug"):
            t = getattr(batch, name)
            if tuple(t.shape[:2]) != (b, n):
                raise ValueError(f"StudentModel: batch.{name} has shape {tuple(t.shape)}, expected ({b}, {n}, ...)")

    def forward(self, batch: StudentBatch) -> StudentOutput:
        """Run the student on a batch (shapes in :class:`StudentBatch`).

        Raises:
            ValueError: image size or camera count differs from the config.
        """
        self._check(batch)
        b, n = batch.images.shape[:2]
        c2, c3, c4, c5 = self.backbone(batch.images.flatten(0, 1))
        feat = self.neck(c4, c5)  # (BN, C, h', w')
        cam = camera_params(batch.cam_intrinsic, batch.lidar_from_cam, batch.img_aug).flatten(0, 1)
        depth_logits, context = self.depth_net(feat, cam)
        depth_probs = depth_logits.softmax(dim=1)
        hw = tuple(feat.shape[-2:])
        points = frustum_points(batch.cam_intrinsic, batch.lidar_from_cam, hw, self.config.feature_stride,
                                self.depth_centers, img_aug=batch.img_aug, bev_aug=batch.bev_aug)
        def unflat(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, *t.shape[1:])

        camera_bev = voxel_pool(points, unflat(depth_probs), unflat(context), self.config.bev_grid)
        sim_lidar_bev = fused_bev = None
        enc_in = camera_bev
        if self.config.simdistill:
            sim_lidar_bev = self.geometry(camera_bev)
            fused_bev = enc_in = self.fuser(camera_bev, sim_lidar_bev)
        bev_feature = self.bev_encoder(enc_in)
        return StudentOutput(bev_grid=self.config.bev_grid, camera_bev=camera_bev, bev_feature=bev_feature,
                             head=self.head(bev_feature), depth_logits=unflat(depth_logits),
                             depth_probs=unflat(depth_probs), image_features=unflat(feat),
                             sim_lidar_bev=sim_lidar_bev, fused_bev=fused_bev, num_classes=self.config.num_classes)

    @torch.no_grad()
    def predict(self, batch: StudentBatch, score_threshold: float = 0.1, max_boxes: int = 500,
                nms_radius: tuple[float, ...] | None = NUSCENES_NMS_RADIUS
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Decoded boxes per sample (:func:`teachers.centerhead.decode_boxes`): boxes ``(M, 9)``
        float32 in the (augmented) lidar frame, scores ``(M,)``, labels ``(M,)`` int64."""
        out = self(batch)
        return decode_boxes(out.head, self.config.bev_grid, score_threshold=score_threshold, max_boxes=max_boxes,
                            nms_radius=nms_radius)
