"""A cache on object storage for real: a local S3 server (moto, :mod:`s3_server`) and fsspec/s3fs
through ``s3://bucket/...``. ``bevkd cache`` is killed mid-job (SIGKILL of its process), resumed
on Ray (actors write to S3), verified, then read back row for row against a local copy and
streamed by ``bevkd train``. Skipped with a reason when moto[server] or s3fs is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from s3_server import s3_endpoint, s3_keys  # noqa: F401  (s3_endpoint is a fixture)
from test_cache_job_support import make_dataset

from pipeline.cli import main
from storage.cache import CacheReader

pytestmark = pytest.mark.slow  # kill, resume, a second job and two short trainings: ~40 CPU-s
REPO = Path(__file__).resolve().parents[1]
URL = "s3://bucket/cache"
JOB = ["--teacher", "test_cache_job_support:slow_tiny_bev_teacher", "--shard-size", "1",
       "--image-size", "176", "64", "--depth-stride", "8", "--no-progress"]


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("s3data") / "nuscenes", num_scenes=2, samples_per_scene=4)


def _fragments() -> list[str]:
    return [k for k in s3_keys("cache/manifest/") if k.rsplit("/", 1)[-1].startswith("shard-")]


def _same_rows(a: CacheReader, b: CacheReader) -> int:
    """Rows compared: every committed row of ``a`` reads back from ``b`` with equal arrays."""
    assert a.sample_tokens == b.sample_tokens and len(a) == len(b)
    for i in range(len(a)):
        ra, rb = a.read(i, decode=False), b.read(i, decode=False)
        for name in ("heatmap", "lidar_depth", "boxes", "fg_mask", "view_mask"):
            va, vb = getattr(ra, name), getattr(rb, name)
            for x, y in zip(va if isinstance(va, tuple) else (va,), vb if isinstance(vb, tuple) else (vb,),
                            strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"row {i} {name}")
    return len(a)


def test_s3_cache_killed_resumed_verified_and_streamed(s3_endpoint, dataroot, tmp_path, tmp_path_factory,  # noqa: F811
                                                        capsys):
    cmd = [sys.executable, "-m", "pipeline.cli", "cache", "--dataroot", str(dataroot), "--out", URL, *JOB]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
               RAY_TMPDIR=str(tmp_path_factory.mktemp("rs3")), RAY_AUTH_MODE="disabled")  # short: socket paths
    proc = subprocess.Popen([*cmd, "--no-ray"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not _fragments() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the job ended before it was killed: {proc.stderr.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _fragments()
    assert 1 <= len(before) < 8, f"kill was not mid-run: {len(before)} shards committed"

    # resume on Ray (a local Ray of the subprocess): its actor writes the remaining shards to S3
    done = subprocess.run([*cmd, "--workers", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({len(before)} already committed)" in done.stdout and "8 rows ok, 0 failed" in done.stdout, done.stdout
    assert len(_fragments()) == 8
    assert main(["verify", URL, "--no-progress"]) == 0
    assert "8 committed ok rows checked, 0 bad" in capsys.readouterr().out

    # the same job into a local directory, in one go: the S3 cache holds the same rows
    local = tmp_path / "local"
    assert main(["cache", "--dataroot", str(dataroot), "--out", str(local), *JOB, "--no-ray"]) == 0
    remote = CacheReader(URL)
    assert remote.location == "s3://bucket/cache"
    assert _same_rows(remote, CacheReader(local)) == 8

    # stream it: the student trains from s3:// (a DataLoader worker process reads it) as from disk
    logs = {}
    for name, cache in (("s3", URL), ("local", str(local))):
        run = tmp_path / f"run_{name}"
        assert main(["train", "--dataroot", str(dataroot), "--cache", cache, "--out", str(run), "--steps", "2",
                     "--batch-size", "2", "--student", "tiny", "--workers", "1", "--no-eval", "--seed", "3",
                     "--device", "cpu"]) == 0, capsys.readouterr().out
        logs[name] = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                      for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(logs["s3"]) == 2 and logs["s3"] == logs["local"]
    assert logs["s3"][0]["depth_bce"] > 0


def test_s3_cache_that_is_absent_is_a_user_error(s3_endpoint, capsys):  # noqa: F811
    assert main(["verify", "s3://bucket/nothing-here", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "s3://bucket/nothing-here" in err and "Traceback" not in err
