"""``bevkd cache``: run a teacher once over a dataset into a target cache, on Ray; resumable.

Rerunning the same command resumes (committed shards are skipped, nothing is written twice),
retries the rows that failed before (their input may have been fixed; committed ok rows are
kept) and completes a cache whose creation was interrupted; rerunning with another teacher,
weights, grid, target set or dataset against an existing cache is refused unless
``--overwrite``. Exit codes: see :data:`EPILOG`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.dataset_args import add_reader_arguments, positive_int, reader_from_args
from storage.image_check import IMAGE_CHECKS

EPILOG = """exit codes:
  0  done; failed rows (if any) within --max-failed-fraction
  1  done, but more rows failed than --max-failed-fraction allows (rerun retries them)
  2  refused or not done: bad flags or input, a cache made differently at --out, an unusable
     teacher or checkpoint, --out not writable, or writing stopped (disk full; rerun resumes)
Errors are one line on stderr (BEVKD_DEBUG=1 shows the traceback)."""


class _DeprecatedImageSize(argparse.Action):
    """``--image-size W H`` / ``--teacher-image-size W H`` (width first): stored as ``(H, W)`` in
    the ``--image-hw`` / ``--teacher-image-hw`` destination, with one deprecation line on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        w, h = list(values or ())
        new = option_string.replace("-size", "-hw") if option_string else "--image-hw"
        print(f"bevkd cache: {option_string} W H is deprecated, use {new} {h} {w} (height first, as in configs)",
              file=sys.stderr)
        setattr(namespace, self.dest, (h, w))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_reader_arguments(parser, box_check=True)
    g = parser.add_argument_group("teacher and targets")
    g.add_argument("--teacher", default=None,
                   help="registered teacher name (centerpoint, centerpoint_voxel0075, bevfusion) or "
                        "'package.module:factory' (default: the name stored in --checkpoint)")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="teacher weights (teachers.registry.save_checkpoint format or a state dict); "
                        "without it the teacher is freshly initialised from --init-seed")
    g.add_argument("--init-seed", type=int, default=0,
                   help="torch seed of freshly initialised weights, identical in every worker (default: %(default)s)")
    g.add_argument("--targets", nargs="+", default=None, metavar="NAME",
                   help="targets to store, e.g. bev_features/neck heatmap boxes fg_mask view_mask lidar_depth "
                        "(default: everything the teacher and the LiDAR target builders produce)")
    g.add_argument("--views", type=int, default=0, metavar="K",
                   help="also store K BEV-augmented views per sample (rotation +-22.5 deg, scale 0.95-1.05, "
                        "x/y flips p=0.5; the teacher runs on the moved points; default: %(default)s)")
    g.add_argument("--view-seed", type=int, default=0, help="seed of the view augmentations (default: %(default)s)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--image-hw", type=positive_int, nargs=2, default=(256, 704), metavar=("H", "W"),
                      help="student image height and width the camera targets (view_mask, lidar_depth) are made "
                           "for (default: 256 704)")
    size.add_argument("--image-size", dest="image_hw", type=positive_int, nargs=2, metavar=("W", "H"),
                      action=_DeprecatedImageSize, help="deprecated: --image-hw H W")
    tsize = g.add_mutually_exclusive_group()
    tsize.add_argument("--teacher-image-hw", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                       help="resize the six images to H x W and give them to the teacher (camera teachers such as "
                            "bevfusion need it; default: points only)")
    tsize.add_argument("--teacher-image-size", dest="teacher_image_hw", type=positive_int, nargs=2, metavar=("W", "H"),
                       action=_DeprecatedImageSize, help="deprecated: --teacher-image-hw H W")
    g.add_argument("--depth-stride", type=int, default=16,
                   help="pixel stride of the lidar_depth maps (default: %(default)s)")
    g.add_argument("--max-boxes", type=int, default=500, help="capacity of the stored boxes (default: %(default)s)")
    g.add_argument("--image-check", choices=IMAGE_CHECKS, default="draft",
                   help="how camera images are checked so a broken JPEG fails its row (the check `bevkd info` "
                        "runs): header = parse the header only, draft = 1/8-scale JPEG decode of the whole "
                        "stream, decode = full decode, none (default: %(default)s)")
    j = parser.add_argument_group("job")
    j.add_argument("--out", required=True, metavar="CACHE", help="cache location: a directory or an fsspec URL")
    j.add_argument("--shard-size", type=int, default=32,
                   help="rows per shard: the unit of work and of commit (default: %(default)s)")
    j.add_argument("--batch-size", type=int, default=4, help="rows per teacher forward (default: %(default)s)")
    j.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, ray://host:10001); one teacher actor per GPU, else per CPU "
                        "slot. Default: start a local Ray sized to this machine")
    j.add_argument("--workers", type=int, default=None, help="cap on the number of teacher actors")
    j.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                   help="GPUs per actor; a fraction shares a GPU (0.5: two teachers per GPU), 0 runs on CPUs "
                        "(default: one actor per GPU when the cluster has GPUs, else CPU actors)")
    j.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="batches read, checked and prepared ahead of the teacher in N threads per worker, the "
                        "teacher one batch ahead of encoding and writing; 0: one stage after the other. Same "
                        "rows either way. Give GPU actors --cpus-per-worker > N (default: 2 on GPU actors, "
                        "0 on CPU, where the teacher needs the cores itself)")
    j.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs reserved per actor (default: %(default)s)")
    j.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per worker, also the threads that compress a shard's rows (Ray sets OMP "
                        "threads to 1; default: %(default)s)")
    j.add_argument("--no-ray", action="store_true",
                   help="run the shards in a plain loop in this process instead of on Ray")
    j.add_argument("--overwrite", action="store_true",
                   help="replace an existing cache made with another teacher, weights, grid, targets or dataset "
                        "(only a bevkd cache is ever deleted: any other non-empty --out, or a cache folder that "
                        "also holds other files, is refused)")
    j.add_argument("--max-failed-fraction", type=float, default=0.05,
                   help="exit non-zero when more than this fraction of rows failed (default: %(default)s)")
    j.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def check_out(out: str) -> None:
    """Refuse an ``--out`` that can never hold a cache, before any work: a local path that is a
    file, lies under a file, or whose nearest existing folder is not writable (permission,
    read-only file system). URLs are left to their store.

    Raises:
        NotADirectoryError / PermissionError: one line naming the path.
    """
    if "://" in out and not out.startswith("file://"):
        return
    path = os.path.abspath(out.removeprefix("file://"))
    if os.path.isfile(path):
        raise NotADirectoryError(f"--out {path} is a file, not a cache directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"--out {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {path}: {existing} is not writable (permission or read-only file system)")


def failed_rows_before(out: str) -> int:
    """Failed rows an existing, completely created cache at ``out`` holds (0 if none / no cache)."""
    from storage.cache import layout, manifest, stores

    local = "://" not in out or out.startswith("file://")
    if local and not os.path.isdir(out.removeprefix("file://")):
        return 0
    store = stores.open_store(out, read_only=True)  # a writable LocalStore would create the folder
    if not layout.is_cache(store) or layout.unfinished_creation(store) is not None:
        return 0
    statuses = [t.column("status").to_pylist() for i in manifest.committed_shards(store)
                if (t := manifest.read_fragment(store, i)) is not None]
    return sum(s != manifest.STATUS_OK for column in statuses for s in column)


def run(args: argparse.Namespace) -> int:
    from pipeline.cache_job import CacheJobConfig, ViewAugmentConfig
    from pipeline.cache_plan import TeacherSource, run_loop
    from storage.errors import CacheIncompleteError, CacheMetadataError, CacheMismatchError, CacheWriteError

    try:
        check_out(args.out)
        if args.overwrite:  # refuse before any work; CacheWriter.create checks again right before deleting
            from storage.cache import overwrite, stores

            overwrite.check_overwritable(stores.open_store(args.out))  # not a cache, or one with others' files
        retry = 0 if args.overwrite else failed_rows_before(args.out)
        if retry:
            print(f"bevkd cache: retrying {retry} failed rows of {args.out} (committed ok rows are kept)",
                  file=sys.stderr)
        reader = reader_from_args(args)
        (h, w), teacher_hw = args.image_hw, args.teacher_image_hw
        config = CacheJobConfig(targets=tuple(args.targets) if args.targets else None, shard_size=args.shard_size,
                                views=args.views, batch_size=args.batch_size, image_size=(w, h),
                                teacher_image_size=(teacher_hw[1], teacher_hw[0]) if teacher_hw else None,
                                depth_stride=args.depth_stride, max_boxes=args.max_boxes,
                                image_check=args.image_check, augment=ViewAugmentConfig(seed=args.view_seed),
                                torch_threads=args.torch_threads, prefetch=args.prefetch or 0)
        spec = TeacherSource(name=args.teacher, checkpoint=args.checkpoint, init_seed=args.init_seed)
        if args.no_ray:
            import torch

            torch.set_num_threads(args.torch_threads)
            summary = run_loop(config, reader, spec, args.out, overwrite=args.overwrite, progress=not args.no_progress)
        else:
            from pipeline.ray_runner import RayJobError, run_cache_job

            try:
                summary = run_cache_job(config, reader, spec, args.out, address=args.address,
                                        overwrite=args.overwrite, progress=not args.no_progress,
                                        max_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                                        gpus_per_worker=args.gpus_per_worker,
                                        auto_prefetch=args.prefetch is None)
            except RayJobError as exc:
                print(f"bevkd cache: {exc}", file=sys.stderr)
                return 2
    except (CacheMismatchError, CacheMetadataError, CacheIncompleteError, CacheWriteError, ValueError,
            FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"bevkd cache: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    if summary.failed_fraction > args.max_failed_fraction:
        print(f"bevkd cache: {summary.rows_failed} of {summary.rows_ok + summary.rows_failed} rows failed "
              f"({100 * summary.failed_fraction:.1f}% > --max-failed-fraction {100 * args.max_failed_fraction:.1f}%)",
              file=sys.stderr)
        return 1
    return 0
