"""The whole pipeline on real input: cache the real nuScenes keyframe (mmdet3d reader) with
the project's reference teacher, verify it, train a student a few steps from it, and render `bevkd show` for it."""

from __future__ import annotations

import json

from pipeline.cli import main
from pipeline.demo import DEFAULT_TEACHER
from pipeline.show import render_sample
from storage.cache import CacheReader
from storage.mmdet3d_reader import Mmdet3dInfoReader


def test_real_keyframe_cache_train_show(tmp_path, keyframe_info, artefacts, capsys):
    cache, run = tmp_path / "cache", tmp_path / "student"
    data = ["--info", str(keyframe_info)]
    assert main(["cache", *data, "--checkpoint", str(DEFAULT_TEACHER), "--no-ray", "--no-progress",
                 "--out", str(cache)]) == 0
    assert main(["verify", str(cache)]) == 0

    reader = CacheReader(cache)
    assert len(reader) == 1 and reader.rows.num_rows == 1
    sample = Mmdet3dInfoReader(keyframe_info).read(0)
    row = reader.read(sample.sample_token)
    assert row.fg_mask is not None and row.fg_mask.any()

    assert main(["train", *data, "--cache", str(cache), "--out", str(run), "--steps", "2", "--student", "tiny",
                 "--no-eval", "--workers", "0", "--batch-size", "1", "--recipe", "all"]) == 0
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    distill_terms = {"dense_feature", "heatmap"}
    assert all(distill_terms <= set(s) and s["dense_feature"] > 0 for s in steps), steps[0]

    png = artefacts / "keyframe_show.png"
    capsys.readouterr()
    assert main(["show", str(cache), *data, "--sample", sample.sample_token, "--out", str(png)]) == 0
    assert str(png) in capsys.readouterr().out and png.stat().st_size > 50_000
    # GT boxes that hold LiDAR points must sit on the cached LiDAR foreground.
    res = render_sample(reader, sample.sample_token, tmp_path / "show.png", sample=sample)
    assert res.gt_boxes_drawn == len(sample.gt_boxes) == 68
    assert res.gt_boxes_on_foreground >= 0.95, res
