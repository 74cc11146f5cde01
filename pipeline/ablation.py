"""Choose the distillation recipe by ablation on a validation split carved from the training scenes.

``bevkd ablate`` (this module) never reads the split the demo reports on:

1. :func:`pipeline.carve.carve_validation` turns the last ``num_val`` ``mini_train`` scenes of
   the dataset into a validation split (the original ``mini_val`` scenes are hidden);
2. the teacher is cached once over the remaining training scenes (plain loop, no Ray);
3. every recipe of :data:`RECIPES` trains the demo's student once per seed with the same budget
   and is evaluated by the devkit on the carved split;
4. a Markdown table (mean ± std over seeds of NDS, mAP and the per-seed difference to no KD)
   goes to ``--table`` (docs/ablation.md) and every number to ``<out>/ablation.json``.

Runs are resumable: a finished (recipe, seed) is read back from its ``result.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from student.losses.config import DistillationConfig, LossWeights

_BASE = LossWeights()  # detection 1.0 + BEVDepth depth BCE 3.0: what every recipe keeps


def _w(**kw: float) -> LossWeights:
    return replace(_BASE, **kw)


#: name -> loss configuration (None: no distillation). Each term alone, then combinations.
RECIPES: dict[str, DistillationConfig | None] = {
    "no_kd": None,
    "dense_feature (BEVDistill §3.2)": DistillationConfig(weights=_w(dense_feature=1.0)),
    "lgkd_feature (BEV-LGKD)": DistillationConfig(weights=_w(lgkd_feature=1.0)),
    "heatmap (X3KD X-OD)": DistillationConfig(weights=_w(heatmap=1.0)),
    "keypoint_response (UniDistill)": DistillationConfig(weights=_w(keypoint_response=1.0)),
    "instance (BEVDistill §3.3)": DistillationConfig(weights=_w(instance=0.5)),
    "all at 1 (previous default)": DistillationConfig(weights=_w(dense_feature=1.0, lgkd_feature=1.0, heatmap=1.0,
                                                                 keypoint_response=1.0, instance=0.5)),
}


@dataclass(frozen=True, kw_only=True)
class AblationConfig:
    """What :func:`run_ablation` runs.

    Args:
        dataroot: the nuScenes-format dataset (the demo's: ``<demo out>/data``).
        teacher_checkpoint: the teacher to distil from.
        out_dir: carved view, cache, runs and ``ablation.json``.
        recipes: names from :data:`RECIPES` (default: all).
        seeds: seeds per recipe, from 0.
        num_val: training scenes carved into the validation split.
        steps / batch_size / lr / student: the budget and student (as in the demo).
    """

    dataroot: str
    teacher_checkpoint: str
    out_dir: str = "bevkd_ablation"
    recipes: tuple[str, ...] = tuple(RECIPES)
    seeds: int = 3
    num_val: int = 2
    steps: int = 300
    batch_size: int = 2
    lr: float = 1e-3
    student: str = "tiny"


def _log(msg: str) -> None:
    print(f"[bevkd ablate] {msg}", flush=True)


def run_ablation(cfg: AblationConfig, progress: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run every (recipe, seed) not yet finished; returns ``{recipe: {seed: metrics}}`` plus the table rows."""
    from pipeline.cache_job import CacheJobConfig
    from pipeline.cache_plan import run_loop
    from pipeline.cache_plan import TeacherSource
    from pipeline.carve import carve_validation
    from pipeline.demo import demo_student_config
    from storage.nuscenes_reader import NuScenesReader
    from student.trainer import TrainConfig, train_student

    unknown = [r for r in cfg.recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"bevkd ablate: unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    out = Path(cfg.out_dir)
    view = carve_validation(cfg.dataroot, out / "carved", num_val=cfg.num_val)
    train = NuScenesReader(view, version="v1.0-mini", split="mini_train")
    val = NuScenesReader(view, version="v1.0-mini", split="mini_val")
    student = demo_student_config(cfg.student)
    cache = out / "cache"
    h, w = student.image_hw
    progress(f"caching the teacher over {len(train)} carved-train samples -> {cache}")
    run_loop(CacheJobConfig(shard_size=8, batch_size=4, image_size=(w, h)), train,
              TeacherSource(checkpoint=cfg.teacher_checkpoint), str(cache))
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in cfg.recipes:
        for seed in range(cfg.seeds):
            run_dir = out / "runs" / _slug(name) / f"seed{seed}"
            done = run_dir / "result.json"
            if done.exists():
                results.setdefault(name, {})[seed] = json.loads(done.read_text())
                continue
            progress(f"{name}, seed {seed}")
            t = time.perf_counter()
            recipe = RECIPES[name]
            tc = TrainConfig(student=student, distill=recipe, no_distill=recipe is None, steps=cfg.steps,
                             epochs=10_000, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, workers=1, device="cpu",
                             out_dir=str(run_dir), resume=True, warmup_steps=max(1, cfg.steps // 20), progress=False)
            res = train_student(tc, train, None if recipe is None else cache, eval_reader=val)
            assert res.metrics is not None
            row = {"NDS": res.metrics.NDS, "mAP": res.metrics.mAP, "per_class_ap": res.metrics.per_class_ap,
                   "seconds": time.perf_counter() - t}
            done.write_text(json.dumps(row))
            results.setdefault(name, {})[seed] = row
            progress(f"{name}, seed {seed}: NDS {row['NDS']:.4f} mAP {row['mAP']:.4f}")
    (out / "ablation.json").write_text(json.dumps({"config": vars(cfg) | {"recipes": list(cfg.recipes)},
                                                   "results": results}, indent=1))
    return results


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def markdown_table(results: dict[str, dict[int, dict[str, Any]]], base: str = "no_kd") -> str:
    """One row per recipe: NDS, mAP (mean ± std over seeds) and the per-seed difference to ``base``."""
    from pipeline.report import mean_std

    lines = ["| recipe | seeds | NDS | mAP | ΔNDS vs no KD | ΔmAP vs no KD |", "|---|---|---|---|---|---|"]
    ref = results.get(base, {})
    for name, by_seed in results.items():
        seeds = sorted(by_seed)
        nds, map_ = mean_std([by_seed[s]["NDS"] for s in seeds]), mean_std([by_seed[s]["mAP"] for s in seeds])
        common = [s for s in seeds if s in ref]
        if name != base and common:
            dn = mean_std([by_seed[s]["NDS"] - ref[s]["NDS"] for s in common])
            dm = mean_std([by_seed[s]["mAP"] - ref[s]["mAP"] for s in common])
            delta = f"{dn[0]:+.4f} ± {dn[1]:.4f} | {dm[0]:+.4f} ± {dm[1]:.4f}"
        else:
            delta = "— | —"
        stats = f"{nds[0]:.4f} ± {nds[1]:.4f} | {map_[0]:.4f} ± {map_[1]:.4f}"
        lines.append(f"| {name} | {len(seeds)} | {stats} | {delta} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = AblationConfig(dataroot="", teacher_checkpoint="")
    parser.add_argument("--dataroot", required=True, metavar="DIR",
                        help="nuScenes-format dataset whose mini_train scenes are ablated on (e.g. bevkd_demo/data)")
    parser.add_argument("--teacher-checkpoint", default=None, metavar="FILE",
                        help="teacher to distil from (default: the project's reference teacher)")
    parser.add_argument("--out", default=d.out_dir, metavar="DIR", help="work directory (default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", default=None, metavar="NAME",
                        help=f"recipes to run (default: all): {', '.join(RECIPES)}")
    parser.add_argument("--seeds", type=int, default=d.seeds, help="seeds per recipe (default: %(default)s)")
    parser.add_argument("--num-val", type=int, default=d.num_val,
                        help="mini_train scenes carved into the validation split (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=d.steps, help="steps per run (default: %(default)s)")
    parser.add_argument("--table", default=None, metavar="FILE", help="also write the Markdown table here")


def run(args: argparse.Namespace) -> int:
    from pipeline.demo import DEFAULT_TEACHER

    if args.seeds < 1 or args.steps < 1:
        print("bevkd ablate: --seeds and --steps must be >= 1", file=sys.stderr)
        return 2
    cfg = AblationConfig(dataroot=args.dataroot, teacher_checkpoint=args.teacher_checkpoint or str(DEFAULT_TEACHER),
                         out_dir=args.out, recipes=tuple(args.recipes or RECIPES), seeds=args.seeds,
                         num_val=args.num_val, steps=args.steps)
    results = run_ablation(cfg)
    table = markdown_table(results)
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    return 0


__all__ = ["RECIPES", "AblationConfig", "markdown_table", "run_ablation"]
