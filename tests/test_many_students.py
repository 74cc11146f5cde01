"""Many students, one cache: three ``bevkd train`` processes reading one cache at the same time (a
local directory, then ``s3://`` on a local S3 server) log exactly the losses of one run alone with
the same seed (tiny student, 3 steps, every distillation term the cache allows). The S3 half skips
with a reason when moto[server] or s3fs is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_server import s3_endpoint, upload_dir  # noqa: F401  (s3_endpoint is a fixture)
from test_cache_job_support import make_dataset

from pipeline.cli import main

pytestmark = pytest.mark.slow  # six training processes: ~100 CPU-s
REPO = Path(__file__).resolve().parents[1]
STUDENTS = 3


@pytest.fixture(scope="module")
def data_and_cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("many")
    dataroot = make_dataset(root / "nuscenes", num_scenes=2, samples_per_scene=3)
    cache = root / "cache"
    assert main(["cache", "--dataroot", str(dataroot), "--out", str(cache), "--teacher",
                 "test_cache_job_support:tiny_bev_teacher", "--shard-size", "2", "--image-size", "176", "64",
                 "--depth-stride", "8", "--no-progress", "--no-ray"]) == 0
    return dataroot, cache


def _train_args(dataroot: Path, cache: str, out: Path) -> list[str]:
    return ["train", "--dataroot", str(dataroot), "--cache", cache, "--out", str(out), "--steps", "3",
            "--batch-size", "2", "--student", "tiny", "--workers", "1", "--no-eval", "--seed", "5", "--device", "cpu",
            "--recipe", "all"]


def _losses(out: Path) -> list[dict[str, object]]:
    """Per-step log without the timing field."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def _train_together(dataroot: Path, cache: str, outs: list[Path]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *_train_args(dataroot, cache, out)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for out in outs]
    results = [(p.communicate(timeout=600)[0], p.returncode) for p in procs]
    for text, rc in results:
        assert rc == 0, text[-3000:]


@pytest.fixture(scope="module")
def alone(data_and_cache, tmp_path_factory, one_thread) -> list[dict[str, object]]:
    """The losses of one student trained alone from the local cache, in this process."""
    dataroot, cache = data_and_cache
    out = tmp_path_factory.mktemp("alone")
    assert main(_train_args(dataroot, str(cache), out)) == 0
    log = _losses(out)
    assert len(log) == 3 and {"dense_feature", "heatmap", "depth_bce"} <= set(log[0])  # terms read from the cache
    assert all(r["dense_feature"] > 0 for r in log)
    return log


def test_three_students_on_one_local_cache_match_one_alone(data_and_cache, alone, tmp_path):
    dataroot, cache = data_and_cache
    outs = [tmp_path / f"student{i}" for i in range(STUDENTS)]
    _train_together(dataroot, str(cache), outs)
    for out in outs:
        assert _losses(out) == alone, out


def test_three_students_on_one_s3_cache_match_one_alone(s3_endpoint, data_and_cache, alone, tmp_path):  # noqa: F811
    dataroot, cache = data_and_cache
    upload_dir(cache, "s3://bucket/many")
    outs = [tmp_path / f"student{i}" for i in range(STUDENTS)]
    _train_together(dataroot, "s3://bucket/many", outs)
    for out in outs:
        assert _losses(out) == alone, out
