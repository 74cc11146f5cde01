"""Training the camera-only student from a teacher-target cache (or a live teacher, or no teacher).

:func:`train_student` is the one entry point (``bevkd train`` and the demo call it). One process,
or one process per GPU/CPU worker under ``torchrun`` (DDP: the environment's ``WORLD_SIZE`` /
``RANK`` / ``MASTER_ADDR`` select it; gloo on CPU, NCCL on GPU; a ``DistributedSampler`` gives
each rank its own rows). Mixed precision (``amp``) runs the student's forward under autocast
(CUDA: float16 with a gradient scaler; CPU: bfloat16); losses are computed in float32. Checkpoints hold
model, loss modules (adapters, discriminator), optimizer, scaler and position; ``resume``
continues a run bit for bit (augmentation draws depend on ``(seed, epoch, index)`` only, the
learning rate on the step only). Every step's loss terms go to a JSONL log; at the end the
student is evaluated with the nuScenes devkit (:mod:`student.evaluate`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from storage.grid import BEVGrid
from storage.sample import SampleReader
from storage.nuscenes_eval import DetectionMetrics
from student.dataset import Collate, LoaderBatch, MixedDataset, StudentDataset, cache_depth_geometry, open_cache
from student.loader_errors import BatchFailure, GuardedCollate, GuardedDataset
from student.evaluate import evaluate_student
from student.losses import DistillationLoss, TeacherTargets
from student.losses.combined import LossBreakdown
from student.model import StudentModel, StudentOutput
from student.model.resnet import load_backbone_weights
from student.packed_targets import live_teacher_targets, packed_to_teacher_targets
from student.run_checks import RESUME_MAY_CHANGE, check_out_dir_apart, check_same_run, last_checkpoint
from student.run_files import claim_out_dir, load_student, params_sha256, read_state, save_state
from student.run_log import RunLog
from student.train_config import (TrainConfig, TrainResult, choose_targets, default_distillation,
                                  required_targets)
from teachers.centerhead import CenterHeadOutput


def _float_output(out: StudentOutput) -> StudentOutput:
    """The student's output cast to float32 (losses run outside autocast)."""
    def f(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.float()

    head = [CenterHeadOutput(classes=o.classes, heatmap=o.heatmap.float(), reg=o.reg.float(), height=o.height.float(),
                             dim=o.dim.float(), rot=o.rot.float(), vel=o.vel.float()) for o in out.head]
    return replace(out, camera_bev=out.camera_bev.float(), bev_feature=out.bev_feature.float(), head=head,
                   depth_logits=out.depth_logits.float(), depth_probs=out.depth_probs.float(),
                   image_features=out.image_features.float(),
                   sim_lidar_bev=f(out.sim_lidar_bev), fused_bev=f(out.fused_bev))


class StudentWithLoss(nn.Module):
    """Student and loss modules as one module (one DDP wrapper, one optimizer, one state dict)."""

    def __init__(self, model: StudentModel, loss: DistillationLoss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch, targets: TeacherTargets | None, autocast: Any = None,
                labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``(total loss, {term: weighted scalar})``; the student runs under ``autocast`` if given."""
        with autocast or nullcontext():
            out = self.model(batch)
        losses: LossBreakdown = self.loss(_float_output(out), targets, gt_boxes=batch.gt_boxes,
                                          gt_labels=batch.gt_labels, labelled=labelled)
        return losses.total, losses.terms()


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return _Dist()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") or (
            device == "auto" and torch.cuda.is_available()) else "gloo")
        owns = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), owns_group=owns)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)


def _batch_targets(batch: LoaderBatch, device: torch.device, teacher: nn.Module | None) -> TeacherTargets | None:
    if batch.targets is None:
        return None
    if teacher is not None and batch.points is not None:
        return live_teacher_targets(teacher, batch.points, batch.targets, device)
    return packed_to_teacher_targets(batch.targets, device)


def train_student(config: TrainConfig, reader: SampleReader, cache_path: str | os.PathLike[str] | None = None, *,
                  eval_reader: SampleReader | None = None, teacher: nn.Module | None = None,
                  expect_grid: BEVGrid | None = None, unlabelled_reader: SampleReader | None = None,
                  unlabelled_cache: str | os.PathLike[str] | None = None) -> TrainResult:
    """Train a student (see the module docstring) and evaluate it.

    Args:
        config: the run.
        reader: training samples (sensor inputs and GT).
        cache_path: the teacher-target cache of ``reader``'s split, or None.
        eval_reader: evaluate on this split at the end (a :class:`storage.nuscenes_reader.NuScenesReader`);
            None skips evaluation.
        teacher: a live teacher for online distillation (used only without ``cache_path``).
        expect_grid: refuse a cache on another grid.
        unlabelled_reader: unannotated frames trained on besides ``reader``'s (e.g.
            ``NuScenesReader(..., frames="sweeps")``): their rows get every distillation term but
            no detection loss (or, with ``config.unlabelled_pseudo_labels``, one on the teacher's
            boxes). An epoch covers both readers' samples.
        unlabelled_cache: the teacher-target cache of ``unlabelled_reader`` (required with
            ``cache_path``; same grid, targets and job image size).

    Raises:
        storage.errors.CacheMismatchError: the cache's schema version, grid or dataset differ from
            the expected ones, or it lacks a target the enabled losses need (the message says which).
        ValueError: losses need targets nothing provides.
        FileExistsError: ``config.out_dir`` already holds a run and neither ``resume`` nor ``overwrite``.
        storage.errors.CheckpointError: the checkpoint to resume is unreadable or asks to run code, or
            was written with another config (fields outside :data:`RESUME_MAY_CHANGE`; names them).
        ValueError: ``config.out_dir`` overlaps ``cache_path`` or ``unlabelled_cache``
            (:func:`check_out_dir_apart`).
    """
    check_out_dir_apart(config.out_dir, {"cache": cache_path, "unlabelled cache": unlabelled_cache})
    d = _init_distributed(config.device)
    device = _device(config.device, d.local_rank)
    try:
        run = _Run(config, reader, cache_path, teacher, expect_grid, d, device,
                   unlabelled=None if unlabelled_reader is None else (unlabelled_reader, unlabelled_cache))
        run.train(eval_reader)
        return run.finish(eval_reader)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


class _Run:
    """One training run's state: data, model, optimizer, position, log."""

    def __init__(self, config: TrainConfig, reader: SampleReader, cache_path: Any, teacher: nn.Module | None,
                 expect_grid: BEVGrid | None, d: _Dist, device: torch.device,
                 unlabelled: tuple[SampleReader, Any] | None = None) -> None:
        self.config, self.d, self.device = config, d, device
        self.out_dir = Path(config.out_dir)
        self.ckpt_path = last_checkpoint(self.out_dir)
        claim_out_dir(self.out_dir, self.ckpt_path, config, d.rank)
        self.online = teacher if (cache_path is None and teacher is not None and not config.no_distill) else None
        if self.online is not None:
            self.online.to(device).eval()
        cache, spec, self.distill, need = choose_targets(config, reader, cache_path, self.online, expect_grid)
        if d.rank == 0:
            write_provenance(self.out_dir, cache)
        data = config.data
        geometry = cache_depth_geometry(cache) if cache is not None else None
        if geometry is not None and data.depth_image_size is None:  # depth maps built for the job's image size
            data = replace(data, depth_image_size=geometry[0])
        online_grid = spec.bev_grid if self.online is not None and spec is not None else None
        self.ds: StudentDataset | MixedDataset = StudentDataset(reader, config.student, data, cache=cache, train=True,
                                                               seed=config.seed, online_grid=online_grid,
                                                               cache_targets=need or None)
        self.mixed = unlabelled is not None
        if unlabelled is not None:
            self.ds = MixedDataset(self.ds, _unlabelled_dataset(config, data, unlabelled, cache, need, geometry,
                                                                self.ds.grid if self.online is not None else None))
        torch.manual_seed(config.seed)
        self.model = StudentModel(config.student)
        loss = DistillationLoss.for_student(self.distill, self.model, spec)
        self.wrapper = StudentWithLoss(self.model, loss).to(device)
        self.use_amp = bool(config.amp)  # CUDA: float16 + gradient scaling; CPU: bfloat16 (no scaling needed)
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.opt = torch.optim.AdamW(self.wrapper.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and device.type == "cuda")
        self.position = {"step": 0, "epoch": 0, "batch": 0}
        if config.resume and self.ckpt_path.exists():
            self._load()
        else:
            self._init_backbone()
        self.ddp: nn.Module = self.wrapper
        if d.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.wrapper, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True)
        self.sampler: DistributedSampler[int] = DistributedSampler(self.ds, num_replicas=d.world, rank=d.rank,
                                                                   shuffle=True, seed=config.seed)
        self.per_epoch = math.ceil(len(self.sampler) / config.batch_size)
        self.total = config.steps if config.steps is not None else config.epochs * self.per_epoch
        self.log_path = self.out_dir / ("train_log.jsonl" if d.rank == 0 else f"train_log.rank{d.rank}.jsonl")
        tb_dir = self.out_dir / "tensorboard" if config.tensorboard and d.rank == 0 else None
        self.log = RunLog(self.log_path, self.position["step"], tb_dir)
        self.times: list[float] = []
        self.last: dict[str, float] = {}

    def _init_backbone(self) -> None:
        """Load ``config.backbone_weights`` into the backbone (one line on stderr saying what was
        loaded), or warn that a full-width backbone trains from scratch."""
        c, say = self.config, (lambda msg: print(msg, file=sys.stderr) if self.d.rank == 0 else None)
        if c.backbone_weights is not None:
            say(f"train: backbone: {load_backbone_weights(self.model.backbone, c.backbone_weights)}")
        elif self.model.backbone.conv1.out_channels == 64 and not self.model.pretrained_loaded:
            say(f"train: WARNING: the ResNet-{self.model.backbone.depth} backbone trains from scratch (no ImageNet "
                "weights): expect far lower mAP than BEVDepth reports; pass --backbone-weights FILE (a torchvision "
                f"resnet{self.model.backbone.depth} state dict)")

    def _load(self) -> None:
        state = read_state(self.ckpt_path, self.device, ("model", "optimizer", "scaler", "position"))
        check_same_run(self.ckpt_path, state, self.config, self.distill)
        self.wrapper.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.position = dict(state["position"])

    def save(self) -> None:
        """Checkpoint (rank 0): model + loss modules, optimizer, scaler, position, configs."""
        if self.d.rank == 0:
            save_state(self.ckpt_path, {"model": self.wrapper.state_dict(), "optimizer": self.opt.state_dict(),
                                   "scaler": self.scaler.state_dict(), "position": dict(self.position),
                                   "config": self.config.to_dict(),  # JSON data: loads weights-only
                                   "distill": json.loads(json.dumps(self.distill.to_dict()))})

    def train(self, eval_reader: SampleReader | None = None) -> None:
        """Train to the run's end (or ``stop_after``), evaluating on ``eval_reader`` every
        ``config.eval_every`` steps before the last (the last step's evaluation is :meth:`finish`'s)."""
        from tqdm import tqdm

        c = self.config
        bar = tqdm(total=self.total, initial=self.position["step"], desc="train", unit="step",
                   disable=not (c.progress and self.d.rank == 0))
        collate = GuardedCollate(Collate(self.ds.grid, c.student.image_hw))
        stop = self.total if c.stop_after is None else min(self.total, self.position["step"] + c.stop_after)
        while self.position["step"] < stop:
            epoch, skip = self.position["epoch"], self.position["batch"]
            self.sampler.set_epoch(epoch)
            self.ds.set_epoch(epoch)
            indices = list(self.sampler)[skip * c.batch_size:]  # resume mid-epoch without loading skipped rows
            loader = DataLoader(GuardedDataset(self.ds), batch_size=c.batch_size, sampler=indices,
                                num_workers=c.workers, collate_fn=collate, pin_memory=self.device.type == "cuda")
            for lb in loader:
                if self.position["step"] >= stop:
                    break
                self._step(lb)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in self.last.items()
                                 if k in ("total", "detection_heatmap", "dense_feature", "depth_bce")})
                step = self.position["step"]
                if c.eval_every and step % c.eval_every == 0 and step < self.total and eval_reader is not None:
                    self.evaluate(eval_reader, self.out_dir / "eval" / f"step_{step:07d}")
            if self.position["batch"] >= self.per_epoch:  # epoch done: next position is the next epoch's start
                self.position.update(epoch=epoch + 1, batch=0)
                self.save()
        bar.close()
        self.save()

    def evaluate(self, eval_reader: SampleReader, output_dir: Path, log: bool = True) -> DetectionMetrics | None:
        """Devkit metrics of the model now (rank 0; other ranks wait), appended to the log if ``log``."""
        metrics = None
        if self.d.rank == 0:
            metrics = evaluate_student(self.model, eval_reader, self.config.student, device=self.device,
                                       output_dir=output_dir, batch_size=self.config.batch_size,
                                       score_threshold=self.config.eval_score_threshold,
                                       distance_bands=self.config.distance_bands)
            if metrics is not None and log:
                self.log.evaluation(self.position["step"], getattr(eval_reader, "split", "?"), metrics)
        if self.d.world > 1:
            dist.barrier()
        return metrics

    def _step(self, lb: LoaderBatch | BatchFailure) -> None:
        if isinstance(lb, BatchFailure):
            raise lb.error
        c, step = self.config, self.position["step"]
        t0 = time.perf_counter()
        for group in self.opt.param_groups:
            group["lr"] = c.lr_at(step, self.total)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.use_amp else None
        self.wrapper.loss.kd_scale = self.distill.kd_scale(step)
        loss, terms = self.ddp(lb.student_batch(self.device), _batch_targets(lb, self.device, self.online), autocast,
                               lb.labelled if self.mixed else None)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if c.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.wrapper.parameters(), c.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.last = {k: float(v.detach()) for k, v in terms.items()} | {"total": float(loss.detach())}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - t0)
        self.position.update(step=step + 1, batch=self.position["batch"] + 1)
        self.log.step({"step": step + 1, "epoch": self.position["epoch"], "lr": self.opt.param_groups[0]["lr"],
                       "seconds": self.times[-1], "tokens": list(lb.sample_tokens), **self.last})
        if c.checkpoint_every and (step + 1) % c.checkpoint_every == 0:
            self.save()

    def finish(self, eval_reader: SampleReader | None) -> TrainResult:
        """Sync replicas, evaluate (rank 0), write the summary, return the result."""
        if self.d.world > 1:  # BatchNorm statistics ran on each rank's rows: take rank 0's, as DDP does each forward
            for buf in self.wrapper.buffers():
                dist.broadcast(buf, src=0)
            dist.barrier()
        metrics = None
        if eval_reader is not None:  # logged beside the periodic ones
            metrics = self.evaluate(eval_reader, self.out_dir / "eval",
                                    log=bool(self.config.eval_every or self.config.tensorboard))
        self.log.close()
        steady = self.times[1:] or self.times
        sec = float(sum(steady) / max(len(steady), 1))
        name = "summary.json" if self.d.rank == 0 else f"summary.rank{self.d.rank}.json"
        (self.out_dir / name).write_text(json.dumps({"steps": self.position["step"], "seconds_per_step": sec,
                                                     "final_losses": self.last,
                                                     "params_sha256": params_sha256(self.wrapper)}, indent=1))
        return TrainResult(metrics=metrics, loss_log=self.log_path, checkpoint=self.ckpt_path,
                           steps=self.position["step"], final_losses=self.last, seconds_per_step=sec,
                           distill=self.distill)


#: ``RUN/teacher_cache.json``: which cache (and teacher) a run learned from; ``bevkd compare`` reads it.
PROVENANCE = "teacher_cache.json"


def write_provenance(out_dir: Path, cache: Any) -> None:
    """Record the teacher-target cache of a run in ``out_dir / PROVENANCE``: ``{"cache": location,
    "teacher": TeacherInfo dict, "dataset": DatasetInfo dict}``, or ``{"cache": null}`` without one."""
    record: dict[str, Any] = {"cache": None}
    if cache is not None:
        record = {"cache": str(cache.location), "teacher": cache.schema.teacher.to_dict(),
                  "dataset": cache.schema.dataset.to_dict()}
    (out_dir / PROVENANCE).write_text(json.dumps(record, indent=1))


def _unlabelled_dataset(config: TrainConfig, data: Any, unlabelled: tuple[SampleReader, Any], cache: Any,
                        need: list[str], geometry: Any, online_grid: BEVGrid | None) -> StudentDataset:
    """The unlabelled reader's dataset, its cache checked against the labelled one's.

    Raises:
        ValueError: a cache on one side only, or caches built for other image sizes.
        storage.errors.CacheMismatchError: grid, dataset or needed targets differ.
    """
    reader, location = unlabelled
    if (cache is None) != (location is None):
        raise ValueError("train_student: give a teacher-target cache for both the labelled and the unlabelled "
                         f"data, or for neither (labelled: {cache is not None}, unlabelled: {location is not None})")
    ucache = None
    if location is not None:
        ucache = open_cache(location, reader, expect_grid=cache.schema.grid, required_targets=need)
        if cache_depth_geometry(ucache) != geometry:
            raise ValueError(f"unlabelled cache {ucache.location}: depth maps built for {cache_depth_geometry(ucache)}"
                             f" ((w, h), stride), the labelled cache for {geometry}")
    return StudentDataset(reader, config.student, data, cache=ucache, train=True, seed=config.seed + 1,
                          online_grid=online_grid, cache_targets=need or None)


__all__ = ["RESUME_MAY_CHANGE", "StudentWithLoss", "TrainConfig", "TrainResult", "default_distillation",
           "last_checkpoint", "load_student", "params_sha256", "required_targets", "train_student"]
