"""``bevkd train``: train a camera-only student from a teacher-target cache, then evaluate it.

Single process by default; under ``torchrun --nproc-per-node N -m pipeline.cli train ...`` each
process trains one DDP replica on its own rows (gloo on CPU, NCCL on GPU).

The whole :class:`student.train_config.TrainConfig` (student, distillation weights, augmentation,
optimiser) is one YAML/JSON file (``--config``) with dotted overrides (``--set``); operational
flags given on the command line win over the file, ``--set`` wins over both, and
``--print-config`` shows the result.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

EPILOG = """\
configuration (precedence: --student preset < --config FILE < flags given < --set):
  bevkd train --dataroot D --cache C --print-config > run.yaml     # the full resolved config
  bevkd train --dataroot D --cache C --config run.yaml --set distill.weights.instance=1.0 \\
      --set student.image_hw=[128,352] --set data.bev_aug=null
splits: training defaults to the cache's recorded split (else mini_train / train) and evaluation
to its held-out pair (mini_val / val); training and evaluating on one split prints a warning.
DDP: torchrun --nproc-per-node 2 -m pipeline.cli train --dataroot D --cache C --device cuda ..."""

#: flag dest -> TrainConfig field, for flags whose value (when given) overrides the config file.
_FLAG_FIELDS = {"epochs": "epochs", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
                "warmup_steps": "warmup_steps", "stop_after": "stop_after", "seed": "seed", "no_distill": "no_distill",
                "recipe": "recipe", "loader_workers": "workers", "device": "device", "amp": "amp", "out": "out_dir",
                "resume": "resume", "overwrite": "overwrite", "checkpoint_every": "checkpoint_every",
                "eval_every": "eval_every", "tensorboard": "tensorboard", "backbone_weights": "backbone_weights",
                "unlabelled_pseudo_labels": "unlabelled_pseudo_labels"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dataset_args import add_reader_arguments

    add_reader_arguments(parser, resolved_later={  # training's own defaults: resolved in run() (cache, then pair)
        "version": "nuScenes table version folder (default: the cache's, else v1.0-mini)",
        "split": ("devkit split trained on (default: the cache's recorded split, else mini_train for v1.0-mini, "
                  "train for v1.0-trainval)")})
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="teacher-target cache of the training split (refused if its schema version or dataset "
                             "(id, version, split) differ, or it lacks a target the losses need); its BEV grid may "
                             "differ from the student's: the teacher's maps are resampled onto the student's grid. "
                             "Omit to train without a teacher")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="checkpoints, train_log.jsonl (per-step loss terms, evaluations) and eval output "
                             "(default: runs/student)")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training split (default: 1)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in total")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per process per step (default: 2)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: 2e-4)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear LR warm-up steps, then cosine decay to 0 over the run (default: 0)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end this invocation after N steps (checkpointed; the schedule still spans the run); "
                             "continue later with --resume")
    parser.add_argument("--seed", type=int, default=None, help="init, data order and augmentation seed (default: 0)")
    parser.add_argument("--no-distill", action="store_true", default=None,
                        help="detection + depth loss only (the no-distillation baseline)")
    parser.add_argument("--recipe", choices=("ablated", "all"), default=None,
                        help="distillation terms when the config sets none: 'ablated' = the winner of bevkd ablate "
                             "(BEVDistill instance distillation, docs/ablation.md); 'all' = every term the cache "
                             "allows at weight 1 (default: ablated)")
    parser.add_argument("--loader-workers", type=int, default=None, metavar="N",
                        help="DataLoader worker processes per rank (default: 2)")
    parser.add_argument("--workers", type=int, default=None, dest="workers_deprecated", metavar="N",
                        help="deprecated alias of --loader-workers (in `bevkd cache`, --workers means Ray actors)")
    parser.add_argument("--device", default=None,
                        help="auto (GPU of LOCAL_RANK if available, else CPU), cpu or cuda (default: auto)")
    parser.add_argument("--amp", action="store_true", default=None,
                        help="mixed precision: CUDA float16 autocast + grad scaling (bfloat16 autocast on CPU)")
    parser.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoints/last.pt")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="start afresh in an OUT that already holds a run, replacing its checkpoint and log "
                             "(without --resume or --overwrite such an OUT is refused)")
    parser.add_argument("--student", choices=("base", "tiny"), default=None,
                        help="preset the config adjusts: base = ResNet-50, 256x704 images (BEVDepth); tiny = the "
                             "CPU/test model (default: base when a CUDA device is available and --device is not "
                             "cpu, else tiny)")
    parser.add_argument("--backbone-weights", metavar="FILE", default=None,
                        help="torchvision-format ImageNet ResNet state dict (e.g. resnet50-11ad3fa6.pth) loaded "
                             "weights-only into the image backbone; without it the base student trains from "
                             "scratch (a warning says so)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="TrainConfig as YAML or JSON (any subset of the keys --print-config shows; an old "
                             "StudentConfig JSON is read as the student section)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config key, dotted, value in YAML syntax (repeatable), e.g. "
                             "--set distill.weights.instance=1.0 --set data.image_aug.flip_prob=0")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved full TrainConfig as YAML and exit")
    parser.add_argument("--eval-split", default=None,
                        help="devkit split evaluated (default: the held-out pair of --split: mini_val / val); "
                             "needs --dataroot")
    parser.add_argument("--no-eval", action="store_true", help="skip the devkit evaluation")
    parser.add_argument("--eval-every", type=int, default=None, metavar="N",
                        help="also evaluate every N steps, results appended to train_log.jsonl (default: 0 = only "
                             "at the end)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="also checkpoint every N steps (default: 0 = off)")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write TensorBoard event files to OUT/tensorboard (needs the tensorboard package: "
                             "pip install 'bevkd[tensorboard]')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    u.add_argument("--unlabelled-pseudo-labels", action="store_true", default=None,
                   help="also train detection on unlabelled rows against the teacher's boxes above "
                        "DistillationConfig.pseudo_label_min_score")


def _say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"bevkd train: {message}", file=sys.stderr)


def _open_cache_info(args: argparse.Namespace) -> Any:
    """The cache's reader (no expectations checked yet), or None without ``--cache``."""
    if not args.cache:
        return None
    from storage.cache import CacheReader

    return CacheReader(args.cache)


def _resolve_dataset(args: argparse.Namespace, cache: Any) -> None:
    """Fill ``--version``/``--split`` from the cache's recorded dataset, else the version's training split."""
    from pipeline.carve import SPLIT_PAIRS

    info = cache.schema.dataset if cache is not None and args.dataroot else None
    recorded = info if info is not None and info.dataset_id == "nuscenes" else None
    if args.version is None:
        args.version = recorded.version if recorded is not None and recorded.version else "v1.0-mini"
    if args.split is None:
        split = recorded.split.split(":")[0] if recorded is not None else ""
        args.split = split or SPLIT_PAIRS.get(args.version, ("mini_train",))[0]


def eval_split(args: argparse.Namespace) -> str:
    """``--eval-split``, else the held-out pair of the training split, else the training split."""
    from pipeline.carve import SPLIT_PAIRS

    if args.eval_split:
        return str(args.eval_split)
    pair = SPLIT_PAIRS.get(args.version)
    return pair[1] if pair is not None and args.split == pair[0] else str(args.split)


def resolve_config(args: argparse.Namespace, cache: Any) -> Any:
    """The run's :class:`TrainConfig`: preset, config file, flags given, ``--set`` (in that order);
    ``distill`` left unset is the recipe's choice for ``cache``'s targets, written out in full.

    Raises:
        student.config_io.ConfigError: a key or value that does not fit (names the dotted key).
        FileNotFoundError: ``--config`` names no file.
    """
    import torch

    from student.config import StudentConfig
    from student.config_io import merge, read_config_file, set_dotted
    from student.packed_targets import spec_from_schema
    from student.train_config import TrainConfig, default_distillation

    preset = args.student or ("base" if torch.cuda.is_available() and args.device != "cpu" else "tiny")
    student = StudentConfig.tiny() if preset == "tiny" else StudentConfig()
    layer = read_config_file(args.config) if args.config else {}
    if "backbone" in layer and "student" not in layer:  # a StudentConfig JSON of earlier versions
        layer = {"student": layer}
    flags = {field: getattr(args, dest) for dest, field in _FLAG_FIELDS.items() if getattr(args, dest) is not None}
    if args.no_progress:
        flags["progress"] = False

    def build(distill: dict[str, Any] | None) -> dict[str, Any]:
        plain = merge(merge(TrainConfig(student=student).to_dict() | {"distill": distill, "workers": 2}, layer),
                      flags)
        for assignment in args.set:
            plain = set_dotted(plain, assignment)
        return dict(plain)

    plain = build(None)
    first = TrainConfig.from_dict(plain)
    if first.distill is None and not first.no_distill:  # write out the recipe's choice, then apply the layers
        spec = spec_from_schema(cache.schema) if cache is not None else None
        available = {t.name for t in cache.schema.targets} if cache is not None else {"lidar_depth"}
        recipe = default_distillation(spec, available, first.recipe).to_dict()
        return TrainConfig.from_dict(build(recipe))
    return first


def _check_flags(args: argparse.Namespace) -> str | None:
    """The first flag with an impossible value, as an error message."""
    for flag, value, low in (("--steps", args.steps, 1), ("--epochs", args.epochs, 1),
                             ("--batch-size", args.batch_size, 1), ("--stop-after", args.stop_after, 1),
                             ("--loader-workers", args.loader_workers, 0), ("--eval-every", args.eval_every, 0),
                             ("--checkpoint-every", args.checkpoint_every, 0)):
        if value is not None and value < low:
            return f"{flag} must be at least {low}, got {value}"
    if args.lr is not None and not 0.0 < args.lr < float("inf"):
        return f"--lr must be > 0 (a finite learning rate), got {args.lr}"
    if not args.unlabelled_dataroot:  # the unlabelled cache records no dataroot: its frames are not guessed
        for flag, value in (("--unlabelled-cache", args.unlabelled_cache),
                            ("--unlabelled-split", args.unlabelled_split),
                            ("--unlabelled-pseudo-labels", args.unlabelled_pseudo_labels)):
            if value is not None:
                return (f"{flag} needs --unlabelled-dataroot (the nuScenes dataroot of the unlabelled frames; it may "
                        "be the --dataroot itself)")
    return None


def run(args: argparse.Namespace) -> int:
    from storage.errors import CacheMismatchError, CheckpointError

    if args.workers_deprecated is not None:
        _say("--workers is deprecated here, use --loader-workers (DataLoader workers; in `bevkd cache` --workers "
             "means Ray actors)")
        if args.loader_workers is None:
            args.loader_workers = args.workers_deprecated
    problem = _check_flags(args)
    if problem:
        _say(problem)
        return 2
    try:
        cache = _open_cache_info(args)
        _resolve_dataset(args, cache)
        config = resolve_config(args, cache)
        if args.print_config:
            from student.config_io import dump_yaml

            print(dump_yaml(config.to_dict()), end="")
            return 0
        return _train(args, config)
    except (CacheMismatchError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as exc:
        _say(str(exc))
        return 2


def _train(args: argparse.Namespace, config: Any) -> int:
    from pipeline.dataset_args import reader_from_args
    from student.run_checks import last_checkpoint
    from student.run_log import TENSORBOARD_INSTALL, tensorboard_available
    from student.trainer import train_student

    if config.resume and not last_checkpoint(config.out_dir).exists():  # resume=True starts afresh in the API
        started = os.path.exists(os.path.join(config.out_dir, "train_log.jsonl"))
        _say(f"nothing to resume in {config.out_dir}: no checkpoints/last.pt ("
             + ("the run stopped before its first checkpoint; pass --overwrite instead of --resume to start it afresh"
                if started else "drop --resume to start the run") + ")")
        return 2
    if config.tensorboard and not tensorboard_available():
        _say(f"--tensorboard needs the tensorboard package, not installed: {TENSORBOARD_INSTALL}")
        return 2
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

        split = eval_split(args)
        if split == args.split:
            _say(f"warning: evaluating on the training split {split} (not held out); pass --eval-split, or "
                 "carve a validation split from the training scenes (pipeline.carve, `bevkd ablate`)")
        eval_reader = NuScenesReader(args.dataroot, version=args.version, split=split)
    elif not args.no_eval:
        _say("no --dataroot, skipping the devkit evaluation (an info file has no devkit tables)")
    result = train_student(config, reader, args.cache, eval_reader=eval_reader, unlabelled_reader=unlabelled,
                           unlabelled_cache=args.unlabelled_cache)
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
