"""Prefetching cache workers (pipeline/prefetch.py, ``CacheJobConfig.prefetch``) store the same rows
bit for bit as the sequential worker, broken samples included; ``--gpus-per-worker`` takes fractions.

Real components: generated nuScenes-format data read by the devkit reader, real Zarr caches on
disk, the tiny pure-torch teacher of test_cache_job_support, a real local Ray (``ray_session``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_cache_job_support import TinyBEVTeacher, assert_same_caches, copy_dataset, make_dataset

from pipeline.cache_job import CacheJobConfig
from pipeline.cache_plan import TeacherSource, run_loop
from pipeline.cli import main
from pipeline.prefetch import ordered_map
from storage.cache import CacheReader
from storage.nuscenes_reader import NuScenesReader
from teachers.input import TeacherInput
from teachers.output import TeacherOutput

TINY = "test_cache_job_support:tiny_bev_teacher"
CONFIG = CacheJobConfig(shard_size=5, batch_size=2, views=1, image_size=(320, 180), depth_stride=8)


class PickyTeacher(TinyBEVTeacher):
    """The tiny teacher raising RuntimeError on any batch holding a sample whose point count is 1
    modulo 3 (the job retries such a batch sample by sample, so only those rows fail)."""

    def forward(self, batch: TeacherInput) -> TeacherOutput:
        if any(len(p) % 3 == 1 for p in batch.points):
            raise RuntimeError("picky teacher refuses this sample")
        return super().forward(batch)


def picky_teacher() -> PickyTeacher:
    return PickyTeacher()


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory) -> Path:
    """A small dataset with one truncated LiDAR file and one missing camera image."""
    root = make_dataset(tmp_path_factory.mktemp("pf") / "nuscenes", num_scenes=2, samples_per_scene=5)
    root = copy_dataset(root, tmp_path_factory.mktemp("pf") / "broken")
    reader = NuScenesReader(root)
    with open(reader.read(2).lidar_path, "r+b") as f:
        f.truncate(1001)
    os.remove(reader.read(7).camera("CAM_FRONT").image_path)
    return root


def assert_identical(a: Path, b: Path) -> int:
    """Same manifests (status, error, checksums) and every decoded array of every ok row equal
    byte for byte, lossy targets included. Returns the ok rows compared."""
    assert_same_caches(a, b)
    ra, rb = CacheReader(a), CacheReader(b)
    assert ra.rows.to_pydict() == rb.rows.to_pydict()
    for row in ra.ok_rows:
        xa, xb = ra.read(int(row)), rb.read(int(row))
        arrays = [f.name for f in dataclasses.fields(xa) if isinstance(getattr(xa, f.name), np.ndarray)]
        assert {"heatmap", "view_mask", "fg_mask", "lidar_depth"} <= set(arrays)
        for name in arrays:
            assert getattr(xa, name).tobytes() == getattr(xb, name).tobytes(), f"row {row} {name} differs"
        assert xa.bev_features.keys() == xb.bev_features.keys()
        for k, v in xa.bev_features.items():
            assert v.tobytes() == xb.bev_features[k].tobytes(), f"row {row} bev_features/{k} differs"
    return len(ra.ok_rows)


@pytest.mark.parametrize("teacher", [TINY, "test_cache_prefetch:picky_teacher"])
def test_prefetch_stores_the_same_rows_bit_for_bit(broken_root, tmp_path, one_thread, teacher):
    reader, spec = NuScenesReader(broken_root), TeacherSource(name=teacher)
    plain = run_loop(CONFIG, reader, spec, tmp_path / "p0")
    ahead = run_loop(replace(CONFIG, prefetch=2), reader, spec, tmp_path / "p2")
    assert (ahead.rows_ok, ahead.rows_failed, ahead.errors) == (plain.rows_ok, plain.rows_failed, plain.errors)
    assert plain.rows_failed >= 4 and plain.rows_ok > 0  # two broken samples x two views at least
    assert any("LiDAR points truncated" in e for e in ahead.errors)
    assert any("CAM_FRONT image missing" in e for e in ahead.errors)
    if teacher != TINY:  # the teacher's refusals fail their own rows only
        picky = [e for e in ahead.errors if "picky teacher refuses" in e]
        assert picky and plain.rows_failed == 4 + len(picky)
    assert assert_identical(tmp_path / "p0", tmp_path / "p2") == plain.rows_ok
    again = run_loop(replace(CONFIG, prefetch=3), reader, spec, tmp_path / "p0")  # prefetch is not recorded
    assert again.rows_written == 0 and again.shards_skipped == plain.shards_written


def test_ordered_map_keeps_order_bounds_work_and_raises_in_place():
    live, peak, lock = [0], [0], threading.Lock()

    def work(i: int) -> int:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.002 * ((7 * i) % 5))  # finish out of order
        with lock:
            live[0] -= 1
        if i == 13:
            raise KeyError(i)
        return i * i

    assert list(ordered_map(work, range(13), 3)) == [i * i for i in range(13)]
    assert 1 < peak[0] <= 3
    got = []
    with pytest.raises(KeyError):
        for v in ordered_map(work, range(20), 4):
            got.append(v)
    assert got == [i * i for i in range(13)]
    threads = set()
    list(ordered_map(lambda i: threads.add(threading.get_ident()), range(3), 0))
    assert threads == {threading.get_ident()}  # depth 0: inline, no threads
    with pytest.raises(ValueError, match="prefetch"):
        CacheJobConfig(prefetch=-1)


def test_actor_plan_fractional_gpus():
    from pipeline.ray_runner import actor_plan

    assert actor_plan({"CPU": 16.0, "GPU": 2.0}, gpus_per_worker=0.5, cpus_per_worker=4) == (
        4, {"num_gpus": 0.5, "num_cpus": 4}, "cuda")
    assert actor_plan({"CPU": 16.0, "GPU": 2.0}) == (2, {"num_gpus": 1.0, "num_cpus": 1.0}, "cuda")
    assert actor_plan({"CPU": 16.0, "GPU": 2.0}, gpus_per_worker=0, cpus_per_worker=2) == (
        8, {"num_cpus": 2}, "cpu")
    assert actor_plan({"CPU": 2.0}, max_workers=1) == (1, {"num_cpus": 1.0}, "cpu")
    with pytest.raises(ValueError, match="gpus-per-worker 0.5: the Ray cluster has 0 GPUs"):
        actor_plan({"CPU": 2.0}, gpus_per_worker=0.5)
    with pytest.raises(ValueError, match="fraction below 1"):
        actor_plan({"CPU": 2.0, "GPU": 4.0}, gpus_per_worker=1.5)


@pytest.mark.ray
def test_cli_gpus_per_worker_and_prefetch_on_ray(ray_session, broken_root, tmp_path, capsys):
    args = ["cache", "--dataroot", str(broken_root), "--teacher", TINY, "--shard-size", "5", "--batch-size", "2",
            "--views", "1", "--image-hw", "180", "320", "--depth-stride", "8", "--no-progress",
            "--max-failed-fraction", "0.5"]
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "gpu"), "--gpus-per-worker", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bevkd cache: --gpus-per-worker 0.5: the Ray cluster has 0 GPUs (CPU 2); "
                   "pass --gpus-per-worker 0 or omit it to run on CPUs"]
    assert main(args + ["--out", str(tmp_path / "ray"), "--gpus-per-worker", "0", "--prefetch", "2"]) == 0
    assert "with 2 worker(s)" in capsys.readouterr().out
    run_loop(CONFIG, NuScenesReader(broken_root), TeacherSource(name=TINY), tmp_path / "loop")
    assert assert_identical(tmp_path / "ray", tmp_path / "loop") > 0
