"""The cache job's Ray-free unit of work (process_shard), views, failures, resume and refusal.

Real components: generated nuScenes-format data read by the devkit reader, a real Zarr cache on
disk, a tiny pure-torch teacher (tests/test_cache_job_support.py). Ray runs in test_cache_job_ray.py.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_cache_job_support import copy_dataset, make_dataset, manifest_rows, view_mask_flip_check

from pipeline.cache_job import CacheJobConfig, ViewAugmentConfig, augment_sample, job_row
from pipeline.cache_plan import TeacherSource, plan_cache, run_loop
from pipeline.cli import main
from storage.cache import CacheReader
from storage.cache.verify import verify_cache
from storage.errors import CacheMismatchError
from storage.nuscenes_reader import NuScenesReader
from storage.bev_augment import bev_augmentation_matrix

TINY = TeacherSource(name="test_cache_job_support:tiny_bev_teacher")
CONFIG = CacheJobConfig(shard_size=3, batch_size=2, image_size=(320, 180), depth_stride=8)


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cj") / "nuscenes")


def _break_inputs(root: Path) -> tuple[NuScenesReader, dict[str, str]]:
    """Truncate one LiDAR file, delete one camera image, cut one JPEG in half, put NaN in one
    point cloud; returns the reader and sample token -> expected reason fragment."""
    reader = NuScenesReader(root)
    s = [reader.read(i) for i in (1, 3, 4, 6)]
    with open(s[0].lidar_path, "r+b") as f:
        f.truncate(os.path.getsize(s[0].lidar_path) - 6)
    os.remove(s[1].camera("CAM_BACK").image_path)
    jpeg = Path(s[2].camera("CAM_FRONT_LEFT").image_path)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    pts = np.fromfile(s[3].lidar_path, dtype=np.float32)
    pts[7] = np.nan
    pts.tofile(s[3].lidar_path)
    return NuScenesReader(root), {
        s[0].sample_token: "LiDAR points truncated", s[1].sample_token: "CAM_BACK image missing",
        s[2].sample_token: "CAM_FRONT_LEFT image unreadable", s[3].sample_token: "NaN"}


def test_broken_samples_become_failed_rows_with_reasons(dataroot, tmp_path):
    reader, expected = _break_inputs(copy_dataset(dataroot, tmp_path / "broken"))
    summary = run_loop(CONFIG, reader, TINY, tmp_path / "cache")
    assert (summary.rows_failed, summary.rows_ok) == (4, len(reader) - 4)
    cache = CacheReader(tmp_path / "cache")
    table = cache.rows.to_pydict()
    failed = {t: e for t, s, e in zip(table["sample_token"], table["status"], table["error"], strict=True)
              if s == "failed"}
    assert set(failed) == set(expected)
    for token, fragment in expected.items():
        assert fragment in failed[token] and token in failed[token]
    assert str(tmp_path / "broken") in failed[next(iter(expected))]  # names the file
    assert len(cache.ok_rows) == len(reader) - 4
    report = verify_cache(tmp_path / "cache")
    assert report.ok and report.rows_checked == len(reader) - 4 and report.rows_failed_in_job == 4


def test_rows_the_writer_refuses_fail_with_the_writers_reason(dataroot, tmp_path):
    reader = NuScenesReader(dataroot)
    nan_tokens = {t for t in reader.sample_tokens if len(reader.read(t).points) % 2 == 0}
    assert 0 < len(nan_tokens) < len(reader)
    summary = run_loop(CONFIG, reader, TeacherSource(name="test_cache_job_support:nan_tiny_bev_teacher"),
                       tmp_path / "cache")
    assert summary.rows_failed == len(nan_tokens) and len(summary.errors) == len(nan_tokens)
    assert all("heatmap" in e and any(t in e for t in nan_tokens) for e in summary.errors)


def test_resume_skips_committed_shards_and_refuses_other_teachers(dataroot, tmp_path):
    reader, out = NuScenesReader(dataroot), tmp_path / "cache"
    first = run_loop(CONFIG, reader, TINY, out)
    assert first.shards_written == -(-len(reader) // CONFIG.shard_size) and first.rows_written == len(reader)
    frags = {p: p.stat().st_mtime_ns for p in (out / "manifest").glob("*.parquet")}
    again = run_loop(CONFIG, reader, TINY, out)
    assert (again.rows_written, again.shards_skipped, again.rows_ok) == (0, first.shards_written, len(reader))
    assert {p: p.stat().st_mtime_ns for p in (out / "manifest").glob("*.parquet")} == frags
    with pytest.raises(CacheMismatchError, match="teacher weights"):
        run_loop(CONFIG, reader, TeacherSource(name=TINY.name, init_seed=1), out)
    with pytest.raises(CacheMismatchError, match="target set"):
        run_loop(replace(CONFIG, targets=("heatmap", "fg_mask")), reader, TINY, out)
    with pytest.raises(CacheMismatchError, match="views/shard size"):
        run_loop(replace(CONFIG, shard_size=2), reader, TINY, out)
    rc = main(["cache", "--dataroot", str(dataroot), "--teacher", TINY.name, "--init-seed", "1", "--out", str(out),
               "--shard-size", "3", "--no-ray", "--no-progress"])
    assert rc == 2
    old_sha = CacheReader(out).schema.teacher.weights_sha256
    redo = run_loop(CONFIG, reader, TeacherSource(name=TINY.name, init_seed=1), out, overwrite=True)
    assert redo.rows_written == len(reader) and redo.shards_skipped == 0
    assert CacheReader(out).schema.teacher.weights_sha256 != old_sha
    assert len(manifest_rows(out)) == len(reader)


def test_views_store_their_matrix_and_move_points_boxes_and_cameras(dataroot, tmp_path):
    reader = NuScenesReader(dataroot)
    config = replace(CONFIG, views=2, augment=ViewAugmentConfig(seed=5))
    run_loop(config, reader, TINY, tmp_path / "cache")
    cache = CacheReader(tmp_path / "cache")
    assert cache.schema.views == 3 and len(cache) == 3 * len(reader)
    token = reader.sample_tokens[2]
    rows = [cache.read(token, v) for v in range(3)]
    np.testing.assert_array_equal(rows[0].view_matrix, np.eye(4))
    for v in (1, 2):
        np.testing.assert_array_equal(rows[v].view_matrix, config.augment.matrix(token, v))
        assert not np.allclose(rows[v].view_matrix, np.eye(4))
        assert not np.array_equal(rows[v].heatmap, rows[0].heatmap)  # the teacher saw moved points
        np.testing.assert_array_equal(rows[v].lidar_depth, rows[0].lidar_depth)  # images are not augmented
    assert not np.array_equal(rows[1].view_matrix, rows[2].view_matrix)


def test_augmented_view_targets_follow_the_matrix(dataroot):
    sample = NuScenesReader(dataroot).read(0)
    grid = TINY.load()[0].out_grid  # symmetric about x = 0 and y = 0
    wanted = {"fg_mask", "view_mask", "lidar_depth"}
    base = job_row(None, sample, CONFIG, bev_grid=grid, lidar_targets=wanted)
    flip = bev_augmentation_matrix(flip_x=True)
    flipped = job_row(None, augment_sample(sample, flip), CONFIG, bev_grid=grid, lidar_targets=wanted)
    assert base.view_mask.any() and base.fg_mask.any()
    assert view_mask_flip_check(base.view_mask, flipped.view_mask)
    assert view_mask_flip_check(base.fg_mask, flipped.fg_mask)
    scaled = augment_sample(sample, bev_augmentation_matrix(rotation=0.3, scale=1.05))
    def sample_lidar_depth(s, config):
        return job_row(None, s, config, bev_grid=grid, lidar_targets=("lidar_depth",)).lidar_depth

    depth = sample_lidar_depth(sample, CONFIG)
    assert (depth > 0).sum() > 100
    np.testing.assert_allclose(sample_lidar_depth(scaled, CONFIG), depth, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scaled.points[:, :2], sample.points[:, :2] @ (1.05 * np.array(
        [[np.cos(0.3), np.sin(0.3)], [-np.sin(0.3), np.cos(0.3)]])), rtol=1e-5, atol=1e-4)


def test_shard_worker_runs_without_ray(dataroot, tmp_path):
    from pipeline.ray_runner import ShardWorker

    reader = NuScenesReader(dataroot)
    teacher, info = TINY.load()
    writer = plan_cache(tmp_path / "cache", reader, teacher, info, CONFIG)
    worker = ShardWorker(TINY, reader, str(tmp_path / "cache"), CONFIG)
    result = worker(1)
    assert (result.shard_index, result.rows_ok, result.skipped) == (1, 3, False)
    assert result.times.teacher > 0 and result.times.write > 0 and sum(result.nbytes.values()) > 0
    assert worker(1).skipped and writer.committed_shards() == [1]
