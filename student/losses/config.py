"""Weights and settings of every distillation term (STYLE.md §4: one frozen config per component).

A weight of 0 switches a term off (its inputs are then not required).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """Multipliers of each term in :class:`student.losses.combined.LossBreakdown`.

    Attributes:
        detection: CenterPoint focal + L1 on GT boxes (or teacher pseudo-labels).
        depth_bce: BEVDepth BCE on LiDAR depth bins (BEVDepth uses 3.0).
        dense_feature: BEVDistill §3.2 Gaussian-masked BEV feature imitation.
        lgkd_feature: BEV-LGKD foreground x view masked feature imitation.
        depth_distill: BEV-LGKD KL of teacher depth distributions.
        heatmap: X3KD X-OD dense heatmap distillation.
        keypoint_response: UniDistill keypoint response distillation.
        instance: BEVDistill §3.3 InfoNCE instance distillation.
        fusion_camera / fusion_lidar / fusion_fused: SimDistill's three feature terms.
        adversarial: X3KD X-AT discriminator loss.
    """

    detection: float = 1.0
    depth_bce: float = 3.0
    dense_feature: float = 0.0
    lgkd_feature: float = 0.0
    depth_distill: float = 0.0
    heatmap: float = 0.0
    keypoint_response: float = 0.0
    instance: float = 0.0
    fusion_camera: float = 0.0
    fusion_lidar: float = 0.0
    fusion_fused: float = 0.0
    adversarial: float = 0.0

    def __post_init__(self) -> None:
        """Raises ValueError naming the first weight that is negative or not finite."""
        for f in fields(self):
            if not 0.0 <= getattr(self, f.name) < math.inf:
                raise ValueError(f"LossWeights.{f.name} must be >= 0 (a loss weight; 0 switches the term off), "
                                 f"got {getattr(self, f.name)}")

    def active(self) -> tuple[str, ...]:
        """Names of the terms with a non-zero weight."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) != 0.0)


@dataclass(frozen=True, kw_only=True)
class DistillationConfig:
    """Which maps are compared and how. The depth bins of the BEVDepth BCE targets are not here:
    they are the student's (:attr:`student.config.DepthConfig.depth_bins`, the one source).

    Attributes:
        weights: per-term multipliers.
        feature_student / feature_teacher: student map (``StudentOutput.bev_map`` name) and
            teacher ``bev_features`` key for the dense, LGKD and adversarial feature terms.
        fusion_teacher: teacher keys of the SimDistill camera, LiDAR and fused maps.
        soft_mask_boxes: ``"gt"`` or ``"teacher"``: boxes of BEVDistill's Gaussian mask and of
            UniDistill's keypoints (teacher boxes scoring below ``pseudo_label_min_score`` are dropped).
        soft_mask_min_radius / soft_mask_min_overlap: Gaussian radius settings (CenterPoint: 2, 0.1).
        detection_boxes: ``"gt"`` or ``"teacher"`` (pseudo-labels above ``pseudo_label_min_score``).
        pseudo_label_min_score: score threshold of teacher pseudo-labels.
        unlabelled_pseudo_labels: on unlabelled samples (no annotations, e.g. nuScenes
            non-keyframe sweeps) train detection on the teacher's boxes above
            ``pseudo_label_min_score``; False: no detection loss on them (distillation only).
        warmup_steps: the distillation terms ramp linearly from 0 to their weight over the first
            ``warmup_steps`` optimizer steps (detection and depth BCE do not); 0 = no ramp.
        instance_embed_dim / instance_temperature / instance_min_score: InfoNCE settings.
        depth_distill_lidar_only: KL only on image cells with LiDAR depth.
        grl_scale / discriminator_hidden: X-AT settings.
        learnable_adapters: 1x1 conv adapters even when channels match.
    """

    weights: LossWeights = field(default_factory=LossWeights)
    feature_student: str = "bev_feature"
    feature_teacher: str = "neck"
    fusion_teacher: tuple[str, str, str] = ("camera_bev", "lidar_bev", "fused_bev")
    soft_mask_boxes: str = "gt"
    soft_mask_min_radius: int = 2
    soft_mask_min_overlap: float = 0.1
    detection_boxes: str = "gt"
    pseudo_label_min_score: float = 0.3
    unlabelled_pseudo_labels: bool = False
    warmup_steps: int = 0
    instance_embed_dim: int = 128
    instance_temperature: float = 0.07
    instance_min_score: float = 0.3
    depth_distill_lidar_only: bool = False
    grl_scale: float = 1.0
    discriminator_hidden: int = 64
    learnable_adapters: bool = True

    def kd_scale(self, step: int) -> float:
        """Multiplier of the distillation terms at optimizer step ``step`` (0-based): a linear ramp
        from 1/warmup_steps to 1 over the first ``warmup_steps`` steps, then 1 (1 throughout when 0)."""
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0

    def __post_init__(self) -> None:
        """Raises ValueError naming the field: negative ``warmup_steps`` or ``soft_mask_min_radius``,
        a score or overlap outside [0, 1], a non-positive temperature or width, unknown box source."""
        for name in ("warmup_steps", "soft_mask_min_radius"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillationConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("soft_mask_min_overlap", "pseudo_label_min_score", "instance_min_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DistillationConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.instance_temperature < math.inf:
            raise ValueError(f"DistillationConfig.instance_temperature must be > 0, got {self.instance_temperature}")
        for name in ("instance_embed_dim", "discriminator_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"DistillationConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("soft_mask_boxes", "detection_boxes"):
            if getattr(self, name) not in ("gt", "teacher"):
                raise ValueError(f"DistillationConfig.{name} must be 'gt' or 'teacher', got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillationConfig:
        """Inverse of :meth:`to_dict`. Dicts of older checkpoints carried ``depth_bins`` (a copy
        of the student's); it is dropped, the student's config is the source."""
        d = dict(d)
        d.pop("depth_bins", None)
        d["weights"] = LossWeights(**d["weights"])
        d["fusion_teacher"] = tuple(d["fusion_teacher"])
        return cls(**d)
