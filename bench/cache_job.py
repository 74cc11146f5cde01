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

Prints: loop time, Ray time (both with ``--prefetch``), the overhead ratio Ray / loop (goal <= 1.10
at 200 samples), the writer's share (encode + write) relative to the teacher forward (goal <= 10%),
per-stage seconds of both runs, the writer share with the nuScenes-size teacher (``centerpoint_voxel0075``,
180x180 BEV maps, a few samples, plain loop), and the cost of the image check per sample (none / draft / full decode)
on the generated images and on the real keyframe's 1600x900 JPEGs when ../shared is present.

nuScenes scale (when ../shared is present): one worker (planning excluded, as in a Ray actor) on the
real keyframe read N times, prefetch 0 and ``--prefetch`` side by side: the teacher's share of the
worker's wall time (teacher forward seconds / wall seconds; goal >= 0.85) and samples/s per worker.
Twice: with the real ``centerpoint_voxel0075`` on CPU (``--real-samples``; ~10 s a forward on one
core, so a few samples), and with a GPU-time teacher (``--replay-samples``) that waits ``--gpu-ms``
per sample without using the CPU, as a host thread waiting on a GPU does, and returns the real
teacher's output on the keyframe: every CPU stage (reading, image checks, LiDAR depth, masks,
encoding 768 channels of 180x180 features, writing) runs for real; only the forward is emulated.

Run: ``.venv/bin/python bench/cache_job.py [--samples 200] [--shard-size 16]``
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402
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


class Replicas:
    """The real nuScenes keyframe read ``n`` times, as ``n`` samples (tokens ``<token>-<i>``)."""

    def __init__(self, reader, n: int) -> None:
        self.reader = reader
        self.sample_tokens = tuple(f"{reader.sample_tokens[0]}-{i:05d}" for i in range(n))
        self.dataset_id = f"{reader.dataset_id}x{n}"

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def read(self, index_or_token):
        token = self.sample_tokens[index_or_token] if isinstance(index_or_token, int) else index_or_token
        return dataclasses.replace(self.reader.read(0), sample_token=token)


def replay_teacher(output, gpu_ms: float):
    """What a GPU teacher costs the worker's host: ``gpu_ms`` per sample of waiting (no CPU, the
    GIL released, as a thread waiting on CUDA), then the real ``centerpoint_voxel0075`` output on
    the keyframe (computed once on CPU: every replica is the same sample, so it is the true output)."""
    from torch import nn

    from teachers.output import TeacherOutput

    class ReplayTeacher(nn.Module):
        def forward(self, batch):
            time.sleep(gpu_ms / 1000 * batch.batch_size)
            b, o = batch.batch_size, output
            return TeacherOutput(bev_grid=o.bev_grid, heatmap=o.heatmap.expand(b, *o.heatmap.shape[1:]),
                                 bev_features={k: v.expand(b, *v.shape[1:]) for k, v in o.bev_features.items()},
                                 boxes=o.boxes * b, scores=o.scores * b, labels=o.labels * b,
                                 instance_features=o.instance_features * b)

    return ReplayTeacher().eval()


def worker_run(teacher, info, reader, config, out: Path) -> dict[str, float]:
    """One worker's shards after planning (as in a Ray actor): teacher seconds, wall seconds, rows."""
    from pipeline.cache_job import StageTimes, process_shard
    from pipeline.cache_plan import plan_cache

    writer = plan_cache(out, reader, teacher, info, config)
    times, rows, failed = StageTimes(), 0, 0
    t0 = time.perf_counter()
    for shard in range(writer.schema.num_shards):
        r = process_shard(teacher, reader, writer, shard, config)
        times.add(r.times)
        rows, failed = rows + r.rows_ok, failed + r.rows_failed
    wall = time.perf_counter() - t0
    return {"wall": wall, "teacher": times.teacher, "share": times.teacher / wall, "rate": rows / wall,
            "rows": rows, "failed": failed, "read": times.read, "targets": times.targets,
            "encode": times.encode, "write": times.write}


def share_line(name: str, r: dict[str, float]) -> str:
    return (f"  {name:11s} teacher share {r['share']:.3f}  {r['rate']:6.2f} samples/s/worker  wall {r['wall']:6.1f}s "
            f"({r['rows']:.0f} ok, {r['failed']:.0f} failed)  stage sums: read {r['read']:.1f} teacher "
            f"{r['teacher']:.1f} targets {r['targets']:.1f} encode {r['encode']:.1f} write {r['write']:.1f} s")


def nuscenes_scale(work: Path, real_samples: int, replay_samples: int, gpu_ms: float, prefetch: int) -> None:
    """Teacher share of worker wall time and samples/s per worker at nuScenes scale, prefetch 0 vs
    ``prefetch``: the real ``centerpoint_voxel0075`` on CPU, and the replayed teacher at ``gpu_ms``."""
    import torch

    from pipeline.cache_job import CacheJobConfig, teacher_forward
    from pipeline.cache_plan import TeacherSource
    from storage.mmdet3d_reader import Mmdet3dInfoReader

    keyframe = Mmdet3dInfoReader(KEYFRAME_INFO)
    teacher, info = TeacherSource(name="centerpoint_voxel0075").load()
    print(f"nuScenes scale: centerpoint_voxel0075 (sparse 41x1440x1440, BEV 180x180), real keyframe "
          f"({len(keyframe.read(0).points)} points, six 1600x900 JPEGs) replicated; all targets; "
          f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs shared by both stages' threads")
    if real_samples:
        config = CacheJobConfig(shard_size=real_samples, batch_size=1)
        runs = {p: worker_run(teacher, info, Replicas(keyframe, real_samples), replace(config, prefetch=p),
                              work / f"real{p}") for p in (0, prefetch)}
        print(f" real teacher on CPU, {real_samples} samples, batch 1:")
        for p, r in runs.items():
            print(share_line(f"prefetch {p}", r))
    with torch.inference_mode():
        output = teacher_forward(teacher, [keyframe.read(0)])
    replay = replay_teacher(output, gpu_ms)
    config = CacheJobConfig(shard_size=8, batch_size=4)
    runs = {p: worker_run(replay, info, Replicas(keyframe, replay_samples), replace(config, prefetch=p),
                          work / f"replay{p}") for p in (0, prefetch)}
    print(f" GPU-time teacher ({gpu_ms:.0f} ms/sample of waiting, real outputs), {replay_samples} samples, "
          f"batch 4, shard 8:")
    for p, r in runs.items():
        print(share_line(f"prefetch {p}", r))
    for p, r in runs.items():
        print(f"  prefetch {p}: ms per sample outside the forward (stage sums / rows): "
              + ", ".join(f"{k} {1000 * r[k] / max(r['rows'], 1):.0f}" for k in ("read", "targets", "encode", "write")))
    print("  goal: teacher share >= 0.85")


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
    p.add_argument("--prefetch", type=int, default=2,
                   help="prefetch of the runs compared with prefetch 0 (default: %(default)s)")
    p.add_argument("--real-samples", type=int, default=3,
                   help="keyframe replicas through the real nuScenes-size teacher on CPU, per run (0: skip)")
    p.add_argument("--replay-samples", type=int, default=24,
                   help="keyframe replicas through the GPU-time teacher, per run (0: skip)")
    p.add_argument("--gpu-ms", type=float, default=60.0, help="GPU forward time per sample emulated (default: 60)")
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
    config = CacheJobConfig(shard_size=args.shard_size, batch_size=4, prefetch=args.prefetch)
    spec = TeacherSource(name="centerpoint")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_cache_job_"))
    try:
        loop = run_loop(config, reader, spec, work / "loop")
        loop0 = run_loop(replace(config, prefetch=0), reader, spec, work / "loop0") if args.prefetch else loop
        ray_ = run_cache_job(config, reader, spec, str(work / "ray"), progress=False)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"cache job, {len(reader)} samples, teacher centerpoint (tiny, untrained), shard {args.shard_size}, "
          f"batch 4, prefetch {args.prefetch}, {os.cpu_count()} CPUs, torch threads 1 per worker")
    print(f"plain loop : {loop.wall_s:7.1f} s  ({loop.startup_s:.1f} s startup; {loop.rows_ok} rows ok, "
          f"{loop.rows_failed} failed)")
    print(f"plain loop, prefetch 0: {loop0.wall_s:7.1f} s  ({loop0.startup_s:.1f} s startup)")
    print(f"Ray job    : {ray_.wall_s:7.1f} s  ({ray_.startup_s:.1f} s startup; {ray_.rows_ok} rows ok, "
          f"{ray_.workers} actors)")
    print(f"overhead ratio Ray / loop: {ray_.wall_s / loop.wall_s:.3f}   (goal <= 1.10); after startup: "
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
    if args.replay_samples and KEYFRAME_INFO.exists():
        nuscenes_scale(work, args.real_samples, args.replay_samples, args.gpu_ms, args.prefetch)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
