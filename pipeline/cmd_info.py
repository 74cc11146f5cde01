"""``bevkd info``: summarise a dataset (nuScenes dataroot or mmdet3d info file) and check it.

Checks: every sample reads, every camera image is there and decodes (``--image-check``), and the GT
boxes agree with the LiDAR (:func:`storage.box_convention.check_box_convention` on a few samples).
The summary goes to stdout; each problem is one line on stderr naming sample, field and file. Exit
code: 0 all fine, 1 a problem was found, 2 the dataset could not be opened.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dataset_args import add_reader_arguments

    add_reader_arguments(parser)
    parser.add_argument("--limit", type=int, default=0, help="read only the first N samples (0: all)")
    parser.add_argument("--image-check", choices=("header", "draft", "decode", "none"), default="draft",
                        help="how camera images are checked: header only, draft = 1/8-scale JPEG decode of the "
                             "whole stream, decode = full decode, none (default: %(default)s)")
    parser.add_argument("--box-check-samples", type=int, default=4, metavar="N",
                        help="samples whose LiDAR points are counted inside the GT boxes and compared with "
                             "num_lidar_pts, trying the other box conventions too (0: skip; default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage.box_convention import check_box_convention
    from storage.errors import SampleError
    from storage.image_check import broken_images
    from pipeline.dataset_args import reader_from_args
    from storage.sample import NUSCENES_CLASSES

    try:
        reader = reader_from_args(args)
    except (ValueError, FileNotFoundError, SampleError) as exc:
        print(f"bevkd info: {exc}", file=sys.stderr)
        return 2
    n = len(reader) if args.limit <= 0 else min(args.limit, len(reader))
    scenes: Counter[str] = Counter()
    boxes: Counter[str] = Counter()
    with_pts: Counter[str] = Counter()
    points, failed, images, n_images = [], [], [], 0
    for i in tqdm(range(n), unit="sample", desc="info"):
        try:
            s = reader.read(i)
        except SampleError as exc:
            failed.append(str(exc))
            continue
        images += [str(e) for e in broken_images(s, args.image_check)]
        n_images += len(s.cameras) if args.image_check != "none" else 0
        scenes[s.scene] += 1
        points.append(len(s.points))
        for label, npts in zip(s.gt_labels, s.num_lidar_pts, strict=True):
            boxes[NUSCENES_CLASSES[label]] += 1
            with_pts[NUSCENES_CLASSES[label]] += int(npts > 0)
    print(f"dataset: {reader.dataset_id}")
    print(f"samples: {len(reader)} (read {n - len(failed)}), scenes: {len(scenes)}")
    if points:
        p = np.asarray(points)
        print(f"points per sample: mean {p.mean():.0f}, min {p.min()}, max {p.max()}")
    print(f"classes ({len(NUSCENES_CLASSES)}): {', '.join(NUSCENES_CLASSES)}")
    print(f"{'class':<22}{'boxes':>8}{'with pts':>10}")
    for name in NUSCENES_CLASSES:
        print(f"{name:<22}{boxes[name]:>8}{with_pts[name]:>10}")
    print(f"{'total':<22}{sum(boxes.values()):>8}{sum(with_pts.values()):>10}")
    report = check_box_convention(reader, max_samples=args.box_check_samples) if args.box_check_samples > 0 else None
    if report is not None:
        print(report.format() if report.fits else report.summary())
    print(f"images checked ({args.image_check}): {n_images}, broken: {len(images)}")
    for msg in failed:
        print(f"bevkd info: unreadable: {msg}", file=sys.stderr)
    for msg in images:
        print(f"bevkd info: broken image: {msg}", file=sys.stderr)
    box_ok = report is None or report.ok
    if report is not None and not box_ok:
        print(f"bevkd info: {report.summary()}", file=sys.stderr)
    return 1 if failed or images or not box_ok else 0
