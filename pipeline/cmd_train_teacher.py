"""``bevkd train-teacher``: train a reference teacher on any reader and evaluate it with the
nuScenes devkit's ``DetectionEval``.

Default data: a generated nuScenes-format dataset (``bevkd synth``) written under
``--work-dir/synth`` when neither ``--dataroot`` nor ``--info`` is given; training uses
``--train-split`` (default ``mini_train``), evaluation ``--split`` (default ``mini_val``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.sample import Sample, SampleReader


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dataset_args import _DeprecatedAlias, add_reader_arguments, positive_int

    add_reader_arguments(parser)
    parser.add_argument("--teacher", default="centerpoint",
                        help="teacher to train: centerpoint (tiny CPU config), centerpoint_voxel0075 (mmdet3d "
                             "nuScenes config) or bevfusion (default: %(default)s)")
    parser.add_argument("--train-split", default="mini_train",
                        help="devkit split to train on; --split is evaluated (default: %(default)s)")
    parser.add_argument("--work-dir", default="work/train_teacher", metavar="DIR",
                        help="generated data, evaluation output and the checkpoint go here (default: %(default)s)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="checkpoint path (default: <work-dir>/<teacher>.pt); with --epochs 0 re-saves "
                             "--checkpoint "
                             "with the new evaluation in its metadata")
    parser.add_argument("--checkpoint", default=None, metavar="FILE",
                        help="start from this checkpoint (with --epochs 0: only evaluate it)")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training split (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default: %(default)s)")
    parser.add_argument("--max-minutes", type=float, default=19.0,
                        help="stop training after this many minutes of wall time, 0 = no limit (default: %(default)s)")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--threads", type=int, dest="torch_threads", action=_DeprecatedAlias, new="--torch-threads",
                        help=argparse.SUPPRESS)  # the old name; `bevkd cache` says --torch-threads
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of data order and augmentation (default: %(default)s)")
    parser.add_argument("--synth-scenes", type=int, default=10,
                        help="scenes to generate when no dataset is given (default: %(default)s)")
    parser.add_argument("--synth-samples", type=int, default=10,
                        help="keyframes per generated scene (default: %(default)s)")
    parser.add_argument("--image-hw", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                        help="camera image height and width for camera teachers, divisible by 16 (default: 192 352)")
    parser.add_argument("--image-size", type=positive_int, nargs=2, default=None, metavar=("W", "H"),
                        help="deprecated (width first): use --image-hw H W, the order of every bevkd config")


def _ensure_data(args: argparse.Namespace) -> None:
    if args.dataroot or args.info:
        return
    from storage.synth import SynthConfig, generate_dataset

    root = Path(args.work_dir) / "synth"
    if not (root / "synth_summary.json").exists():
        from tqdm import tqdm

        cfg = SynthConfig(num_scenes=args.synth_scenes, samples_per_scene=args.synth_samples, seed=args.seed)
        with tqdm(total=cfg.num_scenes * cfg.samples_per_scene, unit="sample", desc="synth") as bar:
            generate_dataset(cfg, root, progress=lambda _d: bar.update(1))
    args.dataroot, args.version = str(root), "v1.0-mini"


def _load_samples(args: argparse.Namespace, split: str) -> tuple[list[Sample], SampleReader]:
    from tqdm import tqdm

    from pipeline.dataset_args import reader_from_args

    a = copy.copy(args)
    a.split = split
    reader = reader_from_args(a)
    return [reader.read(i) for i in tqdm(range(len(reader)), desc=f"read {split}", unit="sample")], reader


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from teachers.registry import TEACHERS, load_teacher, save_checkpoint
    from teachers.train import TeacherTrainConfig, predict, train_teacher

    if args.teacher not in TEACHERS:
        print(f"bevkd train-teacher: unknown teacher {args.teacher!r}; choose from {', '.join(TEACHERS)}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.torch_threads))
    _ensure_data(args)
    os.makedirs(args.work_dir, exist_ok=True)
    out = Path(args.out or Path(args.work_dir) / f"{args.teacher}.pt")
    model, info = load_teacher(args.teacher, checkpoint=args.checkpoint)
    if args.image_size is not None:
        print("bevkd train-teacher: --image-size W H is deprecated, use --image-hw H W", file=sys.stderr)
    h, w = args.image_hw or (args.image_size[::-1] if args.image_size else (192, 352))
    image_size = (w, h) if args.teacher == "bevfusion" else None  # TeacherTrainConfig.image_size is (w, h)
    meta: dict[str, Any] = dict(info.meta)
    if args.epochs > 0:
        train_samples, train_reader = _load_samples(args, args.train_split)
        cfg = TeacherTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=image_size,
                                 max_seconds=60 * args.max_minutes, seed=args.seed)
        with tqdm(desc=f"train {args.teacher}", unit="step") as bar:
            def progress(step: int, total: int, loss: float) -> None:
                bar.total = total
                bar.set_postfix_str(f"loss {loss:.3f}")
                bar.update(1)

            result = train_teacher(model, train_samples, cfg, progress)
        meta.update(steps=result.steps, train_seconds=round(result.seconds, 1), stopped_early=result.stopped_early,
                    final_loss=float(sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))),
                    train_dataset=train_reader.dataset_id, threads=args.torch_threads)
        print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min"
              f"{' (stopped at --max-minutes)' if result.stopped_early else ''}; last loss {meta['final_loss']:.3f}")
    eval_samples, eval_reader = _load_samples(args, args.split)
    preds = predict(model, eval_samples, batch_size=args.batch_size, image_size=image_size)
    if args.info:
        print("evaluation skipped: DetectionEval needs nuScenes tables (--dataroot), an info file has none")
    else:
        from storage.nuscenes_eval import evaluate_detections
        from storage.nuscenes_reader import NuScenesReader

        assert isinstance(eval_reader, NuScenesReader)  # --dataroot given (args.info is not)
        metrics = evaluate_detections(dataroot=args.dataroot, version=args.version, split=args.split, predictions=preds,
                                      output_dir=Path(args.work_dir) / f"eval_{args.teacher}", reader=eval_reader)
        meta.update(eval_split=args.split, mAP=metrics.mAP, NDS=metrics.NDS, per_class_ap=metrics.per_class_ap)
        print(f"{args.teacher} on {eval_reader.dataset_id}: mAP {metrics.mAP:.4f}  NDS {metrics.NDS:.4f}")
        print("  per-class AP: " + json.dumps({k: round(v, 3) for k, v in metrics.per_class_ap.items()}))
    if args.epochs > 0 or args.out:
        sha = save_checkpoint(model, args.teacher, out, meta=meta)
        print(f"checkpoint {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]}…)")
    return 0
