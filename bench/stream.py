"""Streaming benchmark: a torch DataLoader (2 workers) reading the nuScenes-scale cache.

Workers read rows with ``CacheReader.read(decode=False)`` and ship uint8 codes + per-channel
scales (BEV, heatmap) and float16 (LiDAR depth, instance features) across processes; the
consumer (the trainer, on the GPU) dequantises with :func:`storage.cache.dequantize`. The same
run measures the float32 path (``decode=True``) side by side and prints the ratio.

Target set as bench/storage.py (BEV 256x180x180 + heatmap 10x180x180 + boxes + depth 6x256x704 +
masks). Goal: >= 50 samples/s with 2 workers on the 2-core dev machine.

Run: ``.venv/bin/python bench/stream.py [--rows 64] [--epochs 2] [--batch-size 4]``
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/storage.py is not `storage`
sys.path[:0] = [os.path.dirname(_HERE), os.path.join(os.path.dirname(_HERE), "tests")]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from storage.cache import (CacheReader, CacheSchema, CacheWriter, DatasetInfo, QuantizedArray, RowResult,  # noqa: E402
                           TeacherInfo, dequantize, target_specs_for)
from synthetic_targets import synthetic_targets  # noqa: E402


def _bench_storage():
    spec = importlib.util.spec_from_file_location("bench_storage", os.path.join(_HERE, "storage.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tensor(x):
    if isinstance(x, QuantizedArray):
        return QuantizedArray(*(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
                                for a in x))
    return torch.from_numpy(np.ascontiguousarray(x))


class CachedRows(Dataset):
    """Rows of a cache as tensors; opens its reader lazily in each worker process."""

    def __init__(self, location: str, decode: bool) -> None:
        self.location, self.decode = location, decode
        self._reader: CacheReader | None = None
        self._len = len(CacheReader(location))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict:
        if self._reader is None:
            self._reader = CacheReader(self.location)
        c = self._reader.read(int(self._reader.ok_rows[i]), decode=self.decode)
        return {"bev": _tensor(c.bev_features["lidar_bev"]), "heatmap": _tensor(c.heatmap),
                "lidar_depth": _tensor(c.lidar_depth), "fg_mask": _tensor(c.fg_mask),
                "view_mask": _tensor(c.view_mask), "boxes": _tensor(c.boxes), "scores": _tensor(c.scores),
                "labels": _tensor(c.labels), "instance_features": _tensor(c.instance_features),
                "view_matrix": _tensor(c.view_matrix)}


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory inside a worker (as torch's default_collate
    allocates its output), so sending it to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).resize_(*shape)


class CachedBatches(CachedRows):
    """Whole batches per ``__getitem__`` (use with a BatchSampler and ``batch_size=None``): the
    large targets are decompressed straight into shared-memory batch tensors
    (``CacheReader.read(into=...)``), so no collate copy happens."""

    BIG = {"bev": "bev_features/lidar_bev", "heatmap": "heatmap", "lidar_depth": "lidar_depth"}

    def __getitem__(self, indices: list[int]) -> dict:
        if self._reader is None:
            self._reader = CacheReader(self.location)
        r = self._reader
        big = {}
        for key, name in self.BIG.items():
            shape, dtype = r.stored_layout(name)
            big[key] = _shared_empty((len(indices), *shape), torch.from_numpy(np.zeros(0, dtype)).dtype)
        rows = [r.read(int(r.ok_rows[i]), decode=False,
                       into={name: big[key][j].numpy() for key, name in self.BIG.items()})
                for j, i in enumerate(indices)]
        out = {k: [_tensor(getattr(c, k)) for c in rows] for k in ("boxes", "scores", "labels", "instance_features")}
        bev, heat = [c.bev_features["lidar_bev"] for c in rows], [c.heatmap for c in rows]
        out["bev"] = QuantizedArray(big["bev"], *(torch.from_numpy(np.stack([q[k] for q in bev])) for k in (1, 2)),
                                    bev[0].power)
        out["heatmap"] = QuantizedArray(big["heatmap"], *(torch.from_numpy(np.stack([q[k] for q in heat]))
                                                          for k in (1, 2)), heat[0].power)
        out["lidar_depth"] = big["lidar_depth"]
        for k in ("fg_mask", "view_mask", "view_matrix"):
            out[k] = torch.from_numpy(np.stack([getattr(c, k) for c in rows]))
        return out


def collate(batch: list[dict]) -> dict:
    """Stack fixed-shape targets; keep ragged ones (boxes, scores, labels, instance features) as lists."""
    ragged = ("boxes", "scores", "labels", "instance_features")
    out = {k: [b[k] for b in batch] for k in ragged}
    out.update(torch.utils.data.default_collate([{k: v for k, v in b.items() if k not in ragged} for b in batch]))
    return out


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _nbytes(x) -> int:
    if isinstance(x, QuantizedArray):
        return sum(_nbytes(a) for a in x[:3])
    if isinstance(x, list):
        return sum(_nbytes(a) for a in x)
    return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def stream(location: str, mode: str, epochs: int, batch_size: int, workers: int) -> tuple[float, float, float]:
    """Samples/s over ``epochs`` (after one warm-up batch), bytes shipped per sample, and CPU
    seconds per sample (workers + main process). ``mode``: ``uint8``, ``uint8-batched`` or ``float32``."""
    common = dict(num_workers=workers, persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    if mode == "uint8-batched":
        ds = CachedBatches(location, False)
        sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds), batch_size, drop_last=False)
        loader = DataLoader(ds, sampler=sampler, batch_size=None, **common)
    else:
        ds = CachedRows(location, mode == "float32")
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=collate, **common)
    it = iter(loader)
    first = next(it)
    shipped = sum(_nbytes(v) for v in first.values()) / batch_size
    if isinstance(first["bev"], QuantizedArray):  # what the trainer does after .to("cuda"); here once, on CPU
        assert dequantize(first["bev"]).shape == (batch_size, 256, 180, 180)
    pids = [w.pid for w in loader._iterator._workers]
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds(pids) + time.process_time()
    for epoch in range(epochs):
        for batch in (it if epoch == 0 else loader):
            n += len(batch["boxes"])
    cpu = _cpu_seconds(pids) + time.process_time() - c0
    return n / (time.perf_counter() - t0), shipped, cpu / n


def build_cache(path: str, rows: int, distinct: int) -> None:
    base = _bench_storage().real_rows(distinct)
    if base is None:
        rng = np.random.default_rng(0)
        base = [synthetic_targets(rng, _bench_storage().SHAPES) for _ in range(distinct)]
    specs = target_specs_for(base[0], max_boxes=500)
    schema = CacheSchema(grid=_bench_storage().GRID, teacher=TeacherInfo(name="bench-random-conv"), num_rows=rows,
                         dataset=DatasetInfo(dataset_id="nuscenes-keyframe-rotations", version="v1.0-mini",
                                             split="bench"), targets=specs, shard_size=32)
    tokens = [uuid.UUID(int=i + 1).hex for i in range(rows)]
    writer = CacheWriter.create(path, schema, tokens, overwrite=True)
    for i in range(schema.num_shards):
        writer.write_shard(i, [RowResult(sample_token=t, targets=base[int(t, 16) % distinct])
                               for t, _ in writer.shard_rows(i)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=64, help="rows in the benchmark cache (default 64)")
    p.add_argument("--distinct", type=int, default=4, help="distinct samples they cycle through (default 4)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per path (default 2)")
    p.add_argument("--batch-size", type=int, default=4, help="DataLoader batch size (default 4)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--cache", default=None, help="use this existing cache instead of building one")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        location = args.cache or os.path.join(tmp, "cache")
        if args.cache is None:
            t = time.perf_counter()
            build_cache(location, args.rows, args.distinct)
            print(f"built {args.rows}-row cache in {time.perf_counter() - t:.1f} s at {location}")
        print(f"# bench/stream.py: DataLoader, {args.workers} workers, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, {args.epochs} epochs per path")
        load = os.getloadavg()[0]
        res = {m: stream(location, m, args.epochs, args.batch_size, args.workers)
               for m in ("uint8-batched", "uint8", "float32")}
        load = max(load, os.getloadavg()[0])
    (zc, _, zc_cpu), (u8, u8_bytes, u8_cpu), (f32, f32_bytes, f32_cpu) = res.values()
    print(f"load average during the run: up to {load:.1f} on {os.cpu_count()} CPUs (other jobs share them)")
    for name, (rate, shipped, cpu) in zip(("uint8/fp16, batched into shared memory (read(into=...)) ",
                                           "uint8/fp16, per-row read(decode=False) + collate       ",
                                           "float32, per-row read(decode=True) + collate           "),
                                          res.values(), strict=True):
        print(f"{name}: {rate:6.1f} samples/s, {shipped / 1e6:5.2f} MB/sample shipped across processes, "
              f"{cpu * 1e3:5.1f} CPU-ms/sample (workers + main) -> {args.workers / cpu:5.1f} samples/s if "
              f"{args.workers} cores were free")
    best, best_cpu = max((zc, zc_cpu), (u8, u8_cpu))
    print(f"GOAL >= 50 samples/s with 2 workers (uint8 paths): measured {best:.1f} -> "
          f"{'MET' if best >= 50 else 'NOT MET'} (CPU-bound capacity {args.workers / best_cpu:.0f})")
    print(f"ratio uint8/float32: {u8 / f32:.2f}x samples/s, {f32_bytes / u8_bytes:.2f}x fewer bytes shipped, "
          f"{f32_cpu / u8_cpu:.2f}x less CPU per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
