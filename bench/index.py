"""Sample-index and manifest benchmark at nuScenes-trainval scale (one run, side by side).

Datasets: trainval-sized nuScenes tables written by the generator's tables-only mode
(``SynthConfig(tables_only=True)``, 850 scenes x 40 keyframes = 34,000 samples, ~22 annotated
objects per sample) and a small one (10 scenes x 40 = 400 samples), both read with
``--split all``. No sensor file exists, so workers read everything but the point clouds.

Reports, each measured in a fresh process:

* the driver: devkit load time, index build time (:func:`storage.sample_index.build_sample_index`),
  peak RSS, index size;
* one actor: RSS of a process that opens the index and reads ``--reads`` samples spread over the
  dataset (``IndexReader.read_without_points``), vs one that loads a ``NuScenesReader`` (what an
  actor got before: the pickled reader reloads the devkit tables) and resolves the same samples
  (annotations and LiDAR pose). Goal: index actor memory flat in dataset size;
* opening a cache of 34,000 rows (``CacheReader``) with its manifest as fragments (one per
  32-row shard: 1,063 files) vs compacted into one file. Goal: <= 1 s. The manifest is written
  directly (rows, checksums of zero-filled targets), no teacher runs.

Run: ``.venv/bin/python -m bench.index [--work /tmp/bevkd_bench_index]`` (a few minutes; the
generated tables are kept in ``--work`` and reused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _status_mb(field: str) -> float:
    """A memory line of this process's ``/proc/self/status`` (Linux), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    """Current resident set size, MB."""
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    """Peak resident set size of this process image, MB (``VmHWM``; ``ru_maxrss`` would carry the
    parent's peak across fork + exec)."""
    return _status_mb("VmHWM")


# ---- children (one measurement per fresh process) ----------------------------------------------
def child_build(root: str, index: str) -> dict[str, Any]:
    from storage.nuscenes_reader import NuScenesReader
    from storage.sample_index import build_sample_index

    t0 = time.perf_counter()
    reader = NuScenesReader(root, version="v1.0-trainval", split="all")
    t1 = time.perf_counter()
    n = build_sample_index(reader, index)
    t2 = time.perf_counter()
    return {"samples": n, "devkit_load_s": t1 - t0, "build_s": t2 - t1, "peak_mb": _peak_mb(),
            "index_mb": os.path.getsize(index) / 1e6}


def _spread(n: int, reads: int) -> list[int]:
    return sorted({int(i) for i in (i * (n - 1) / max(reads - 1, 1) for i in range(reads))})


def child_actor(kind: str, root: str, index: str, reads: int) -> dict[str, Any]:
    import storage.nuscenes_reader  # noqa: F401  (same imports in both kinds: the baseline compares)
    import storage.sample_index  # noqa: F401
    from nuscenes import NuScenes  # noqa: F401

    base = _rss_mb()
    t0 = time.perf_counter()
    if kind == "index":
        from storage.sample_index import IndexReader

        reader = IndexReader(index)
        picks = _spread(len(reader), reads)
        boxes = sum(len(reader.read_without_points(reader.sample_tokens[i]).gt_boxes) for i in picks)
    else:
        from storage.nuscenes_reader import NuScenesReader

        devkit = NuScenesReader(root, version="v1.0-trainval", split="all")
        picks = _spread(len(devkit), reads)
        boxes = 0
        for i in picks:
            boxes += len(devkit.annotations(i).gt_boxes)
            devkit.global_from_lidar(i)
    return {"rss_mb": _rss_mb(), "base_mb": base, "open_read_s": time.perf_counter() - t0, "boxes": boxes}


def child_open(cache: str) -> dict[str, Any]:
    """First open in a fresh process (Zarr's event loop and lazy imports included), then a second
    open of the same cache with the compacted-manifest parse cache emptied."""
    from storage.cache import CacheReader, manifest

    t0 = time.perf_counter()
    CacheReader(cache)
    cold = time.perf_counter() - t0
    manifest._LAST_COMPACTED.clear()  # bench only: parse the compacted file again
    t0 = time.perf_counter()
    reader = CacheReader(cache)
    return {"cold_s": cold, "open_s": time.perf_counter() - t0, "rows": len(reader.rows)}


def _run_child(*args: str) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "bench.index", "--child", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"child {args} failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- parent ----------------------------------------------------------------------------------
def make_tables(work: Path, scenes: int, samples_per_scene: int) -> tuple[Path, float]:
    from storage.synth import SynthConfig, SynthSummary, generate_dataset

    config = SynthConfig(num_scenes=scenes, samples_per_scene=samples_per_scene, version="v1.0-trainval",
                         tables_only=True)
    root = work / f"tables_{scenes}x{samples_per_scene}"
    try:
        if SynthSummary.load(root).config == config:
            return root, float("nan")
    except FileNotFoundError:
        pass
    t0 = time.perf_counter()
    generate_dataset(config, root)
    return root, time.perf_counter() - t0


def make_manifest_cache(location: Path, num_rows: int, shard_size: int) -> None:
    """A cache of ``num_rows`` committed rows, one fragment per shard, written without a teacher."""
    import numpy as np

    from storage.cache import CacheSchema, CacheWriter, DatasetInfo, TeacherInfo, manifest, target_specs_for
    from storage.cache.writer import row_checksum
    from storage.grid import BEVGrid
    from synthetic_targets import SyntheticTargetsConfig, synthetic_targets

    grid = BEVGrid(point_cloud_range=(-8, -8, -5, 8, 8, 3), voxel_size=(1, 1, 8))
    example = synthetic_targets(np.random.default_rng(0), SyntheticTargetsConfig(bev_channels=(("lidar_bev", 8),)))
    specs = target_specs_for(example, max_boxes=7)
    schema = CacheSchema(grid=grid, teacher=TeacherInfo(name="bench", config={}, weights_sha256="00" * 32),
                         dataset=DatasetInfo(dataset_id="bench", version="v0", split="all"), targets=specs,
                         num_rows=num_rows, views=1, shard_size=shard_size)
    tokens = [f"{i:032x}" for i in range(num_rows)]
    writer = CacheWriter.create(location, schema, tokens, overwrite=True)
    crc = row_checksum({"data": np.zeros(1, np.uint8)})
    names = [t.name for t in specs]
    for shard in range(schema.num_shards):
        rows = [manifest.ManifestRow(sample_token=tokens[r], row=r, shard=shard, scene=f"scene-{r // 40:04d}",
                                     timestamp_us=1_533_000_000_000_000 + r * 500_000, view=0, view_matrix=np.eye(4),
                                     status=manifest.STATUS_OK, error=None, crc32c={n: crc for n in names},
                                     nbytes={n: 1000 for n in names})
                for r in schema.shard_rows(shard)]
        manifest.write_fragment(writer.store, shard, manifest.fragment_table(rows, names))


def bench_manifest(work: Path, num_rows: int, shard_size: int) -> None:
    from storage.cache import CacheSchema, layout, manifest, stores

    cache = work / f"cache_{num_rows}"
    t0 = time.perf_counter()
    make_manifest_cache(cache, num_rows, shard_size)
    print(f"\nmanifest: cache of {num_rows} rows, {-(-num_rows // shard_size)} fragments written in "
          f"{time.perf_counter() - t0:.1f} s")
    frag = [_run_child("open", str(cache)) for _ in range(3)]
    store = stores.open_store(cache)
    schema = CacheSchema.from_dict(layout.open_root(store)[1])
    t0 = time.perf_counter()
    report = manifest.compact_manifest(store, [t.name for t in schema.targets])
    compact_s = time.perf_counter() - t0
    comp = [_run_child("open", str(cache)) for _ in range(3)]
    assert frag[0]["rows"] == comp[0]["rows"] == num_rows
    print(f"  compaction: {compact_s:.2f} s, {report.nbytes / 1e6:.2f} MB")
    for key, what in (("cold_s", "first open in a fresh process"), ("open_s", "open in a warm process")):
        f_s, c_s = sorted(r[key] for r in frag)[1], sorted(r[key] for r in comp)[1]
        print(f"  CacheReader {what} (median of 3): fragments {f_s:.2f} s | compacted {c_s:.2f} s | "
              f"ratio {f_s / c_s:.1f}x | goal <= 1 s: {'met' if c_s <= 1.0 else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bevkd_bench_index", help="folder for tables, indexes, caches")
    p.add_argument("--scenes", type=int, nargs=2, default=(850, 10), metavar=("LARGE", "SMALL"))
    p.add_argument("--samples-per-scene", type=int, default=40)
    p.add_argument("--reads", type=int, default=200, help="samples each actor reads")
    p.add_argument("--manifest-rows", type=int, default=34_000)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))  # synthetic_targets
    if args.child:
        kind, *rest = args.child
        result = (child_build(*rest) if kind == "build" else child_open(*rest) if kind == "open"
                  else child_actor(kind, rest[0], rest[1], int(rest[2])))
        print(json.dumps(result))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict[str, Any]] = {}
    for scenes in args.scenes:
        root, gen_s = make_tables(work, scenes, args.samples_per_scene)
        index = str(work / f"index_{scenes}" / "samples.parquet")
        build = _run_child("build", str(root), index)
        actor_index = _run_child("index", str(root), index, str(args.reads))
        actor_devkit = _run_child("devkit", str(root), index, str(args.reads))
        rows[scenes] = {"gen_s": gen_s, **{f"build_{k}": v for k, v in build.items()},
                        "index_rss": actor_index["rss_mb"],
                        "index_delta": actor_index["rss_mb"] - actor_index["base_mb"],
                        "index_s": actor_index["open_read_s"], "devkit_rss": actor_devkit["rss_mb"],
                        "devkit_delta": actor_devkit["rss_mb"] - actor_devkit["base_mb"],
                        "devkit_s": actor_devkit["open_read_s"]}
        assert actor_index["boxes"] == actor_devkit["boxes"], "index and devkit disagree on the boxes read"
    big, small = (rows[s] for s in args.scenes)
    print(f"\nsample index: {big['build_samples']} vs {small['build_samples']} samples (tables-only trainval, "
          f"--split all); actor = a fresh process reading {args.reads} samples")
    fmt = "  {:<34} {:>12} {:>12} {:>8}"
    print(fmt.format("", f"{big['build_samples']} smp", f"{small['build_samples']} smp", "ratio"))

    def line(name: str, key: str, unit: str) -> None:
        a, b = big[key], small[key]
        print(fmt.format(name, f"{a:.1f} {unit}", f"{b:.1f} {unit}", f"{a / b:.1f}x" if b else "-"))

    line("tables generated in", "gen_s", "s")
    line("driver: devkit load", "build_devkit_load_s", "s")
    line("driver: index build", "build_build_s", "s")
    line("driver: peak RSS", "build_peak_mb", "MB")
    line("index file", "build_index_mb", "MB")
    line("actor on the index: RSS", "index_rss", "MB")
    line("actor on the index: RSS over imports", "index_delta", "MB")
    line("actor on the index: open + reads", "index_s", "s")
    line("actor on the devkit: RSS", "devkit_rss", "MB")
    line("actor on the devkit: RSS over imports", "devkit_delta", "MB")
    line("actor on the devkit: open + reads", "devkit_s", "s")
    n_big, n_small = big["build_samples"], small["build_samples"]
    print(f"  actor RSS, devkit / index at {n_big} samples: {big['devkit_rss'] / big['index_rss']:.1f}x; index actor "
          f"RSS growth {n_small} -> {n_big} samples: {big['index_rss'] - small['index_rss']:+.1f} MB (goal: flat); "
          f"devkit actor: {big['devkit_rss'] - small['devkit_rss']:+.1f} MB")
    bench_manifest(work, args.manifest_rows, args.shard_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
