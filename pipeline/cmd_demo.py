"""``bevkd demo``: generate data, cache the reference teacher once (Ray), train the camera-only
student without and with distillation from the cache over several seeds, evaluate every run with
the devkit, write a report with mean ± std and the per-seed distillation gain.

Scaling up on a GPU: ``bevkd demo --student base --device cuda --scenes 10 --samples-per-scene 40
--steps 20000 --batch-size 8 --seeds 3`` (ResNet-50 at 256x704; more scenes need
``--samples-per-scene`` rather than ``--scenes``, which v1.0-mini caps at 10)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
The defaults take ~13 minutes on 2 idle CPU cores (measured: 13 min 3 s). To scale up on a GPU:
  bevkd demo --student base --device cuda --samples-per-scene 40 --steps 20000 --batch-size 8 --seeds 3
(ResNet-50 at 256x704). v1.0-mini caps --scenes at 10; --samples-per-scene adds data instead.
Rerunning with the same --out reuses every finished stage (data, cache, students)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.demo import DemoConfig

    d = DemoConfig()
    parser.add_argument("--out", default=d.out_dir, metavar="DIR",
                        help="output directory; rerunning reuses finished stages (default: %(default)s)")
    parser.add_argument("--scenes", type=int, default=d.scenes,
                        help="generated scenes, the first 2 are mini_val (default: %(default)s)")
    parser.add_argument("--samples-per-scene", type=int, default=d.samples_per_scene,
                        help="keyframes per scene (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="data, init and order seed (default: %(default)s)")
    parser.add_argument("--teacher-checkpoint", default=None, metavar="FILE",
                        help="teacher weights (default: the project's saved reference LiDAR teacher)")
    parser.add_argument("--student", choices=("tiny", "base"), default=d.student,
                        help="tiny: CPU-sized; base: ResNet-50 at 256x704 for a GPU (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=d.steps,
                        help="optimizer steps per student, the same for both (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=d.seeds,
                        help="train every student once per seed (seed, seed+1, ...); the report gives mean ± std "
                             "over seeds and the per-seed KD gain (default: %(default)s)")
    parser.add_argument("--unlabelled-per-sample", type=int, default=d.unlabelled_per_sample,
                        help="unlabelled camera frames generated between keyframes; the teacher is cached over "
                             "them and a third student trains on keyframes + these frames (0: no third student; "
                             "default: %(default)s)")
    parser.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--loader-workers", type=int, default=d.workers, metavar="N",
                        help="DataLoader workers per student (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, dest="workers_deprecated", metavar="N",
                        help="deprecated alias of --loader-workers (in `bevkd cache`, --workers means Ray actors)")


def run(args: argparse.Namespace) -> int:
    from pipeline.demo import DemoConfig, run_demo
    from pipeline.report import format_mean_std

    if args.workers_deprecated is not None:
        print("bevkd demo: --workers is deprecated here, use --loader-workers (DataLoader workers)", file=sys.stderr)
        args.loader_workers = args.workers_deprecated
    cfg = DemoConfig(out_dir=args.out, scenes=args.scenes, samples_per_scene=args.samples_per_scene, seed=args.seed,
                     teacher_checkpoint=args.teacher_checkpoint, student=args.student, steps=args.steps,
                     batch_size=args.batch_size, lr=args.lr, device=args.device, workers=args.loader_workers,
                     seeds=args.seeds, unlabelled_per_sample=args.unlabelled_per_sample)
    if args.seeds < 1 or args.steps < 1:
        print("bevkd demo: --seeds and --steps must be >= 1", file=sys.stderr)
        return 2
    res = run_demo(cfg)
    print()
    for name in res.names:
        nds = [r.metrics.NDS for r in res.runs_of(name)]
        maps = [r.metrics.mAP for r in res.runs_of(name)]
        print(f"{name:<18} NDS {format_mean_std(nds)}  mAP {format_mean_std(maps)}  ({len(nds)} seeds)")
    for name, what in (("student_kd", "distillation"), ("student_unlabelled", "distillation + unlabelled frames")):
        if name in res.names:
            g = res.gain(name)
            print(f"{what} gain ({name} - student_no_kd, per seed): NDS {g['nds_mean']:+.4f} ± {g['nds_std']:.4f}  "
                  f"mAP {g['map_mean']:+.4f} ± {g['map_std']:.4f}")
    print(f"report: {res.report.resolve()}")
    return 0
