"""Typed input and output of the student (STYLE.md §13)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from storage.grid import BEVGrid
from teachers.centerhead import CenterHeadOutput


@dataclass(kw_only=True, eq=False)
class StudentBatch:
    """A batch of multi-camera samples as the student consumes them.

    Attributes:
        images: ``(B, N, 3, h, w)`` float32, normalised RGB of the *augmented* images.
        cam_intrinsic: ``(B, N, 3, 3)`` float32 pinhole matrices of the original images, pixels.
        lidar_from_cam: ``(B, N, 4, 4)`` float32, camera -> lidar frame.
        img_aug: ``(B, N, 3, 3)`` float32 ``aug_from_orig`` pixel transform (identity if none),
            see :func:`student.augment.image_augmentation_matrix`.
        bev_aug: ``(B, 4, 4)`` float32 ``aug_from_lidar`` BEV augmentation, or None (identity),
            see :func:`student.augment.bev_augmentation_matrix`.
        gt_boxes: per sample ``(M, 9)`` float32 boxes in the (augmented) lidar frame, or empty.
        gt_labels: per sample ``(M,)`` int64 class ids, or empty.
        sample_tokens: one token per sample (for error messages and logging).
    """

    images: torch.Tensor
    cam_intrinsic: torch.Tensor
    lidar_from_cam: torch.Tensor
    img_aug: torch.Tensor
    bev_aug: torch.Tensor | None = None
    gt_boxes: list[torch.Tensor] = field(default_factory=list)
    gt_labels: list[torch.Tensor] = field(default_factory=list)
    sample_tokens: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> StudentBatch:
        """A copy with every tensor on ``device``."""
        return replace(self, images=self.images.to(device), cam_intrinsic=self.cam_intrinsic.to(device),
                       lidar_from_cam=self.lidar_from_cam.to(device), img_aug=self.img_aug.to(device),
                       bev_aug=None if self.bev_aug is None else self.bev_aug.to(device),
                       gt_boxes=[b.to(device) for b in self.gt_boxes],
                       gt_labels=[lab.to(device) for lab in self.gt_labels])


@dataclass(kw_only=True, eq=False)
class StudentOutput:
    """Everything the losses read from the student.

    Attributes:
        bev_grid: grid of every BEV map below.
        camera_bev: ``(B, C_ctx, H, W)`` lift-splat output, (augmented) lidar frame.
        bev_feature: ``(B, C, H, W)`` BEV encoder output (the head's input; "neck" feature).
        head: CenterHead outputs, one per task (logits; see :class:`teachers.centerhead.CenterHeadOutput`).
        depth_logits: ``(B, N, D, h', w')`` depth-bin logits.
        depth_probs: ``(B, N, D, h', w')`` softmax of ``depth_logits`` over D.
        image_features: ``(B, N, C_fpn, h', w')`` FPN image features.
        sim_lidar_bev: ``(B, C, H, W)`` SimDistill simulated-LiDAR BEV, or None.
        fused_bev: ``(B, C, H, W)`` SimDistill fused BEV, or None.
        num_classes: K, for :meth:`heatmap_logits`.
    """

    bev_grid: BEVGrid
    camera_bev: torch.Tensor
    bev_feature: torch.Tensor
    head: list[CenterHeadOutput]
    depth_logits: torch.Tensor
    depth_probs: torch.Tensor
    image_features: torch.Tensor
    sim_lidar_bev: torch.Tensor | None = None
    fused_bev: torch.Tensor | None = None
    num_classes: int = 10

    def heatmap_logits(self) -> torch.Tensor:
        """``(B, K, H, W)`` class logits in global class order (tasks merged)."""
        first = self.head[0].heatmap
        out = first.new_zeros((first.shape[0], self.num_classes, *first.shape[-2:]))
        for o in self.head:
            out[:, list(o.classes)] = o.heatmap
        return out

    def bev_map(self, name: str) -> torch.Tensor:
        """A BEV map by name: ``camera_bev``, ``bev_feature``, ``sim_lidar_bev``, ``fused_bev``.

        Raises:
            KeyError: unknown name, or a SimDistill map on a student built without SimDistill.
        """
        if name not in STUDENT_BEV_MAPS:
            raise KeyError(f"StudentOutput: unknown BEV map {name!r}; choose from {STUDENT_BEV_MAPS}")
        value = getattr(self, name)
        if value is None:
            raise KeyError(f"StudentOutput.{name} is None: build the student with StudentConfig(simdistill=True)")
        return value


#: Names accepted by :meth:`StudentOutput.bev_map`.
STUDENT_BEV_MAPS: tuple[str, ...] = ("camera_bev", "bev_feature", "sim_lidar_bev", "fused_bev")
