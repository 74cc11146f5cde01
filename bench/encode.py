"""Shard compression speed: :func:`storage.cache.layout.encode_shard` with 1, 2 and 4 threads on
nuScenes-size rows, in one run, side by side (same bytes checked).

Setup: one 4-row shard of the largest cached component at nuScenes scale, a ``lidar_bev`` map of
512 channels x 180 x 180 (``centerpoint_voxel0075`` at stride 8) stored float16 with Zstd level 3
(the default codec), filled with smooth random features (compresses like real feature maps do,
not like noise). Prints ms per sample for each thread count and the speed-up over one thread.

Run: ``.venv/bin/python -m bench.encode [--repeat 3] [--channels 512]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timings per thread count (the best is kept)")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--rows", type=int, default=4, help="rows per shard (the cache job's --shard-size)")
    args = parser.parse_args(argv)
    import numcodecs

    from storage.cache import layout

    rng = np.random.default_rng(0)
    coarse = rng.standard_normal((args.rows, args.channels, 23, 23)).astype(np.float32)
    block = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :180, :180]  # smooth 8x8 patches
    block = (block + 0.05 * rng.standard_normal(block.shape)).astype(np.float16)
    enc = layout.ShardEncoding(dtype=np.dtype("<f2"), shard_size=args.rows, zstd=numcodecs.Zstd(level=3))
    print(f"shard: {args.rows} rows x {args.channels}x180x180 float16 = {block.nbytes / 1e6:.0f} MB")
    reference, _ = layout.encode_shard(enc, block, threads=1)
    best: dict[int, float] = {}
    for threads in (1, 2, 4):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out, _ = layout.encode_shard(enc, block, threads=threads)
            times.append(time.perf_counter() - t0)
            assert out == reference, f"threads={threads} wrote other bytes"
        best[threads] = min(times)
    for threads, t in best.items():
        print(f"threads {threads}: {1e3 * t / args.rows:7.1f} ms per sample   speed-up x{best[1] / t:.2f}   "
              f"(same bytes: True, ratio {block.nbytes / len(reference):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
