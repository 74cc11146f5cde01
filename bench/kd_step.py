"""Training-step cost of distillation: no KD vs KD from the cache vs KD from the live teacher.

One run, one student init, one augmented batch per mode (the same samples and augmentation), the
modes interleaved step by step so machine load hits them alike. A step is what the training
process does per batch: move/normalise images, dequantise + align targets (cached) or run the
teacher (online), student forward, every loss, backward, AdamW step. Loader-side work (image
decode/augmentation; the network-free LiDAR targets for online) is timed separately per item.

    .venv/bin/python bench/kd_step.py [--reps 12 --batch-size 2 --threads 1 --student tiny]

Goal: cached / no-KD <= 1.10 on CPU; online / cached reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

from kd_cache import write_teacher_cache  # noqa: E402  (the per-row work of the cache job)
from storage.nuscenes_reader import NuScenesReader  # noqa: E402
from storage.synth import SynthConfig, generate_dataset  # noqa: E402
from student.config import StudentConfig  # noqa: E402
from student.dataset import Collate, DataConfig, StudentDataset  # noqa: E402
from student.losses import DistillationConfig, DistillationLoss, LossWeights  # noqa: E402
from student.model import StudentModel  # noqa: E402
from student.packed_targets import live_teacher_targets, packed_to_teacher_targets, spec_from_schema  # noqa: E402
from student.trainer import StudentWithLoss, default_distillation, required_targets  # noqa: E402
from storage.cache import CacheReader  # noqa: E402
from teachers.centerpoint import CenterPointTeacher  # noqa: E402
from teachers.config import centerpoint_tiny  # noqa: E402

MODES = ("no_kd", "cached", "online")


def _setup(root: Path, student: StudentConfig, batch_size: int):
    data_root = generate_dataset(SynthConfig(num_scenes=2, samples_per_scene=max(2, batch_size), seed=3,
                                             image_size=(480, 270)), root / "nuscenes")
    reader = NuScenesReader(data_root, version="v1.0-mini", split="mini_val")
    torch.manual_seed(0)
    teacher = CenterPointTeacher(centerpoint_tiny()).eval()
    wh = (student.image_hw[1], student.image_hw[0])
    cache = write_teacher_cache(root / "cache", reader, teacher, image_size=wh)
    schema = CacheReader(cache).schema
    spec, stored = spec_from_schema(schema), {t.name for t in schema.targets}
    kd = default_distillation(spec, stored)
    data = DataConfig(depth_image_size=wh)
    datasets = {"no_kd": StudentDataset(reader, student, data, seed=1),  # the trainer reads only what the losses need:
                "cached": StudentDataset(reader, student, data, cache=cache, seed=1,
                                         cache_targets=required_targets(kd)),
                "online": StudentDataset(reader, student, data, seed=1, online_grid=teacher.out_grid)}
    return teacher, datasets, spec, kd


def _loader_costs(datasets: dict[str, StudentDataset], rounds: int = 3) -> dict[str, float]:
    """Median seconds per item of each dataset's ``__getitem__`` (files warm, modes interleaved)."""
    out: dict[str, list[float]] = {m: [] for m in datasets}
    for r in range(rounds + 1):
        for m, ds in datasets.items():
            t0 = time.perf_counter()
            ds[r % len(ds)]
            if r:
                out[m].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=12, help="timed steps per mode (after 2 warm-up steps)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: small ops on a shared machine)")
    p.add_argument("--student", choices=("tiny", "base"), default="tiny")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    student = StudentConfig.tiny() if args.student == "tiny" else StudentConfig()
    with tempfile.TemporaryDirectory() as tmp:
        teacher, datasets, spec, kd = _setup(Path(tmp), student, args.batch_size)
        collate = {m: Collate(ds.grid, student.image_hw) for m, ds in datasets.items()}
        batches = {m: collate[m]([ds[i] for i in range(args.batch_size)]) for m, ds in datasets.items()}
        plain = DistillationConfig(weights=LossWeights(depth_bce=3.0))
        runners = {}
        for mode in MODES:
            torch.manual_seed(0)
            model = StudentModel(student)
            wrapper = StudentWithLoss(model, DistillationLoss.for_student(plain if mode == "no_kd" else kd, model,
                                                                          None if mode == "no_kd" else spec))
            wrapper.to(args.device)
            runners[mode] = (wrapper, torch.optim.AdamW(wrapper.parameters(), lr=1e-4))
        teacher.to(args.device)
        times = {m: [] for m in MODES}
        for rep in range(args.reps + 2):
            for mode in MODES:
                wrapper, opt = runners[mode]
                lb = batches[mode]
                t0 = time.perf_counter()
                batch = lb.student_batch(args.device)
                targets = (live_teacher_targets(teacher, lb.points, lb.targets, args.device) if mode == "online"
                           else packed_to_teacher_targets(lb.targets, args.device))
                loss, _ = wrapper(batch, targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if rep >= 2:
                    times[mode].append(time.perf_counter() - t0)
        med = {m: statistics.median(v) for m, v in times.items()}
        load = _loader_costs(datasets)
    print(f"student {args.student} ({student.image_hw[0]}x{student.image_hw[1]}, BEV {student.bev_grid.bev_shape}), "
          f"batch {args.batch_size}, {args.reps} interleaved steps per mode, {args.threads} thread(s)")
    print(f"KD terms: {', '.join(kd.weights.active())}")
    for m in MODES:
        q = sorted(times[m])
        print(f"  {m:7s} step median {1e3 * med[m]:8.1f} ms  (p25 {1e3 * q[len(q) // 4]:.1f}, p75 "
              f"{1e3 * q[3 * len(q) // 4]:.1f})  loader {1e3 * load[m]:7.1f} ms/item  shipped "
              f"{batches[m].nbytes() / 1024:.0f} KiB/batch")
    print(f"cached / no-KD step: {med['cached'] / med['no_kd']:.3f}  (goal <= 1.10; fastest-step ratio "
          f"{min(times['cached']) / min(times['no_kd']):.3f})")
    print(f"online / cached step: {med['online'] / med['cached']:.3f}")
    online = med['online'] + args.batch_size * load['online']
    cached = med['cached'] + args.batch_size * load['cached']
    print(f"online / cached step + loader: {online / cached:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
