"""Cache-job benchmark: the same data and teacher through a plain loop and through the Ray job,
in one run, side by side.

Data: a generated nuScenes-format dataset (``storage.synth``, v1.0-trainval, ``val`` split, 480x270
images, 32-beam LiDAR of ~33k points), made once under ``--data-dir`` and reused. Teacher: the
real spconv CenterPoint (``centerpoint``, the tiny config: DEMO_GRID, BEV 32x32), untrained.
Targets: everything (lidar_bev, neck, heatmap, boxes, instance features, fg/view masks, LiDAR
depth for 704x256 images); shard size ``--shard-size``, teacher batch 4.

Both runs start cold the way a user's would: the loop loads the teacher in this process (spconv's
kernel table import included, ~15 s); the Ray job starts a local Ray and one actor per CPU (each
imports its teacher in parallel; the driver never imports spconv). Page cache is warmed first.

Prints: loop time, Ray time, the overhead ratio Ray / loop (goal <= 1.15 at 200 samples), the
writer's share (encode + write) relative to the teacher forward (goal <= 10%), per-stage
seconds of both runs, the writer share with the nuScenes-size teacher (``centerpoint_voxel0075``,
180x180 BEV maps, a few samples, plain loop), and the cost of the image check per sample (none / draft / full decode)
on the generated images and on the real keyframe's 1600x900 JPEGs when ../shared is present.

Run: ``.venv/bin/python bench/cache_job.py [--samples 200] [--shard-size 16]``
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

warnings.filterwarnings("ignore")
KEYFRAME_INFO = (Path(_HERE).parents[1] / "shared" / "data" / "nuscenes_keyframes"
                 / "mmdet3d_v1.1_scene-0061_sample0.pkl")


def ensure_dataset(root: Path, samples: int) -> Path:
    """A generated dataset whose ``val`` split holds at least ``samples`` keyframes."""
    from storage.synth import SynthConfig, generate_dataset

    scenes = -(-samples // 10)
    config = SynthConfig(num_scenes=2 * scenes, samples_per_scene=10, seed=1, version="v1.0-trainval")
    marker = root / f"done-{config.num_scenes}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        generate_dataset(config, root)
        marker.write_text("ok")
        print(f"generated {config.num_scenes} scenes x 10 samples in {time.perf_counter() - t0:.0f}s at {root}")
    return root


class Subset:
    """The first ``n`` samples of a reader (picklable, a SampleReader)."""

    def __init__(self, reader, n: int) -> None:
        self.reader, self.sample_tokens = reader, tuple(reader.sample_tokens[:n])
        self.dataset_id = f"{reader.dataset_id}[:{n}]"

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def read(self, index_or_token):
        token = self.sample_tokens[index_or_token] if isinstance(index_or_token, int) else index_or_token
        return self.reader.read(token)


def image_check_cost(reader, n: int = 5) -> dict[str, float]:
    """Seconds per sample of :func:`pipeline.cache_job.check_images` per mode (6 images)."""
    from pipeline.cache_job import check_images

    samples = [reader.read(i) for i in range(min(n, len(reader)))]
    out = {}
    for mode in ("none", "draft", "decode"):
        check_images(samples[0], mode)
        t0 = time.perf_counter()
        for s in samples:
            check_images(s, mode)
        out[mode] = (time.perf_counter() - t0) / len(samples)
    return out


def run_full_teacher(reader, n: int, work: Path):
    """The plain loop with the nuScenes-size CenterPoint on the first ``n`` samples (one shard)."""
    from pipeline.cache_job import CacheJobConfig
    from pipeline.cache_plan import TeacherSource, run_loop

    return run_loop(CacheJobConfig(shard_size=n, batch_size=1), Subset(reader.reader, n),
                    TeacherSource(name="centerpoint_voxel0075"), work / "full")


def stage_line(name: str, summary) -> str:
    t = summary.times
    return (f"  {name:5s} read {t.read:6.2f}s  teacher {t.teacher:6.2f}s  targets {t.targets:6.2f}s  "
            f"encode {t.encode:5.2f}s  write {t.write:5.2f}s  (summed over {summary.workers} worker(s))")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--full-teacher-samples", type=int, default=4,
                   help="samples for the writer share with the nuScenes-size teacher (0: skip)")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "bevkd_bench_cache_job"))
    args = p.parse_args()

    import torch

    from pipeline.cache_job import CacheJobConfig, check_images
    from pipeline.cache_plan import TeacherSource, run_loop
    from pipeline.ray_runner import run_cache_job
    from storage.nuscenes_reader import NuScenesReader

    root = ensure_dataset(Path(args.data_dir) / "nuscenes", args.samples)
    reader = Subset(NuScenesReader(root, version="v1.0-trainval", split="val"), args.samples)
    for i in range(len(reader)):  # warm the page cache for both runs
        check_images(reader.read(i), "decode")
    config = CacheJobConfig(shard_size=args.shard_size, batch_size=4)
    spec = TeacherSource(name="centerpoint")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_cache_job_"))
    try:
        loop = run_loop(config, reader, spec, work / "loop")
        ray_ = run_cache_job(config, reader, spec, str(work / "ray"), progress=False)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"cache job, {len(reader)} samples, teacher centerpoint (tiny, untrained), shard {args.shard_size}, "
          f"batch 4, {os.cpu_count()} CPUs, torch threads 1 per worker")
    print(f"plain loop : {loop.wall_s:7.1f} s  ({loop.startup_s:.1f} s startup; {loop.rows_ok} rows ok, "
          f"{loop.rows_failed} failed)")
    print(f"Ray job    : {ray_.wall_s:7.1f} s  ({ray_.startup_s:.1f} s startup; {ray_.rows_ok} rows ok, "
          f"{ray_.workers} actors)")
    print(f"overhead ratio Ray / loop: {ray_.wall_s / loop.wall_s:.3f}   (goal <= 1.15); after startup: "
          f"{(ray_.wall_s - ray_.startup_s) / (loop.wall_s - loop.startup_s):.3f}")
    for name, s in (("loop", loop), ("ray", ray_)):
        w = s.times.encode + s.times.write
        print(f"writer share {name}: (encode + write) / teacher = {w:.2f} s / {s.times.teacher:.2f} s = "
              f"{100 * w / s.times.teacher:.1f}%   (goal <= 10%)")
    print("stage seconds:")
    print(stage_line("loop", loop))
    print(stage_line("ray", ray_))
    if args.full_teacher_samples:
        full = run_full_teacher(reader, args.full_teacher_samples, work)
        w = full.times.encode + full.times.write
        print(f"writer share, nuScenes-size teacher (centerpoint_voxel0075, 180x180 BEV, plain loop, "
              f"{full.rows_ok} samples, shard {full.rows_ok}): {w:.2f} s / {full.times.teacher:.2f} s = "
              f"{100 * w / full.times.teacher:.1f}%; {full.nbytes / full.rows_ok / 1e6:.2f} MB/sample")
    cost = image_check_cost(reader)
    print("image check per sample (6 images), generated 480x270: "
          + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in cost.items()))
    if KEYFRAME_INFO.exists():
        from storage.mmdet3d_reader import Mmdet3dInfoReader

        cost = image_check_cost(Mmdet3dInfoReader(KEYFRAME_INFO))
        print("image check per sample (6 images), real keyframe 1600x900: "
              + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in cost.items()))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
