"""The end-to-end demo (``bevkd demo``): the job users come for, on generated data.

Stages, each resumable (rerunning the command reuses what is already on disk):

1. ``synth``   generate a nuScenes-format dataset (:func:`storage.synth.generate_dataset`);
2. ``teacher`` the project's saved reference LiDAR teacher (or ``--teacher-checkpoint``);
3. ``cache``   the Ray cache job over the training split's keyframes and its unlabelled frames
   (:func:`pipeline.ray_runner.run_cache_job`);
4. ``student`` camera-only students with the same step budget, once per seed: without
   distillation, distilled from the cache, and distilled on keyframes + unlabelled non-keyframe
   frames (detection loss on keyframes only); every run evaluated on the validation split with
   the devkit's ``DetectionEval`` (with mAP per distance band);
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
DEFAULT_TEACHER = Path(__file__).resolve().parents[1] / "teachers" / "checkpoints" / "centerpoint_road.pt"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Scale of the demo. Defaults take ~15 minutes on an idle 2-core CPU (plus ~2.5 min of install).

    Args:
        out_dir: everything goes here (data, cache, students, report).
        scenes / samples_per_scene / seed / image_size: the generated dataset (the first two
            scenes are ``mini_val``, the rest ``mini_train``).
        teacher_checkpoint: teacher weights (default: the project's saved checkpoint).
        student: ``tiny`` (CPU) or ``base`` (ResNet-50, 256x704: for a GPU).
        steps / batch_size / lr: the budget, identical for every student.
        seeds: each student is trained once per seed ``seed, seed + 1, ...`` (model init, data
            order, augmentation); the report gives mean and standard deviation over seeds and the
            per-seed difference KD - no KD.
        distance_bands: edges (m) of the AP-per-distance bands (devkit matching per band).
        unlabelled_per_sample: non-keyframe camera frames (and LiDAR sweeps) generated between two
            keyframes; the teacher is cached over them too and a third student trains on labelled
            keyframes + these unlabelled frames (0: no third student).
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
    steps: int = 300
    batch_size: int = 2
    lr: float = 1e-3
    seeds: int = 2
    distance_bands: tuple[float, ...] = (15.0, 30.0)
    unlabelled_per_sample: int = 1
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
    seed: int
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

    def runs_of(self, name: str) -> list[StudentRun]:
        """The runs of student ``name``, by seed."""
        return sorted((s for s in self.students if s.name == name), key=lambda s: s.seed)

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(s.name for s in self.students))

    def gain(self, name: str, base: str = "student_no_kd") -> dict[str, Any]:
        """Per-seed difference ``name - base`` of NDS and mAP: mean, std (over seeds, ddof=1 when
        there are several, else 0) and the per-seed values."""
        a, b = {r.seed: r for r in self.runs_of(name)}, {r.seed: r for r in self.runs_of(base)}
        seeds = sorted(set(a) & set(b))
        from pipeline.report import mean_std

        nds = [a[k].metrics.NDS - b[k].metrics.NDS for k in seeds]
        map_ = [a[k].metrics.mAP - b[k].metrics.mAP for k in seeds]
        (nds_mean, nds_std), (map_mean, map_std) = mean_std(nds), mean_std(map_)
        return {"nds_mean": nds_mean, "nds_std": nds_std, "map_mean": map_mean, "map_std": map_std,
                "seeds": seeds, "nds": nds, "map": map_}

    @property
    def nds_gain(self) -> float:
        """Mean over seeds of the KD - no-KD NDS difference."""
        return float(self.gain("student_kd")["nds_mean"])


def _log(msg: str) -> None:
    print(f"[bevkd demo] {msg}", flush=True)


def generate_data(cfg: DemoConfig) -> Path:
    """Stage 1: the generated dataroot (reused when its recorded config matches)."""
    from tqdm import tqdm

    from storage.synth import SynthConfig, generate_dataset

    root = cfg.root / "data"
    synth = SynthConfig(num_scenes=cfg.scenes, samples_per_scene=cfg.samples_per_scene, seed=cfg.seed,
                        image_size=(cfg.image_size[0], cfg.image_size[1]), sweeps_per_sample=cfg.unlabelled_per_sample,
                        camera_sweeps_per_sample=cfg.unlabelled_per_sample)
    stamp = root / "demo_synth_config.json"
    wanted = json.dumps(asdict(synth), sort_keys=True, default=list)
    if stamp.exists() and stamp.read_text() == wanted:
        _log(f"dataset: reusing {root}")
        return root
    with tqdm(total=synth.num_scenes * synth.samples_per_scene, unit="sample", desc="synth") as bar:
        generate_dataset(synth, root, progress=lambda _d: bar.update(1))
    stamp.write_text(wanted)
    return root


def build_cache(cfg: DemoConfig, dataroot: Path, checkpoint: Path) -> tuple[Path, Any, Path | None]:
    """Stage 3: the Ray cache job over ``mini_train`` keyframes and, when the demo has unlabelled
    frames, over ``mini_train``'s non-keyframe frames (resumes partial caches).

    Returns:
        ``(keyframe cache, its job summary, unlabelled-frame cache or None)``.
    """
    from pipeline.cache_job import CacheJobConfig
    from pipeline.cache_plan import TeacherSource
    from pipeline.ray_runner import run_cache_job
    from storage.nuscenes_reader import NuScenesReader

    reader = NuScenesReader(dataroot, version="v1.0-mini", split="mini_train")
    out = cfg.root / "cache"
    job = CacheJobConfig(shard_size=8, batch_size=4, image_size=_student_image_size(cfg))
    source = TeacherSource(checkpoint=str(checkpoint))
    summary = run_cache_job(job, reader, source, str(out))
    _log(summary.format(max_errors=5))
    if not cfg.unlabelled_per_sample:
        return out, summary, None
    sweeps = NuScenesReader(dataroot, version="v1.0-mini", split="mini_train", frames="sweeps")
    unlabelled = cfg.root / "cache_unlabelled"
    more = run_cache_job(job, sweeps, source, str(unlabelled))
    _log("unlabelled frames: " + more.format(max_errors=5))
    return out, summary, unlabelled


def demo_student_config(student: str) -> Any:
    """The demo's student: ``tiny`` (:meth:`StudentConfig.demo`, CPU-sized, on the demo teacher's
    grid) or ``base`` (ResNet-50 at 256x704 on the same grid)."""
    from student.config import StudentConfig

    return StudentConfig.demo() if student == "tiny" else StudentConfig.demo_base()


def _student_config(cfg: DemoConfig) -> Any:
    return demo_student_config(cfg.student)


def _student_image_size(cfg: DemoConfig) -> tuple[int, int]:
    h, w = _student_config(cfg).image_hw  # StudentConfig keeps (height, width)
    return (w, h)


def train_students(cfg: DemoConfig, dataroot: Path, cache: Path, unlabelled_cache: Path | None = None
                   ) -> list[StudentRun]:
    """Stage 4: the same student and budget once per seed: without distillation, distilled from
    the keyframe cache, and (with ``unlabelled_cache``) distilled on keyframes + unlabelled frames
    (detection loss on keyframes only)."""
    from storage.nuscenes_reader import NuScenesReader
    from student.trainer import TrainConfig, train_student

    train = NuScenesReader(dataroot, version="v1.0-mini", split="mini_train")
    val = NuScenesReader(dataroot, version="v1.0-mini", split="mini_val")
    sweeps = (NuScenesReader(dataroot, version="v1.0-mini", split="mini_train", frames="sweeps")
              if unlabelled_cache is not None else None)
    students = [("student_no_kd", False), ("student_kd", True)]
    students += [("student_unlabelled", True)] if sweeps is not None else []
    runs = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        for name, distill in students:
            _log(f"training {name}, seed {seed} ({cfg.steps} steps)")
            tc = TrainConfig(student=_student_config(cfg), no_distill=not distill, steps=cfg.steps, epochs=10_000,
                             batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, workers=cfg.workers,
                             device=cfg.device, out_dir=str(cfg.root / name / f"seed{seed}"), resume=True,
                             warmup_steps=max(1, cfg.steps // 20), distance_bands=cfg.distance_bands)
            mixed = name == "student_unlabelled"
            res = train_student(tc, train, cache if distill else None, eval_reader=val,
                                unlabelled_reader=sweeps if mixed else None,
                                unlabelled_cache=unlabelled_cache if mixed else None)
            if res.metrics is None:
                raise RuntimeError(f"{name}: the devkit evaluation did not run (mini_val of {dataroot})")
            runs.append(StudentRun(name=name, distill=distill, seed=seed, metrics=res.metrics, loss_log=res.loss_log,
                                   seconds_per_step=res.seconds_per_step, steps=res.steps,
                                   final_losses=res.final_losses))
            _log(f"{name} seed {seed}: mAP {res.metrics.mAP:.4f} NDS {res.metrics.NDS:.4f}")
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
    cache, job, unlabelled_cache = build_cache(cfg, dataroot, checkpoint)
    seconds["cache job"] = time.perf_counter() - t
    t = time.perf_counter()
    students = train_students(cfg, dataroot, cache, unlabelled_cache)
    seconds[f"students ({len({s.name for s in students})} x {cfg.seeds} seeds + eval)"] = time.perf_counter() - t
    t = time.perf_counter()
    shows = render_shows(cfg, dataroot, cache)
    result = DemoResult(config=cfg, report=cfg.root / "report" / "index.html", students=students, cache=cache,
                        cache_summary=inspect_cache(str(cache)), cache_job=job, stage_seconds=seconds, shows=shows)
    seconds["show + report"] = time.perf_counter() - t
    write_report(result)
    return result
