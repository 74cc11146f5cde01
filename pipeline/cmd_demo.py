"""``bevkd demo``: generate data, cache the reference teacher once (Ray), train two students
(without / with distillation from the cache), evaluate both with the devkit, write a report."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help="DataLoader workers per student (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from pipeline.demo import DemoConfig, run_demo

    cfg = DemoConfig(out_dir=args.out, scenes=args.scenes, samples_per_scene=args.samples_per_scene, seed=args.seed,
                     teacher_checkpoint=args.teacher_checkpoint, student=args.student, steps=args.steps,
                     batch_size=args.batch_size, lr=args.lr, device=args.device, workers=args.workers)
    res = run_demo(cfg)
    print()
    for s in res.students:
        print(f"{s.name:<15} NDS {s.metrics.NDS:.4f}  mAP {s.metrics.mAP:.4f}")
    print(f"distillation NDS gain: {res.nds_gain:+.4f}")
    print(f"report: {res.report.resolve()}")
    return 0
