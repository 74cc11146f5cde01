"""The one loss the trainer calls: detection + every enabled distillation term.

:class:`DistillationLoss` takes a :class:`student.model.StudentOutput` and a
:class:`student.losses.teacher_targets.TeacherTargets` — identical whether the targets were read from
the cache or produced by a live teacher — and returns a typed :class:`LossBreakdown`.
It owns the adapters, projection heads and discriminator: pass ``loss.parameters()`` to the
optimizer together with the student's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING
from collections.abc import Sequence

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
from student.losses.teacher_targets import TeacherShapes, TeacherTargets
from student.model.types import StudentOutput
from teachers.centerhead import CenterHead

if TYPE_CHECKING:
    from student.model import StudentModel

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


#: Terms that learn from labels (GT or pseudo-labels) and LiDAR depth, not from the teacher's outputs;
#: the distillation warm-up leaves them at full weight.
SUPERVISED_TERMS = frozenset({"detection_heatmap", "detection_regression", "depth_bce"})


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
                 student_channels: dict[str, int], head: CenterHead, teacher: TeacherShapes | None = None) -> None:
        super().__init__()
        self.config, self.student_grid, self.teacher = config, student_grid, teacher
        #: multiplier of every distillation term (not SUPERVISED_TERMS), set per step by the trainer
        #: from :meth:`DistillationConfig.kd_scale`.
        self.kd_scale = 1.0
        w = config.weights
        self.detection = DetectionLoss(head)
        self.depth_bce = DepthBCELoss(depth_bins)
        self.dense, self.lgkd = DenseFeatureDistillation(), LiDARGuidedFeatureDistillation()
        self.depth_kl, self.heatmap_kd = DepthDistillation(), HeatmapDistillation()
        self.keypoint_kd = KeypointResponseDistillation()
        self.adapters = nn.ModuleDict()
        distill = [n for n in w.active() if n not in ("detection", "depth_bce")]
        if distill and teacher is None:
            raise ValueError(f"DistillationLoss: terms {distill} need a TeacherShapes")
        if w.dense_feature or w.lgkd_feature or w.adversarial:
            self._add_adapter(config.feature_student, config.feature_teacher, student_channels)
        weights = (w.fusion_camera, w.fusion_lidar, w.fusion_fused)
        for s, t, wt in zip(_FUSION_STUDENT, config.fusion_teacher, weights, strict=True):
            if wt:
                self._add_adapter(s, t, student_channels)
        if w.instance:
            if teacher is None or teacher.instance_channels is None:
                raise ValueError("DistillationLoss: instance term needs TeacherShapes.instance_channels")
            self.instance = InstanceInfoNCE(student_channels[config.feature_student], teacher.instance_channels,
                                            config.instance_embed_dim, config.instance_temperature,
                                            config.instance_min_score)
        if w.adversarial:
            c = teacher.bev_channels[config.feature_teacher]  # type: ignore[union-attr]
            self.adversarial = AdversarialDistillation(BEVDiscriminator(c, config.discriminator_hidden),
                                                       config.grl_scale)

    @classmethod
    def for_student(cls, config: DistillationConfig, student: StudentModel, teacher: TeacherShapes | None = None
                    ) -> DistillationLoss:
        """Build from a :class:`student.model.StudentModel` (depth bins, grid, channels, head)."""
        return cls(config, depth_bins=student.config.depth.depth_bins, student_grid=student.config.bev_grid,
                   student_channels=student.bev_channels, head=student.head, teacher=teacher)

    def _add_adapter(self, s: str, t: str, student_channels: dict[str, int]) -> None:
        assert self.teacher is not None
        if s not in student_channels:
            raise ValueError(f"DistillationLoss: student has no BEV map {s!r} (has {sorted(student_channels)})")
        if t not in self.teacher.bev_channels:
            raise ValueError(f"DistillationLoss: teacher has no BEV map {t!r} "
                             f"(has {sorted(self.teacher.bev_channels)})")
        self.adapters[f"{s}__{t}"] = BEVAdapter(student_channels[s], self.teacher.bev_channels[t], self.student_grid,
                                                self.teacher.bev_grid, learnable=self.config.learnable_adapters)

    def _pair(self, out: StudentOutput, targets: TeacherTargets, s: str, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        if t not in targets.bev_features:
            raise ValueError(f"DistillationLoss: targets lack bev_features[{t!r}] "
                             f"(have {sorted(targets.bev_features)})")
        return self.adapters[f"{s}__{t}"](out.bev_map(s)), targets.bev_features[t]

    @staticmethod
    def _need(targets: TeacherTargets | None, name: str, term: str):
        value = None if targets is None else getattr(targets, name)
        if value is None or (isinstance(value, list) and not value):
            raise ValueError(f"DistillationLoss: term {term!r} is enabled but targets.{name} is missing")
        return value

    def forward(self, out: StudentOutput, targets: TeacherTargets | None = None, *,
                gt_boxes: Sequence[torch.Tensor] = (), gt_labels: Sequence[torch.Tensor] = (),
                labelled: torch.Tensor | None = None) -> LossBreakdown:
        """All enabled terms, weighted, and their sum.

        Args:
            out: the student's output.
            targets: teacher targets in the student's (augmented) frame (see
                :meth:`TeacherTargets.warped`); may be None when only detection/depth terms are on
                and ``lidar_depth`` is not needed.
            gt_boxes / gt_labels: per sample ``(M, 9)`` / ``(M,)`` in the student's frame.
            labelled: ``(B,)`` bool, the sample is annotated; None: every sample is. An unlabelled
                sample's (empty) GT boxes are not a detection target: the detection loss runs on
                the labelled samples only (zero when there are none), or with
                ``config.unlabelled_pseudo_labels`` on the teacher's boxes scoring at least
                ``pseudo_label_min_score``; its GT-box soft masks use those teacher boxes too.
                Distillation terms run on every sample.

        Raises:
            ValueError: an enabled term's input is missing (the message names the field).
        """
        terms: dict[str, torch.Tensor] = {}
        unlabelled = [] if labelled is None else [i for i, lab in enumerate(labelled.tolist()) if not lab]
        if unlabelled and self.config.detection_boxes == "gt":
            self._mixed_detection(out, targets, list(gt_boxes), list(gt_labels), unlabelled, terms)
        else:
            self._detection(out, targets, gt_boxes, gt_labels, terms)
        if unlabelled and targets is not None and targets.boxes:
            gt_boxes = self._with_teacher_boxes(targets, list(gt_boxes), unlabelled)
        self._depth(out, targets, terms)
        self._features(out, targets, gt_boxes, terms)
        self._responses(out, targets, gt_boxes, terms)
        if self.kd_scale != 1.0:  # warm-up of the distillation terms (DistillationConfig.warmup_steps)
            terms = {k: v if k in SUPERVISED_TERMS else v * self.kd_scale for k, v in terms.items()}
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

    def _mixed_detection(self, out, targets, gt_boxes, gt_labels, unlabelled: list[int], terms) -> None:
        """Detection on a batch with unlabelled samples (see :meth:`forward` ``labelled``)."""
        w = self.config.weights.detection
        if not w:
            return
        if self.config.unlabelled_pseudo_labels:
            boxes, labels = self._pseudo_labels(targets)
            for i in unlabelled:
                gt_boxes[i], gt_labels[i] = boxes[i], labels[i]
            keep = list(range(len(gt_boxes)))
        else:
            keep = [i for i in range(len(gt_boxes)) if i not in unlabelled]
        if not keep:  # no annotated sample: the detection terms are exactly zero
            zero = out.head[0].heatmap.sum() * 0.0
            terms["detection_heatmap"], terms["detection_regression"] = zero, zero
            return
        idx = torch.tensor(keep, device=out.head[0].heatmap.device)
        head = [replace(o, heatmap=o.heatmap[idx], reg=o.reg[idx], height=o.height[idx], dim=o.dim[idx],
                        rot=o.rot[idx], vel=o.vel[idx]) for o in out.head]
        losses = self.detection(head, [gt_boxes[i] for i in keep], [gt_labels[i] for i in keep], out.bev_grid)
        terms["detection_heatmap"], terms["detection_regression"] = w * losses.heatmap, w * losses.regression

    def _with_teacher_boxes(self, targets, gt_boxes: list[torch.Tensor], unlabelled: list[int]) -> list[torch.Tensor]:
        """``gt_boxes`` with each unlabelled sample's replaced by the teacher's boxes scoring at least
        ``pseudo_label_min_score`` (the GT-box soft masks of BEVDistill §3.2 / UniDistill keypoints)."""
        for i in unlabelled:
            b = targets.boxes[i]
            gt_boxes[i] = b[targets.scores[i] >= self.config.pseudo_label_min_score] if targets.scores else b
        return gt_boxes

    def _pseudo_labels(self, targets) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        boxes = self._need(targets, "boxes", "detection")
        scores, labels = self._need(targets, "scores", "detection"), self._need(targets, "labels", "detection")
        keep = [s >= self.config.pseudo_label_min_score for s in scores]
        return [b[k] for b, k in zip(boxes, keep, strict=True)], [lab[k] for lab, k in zip(labels, keep, strict=True)]

    def _depth(self, out, targets, terms) -> None:
        w = self.config.weights
        if w.depth_bce:
            lidar_depth = self._need(targets, "lidar_depth", "depth_bce")
            terms["depth_bce"] = w.depth_bce * self.depth_bce(out.depth_probs, lidar_depth)
        if w.depth_distill:
            teacher = self._need(targets, "depth_probs", "depth_distill")
            mask = None
            if self.config.depth_distill_lidar_only:
                lidar_depth = self._need(targets, "lidar_depth", "depth_distill")
                mask = min_pool_depth(lidar_depth, tuple(out.depth_probs.shape[-2:])) > 0
            terms["depth_distill"] = w.depth_distill * self.depth_kl(out.depth_probs, teacher, mask)

    def _soft_mask_boxes(self, targets, gt_boxes) -> list[torch.Tensor]:
        if self.config.soft_mask_boxes == "teacher":
            boxes = list(self._need(targets, "boxes", "soft mask"))
            if not targets.scores:
                return boxes
            return [b[s >= self.config.pseudo_label_min_score] for b, s in zip(boxes, targets.scores, strict=True)]
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
        keys = ("fusion_camera", "fusion_lidar", "fusion_fused")
        for s_name, t_name, key in zip(_FUSION_STUDENT, c.fusion_teacher, keys, strict=True):
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
                terms["keypoint_response"] = w.keypoint_response * self.keypoint_kd(logits, teacher, boxes,
                                                                                     targets.bev_grid)
        if w.instance:
            feats = self._need(targets, "instance_features", "instance")
            terms["instance"] = w.instance * self.instance(out.bev_map(self.config.feature_student), self.student_grid,
                                                           self._need(targets, "boxes", "instance"), feats,
                                                           targets.scores or None)
