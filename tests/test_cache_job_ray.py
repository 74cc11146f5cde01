"""The cache job on a real local Ray: matches the plain loop row for row, survives SIGKILL and
resumes, turns broken inputs into failed rows. One session-scoped Ray (``ray_session``); the kill
test runs the CLI in a subprocess with its own local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cache_job_support import assert_same_caches, copy_dataset, make_dataset, manifest_rows

from pipeline.cache_job import CacheJobConfig
from pipeline.cache_plan import TeacherSource, run_loop
from pipeline.cli import main
from pipeline.ray_runner import run_cache_job
from storage.cache import CacheReader
from storage.cache.verify import verify_cache
from storage.mmdet3d_reader import Mmdet3dInfoReader
from storage.nuscenes_reader import NuScenesReader

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]
TINY = "test_cache_job_support:tiny_bev_teacher"


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cjray") / "nuscenes", num_scenes=2, samples_per_scene=5)


def test_ray_job_matches_loop_and_fails_broken_samples(ray_session, dataroot, tmp_path, capsys):
    root = copy_dataset(dataroot, tmp_path / "data")
    reader = NuScenesReader(root)
    bad_lidar, bad_cam = reader.read(2), reader.read(7)
    with open(bad_lidar.lidar_path, "r+b") as f:
        f.truncate(1001)
    os.remove(bad_cam.camera("CAM_FRONT").image_path)
    args = ["cache", "--dataroot", str(root), "--teacher", TINY, "--shard-size", "3", "--views", "1",
            "--image-size", "320", "180", "--depth-stride", "8", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "ray"), "--max-failed-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "16 rows ok, 4 failed" in out and "with 2 worker(s)" in out
    config = CacheJobConfig(shard_size=3, views=1, image_size=(320, 180), depth_stride=8)
    run_loop(config, reader, TeacherSource(name=TINY), tmp_path / "loop")
    assert assert_same_caches(tmp_path / "ray", tmp_path / "loop") == 20
    table = CacheReader(tmp_path / "ray").rows.to_pydict()
    failed = {(t, v): e for t, v, s, e in zip(table["sample_token"], table["view"], table["status"], table["error"],
                                              strict=True) if s == "failed"}
    assert set(failed) == {(bad_lidar.sample_token, 0), (bad_lidar.sample_token, 1),
                           (bad_cam.sample_token, 0), (bad_cam.sample_token, 1)}
    assert "LiDAR points truncated" in failed[(bad_lidar.sample_token, 0)] and bad_lidar.lidar_path in failed[
        (bad_lidar.sample_token, 0)]
    assert "CAM_FRONT image missing" in failed[(bad_cam.sample_token, 1)]
    report = verify_cache(tmp_path / "ray")
    assert report.ok and report.rows_checked == 16 and report.rows_failed_in_job == 4
    # rerun: resumes with nothing to do; 20% failed is past a 10% limit -> exit code 1
    assert main(args + ["--out", str(tmp_path / "ray"), "--max-failed-fraction", "0.1", "--no-ray"]) == 1
    assert "wrote 0 rows in 0 shards (7 already committed)" in capsys.readouterr().out


def test_ray_job_on_the_real_keyframe(ray_session, keyframe_info, tmp_path):
    reader = Mmdet3dInfoReader(keyframe_info)
    config = CacheJobConfig(shard_size=2, views=1, batch_size=2)
    spec = TeacherSource(name="centerpoint")
    summary = run_cache_job(config, reader, spec, str(tmp_path / "ray"), progress=False, max_workers=1)
    assert (summary.rows_ok, summary.rows_failed, summary.workers) == (2, 0, 1)
    assert summary.times.teacher > 0 and summary.nbytes > 0
    run_loop(config, reader, spec, tmp_path / "loop")
    assert assert_same_caches(tmp_path / "ray", tmp_path / "loop") == 2
    assert verify_cache(tmp_path / "ray").ok
    row = CacheReader(tmp_path / "ray").read(reader.sample_tokens[0])
    assert row.view_mask.any(axis=(1, 2)).all() and (row.lidar_depth > 0).sum() > 1000


def test_a_crashed_actor_restarts_and_its_shard_is_retried(ray_session, dataroot, tmp_path):
    armed = Path(os.environ["BEVKD_TEST_TMP"], "crash-armed")
    armed.touch()
    reader = NuScenesReader(dataroot)
    config = CacheJobConfig(shard_size=4, batch_size=2, image_size=(320, 180), depth_stride=8)
    spec = TeacherSource(name="test_cache_job_support:crashing_tiny_bev_teacher")
    summary = run_cache_job(config, reader, spec, str(tmp_path / "ray"), progress=False)
    assert not armed.exists()  # a worker process died in its first batched forward
    assert (summary.rows_ok, summary.rows_failed, summary.rows_written) == (10, 0, 10)
    run_loop(config, reader, spec, tmp_path / "loop")  # the armed file is gone: no crash here
    assert assert_same_caches(tmp_path / "ray", tmp_path / "loop") == 10
    assert verify_cache(tmp_path / "ray").ok


def _settled_fragments(out: Path, quiet_s: float = 2.0, timeout_s: float = 30.0) -> dict[str, int]:
    """Fragment name -> mtime once no fragment appeared or changed for ``quiet_s``."""
    seen, since, start = None, time.monotonic(), time.monotonic()
    while time.monotonic() - start < timeout_s:
        now = {p.name: p.stat().st_mtime_ns for p in out.glob("manifest/shard-*.parquet")}
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.1)
    return seen or {}


def test_sigkill_mid_run_then_rerun_commits_every_row_once(dataroot, tmp_path, tmp_path_factory):
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "pipeline.cli", "cache", "--dataroot", str(dataroot), "--teacher",
           "test_cache_job_support:slow_tiny_bev_teacher", "--out", str(out), "--shard-size", "1",
           "--image-size", "320", "180", "--depth-stride", "8", "--no-progress"]
    ray_tmp = tmp_path_factory.mktemp("rk")  # short: Ray's socket paths must stay under 107 bytes
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
               RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(out.glob("manifest/shard-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the job ended before it was killed: {proc.stderr.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _settled_fragments(out)  # a worker of the killed job may still finish the shard it was writing
    assert 1 <= len(before) < 10, f"kill was not mid-run: {len(before)} shards committed; {proc.stderr.read()[-2000:]}"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({len(before)} already committed)" in done.stdout and "10 rows ok, 0 failed" in done.stdout
    rows = manifest_rows(out)
    assert sorted(r[0] for r in rows) == list(range(10))  # every row committed exactly once
    assert {r[3] for r in rows} == {"ok"}
    assert {k: v for k, v in ((p.name, p.stat().st_mtime_ns) for p in out.glob("manifest/*")) if k in before} == before
    assert main(["verify", str(out), "--no-progress"]) == 0
