"""Configuration and result of a student training run, and the choice of losses for the
targets at hand (cache schema or live teacher)."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from storage.grid import BEVGrid
from storage.nuscenes_eval import DetectionMetrics
from storage.sample import SampleReader
from student.config import StudentConfig
from student.config_io import from_plain, to_plain
from student.dataset import DataConfig, open_cache
from student.losses import DistillationConfig, LossWeights, TeacherShapes
from student.packed_targets import spec_from_output, spec_from_schema


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run (model and loss settings in their own configs; operational fields here).

    Attributes:
        student: the student model.
        distill: loss weights/settings; None picks :func:`default_distillation` for the targets at hand.
        recipe: which :func:`default_distillation` recipe (``ablated`` or ``all``) when ``distill`` is None.
        no_distill: train on detection (+ BEVDepth depth loss) only, ignoring any teacher.
        data: augmentation and depth-target settings of the loader.
        epochs: passes over the data (ignored once ``steps`` is reached).
        steps: optimizer steps in total (None: ``epochs`` full passes).
        batch_size: samples per rank per step.
        lr / weight_decay / grad_clip: AdamW settings and the gradient-norm clip (0 = off).
        warmup_steps: linear learning-rate warm-up; then cosine decay to 0 over the run
            (computed from the step, so a resumed run follows the same schedule).
        seed: model init, data order and augmentation.
        workers: DataLoader worker processes per rank (``bevkd train --loader-workers``).
        device: ``"auto"`` (``cuda:<LOCAL_RANK>`` if available, else CPU), ``"cpu"``, ``"cuda"``.
        amp: mixed precision: CUDA float16 autocast with a gradient scaler (CPU: bfloat16 autocast).
        out_dir: checkpoints, logs and evaluation output.
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
        overwrite: start afresh in an ``out_dir`` that already holds a run (its checkpoint and log
            are replaced); without it or ``resume`` such a run is refused.
        stop_after: end this invocation after this many steps (checkpointed) without changing the
            run's schedule, e.g. on preemptible machines; a later ``resume`` continues.
        checkpoint_every: also checkpoint every N steps (0: only at epoch ends and the end).
        eval_score_threshold: detection score threshold at evaluation.
        distance_bands: band edges (m) of the devkit mAP per ego-distance band at evaluation.
        unlabelled_pseudo_labels: with unlabelled data (``train_student(unlabelled_reader=...)``),
            train detection on unlabelled rows against the teacher's boxes scoring at least
            ``distill.pseudo_label_min_score`` (sets :attr:`DistillationConfig.unlabelled_pseudo_labels`);
            False: unlabelled rows get distillation terms only.
        progress: show a tqdm bar (rank 0).
        eval_every: also evaluate with the devkit every N optimizer steps (0: only at the end);
            each result is appended to the JSONL log as ``{"step": N, "event": "eval", ...}``.
        tensorboard: also write TensorBoard event files (``out_dir/tensorboard``, rank 0) with
            every loss term, the learning rate and evaluation metrics.
        backbone_weights: a torchvision-format ResNet state dict (``resnet50-*.pth``; ``fc.*``
            ignored) loaded into the image backbone before training (weights-only); None: the
            backbone starts from ``BackboneConfig`` (random init unless ``pretrained``).
    """

    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillationConfig | None = None
    no_distill: bool = False
    recipe: str = "ablated"
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    warmup_steps: int = 0
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: bool = False
    out_dir: str = "runs/student"
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None
    checkpoint_every: int = 0
    eval_score_threshold: float = 0.1
    distance_bands: tuple[float, ...] = ()
    unlabelled_pseudo_labels: bool = False
    progress: bool = True
    eval_every: int = 0
    tensorboard: bool = False
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        """Raises ValueError for a run that cannot take a step (steps, epochs, batch size, stop_after < 1),
        negative ``workers``, ``eval_every`` or ``checkpoint_every``, ``lr`` not > 0, negative
        ``weight_decay`` or ``grad_clip``, ``eval_score_threshold`` outside [0, 1], or both ``resume``
        and ``overwrite``."""
        for name in ("steps", "epochs", "batch_size", "stop_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {value}")
        for name in ("workers", "eval_every", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.lr < math.inf:
            raise ValueError(f"TrainConfig.lr must be > 0 (a finite learning rate), got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.eval_score_threshold <= 1.0:
            raise ValueError(f"TrainConfig.eval_score_threshold must be in [0, 1], got {self.eval_score_threshold}")
        if self.resume and self.overwrite:
            raise ValueError("TrainConfig: resume continues the run in out_dir, overwrite replaces it; give one")

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based) of ``total``."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able data (nested dicts, lists, scalars); :meth:`from_dict` reads it back."""
        return typing.cast(dict[str, Any], to_plain(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults.

        Raises:
            student.config_io.ConfigError: an unknown key or a wrong-typed value (names the dotted key).
        """
        return typing.cast(TrainConfig, from_plain(cls, d))


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What a run produced.

    Attributes:
        metrics: devkit metrics on the evaluation split (None when not evaluated).
        loss_log: JSONL file, one line per step: ``step, epoch, lr, seconds, tokens`` and every loss term.
        checkpoint: the final checkpoint.
        seconds_per_step: mean wall time of a training step (data wait excluded), after the first.
        steps: optimizer steps done in total (resumed ones included).
        final_losses: the last step's loss terms.
        distill: the loss configuration used.
    """

    metrics: DetectionMetrics | None
    loss_log: Path
    checkpoint: Path
    seconds_per_step: float
    steps: int
    final_losses: dict[str, float]
    distill: DistillationConfig


def required_targets(cfg: DistillationConfig) -> list[str]:
    """Cache targets the enabled terms of ``cfg`` read (:class:`DistillationLoss`)."""
    w, need = cfg.weights, set()
    feat = f"bev_features/{cfg.feature_teacher}"
    if w.dense_feature or w.adversarial:
        need.add(feat)
    if w.lgkd_feature:
        need |= {feat, "fg_mask", "view_mask"}
    if w.depth_bce:
        need.add("lidar_depth")
    if w.depth_distill:
        need |= {"depth_probs"} | ({"lidar_depth"} if cfg.depth_distill_lidar_only else set())
    if w.heatmap or w.keypoint_response:
        need.add("heatmap")
    if w.instance:
        need |= {"instance_features", "boxes"}
    if w.detection and (cfg.detection_boxes == "teacher" or cfg.unlabelled_pseudo_labels):
        need.add("boxes")
    if (w.dense_feature or w.keypoint_response) and cfg.soft_mask_boxes == "teacher":
        need.add("boxes")
    for t, wt in zip(cfg.fusion_teacher, (w.fusion_camera, w.fusion_lidar, w.fusion_fused), strict=True):
        if wt:
            need.add(f"bev_features/{t}")
    return sorted(need)


#: Recipes :func:`default_distillation` knows: ``ablated`` is the winner of ``bevkd ablate`` on
#: validation scenes carved from the demo's training split (docs/ablation.md); ``all`` switches on
#: every term whose targets are available (the earlier default, worse in that ablation).
RECIPE_NAMES = ("ablated", "all")


def default_distillation(spec: TeacherShapes | None, available: set[str], recipe: str = "ablated"
                         ) -> DistillationConfig:
    """Detection + BEVDepth depth loss (weight 3), plus the distillation terms of ``recipe``.

    ``ablated``: BEVDistill §3.3 instance distillation (InfoNCE on teacher instance features at
    teacher boxes, weight 0.5) alone: the single term with the largest mean mAP gain over no
    distillation in docs/ablation.md (+0.012, positive on every seed). Caches without instance
    features fall back to BEV-LGKD masked feature imitation (second best), then BEVDistill dense.
    ``all``: BEVDistill dense (§3.2) and instance
    (§3.3), BEV-LGKD feature, X3KD heatmap and UniDistill keypoints, each at 1 (instance 0.5).

    Raises:
        ValueError: unknown ``recipe``.
    """
    if recipe not in RECIPE_NAMES:
        raise ValueError(f"default_distillation: recipe must be one of {RECIPE_NAMES}, got {recipe!r}")
    if spec is None or not spec.bev_channels:
        return DistillationConfig(weights=LossWeights(depth_bce=3.0 if "lidar_depth" in available else 0.0))
    feat = "neck" if "neck" in spec.bev_channels else sorted(spec.bev_channels)[0]
    def has(*names: str) -> bool:
        return all(n in available for n in names)

    depth = 3.0 if has("lidar_depth") else 0.0
    if recipe == "ablated":
        if has("instance_features", "boxes") and spec.instance_channels:
            w = LossWeights(depth_bce=depth, instance=0.5)
        elif has("fg_mask", "view_mask"):
            w = LossWeights(depth_bce=depth, lgkd_feature=1.0)
        else:
            w = LossWeights(depth_bce=depth, dense_feature=1.0)
        return DistillationConfig(weights=w, feature_teacher=feat)
    w = LossWeights(depth_bce=depth, dense_feature=1.0,
                    lgkd_feature=1.0 if has("fg_mask", "view_mask") else 0.0,
                    heatmap=1.0 if has("heatmap") else 0.0, keypoint_response=1.0 if has("heatmap") else 0.0,
                    instance=0.5 if has("instance_features", "boxes") and spec.instance_channels else 0.0)
    return DistillationConfig(weights=w, feature_teacher=feat)


def choose_targets(config: TrainConfig, reader: SampleReader, cache_path: Any, teacher: nn.Module | None,
                   expect_grid: BEVGrid | None) -> tuple[Any, TeacherShapes | None, DistillationConfig, list[str]]:
    """Open/check the cache (or probe the live teacher) and choose the losses.

    Returns:
        ``(cache reader or None, teacher spec or None, loss config, cache targets to read)``.
    """
    from teachers.cache_row import build_cache_row  # the live teacher's probe row
    from teachers.input import TeacherInput

    cache, spec, available = None, None, {"lidar_depth"}
    if cache_path is not None:
        cache = open_cache(cache_path, reader, expect_grid=expect_grid)
        spec, available = spec_from_schema(cache.schema), {t.name for t in cache.schema.targets}
    elif teacher is not None and not config.no_distill:
        sample = reader.read(0)
        with torch.no_grad():
            out = teacher(TeacherInput.from_samples([sample], device=next(teacher.parameters()).device))
        spec = spec_from_output(out)
        h, w = config.student.image_hw
        available |= set(build_cache_row(out, sample, image_wh=(w, h)).target_names())
    if config.no_distill:
        spec = None
        distill = DistillationConfig(weights=LossWeights(depth_bce=3.0 if "lidar_depth" in available else 0.0))
    else:
        distill = config.distill or default_distillation(spec, available, config.recipe)
        if config.unlabelled_pseudo_labels:
            distill = replace(distill, unlabelled_pseudo_labels=True)
    need = required_targets(distill)
    if cache is not None:
        cache = open_cache(cache_path, reader, expect_grid=expect_grid, required_targets=need)
    elif any(n not in available for n in need):
        raise ValueError(f"train_student: losses need {[n for n in need if n not in available]}, which neither a "
                         "cache nor a live teacher provides")
    return cache, spec, distill, need


__all__ = ["RECIPE_NAMES", "TrainConfig", "TrainResult", "choose_targets", "default_distillation",
           "required_targets"]
