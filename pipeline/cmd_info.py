"""``bevkd info``: summarise a dataset (nuScenes dataroot or mmdet3d info file)."""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.dataset_args import add_reader_arguments

    add_reader_arguments(parser)
    parser.add_argument("--limit", type=int, default=0, help="read only the first N samples (0: all)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage.errors import SampleError
    from pipeline.dataset_args import reader_from_args
    from storage.sample import NUSCENES_CLASSES

    try:
        reader = reader_from_args(args)
    except (ValueError, FileNotFoundError, SampleError) as exc:
        print(f"bevkd info: {exc}")
        return 2
    n = len(reader) if args.limit <= 0 else min(args.limit, len(reader))
    scenes: Counter[str] = Counter()
    boxes: Counter[str] = Counter()
    with_pts: Counter[str] = Counter()
    points, failed = [], []
    for i in tqdm(range(n), unit="sample", desc="info"):
        try:
            s = reader.read(i)
        except SampleError as exc:
            failed.append(str(exc))
            continue
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
    for msg in failed:
        print(f"unreadable: {msg}")
    return 1 if failed else 0
