"""Training the camera-only student from a teacher-target cache (or a live teacher, or no teacher).

:func:`train_student` is the one entry point (``bevkd train`` and the demo call it). One process,
or one process per GPU/CPU worker under ``torchrun`` (DDP: the environment's ``WORLD_SIZE`` /
``RANK`` / ``MASTER_ADDR`` select it; gloo on CPU, NCCL on GPU; a ``DistributedSampler`` gives
each rank its own rows). Mixed precision (``amp``) runs the student's forward under CUDA
autocast with a gradient scaler; losses are computed in float32. Checkpoints hold model, loss
modules (adapters, discriminator), optimizer, scaler and position; ``resume`` continues a run
bit for bit (augmentation draws depend on ``(seed, epoch, index)`` only). Every step's loss terms
go to a JSONL log; at the end the student is evaluated with the nuScenes devkit
(:mod:`student.evaluate`).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from storage.sample import SampleReader
from student.config import StudentConfig
from student.dataset import Collate, DataConfig, LoaderBatch, StudentDataset, cache_depth_geometry, open_cache
from storage.grid import BEVGrid
from storage.nuscenes_eval import DetectionMetrics
from student.evaluate import evaluate_student
from student.losses import DistillationConfig, DistillationLoss, LossWeights, TeacherSpec, TeacherTargets
from student.losses.combined import LossBreakdown
from student.model import StudentModel, StudentOutput
from student.targets_batch import (live_teacher_targets, packed_to_teacher_targets, spec_from_output,
                                   spec_from_schema)
from teachers.centerhead import CenterHeadOutput


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run (model and loss settings in their own configs; operational fields here).

    Attributes:
        student: the student model.
        distill: loss weights/settings; None picks :func:`default_distillation` for the targets at hand.
        no_distill: train on detection (+ BEVDepth depth loss) only, ignoring any teacher.
        data: augmentation and depth-target settings of the loader.
        epochs: passes over the data (ignored once ``steps`` is reached).
        steps: optimizer steps in total (None: ``epochs`` full passes).
        batch_size: samples per rank per step.
        lr / weight_decay / grad_clip: AdamW settings and the gradient-norm clip (0 = off).
        seed: model init, data order and augmentation.
        workers: DataLoader worker processes per rank.
        device: ``"auto"`` (``cuda:<LOCAL_RANK>`` if available, else CPU), ``"cpu"``, ``"cuda"``.
        amp: CUDA autocast (float16) with a gradient scaler; ignored on CPU.
        out_dir: checkpoints, logs and evaluation output.
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
        checkpoint_every: also checkpoint every N steps (0: only at epoch ends and the end).
        eval_score_threshold: detection score threshold at evaluation.
        progress: show a tqdm bar (rank 0).
    """

    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillationConfig | None = None
    no_distill: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: bool = False
    out_dir: str = "runs/student"
    resume: bool = False
    checkpoint_every: int = 0
    eval_score_threshold: float = 0.1
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["student"] = self.student.to_dict()
        d["distill"] = None if self.distill is None else self.distill.to_dict()
        return json.loads(json.dumps(d, default=str))


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
    if w.detection and cfg.detection_boxes == "teacher":
        need.add("boxes")
    if (w.dense_feature or w.keypoint_response) and cfg.soft_mask_boxes == "teacher":
        need.add("boxes")
    for t, wt in zip(cfg.fusion_teacher, (w.fusion_camera, w.fusion_lidar, w.fusion_fused)):
        if wt:
            need.add(f"bev_features/{t}")
    return sorted(need)


def default_distillation(spec: TeacherSpec | None, available: set[str], depth_bins: tuple[float, float, float]
                         ) -> DistillationConfig:
    """Detection + BEVDepth depth loss, plus every distillation term whose targets are available:
    BEVDistill dense (§3.2) and instance (§3.3), BEV-LGKD feature, X3KD heatmap, UniDistill keypoints."""
    if spec is None or not spec.bev_channels:
        return DistillationConfig(weights=LossWeights(depth_bce=3.0 if "lidar_depth" in available else 0.0),
                                  depth_bins=depth_bins)
    feat = "neck" if "neck" in spec.bev_channels else sorted(spec.bev_channels)[0]
    has = (lambda *names: all(n in available for n in names))
    w = LossWeights(depth_bce=3.0 if has("lidar_depth") else 0.0, dense_feature=1.0,
                    lgkd_feature=1.0 if has("fg_mask", "view_mask") else 0.0,
                    heatmap=1.0 if has("heatmap") else 0.0, keypoint_response=1.0 if has("heatmap") else 0.0,
                    instance=0.5 if has("instance_features", "boxes") and spec.instance_channels else 0.0)
    return DistillationConfig(weights=w, depth_bins=depth_bins, feature_teacher=feat)


def _float_output(out: StudentOutput) -> StudentOutput:
    """The student's output cast to float32 (losses run outside autocast)."""
    f = (lambda t: None if t is None else t.float())
    head = [CenterHeadOutput(classes=o.classes, heatmap=o.heatmap.float(), reg=o.reg.float(), height=o.height.float(),
                             dim=o.dim.float(), rot=o.rot.float(), vel=o.vel.float()) for o in out.head]
    return replace(out, camera_bev=f(out.camera_bev), bev_feature=f(out.bev_feature), head=head,
                   depth_logits=f(out.depth_logits), depth_probs=f(out.depth_probs), image_features=f(out.image_features),
                   sim_lidar_bev=f(out.sim_lidar_bev), fused_bev=f(out.fused_bev))


class StudentWithLoss(nn.Module):
    """Student and loss modules as one module (one DDP wrapper, one optimizer, one state dict)."""

    def __init__(self, model: StudentModel, loss: DistillationLoss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch, targets: TeacherTargets | None, autocast: Any = None) -> tuple[torch.Tensor, dict]:
        with autocast or nullcontext():
            out = self.model(batch)
        losses: LossBreakdown = self.loss(_float_output(out), targets, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels)
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
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        owns = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), owns_group=owns)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def _batch_targets(batch: LoaderBatch, device: torch.device, teacher: nn.Module | None) -> TeacherTargets | None:
    if batch.targets is None:
        return None
    if teacher is not None and batch.points is not None:
        return live_teacher_targets(teacher, batch.points, batch.targets, device)
    return packed_to_teacher_targets(batch.targets, device)


def _setup_targets(config: TrainConfig, reader: SampleReader, cache_path: Any, teacher: nn.Module | None,
                   expect_grid: BEVGrid | None) -> tuple[Any, TeacherSpec | None, DistillationConfig, list[str]]:
    """Open/check the cache (or probe the live teacher) and choose the losses.

    Returns:
        ``(cache reader or None, teacher spec or None, loss config, cache targets to read)``.
    """
    from teachers.input import TeacherInput

    depth_bins = config.student.depth.depth_bins
    cache, spec, available = None, None, {"lidar_depth"}
    if cache_path is not None:
        cache = open_cache(cache_path, reader, expect_grid=expect_grid)
        spec, available = spec_from_schema(cache.schema), {t.name for t in cache.schema.targets}
    elif teacher is not None and not config.no_distill:
        with torch.no_grad():
            out = teacher(TeacherInput.from_samples([reader.read(0)], device=next(teacher.parameters()).device))
        spec = spec_from_output(out)
        available |= {f"bev_features/{k}" for k in out.bev_features} | {"heatmap", "boxes", "fg_mask", "view_mask"}
        available |= {"instance_features"} if spec.instance_channels else set()
        available |= {"depth_probs"} if out.depth_probs is not None else set()
    if config.no_distill:
        spec = None
        distill = DistillationConfig(weights=LossWeights(depth_bce=3.0 if "lidar_depth" in available else 0.0),
                                     depth_bins=depth_bins)
    else:
        distill = config.distill or default_distillation(spec, available, depth_bins)
    need = required_targets(distill)
    if cache is not None:
        cache = open_cache(cache_path, reader, expect_grid=expect_grid, required_targets=need)
    elif any(n not in available for n in need):
        raise ValueError(f"train_student: losses need {[n for n in need if n not in available]}, which neither a "
                         "cache nor a live teacher provides")
    return cache, spec, distill, need


def train_student(config: TrainConfig, reader: SampleReader, cache_path: str | os.PathLike[str] | None = None, *,
                  eval_reader: SampleReader | None = None, teacher: nn.Module | None = None,
                  expect_grid: BEVGrid | None = None) -> TrainResult:
    """Train a student (see the module docstring) and evaluate it.

    Args:
        config: the run.
        reader: training samples (sensor inputs and GT).
        cache_path: the teacher-target cache of ``reader``'s split, or None.
        eval_reader: evaluate on this split at the end (a :class:`storage.nuscenes_reader.NuScenesReader`);
            None skips evaluation.
        teacher: a live teacher for online distillation (used only without ``cache_path``).
        expect_grid: refuse a cache on another grid.

    Raises:
        storage.errors.CacheMismatchError: the cache's schema version, grid or dataset differ from
            the expected ones, or it lacks a target the enabled losses need (the message says which).
        ValueError: losses need targets nothing provides.
    """
    d = _init_distributed(config.device)
    device = _device(config.device, d.local_rank)
    try:
        return _run(config, reader, cache_path, eval_reader, teacher, expect_grid, d, device)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _run(config, reader, cache_path, eval_reader, teacher, expect_grid, d: _Dist, device: torch.device) -> TrainResult:
    from tqdm import tqdm

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    online = teacher if (cache_path is None and teacher is not None and not config.no_distill) else None
    if online is not None:
        online.to(device).eval()
    cache, spec, distill, need = _setup_targets(config, reader, cache_path, online, expect_grid)
    data = config.data
    geometry = cache_depth_geometry(cache) if cache is not None else None
    if geometry is not None and data.depth_image_size is None:  # depth maps built for the job's image size
        data = replace(data, depth_image_size=geometry[0])
    ds = StudentDataset(reader, config.student, data, cache=cache, train=True, seed=config.seed,
                        online_grid=spec.bev_grid if online is not None else None, cache_targets=need or None)
    torch.manual_seed(config.seed)
    model = StudentModel(config.student)
    wrapper = StudentWithLoss(model, DistillationLoss.for_student(distill, model, spec)).to(device)
    use_amp = bool(config.amp and device.type == "cuda")
    opt = torch.optim.AdamW(wrapper.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    start = {"step": 0, "epoch": 0, "batch": 0}
    if config.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        wrapper.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["position"]
    ddp = wrapper
    if d.world > 1:
        ddp = nn.parallel.DistributedDataParallel(wrapper, device_ids=[device] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)
    sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=config.seed)
    per_epoch = math.ceil(len(sampler) / config.batch_size)
    total = config.steps if config.steps is not None else config.epochs * per_epoch
    log_path = out_dir / ("train_log.jsonl" if d.rank == 0 else f"train_log.rank{d.rank}.jsonl")
    _truncate_log(log_path, start["step"])
    autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else None
    collate = Collate(ds.grid, config.student.image_size)
    step, times, last = start["step"], [], {}
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (config.progress and d.rank == 0))
    save = (lambda pos: _save(ckpt_path, {"model": wrapper.state_dict(), "optimizer": opt.state_dict(),
                                          "scaler": scaler.state_dict(), "position": pos,
                                          "config": config.to_dict(), "distill": distill.to_dict()})
            if d.rank == 0 else None)
    epoch, b = start["epoch"], start["batch"]
    with log_path.open("a") as log:
        while step < total:
            sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            skip = start["batch"] if epoch == start["epoch"] else 0
            indices = list(sampler)[skip * config.batch_size:]
            loader = DataLoader(ds, batch_size=config.batch_size, sampler=indices, num_workers=config.workers,
                                collate_fn=collate, pin_memory=device.type == "cuda")
            b = skip
            for lb in loader:
                if step >= total:
                    break
                t0 = time.perf_counter()
                loss, terms = ddp(lb.student_batch(device), _batch_targets(lb, device, online), autocast)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(wrapper.parameters(), config.grad_clip)
                scaler.step(opt)
                scaler.update()
                last = {k: float(v.detach()) for k, v in terms.items()} | {"total": float(loss.detach())}
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
                step, b = step + 1, b + 1
                log.write(json.dumps({"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "seconds": times[-1],
                                      "tokens": list(lb.sample_tokens), **last}) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k in ("total", "detection_heatmap",
                                                                                  "dense_feature", "depth_bce")})
                if config.checkpoint_every and step % config.checkpoint_every == 0 and save:
                    save({"step": step, "epoch": epoch, "batch": b})
            if b >= per_epoch:  # epoch done: the next position is the start of the next one
                epoch, b = epoch + 1, 0
                if save:
                    save({"step": step, "epoch": epoch, "batch": 0})
    bar.close()
    if save:
        save({"step": step, "epoch": epoch, "batch": b})
    if d.world > 1:  # BatchNorm statistics ran on each rank's own rows: take rank 0's, as DDP does each forward
        for buf in wrapper.buffers():
            dist.broadcast(buf, src=0)
        dist.barrier()
    metrics = None
    if eval_reader is not None and d.rank == 0:
        metrics = evaluate_student(model, eval_reader, config.student, device=device, output_dir=out_dir / "eval",
                                   batch_size=config.batch_size, score_threshold=config.eval_score_threshold)
    steady = times[1:] or times
    _write_summary(out_dir, d.rank, wrapper, step, steady, last)
    return TrainResult(metrics=metrics, loss_log=log_path, checkpoint=ckpt_path, steps=step, final_losses=last,
                       seconds_per_step=float(sum(steady) / max(len(steady), 1)), distill=distill)


def params_sha256(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (name order), to compare DDP replicas."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_summary(out_dir: Path, rank: int, module: nn.Module, step: int, times: list[float],
                   last: dict[str, float]) -> None:
    """``summary.json`` (rank 0) / ``summary.rank<r>.json``: steps, s/step, last losses, parameter digest."""
    name = "summary.json" if rank == 0 else f"summary.rank{rank}.json"
    (out_dir / name).write_text(json.dumps({"steps": step, "seconds_per_step": sum(times) / max(len(times), 1),
                                            "final_losses": last, "params_sha256": params_sha256(module)}, indent=1))


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps ``<= step`` (a resumed run rewrites what follows)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


__all__ = ["StudentWithLoss", "TrainConfig", "TrainResult", "default_distillation", "params_sha256",
           "required_targets", "train_student"]
