"""Generator throughput and the figures of a default synthetic dataset.

Run from the repository root: ``.venv/bin/python -m bench.bench_synth [--scenes 10 --samples 10]``
Prints wall time of ``generate_dataset`` per stage (LiDAR sweep vs six camera renders, measured
side by side on the same scene), seconds per keyframe, LiDAR points per sweep and the fraction
of annotated boxes with at least one LiDAR point.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/storage.py is not `storage`
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from storage.synth import SynthConfig, SynthSummary, generate_dataset  # noqa: E402
from storage.synth.camera import render_camera  # noqa: E402
from storage.synth.lidar import simulate_sweep  # noqa: E402
from storage.synth.scene import CAMERAS, make_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--height", type=int, default=270)
    args = ap.parse_args()
    config = SynthConfig(num_scenes=args.scenes, samples_per_scene=args.samples, image_size=(args.width, args.height))
    scene = make_scene(config, 0, "bench")
    t0 = time.perf_counter()
    for k in range(5):
        simulate_sweep(config, scene, 0.5 * k, np.random.default_rng(k))
    t_lidar = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    for k in range(3):
        for cam in CAMERAS:
            render_camera(scene, 0.5 * k, cam, config.image_size)
    t_cams = (time.perf_counter() - t0) / 3
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        root = generate_dataset(config, Path(tmp) / "nuscenes")
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        summary = SynthSummary.load(root)
        size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
    n = summary.num_samples
    print(f"config: {args.scenes} scenes x {args.samples} samples, images {args.width}x{args.height}")
    print(f"generate_dataset: {total:.1f} s wall ({cpu:.1f} s CPU of this process, "
          f"wall / CPU = {total / cpu:.2f} shows contention), {total / n:.3f} s per keyframe, {size_mb:.1f} MB")
    print(f"per keyframe: LiDAR sweep {t_lidar:.3f} s, six cameras {t_cams:.3f} s "
          f"(cameras / LiDAR = {t_cams / t_lidar:.1f}x)")
    print(f"LiDAR points per keyframe sweep: {summary.mean_points_per_sweep:.0f}")
    print(f"boxes with >0 LiDAR points: {summary.fraction_boxes_with_points:.3f} of {summary.num_annotations}")


if __name__ == "__main__":
    main()
