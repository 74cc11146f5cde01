"""Training loop of the reference teachers on in-memory samples (no paths: the CLI reads data).

Augmentation is the global BEV augmentation of SECOND/CenterPoint (Yan et al. 2018 §2.5;
mmdet3d ``GlobalRotScaleTrans`` + ``RandomFlip3D``): one rotation about z, one uniform scale
and random x/y flips (:class:`storage.bev_augment.BEVAugConfig`, the sampler the student and the
cache job use too) applied to points, boxes (centres, sizes, yaw, velocity) and, for camera
teachers, ``lidar_from_cam`` (the augmented lidar frame is ``A @ p_lidar``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from storage.bev_augment import BEVAugConfig
from storage.boxes import transform_boxes
from storage.sample import Sample
from teachers.centerhead import CenterHeadLosses
from teachers.input import TeacherInput


@dataclass(frozen=True, kw_only=True)
class TeacherTrainConfig:
    """Teacher training settings (AdamW; warm-up + cosine LR over the steps or the time budget,
    whichever runs out first, so a time-limited run still ends at a low learning rate).

    Attributes:
        epochs: passes over the training samples.
        batch_size: samples per step.
        lr: peak learning rate. weight_decay: AdamW decay. grad_clip: max grad norm (mmdet3d: 35).
        bev_aug: the global BEV augmentation (mmdet3d nuScenes CenterPoint: yaw +-0.3925 rad,
            scale 0.95 .. 1.05, x and y flips with probability 0.5), or None for none.
        image_size: ``(w, h)`` images are resized to (camera teachers), or None (LiDAR only).
        max_seconds: stop early after this much wall time (0 = no limit).
        seed: data order and augmentation.
    """

    epochs: int = 20
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    bev_aug: BEVAugConfig | None = field(
        default_factory=lambda: BEVAugConfig(rotation_range=(-0.3925, 0.3925), scale_range=(0.95, 1.05), flip_prob=0.5))
    image_size: tuple[int, int] | None = None
    max_seconds: float = 0.0
    seed: int = 0


@dataclass(kw_only=True)
class TeacherTrainResult:
    """``losses``: total loss per step; ``steps``; ``seconds`` of training wall time; ``stopped_early``."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def one_cycle_lr(peak: float, fraction: float, warmup: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over the first ``warmup`` of training, then cosine decay to
    ``peak / 100``. ``fraction`` is training progress in [0, 1] (steps or time budget)."""
    if fraction < warmup:
        return peak * (0.1 + 0.9 * fraction / warmup)
    t = (fraction - warmup) / (1 - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def augment_batch(batch: TeacherInput, augs: Sequence[np.ndarray]) -> TeacherInput:
    """Apply one ``aug_from_lidar`` per sample to points, GT boxes and ``lidar_from_cam``."""
    points, boxes = [], []
    for p, b, a in zip(batch.points, batch.gt_boxes, augs, strict=True):
        at = torch.as_tensor(a, dtype=p.dtype, device=p.device)
        q = p.clone()
        q[:, :3] = p[:, :3] @ at[:3, :3].T + at[:3, 3]
        points.append(q)
        nb = transform_boxes(b.detach().cpu().numpy().astype(np.float64), a)  # handles reflections
        boxes.append(torch.as_tensor(nb, dtype=b.dtype, device=b.device))
    l2c = batch.lidar_from_cam
    if l2c is not None:
        at = torch.as_tensor(np.stack(augs), dtype=l2c.dtype, device=l2c.device)
        l2c = at[:, None] @ l2c
    return TeacherInput(points=points, images=batch.images, cam_intrinsic=batch.cam_intrinsic, lidar_from_cam=l2c,
                        image_size=batch.image_size, gt_boxes=boxes, gt_labels=batch.gt_labels,
                        sample_tokens=batch.sample_tokens)


@runtime_checkable
class TrainableTeacher(Protocol):
    """A teacher :func:`train_teacher` can train: ``loss(TeacherInput)`` (e.g. CenterPoint, the fusion teacher)."""

    def loss(self, batch: TeacherInput) -> CenterHeadLosses: ...


def train_teacher(model: nn.Module, samples: Sequence[Sample], config: TeacherTrainConfig,
                  progress: Callable[[int, int, float], None] | None = None) -> TeacherTrainResult:
    """Train ``model`` (any module with ``loss(TeacherInput) -> losses with .total``) in place.

    Args:
        samples: training samples (GT boxes / labels, lidar frame).
        progress: called per step with ``(step, total_steps, loss)``.

    Returns:
        :class:`TeacherTrainResult`. The model is left in eval mode.
    """
    if not isinstance(model, TrainableTeacher):
        raise TypeError(f"train_teacher: {type(model).__name__} has no loss(TeacherInput) method")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    steps_per_epoch = max(1, math.ceil(len(samples) / config.batch_size))
    total = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = TeacherTrainResult()
    start = time.perf_counter()

    def progress_fraction() -> float:  # of steps, or of the time budget when that runs out first
        elapsed = (time.perf_counter() - start) / config.max_seconds if config.max_seconds else 0.0
        return min(1.0, max(result.steps / total, elapsed))
    model.train()
    for _ in range(config.epochs):
        order = rng.permutation(len(samples))
        for i in range(0, len(order), config.batch_size):
            chosen = [samples[j] for j in order[i:i + config.batch_size]]
            batch = TeacherInput.from_samples(chosen, image_size=config.image_size)
            if config.bev_aug is not None:
                batch = augment_batch(batch, [config.bev_aug.sample(rng) for _ in chosen])
            for group in opt.param_groups:
                group["lr"] = one_cycle_lr(config.lr, progress_fraction())
            loss = model.loss(batch).total
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            result.steps += 1
            result.losses.append(float(loss.detach()))
            if progress is not None:
                progress(result.steps, total, result.losses[-1])
            if config.max_seconds and time.perf_counter() - start > config.max_seconds:
                result.stopped_early = True
                break
        if result.stopped_early:
            break
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


@torch.no_grad()
def predict(model: nn.Module, samples: Sequence[Sample], batch_size: int = 4,
            image_size: tuple[int, int] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """sample_token -> ``(boxes (M, 9) float64 lidar frame, scores (M,), labels (M,) int64)``."""
    model.eval()
    out = {}
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        res = model(TeacherInput.from_samples(chunk, image_size=image_size))
        for s, b, sc, lab in zip(chunk, res.boxes, res.scores, res.labels, strict=True):
            out[s.sample_token] = (b.double().numpy(), sc.numpy(), lab.numpy())
    return out


__all__ = ["TeacherTrainConfig", "TeacherTrainResult", "augment_batch", "predict", "train_teacher"]
