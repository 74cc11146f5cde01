"""``bevkd synth``: write a synthetic nuScenes-format dataset the devkit loads."""

from __future__ import annotations

import argparse
import sys
import time

#: Default camera image size, (height, width) pixels.
DEFAULT_IMAGE_HW = (270, 480)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dataset_args import positive_int

    parser.add_argument("--out", required=True, metavar="DIR",
                        help="dataroot to write (created; an existing non-empty folder is refused unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataroot bevkd synth wrote before (deleted first, so no old sensor file "
                             "remains); any other non-empty --out, e.g. a real nuScenes dataroot, is refused")
    parser.add_argument("--scenes", type=int, default=10,
                        help="number of scenes; v1.0-mini has 10 names, mini_val (2) filled first "
                             "(default: %(default)s)")
    parser.add_argument("--samples-per-scene", type=int, default=10,
                        help="keyframes per scene, 2 Hz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; same seed -> identical files (default: %(default)s)")
    parser.add_argument("--image-hw", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                        help="camera image height and width in pixels (default: 270 480)")
    parser.add_argument("--image-size", type=positive_int, nargs=2, default=None, metavar=("W", "H"),
                        help="deprecated: --image-hw H W (note the order)")
    parser.add_argument("--tables-only", action="store_true",
                        help="write the 13 tables only, no sensor file: trainval-sized tables in minutes for "
                             "index-scale tests (num_lidar_pts estimated, nothing ray cast)")
    parser.add_argument("--sweeps-per-sample", type=int, default=0,
                        help="non-keyframe LiDAR sweeps between keyframes, under sweeps/ (default: %(default)s)")
    parser.add_argument("--camera-sweeps-per-sample", type=int, default=0,
                        help="non-keyframe (unannotated) images per camera between keyframes, under sweeps/ "
                             "(default: %(default)s)")
    parser.add_argument("--version", default="v1.0-mini", choices=("v1.0-mini", "v1.0-trainval"),
                        help="table version; v1.0-trainval allows more than 10 scenes (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage.synth import SynthConfig, SynthSummary, generate_dataset, prepare_dataroot

    if args.image_size is not None and args.image_hw is not None:
        print("bevkd synth: give --image-hw H W only (--image-size W H is its deprecated alias)", file=sys.stderr)
        return 2
    height, width = DEFAULT_IMAGE_HW if args.image_hw is None else args.image_hw
    if args.image_size is not None:
        width, height = args.image_size
        print(f"bevkd synth: --image-size W H is deprecated; use --image-hw {height} {width}", file=sys.stderr)
    try:
        config = SynthConfig(num_scenes=args.scenes, samples_per_scene=args.samples_per_scene, seed=args.seed,
                             image_size=(width, height), sweeps_per_sample=args.sweeps_per_sample,
                             camera_sweeps_per_sample=args.camera_sweeps_per_sample,
                             version=args.version, tables_only=args.tables_only)
        prepare_dataroot(args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError, NotADirectoryError) as exc:
        print(f"bevkd synth: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tqdm(total=config.num_scenes * config.samples_per_scene, unit="sample", desc="synth") as bar:
        def progress(desc: str) -> None:
            bar.set_postfix_str(desc)
            bar.update(1)

        root = generate_dataset(config, args.out, progress=progress)
    summary = SynthSummary.load(root)
    splits = sorted({split for _, split in summary.scenes})
    per_split = ", ".join(f"{sum(1 for _, s in summary.scenes if s == split)} {split}" for split in splits)
    print(f"wrote {root.resolve()} ({config.version}) in {time.perf_counter() - start:.1f} s")
    print(f"  scenes: {len(summary.scenes)} ({per_split}); samples: {summary.num_samples}; "
          f"annotations: {summary.num_annotations}")
    if config.tables_only:
        print("  tables only: no sensor file written (num_lidar_pts estimated)")
    else:
        print(f"  LiDAR points per keyframe sweep: {summary.mean_points_per_sweep:.0f}; "
              f"boxes with >0 points: {100 * summary.fraction_boxes_with_points:.1f} %")
    print(f"  load with: NuScenes(version='{config.version}', dataroot='{root.resolve()}')")
    return 0
