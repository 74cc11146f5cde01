"""The one loss the trainer calls: detection + every enabled distillation term.

:class:`DistillationLoss` takes a :class:`student.model.StudentOutput` and a
:class:`student.losses.targets.TeacherTargets` — identical whether the targets were read from
the cache or produced by a live teacher — and returns a typed :class:`LossBreakdown`.
It owns the adapters, projection heads and discriminator: pass ``loss.parameters()`` to the
optimizer together with the student's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from storage.grid import BEVGrid
from student.adapters import BEVAdapter, resample_bev
from student.losses.adversarial import AdversarialDistillation, BEVDiscriminator
from student.losses.config import DistillationConfig
from student.losses.depth import DepthBCELoss, DepthDistillation, min_pool_depth
from student.losses.detection import DetectionLoss
from student.losses.feature import DenseFeatureDistillation, LiDARGuidedFeatureDistillation, gaussian_soft_mask
from student.losses.fusion import weighted_mse
from student.losses.instance import InstanceInfoNCE
from student.losses.response import HeatmapDistillation, KeypointResponseDistillation
from student.losses.targets import TeacherSpec, TeacherTargets
from student.model.types import StudentOutput
from teachers.centerhead import CenterHead

_FUSION_STUDENT = ("camera_bev", "sim_lidar_bev", "fused_bev")


@dataclass(kw_only=True, eq=False)
class LossBreakdown:
    """Weighted scalar terms (None = disabled) and their sum.

    ``detection_heatmap`` + ``detection_regression`` make up the detection term; every other
    field is named after its :class:`student.losses.config.LossWeights` weight.
    """

    total: torch.Tensor
    detection_heatmap: torch.Tensor | None = None
    detection_regression: torch.Tensor | None = None
    depth_bce: torch.Tensor | None = None
    dense_feature: torch.Tensor | None = None
    lgkd_feature: torch.Tensor | None = None
    depth_distill: torch.Tensor | None = None
    heatmap: torch.Tensor | None = None
    keypoint_response: torch.Tensor | None = None
    instance: torch.Tensor | None = None
    fusion_camera: torch.Tensor | None = None
    fusion_lidar: torch.Tensor | None = None
    fusion_fused: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None

    def terms(self) -> dict[str, torch.Tensor]:
        """The enabled terms (not ``total``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "total" and getattr(self, f.name) is not None}

    def as_floats(self) -> dict[str, float]:
        """``{name: value}`` of the enabled terms and ``total``, for logging."""
        out = {k: float(v.detach()) for k, v in self.terms().items()}
        out["total"] = float(self.total.detach())
        return out


class DistillationLoss(nn.Module):
    """Detection and distillation losses of the student.

    Args:
        config: weights and settings.
        depth_bins: the student's ``(d_min, d_max, step)`` (:attr:`student.config.DepthConfig.depth_bins`),
            the bins of the BEVDepth BCE targets.
        student_grid: the student's BEV grid (``StudentOutput.bev_grid``).
        student_channels: channels of each student BEV map (``StudentModel.bev_channels``).
        head: the student's CenterHead (detection targets and loss).
        teacher: the teacher's grid and channels; required by every distillation term.

    Raises:
        ValueError: a term is enabled but the teacher spec lacks what it needs.
    """

    def __init__(self, config: DistillationConfig, *, depth_bins: tuple[float, float, float], student_grid: BEVGrid,
                 student_channels: dict[str, int], head: CenterHead, teacher: TeacherSpec | None = None) -> None:
        super().__init__()
        self.config, self.student_grid, self.teacher = config, student_grid, teacher
        w = config.weights
        self.detection = DetectionLoss(head)
        self.depth_bce = DepthBCELoss(depth_bins)
        self.dense, self.lgkd = DenseFeatureDistillation(), LiDARGuidedFeatureDistillation()
        self.depth_kl, self.heatmap_kd = DepthDistillation(), HeatmapDistillation()
        self.keypoint_kd = KeypointResponseDistillation()
        self.adapters = nn.ModuleDict()
        distill = [n for n in w.active() if n not in ("detection", "depth_bce")]
        if distill and teacher is None:
            raise ValueError(f"DistillationLoss: terms {distill} need a TeacherSpec")
        if w.dense_feature or w.lgkd_feature or w.adversarial:
            self._add_adapter(config.feature_student, config.feature_teacher, student_channels)
        for s, t, wt in zip(_FUSION_STUDENT, config.fusion_teacher, (w.fusion_camera, w.fusion_lidar, w.fusion_fused)):
            if wt:
                self._add_adapter(s, t, student_channels)
        if w.instance:
            if teacher is None or teacher.instance_channels is None:
                raise ValueError("DistillationLoss: instance term needs TeacherSpec.instance_channels")
            self.instance = InstanceInfoNCE(student_channels[config.feature_student], teacher.instance_channels,
                                            config.instance_embed_dim, config.instance_temperature,
                                            config.instance_min_score)
        if w.adversarial:
            c = teacher.bev_channels[config.feature_teacher]  # type: ignore[union-attr]
            self.adversarial = AdversarialDistillation(BEVDiscriminator(c, config.discriminator_hidden),
                                                       config.grl_scale)

    @classmethod
    def for_student(cls, config: DistillationConfig, student: nn.Module, teacher: TeacherSpec | None = None
                    ) -> "DistillationLoss":
        """Build from a :class:`student.model.StudentModel` (depth bins, grid, channels, head)."""
        return cls(config, depth_bins=student.config.depth.depth_bins, student_grid=student.config.bev_grid,
                   student_channels=student.bev_channels, head=student.head, teacher=teacher)

    def _add_adapter(self, s: str, t: str, student_channels: dict[str, int]) -> None:
        assert self.teacher is not None
        if s not in student_channels:
            raise ValueError(f"DistillationLoss: student has no BEV map {s!r} (has {sorted(student_channels)})")
        if t not in self.teacher.bev_channels:
            raise ValueError(f"DistillationLoss: teacher has no BEV map {t!r} (has {sorted(self.teacher.bev_channels)})")
        self.adapters[f"{s}__{t}"] = BEVAdapter(student_channels[s], self.teacher.bev_channels[t], self.student_grid,
                                                self.teacher.bev_grid, learnable=self.config.learnable_adapters)

    def _pair(self, out: StudentOutput, targets: TeacherTargets, s: str, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        if t not in targets.bev_features:
            raise ValueError(f"DistillationLoss: targets lack bev_features[{t!r}] (have {sorted(targets.bev_features)})")
        return self.adapters[f"{s}__{t}"](out.bev_map(s)), targets.bev_features[t]

    @staticmethod
    def _need(targets: TeacherTargets | None, name: str, term: str):
        value = None if targets is None else getattr(targets, name)
        if value is None or (isinstance(value, list) and not value):
            raise ValueError(f"DistillationLoss: term {term!r} is enabled but targets.{name} is missing")
        return value

    def forward(self, out: StudentOutput, targets: TeacherTargets | None = None, *,
                gt_boxes: Sequence[torch.Tensor] = (), gt_labels: Sequence[torch.Tensor] = ()) -> LossBreakdown:
        """All enabled terms, weighted, and their sum.

        Args:
            out: the student's output.
            targets: teacher targets in the student's (augmented) frame (see
                :meth:`TeacherTargets.warped`); may be None when only detection/depth terms are on
                and ``lidar_depth`` is not needed.
            gt_boxes / gt_labels: per sample ``(M, 9)`` / ``(M,)`` in the student's frame.

        Raises:
            ValueError: an enabled term's input is missing (the message names the field).
        """
        terms: dict[str, torch.Tensor] = {}
        self._detection(out, targets, gt_boxes, gt_labels, terms)
        self._depth(out, targets, terms)
        self._features(out, targets, gt_boxes, terms)
        self._responses(out, targets, gt_boxes, terms)
        zero = out.bev_feature.sum() * 0.0
        return LossBreakdown(total=sum(terms.values(), zero), **terms)

    def _detection(self, out, targets, gt_boxes, gt_labels, terms) -> None:
        w = self.config.weights.detection
        if not w:
            return
        if self.config.detection_boxes == "teacher":
            boxes, labels = self._pseudo_labels(targets)
        else:
            if len(gt_boxes) != out.bev_feature.shape[0]:
                raise ValueError("DistillationLoss: detection on 'gt' needs gt_boxes/gt_labels for every sample")
            boxes, labels = list(gt_boxes), list(gt_labels)
        losses = self.detection(out.head, boxes, labels, out.bev_grid)
        terms["detection_heatmap"], terms["detection_regression"] = w * losses.heatmap, w * losses.regression

    def _pseudo_labels(self, targets) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        boxes = self._need(targets, "boxes", "detection")
        scores, labels = self._need(targets, "scores", "detection"), self._need(targets, "labels", "detection")
        keep = [s >= self.config.pseudo_label_min_score for s in scores]
        return [b[k] for b, k in zip(boxes, keep)], [lab[k] for lab, k in zip(labels, keep)]

    def _depth(self, out, targets, terms) -> None:
        w = self.config.weights
        if w.depth_bce:
            terms["depth_bce"] = w.depth_bce * self.depth_bce(out.depth_probs, self._need(targets, "lidar_depth", "depth_bce"))
        if w.depth_distill:
            teacher = self._need(targets, "depth_probs", "depth_distill")
            mask = None
            if self.config.depth_distill_lidar_only:
                mask = min_pool_depth(self._need(targets, "lidar_depth", "depth_distill"), tuple(out.depth_probs.shape[-2:])) > 0
            terms["depth_distill"] = w.depth_distill * self.depth_kl(out.depth_probs, teacher, mask)

    def _soft_mask_boxes(self, targets, gt_boxes) -> list[torch.Tensor]:
        if self.config.soft_mask_boxes == "teacher":
            boxes = list(self._need(targets, "boxes", "soft mask"))
            if not targets.scores:
                return boxes
            return [b[s >= self.config.pseudo_label_min_score] for b, s in zip(boxes, targets.scores)]
        if not len(gt_boxes):
            raise ValueError("DistillationLoss: soft_mask_boxes='gt' needs gt_boxes")
        return list(gt_boxes)

    def _features(self, out, targets, gt_boxes, terms) -> None:
        w, c = self.config.weights, self.config
        if w.dense_feature or w.lgkd_feature or w.adversarial:
            # one adapter pass shared by every term that distils this feature pair
            s, t = self._pair(out, targets, c.feature_student, c.feature_teacher)
        if w.dense_feature:
            mask = gaussian_soft_mask(self._soft_mask_boxes(targets, gt_boxes), targets.bev_grid,
                                      min_radius=c.soft_mask_min_radius, min_overlap=c.soft_mask_min_overlap)
            terms["dense_feature"] = w.dense_feature * self.dense(s, t, mask.to(s.device))
        if w.lgkd_feature:
            fg, view = self._need(targets, "fg_mask", "lgkd_feature"), self._need(targets, "view_mask", "lgkd_feature")
            terms["lgkd_feature"] = w.lgkd_feature * self.lgkd(s, t, fg, view)
        if w.adversarial:
            terms["adversarial"] = w.adversarial * self.adversarial(s, t)
        for s_name, t_name, key in zip(_FUSION_STUDENT, c.fusion_teacher, ("fusion_camera", "fusion_lidar", "fusion_fused")):
            if getattr(w, key):
                terms[key] = getattr(w, key) * weighted_mse(*self._pair(out, targets, s_name, t_name))

    def _responses(self, out, targets, gt_boxes, terms) -> None:
        w = self.config.weights
        if not (w.heatmap or w.keypoint_response or w.instance):
            return
        if w.heatmap or w.keypoint_response:
            teacher = self._need(targets, "heatmap", "heatmap")
            logits = resample_bev(out.heatmap_logits(), self.student_grid, targets.bev_grid)
            if w.heatmap:
                terms["heatmap"] = w.heatmap * self.heatmap_kd(logits, teacher)
            if w.keypoint_response:
                boxes = self._soft_mask_boxes(targets, gt_boxes)
                terms["keypoint_response"] = w.keypoint_response * self.keypoint_kd(logits, teacher, boxes, targets.bev_grid)
        if w.instance:
            feats = self._need(targets, "instance_features", "instance")
            terms["instance"] = w.instance * self.instance(out.bev_map(self.config.feature_student), self.student_grid,
                                                           self._need(targets, "boxes", "instance"), feats,
                                                           targets.scores or None)
