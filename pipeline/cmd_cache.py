"""``bevkd cache``: run a teacher once over a dataset into a target cache, on Ray; resumable.

Rerunning the same command resumes (committed shards are skipped, nothing is written twice);
rerunning with another teacher, weights, grid, target set or dataset against an existing cache
is refused unless ``--overwrite``. Exit code: 0 when the failed rows stay within
``--max-failed-fraction``, 1 past it, 2 when the job was refused or misconfigured.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.dataset_args import add_reader_arguments, reader_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_reader_arguments(parser)
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
    g.add_argument("--image-size", type=int, nargs=2, default=(704, 256), metavar=("W", "H"),
                   help="student image size the camera targets (view_mask, lidar_depth) are made for "
                        "(default: 704 256)")
    g.add_argument("--teacher-image-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="resize the six images to W H and give them to the teacher (camera teachers such as "
                        "bevfusion need it; default: points only)")
    g.add_argument("--depth-stride", type=int, default=16,
                   help="pixel stride of the lidar_depth maps (default: %(default)s)")
    g.add_argument("--max-boxes", type=int, default=500, help="capacity of the stored boxes (default: %(default)s)")
    g.add_argument("--image-check", choices=("draft", "decode", "none"), default="draft",
                   help="how camera images are checked so a broken JPEG fails its row: draft = 1/8-scale JPEG "
                        "decode of the whole stream, decode = full decode, none (default: %(default)s)")
    j = parser.add_argument_group("job")
    j.add_argument("--out", required=True, metavar="CACHE", help="cache location: a directory or an fsspec URL")
    j.add_argument("--shard-size", type=int, default=32,
                   help="rows per shard: the unit of work and of commit (default: %(default)s)")
    j.add_argument("--batch-size", type=int, default=4, help="rows per teacher forward (default: %(default)s)")
    j.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, ray://host:10001); one teacher actor per GPU, else per CPU "
                        "slot. Default: start a local Ray sized to this machine")
    j.add_argument("--workers", type=int, default=None, help="cap on the number of teacher actors")
    j.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs reserved per actor (default: %(default)s)")
    j.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per worker (Ray sets OMP threads to 1; default: %(default)s)")
    j.add_argument("--no-ray", action="store_true",
                   help="run the shards in a plain loop in this process instead of on Ray")
    j.add_argument("--overwrite", action="store_true",
                   help="replace an existing cache made with another teacher, weights, grid, targets or dataset "
                        "(only a bevkd cache is ever deleted: any other non-empty --out is refused)")
    j.add_argument("--max-failed-fraction", type=float, default=0.05,
                   help="exit non-zero when more than this fraction of rows failed (default: %(default)s)")
    j.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args: argparse.Namespace) -> int:
    from pipeline.cache_job import CacheJobConfig, ViewAugmentConfig
    from pipeline.cache_plan import TeacherSource, run_loop
    from storage.errors import CacheMismatchError

    try:
        if args.overwrite:  # refuse before any work; CacheWriter.create checks again right before deleting
            from storage.cache import layout, stores

            layout.check_replaceable(stores.open_store(args.out))
        reader = reader_from_args(args)
        config = CacheJobConfig(targets=tuple(args.targets) if args.targets else None, shard_size=args.shard_size,
                                views=args.views, batch_size=args.batch_size, image_size=tuple(args.image_size),
                                teacher_image_size=tuple(args.teacher_image_size) if args.teacher_image_size else None,
                                depth_stride=args.depth_stride, max_boxes=args.max_boxes,
                                image_check=args.image_check, augment=ViewAugmentConfig(seed=args.view_seed),
                                torch_threads=args.torch_threads)
        spec = TeacherSource(name=args.teacher, checkpoint=args.checkpoint, init_seed=args.init_seed)
        if args.no_ray:
            import torch

            torch.set_num_threads(args.torch_threads)
            summary = run_loop(config, reader, spec, args.out, overwrite=args.overwrite, progress=not args.no_progress)
        else:
            from pipeline.ray_runner import run_cache_job

            summary = run_cache_job(config, reader, spec, args.out, address=args.address, overwrite=args.overwrite,
                                    progress=not args.no_progress, max_workers=args.workers,
                                    cpus_per_worker=args.cpus_per_worker)
    except (CacheMismatchError, ValueError, FileNotFoundError) as exc:
        print(f"bevkd cache: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    if summary.failed_fraction > args.max_failed_fraction:
        print(f"bevkd cache: {summary.rows_failed} of {summary.rows_ok + summary.rows_failed} rows failed "
              f"({100 * summary.failed_fraction:.1f}% > --max-failed-fraction {100 * args.max_failed_fraction:.1f}%)",
              file=sys.stderr)
        return 1
    return 0
