"""The end-to-end demo (``bevkd demo``): the job users come for, on generated data.

Stages, each resumable (rerunning the command reuses what is already on disk):

1. ``synth``   generate a nuScenes-format dataset (:func:`storage.synth.generate_dataset`);
2. ``teacher`` the project's saved reference LiDAR teacher (or ``--teacher-checkpoint``);
3. ``cache``   the Ray cache job over the training split (:func:`pipeline.ray_runner.run_cache_job`);
4. ``student`` two camera-only students with the same seed, data order and step budget: one
   without distillation, one distilled from the cache; both evaluated on the validation split
   with the devkit's ``DetectionEval``;
5. ``report``  an HTML page with metrics, loss curves, cache size and stage timings and
   ``bevkd show`` renders (:mod:`pipeline.report`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The reference teacher shipped with the project (trained by ``bevkd train-teacher`` on
#: generated data: see its metadata and teachers/checkpoints/README.md).
DEFAULT_TEACHER = Path(__file__).resolve().parents[1] / "teachers" / "checkpoints" / "centerpoint_demo.pt"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Scale of the demo. Defaults finish within ~15 minutes on a 2-core CPU.

    Args:
        out_dir: everything goes here (data, cache, students, report).
        scenes / samples_per_scene / seed / image_size: the generated dataset (the first two
            scenes are ``mini_val``, the rest ``mini_train``).
        teacher_checkpoint: teacher weights (default: the project's saved checkpoint).
        student: ``tiny`` (CPU) or ``base`` (ResNet-50, 256x704: for a GPU).
        steps / batch_size / lr: the budget, identical for both students.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: DataLoader workers per student.
        show_samples: how many cached samples the report renders.
    """

    out_dir: str = "bevkd_demo"
    scenes: int = 10
    samples_per_scene: int = 10
    seed: int = 0
    image_size: tuple[int, int] = (480, 270)
    teacher_checkpoint: str | None = None
    student: str = "tiny"
    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-3
    device: str = "auto"
    workers: int = 1
    show_samples: int = 3

    @property
    def root(self) -> Path:
        return Path(self.out_dir)


@dataclass(kw_only=True)
class StudentRun:
    """One trained student of the demo."""

    name: str
    distill: bool
    metrics: Any  # storage.nuscenes_eval.DetectionMetrics
    loss_log: Path
    seconds_per_step: float
    steps: int
    final_losses: dict[str, float]


@dataclass(kw_only=True)
class DemoResult:
    """What the demo produced; ``report`` is the HTML page."""

    config: DemoConfig
    report: Path
    students: list[StudentRun]
    cache: Path
    cache_summary: Any  # storage.cache.inspect.CacheSummary
    cache_job: Any  # pipeline.cache_plan.CacheJobSummary
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shows: list[Path] = field(default_factory=list)

    @property
    def nds_gain(self) -> float:
        by = {s.distill: s.metrics.NDS for s in self.students}
        return by[True] - by[False]


def _log(msg: str) -> None:
    print(f"[bevkd demo] {msg}", flush=True)


def generate_data(cfg: DemoConfig) -> Path:
    """Stage 1: the generated dataroot (reused when its recorded config matches)."""
    from tqdm import tqdm

    from storage.synth import SynthConfig, generate_dataset

    root = cfg.root / "data"
    synth = SynthConfig(num_scenes=cfg.scenes, samples_per_scene=cfg.samples_per_scene, seed=cfg.seed,
                        image_size=tuple(cfg.image_size))
    stamp = root / "demo_synth_config.json"
    wanted = json.dumps(asdict(synth), sort_keys=True, default=list)
    if stamp.exists() and stamp.read_text() == wanted:
        _log(f"dataset: reusing {root}")
        return root
    with tqdm(total=synth.num_scenes * synth.samples_per_scene, unit="sample", desc="synth") as bar:
        generate_dataset(synth, root, progress=lambda _d: bar.update(1))
    stamp.write_text(wanted)
    return root


def build_cache(cfg: DemoConfig, dataroot: Path, checkpoint: Path) -> tuple[Path, Any]:
    """Stage 3: the Ray cache job over ``mini_train`` (resumes a partial cache)."""
    from pipeline.cache_job import CacheJobConfig
    from pipeline.cache_plan import TeacherSource
    from pipeline.ray_runner import run_cache_job
    from storage.nuscenes_reader import NuScenesReader

    reader = NuScenesReader(dataroot, version="v1.0-mini", split="mini_train")
    out = cfg.root / "cache"
    job = CacheJobConfig(shard_size=8, batch_size=4, image_size=_student_image_size(cfg))
    summary = run_cache_job(job, reader, TeacherSource(checkpoint=str(checkpoint)), str(out))
    _log(summary.format(max_errors=5))
    return out, summary


def _student_config(cfg: DemoConfig) -> Any:
    from student.config import StudentConfig

    return StudentConfig.tiny() if cfg.student == "tiny" else StudentConfig()


def _student_image_size(cfg: DemoConfig) -> tuple[int, int]:
    h, w = _student_config(cfg).image_hw  # StudentConfig keeps (height, width)
    return (w, h)


def train_students(cfg: DemoConfig, dataroot: Path, cache: Path) -> list[StudentRun]:
    """Stage 4: the same student, seed and budget, without and with distillation."""
    from storage.nuscenes_reader import NuScenesReader
    from student.trainer import TrainConfig, train_student

    train = NuScenesReader(dataroot, version="v1.0-mini", split="mini_train")
    val = NuScenesReader(dataroot, version="v1.0-mini", split="mini_val")
    runs = []
    for name, distill in (("student_no_kd", False), ("student_kd", True)):
        _log(f"training {name} ({cfg.steps} steps)")
        tc = TrainConfig(student=_student_config(cfg), no_distill=not distill, steps=cfg.steps, epochs=10_000,
                         batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, workers=cfg.workers,
                         device=cfg.device, out_dir=str(cfg.root / name), resume=True,
                         warmup_steps=max(1, cfg.steps // 20))
        res = train_student(tc, train, cache if distill else None, eval_reader=val)
        runs.append(StudentRun(name=name, distill=distill, metrics=res.metrics, loss_log=res.loss_log,
                               seconds_per_step=res.seconds_per_step, steps=res.steps,
                               final_losses=res.final_losses))
        _log(f"{name}: mAP {res.metrics.mAP:.4f} NDS {res.metrics.NDS:.4f}")
    return runs


def render_shows(cfg: DemoConfig, dataroot: Path, cache: Path) -> list[Path]:
    """``bevkd show`` renders of the first ``show_samples`` cached samples."""
    from pipeline.show import render_sample
    from storage.cache import CacheReader
    from storage.nuscenes_reader import NuScenesReader

    reader = NuScenesReader(dataroot, version="v1.0-mini", split="mini_train")
    cached = CacheReader(cache)
    out = []
    for row in cached.ok_rows[: cfg.show_samples]:
        token = cached.read(int(row), decode=False).sample_token
        res = render_sample(cached, token, cfg.root / "report" / f"show-{token}.png", sample=reader.read(token))
        out.append(res.path)
    return out


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run every stage and write the report; returns where everything is."""
    from pipeline.report import write_report
    from storage.cache.inspect import inspect_cache

    cfg.root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    dataroot = generate_data(cfg)
    seconds["synth"] = time.perf_counter() - t
    checkpoint = Path(cfg.teacher_checkpoint) if cfg.teacher_checkpoint else DEFAULT_TEACHER
    if not checkpoint.exists():
        raise FileNotFoundError(f"teacher checkpoint {checkpoint} not found: train one with `bevkd train-teacher` "
                                "and pass --teacher-checkpoint")
    _log(f"teacher: {checkpoint}")
    t = time.perf_counter()
    cache, job = build_cache(cfg, dataroot, checkpoint)
    seconds["cache job"] = time.perf_counter() - t
    t = time.perf_counter()
    students = train_students(cfg, dataroot, cache)
    seconds["students (2 runs + eval)"] = time.perf_counter() - t
    t = time.perf_counter()
    shows = render_shows(cfg, dataroot, cache)
    result = DemoResult(config=cfg, report=cfg.root / "report" / "index.html", students=students, cache=cache,
                        cache_summary=inspect_cache(str(cache)), cache_job=job, stage_seconds=seconds, shows=shows)
    seconds["show + report"] = time.perf_counter() - t
    write_report(result)
    return result
