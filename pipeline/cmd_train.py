"""``bevkd train``: train a camera-only student from a teacher-target cache, then evaluate it.

Single process by default; under ``torchrun --nproc-per-node N -m pipeline.cli train ...`` each
process trains one DDP replica on its own rows (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dataset_args import add_reader_arguments

    add_reader_arguments(parser)
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="teacher-target cache of the same dataset split (refused if its grid, schema version or "
                             "dataset differ); omit to train without a teacher")
    parser.add_argument("--out", metavar="DIR", default="runs/student",
                        help="checkpoints, train_log.jsonl (per-step loss terms) and eval output "
                             "(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training split (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in total")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per process per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="linear LR warm-up steps, then cosine decay to 0 over the run (default: %(default)s)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end this invocation after N steps (checkpointed; the schedule still spans the run); "
                             "continue later with --resume")
    parser.add_argument("--seed", type=int, default=0,
                        help="init, data order and augmentation seed (default: %(default)s)")
    parser.add_argument("--no-distill", action="store_true",
                        help="detection + depth loss only (the no-distillation baseline)")
    parser.add_argument("--recipe", choices=("ablated", "all"), default="ablated",
                        help="distillation terms when --config sets none: 'ablated' = the winner of bevkd ablate "
                             "(BEVDistill instance distillation, docs/ablation.md); 'all' = every term the cache "
                             "allows at weight 1 (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader worker processes per rank (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto (GPU of LOCAL_RANK if available, else CPU), cpu or cuda (default: %(default)s)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: CUDA float16 autocast + grad scaling (bfloat16 autocast on CPU)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an OUT that already holds a run, replacing its checkpoint and log "
                             "(without --resume or --overwrite such an OUT is refused)")
    parser.add_argument("--student", choices=("base", "tiny"), default="base",
                        help="base: ResNet-50, 256x704 images (BEVDepth); tiny: the test/CPU model "
                             "(default: %(default)s)")
    parser.add_argument("--config", metavar="JSON", default=None,
                        help="StudentConfig JSON (StudentConfig.to_dict()) overriding --student")
    parser.add_argument("--eval-split", default=None,
                        help="devkit split evaluated at the end (default: --split); needs --dataroot")
    parser.add_argument("--no-eval", action="store_true", help="skip the final devkit evaluation")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (default: off)")
    u = parser.add_argument_group("unlabelled frames (distillation without annotations)")
    u.add_argument("--unlabelled-dataroot", metavar="DIR", default=None,
                   help="nuScenes dataroot of unannotated frames trained on besides the labelled ones: distillation "
                        "terms on every row, detection loss on labelled rows only")
    u.add_argument("--unlabelled-split", default=None, help="its devkit split (default: --split)")
    u.add_argument("--unlabelled-frames", choices=("sweeps", "all"), default="sweeps",
                   help="its frames: the non-keyframe camera sweeps, or all (keyframes there keep their annotations "
                        "and detection loss) (default: %(default)s)")
    u.add_argument("--unlabelled-cache", metavar="DIR", default=None,
                   help="teacher-target cache of the unlabelled frames (`bevkd cache --frames sweeps ...`); required "
                        "with --cache")
    u.add_argument("--unlabelled-pseudo-labels", action="store_true",
                   help="also train detection on unlabelled rows against the teacher's boxes above "
                        "DistillationConfig.pseudo_label_min_score")


def _student_config(args: argparse.Namespace):
    from student.config import StudentConfig

    if args.config:
        with open(args.config) as f:
            return StudentConfig.from_dict(json.load(f))
    return StudentConfig.tiny() if args.student == "tiny" else StudentConfig()


def run(args: argparse.Namespace) -> int:
    from storage.errors import CacheMismatchError
    from pipeline.dataset_args import reader_from_args
    from student.trainer import TrainConfig, train_student

    for flag, value in (("--steps", args.steps), ("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--stop-after", args.stop_after)):
        if value is not None and value < 1:
            print(f"bevkd train: {flag} must be at least 1, got {value}", file=sys.stderr)
            return 2
    try:
        config = TrainConfig(student=_student_config(args), no_distill=args.no_distill, recipe=args.recipe,
                             epochs=args.epochs,
                             steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             workers=args.workers, device=args.device, amp=args.amp, out_dir=args.out,
                             resume=args.resume, overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                             warmup_steps=args.warmup_steps, stop_after=args.stop_after,
                             unlabelled_pseudo_labels=args.unlabelled_pseudo_labels)
        reader = reader_from_args(args)
        unlabelled = None
        if args.unlabelled_dataroot:
            from storage.nuscenes_reader import NuScenesReader

            unlabelled = NuScenesReader(args.unlabelled_dataroot, version=args.version,
                                        split=args.unlabelled_split or args.split, sweeps=args.sweeps,
                                        frames=args.unlabelled_frames)
        eval_reader = None
        if not args.no_eval and args.dataroot:
            from storage.nuscenes_reader import NuScenesReader

            eval_reader = NuScenesReader(args.dataroot, version=args.version, split=args.eval_split or args.split)
        elif not args.no_eval:
            print("bevkd train: no --dataroot, skipping the devkit evaluation (an info file has no devkit tables)")
        result = train_student(config, reader, args.cache, eval_reader=eval_reader, unlabelled_reader=unlabelled,
                               unlabelled_cache=args.unlabelled_cache)
    except (CacheMismatchError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"bevkd train: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    terms = ", ".join(f"{k} {v:.4g}" for k, v in result.final_losses.items())
    print(f"trained {result.steps} steps, {result.seconds_per_step:.3f} s/step; last losses: {terms}")
    print(f"  loss log: {result.loss_log}\n  checkpoint: {result.checkpoint}")
    if result.metrics is not None and eval_reader is not None:
        m = result.metrics
        print(f"  {eval_reader.dataset_id}: mAP {m.mAP:.4f}  NDS {m.NDS:.4f}")
        print("  per-class AP: " + ", ".join(f"{k} {v:.3f}" for k, v in m.per_class_ap.items()))
    return 0
