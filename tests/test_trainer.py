"""The student trainer: CLI run with per-step JSONL and devkit evaluation, refusal of a mismatched
cache, bit-exact resume, online distillation, and DDP over gloo with 2 CPU processes (torchrun)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from student.dataset import DataConfig
from student.model import StudentModel
from student.trainer import TrainConfig, train_student
from tiny_student import CFG

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for this module


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_trains_logs_every_term_checkpoints_and_evaluates(synth_dataroot, student_cache, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--dataroot", str(synth_dataroot), "--split", "mini_val", "--cache", str(student_cache),
               "--out", str(out), "--steps", "2", "--batch-size", "2", "--student", "tiny", "--workers", "1",
               "--recipe", "all"])
    text = capsys.readouterr().out
    assert rc == 0, text
    log = _log(out / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2] and all(len(r["tokens"]) == 2 for r in log)
    for term in ("detection_heatmap", "detection_regression", "depth_bce", "dense_feature", "lgkd_feature", "heatmap",
                 "keypoint_response", "instance", "total"):
        assert all(term in r for r in log), term
    assert abs(sum(v for k, v in log[0].items() if k not in ("step", "epoch", "lr", "seconds", "tokens", "total"))
               - log[0]["total"]) < 1e-3 * abs(log[0]["total"])
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"] == {"step": 2, "epoch": 0, "batch": 2}
    summary = json.loads((out / "eval" / "metrics_summary.json").read_text())
    assert len(summary["mean_dist_aps"]) == 10 and 0.0 <= summary["nd_score"] <= 1.0
    assert "mAP" in text and "NDS" in text and "per-class AP: car" in text


def test_cli_refuses_a_cache_of_another_split(synth_dataroot, student_cache, tmp_path, capsys):
    rc = main(["train", "--dataroot", str(synth_dataroot), "--split", "mini_train", "--cache", str(student_cache),
               "--out", str(tmp_path / "x"), "--steps", "1", "--student", "tiny", "--workers", "0"])
    text = capsys.readouterr().err
    assert rc == 2 and "dataset" in text and "mini_val" in text and "mini_train" in text


def test_resume_continues_bit_for_bit(reader, student_cache, tmp_path):
    base = dict(student=CFG, batch_size=2, workers=0, progress=False, seed=4, data=DataConfig())
    straight = train_student(TrainConfig(**base, steps=4, out_dir=str(tmp_path / "a")), reader, student_cache)
    first = train_student(TrainConfig(**base, steps=4, stop_after=2, out_dir=str(tmp_path / "b")), reader,
                          student_cache)
    assert first.steps == 2
    resumed = train_student(TrainConfig(**base, steps=4, out_dir=str(tmp_path / "b"), resume=True), reader,
                            student_cache)
    a, b = _log(straight.loss_log), _log(resumed.loss_log)
    # 6 samples: 3 steps/epoch
    assert [r["step"] for r in b] == [1, 2, 3, 4] and a[1]["epoch"] == 0 and a[3]["epoch"] == 1
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    assert [r["total"] for r in a] == [r["total"] for r in b]
    sa = torch.load(straight.checkpoint, weights_only=True)["model"]
    sb = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(4)
    fresh = StudentModel(CFG).state_dict()
    assert not all(torch.equal(fresh[k], sa["model." + k]) for k in fresh)  # it did train


def test_online_teacher_and_no_distill_amp_runs(reader, teacher, tmp_path):
    online = train_student(TrainConfig(student=CFG, steps=1, batch_size=2, progress=False, out_dir=str(tmp_path / "o"),
                                       recipe="all"),
                           reader, None, teacher=teacher)
    assert {"dense_feature", "heatmap", "lgkd_feature", "depth_bce"} <= set(online.final_losses)
    plain = train_student(TrainConfig(student=CFG, steps=1, batch_size=2, progress=False, no_distill=True, amp=True,
                                      out_dir=str(tmp_path / "n")), reader, None, teacher=teacher)  # bf16 on CPU
    assert set(plain.final_losses) == {"detection_heatmap", "detection_regression", "depth_bce", "total"}
    assert all(math.isfinite(v) and v > 0 for v in plain.final_losses.values())


def test_ddp_two_cpu_processes_over_gloo_read_their_own_rows_and_agree(synth_dataroot, student_cache, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "pipeline.cli", "train", "--dataroot", str(synth_dataroot), "--split", "mini_val",
           "--cache", str(student_cache), "--out", str(out), "--steps", "2", "--batch-size", "1", "--student", "tiny",
           "--workers", "0", "--device", "cpu", "--no-eval"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = _log(out / "train_log.jsonl"), _log(out / "train_log.rank1.jsonl")
    assert len(r0) == len(r1) == 2
    seen0, seen1 = {t for r in r0 for t in r["tokens"]}, {t for r in r1 for t in r["tokens"]}
    assert not seen0 & seen1  # a DistributedSampler: each rank its own rows
    assert [r["total"] for r in r0] != [r["total"] for r in r1]  # different data, different losses ...
    s0 = json.loads((out / "summary.json").read_text())
    s1 = json.loads((out / "summary.rank1.json").read_text())
    assert s0["params_sha256"] == s1["params_sha256"]  # ... yet identical parameters after all-reduced steps
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    fresh = StudentModel(CFG).state_dict()
    assert not all(torch.equal(fresh[k], ckpt["model." + k]) for k in fresh)


def test_trains_from_a_cache_written_by_the_cache_job(synth_dataroot, tmp_path, capsys):
    from storage.cache import CacheReader
    from student.dataset import cache_depth_geometry

    job_cache = tmp_path / "job_cache"
    data = ["--dataroot", str(synth_dataroot), "--split", "mini_val"]
    assert main(["cache", *data, "--no-ray", "--teacher", "centerpoint", "--views", "1", "--image-size", "176", "64",
                 "--shard-size", "4", "--max-boxes", "100", "--out", str(job_cache), "--no-progress"]) == 0
    reader = CacheReader(job_cache)
    assert reader.schema.views == 2 and cache_depth_geometry(reader) == ((176, 64), 16)
    out = tmp_path / "run"
    rc = main(["train", *data, "--cache", str(job_cache), "--out", str(out), "--steps", "2", "--student", "tiny",
               "--workers", "0", "--no-eval"])
    assert rc == 0, capsys.readouterr().out
    log = _log(out / "train_log.jsonl")  # the default (ablated) recipe: BEVDistill instance distillation + depth
    assert len(log) == 2 and all("instance" in r and r["depth_bce"] > 0 for r in log)
    assert not any("dense_feature" in r or "heatmap" in r or "lgkd_feature" in r for r in log)
