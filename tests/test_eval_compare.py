"""``bevkd eval`` (a student run; a cache's teacher boxes) and ``bevkd compare`` on the tiny
generated dataroot: the real devkit, real tiny trained runs, a real Zarr cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from storage.cache import CacheRow, CacheSchema, CacheWriter, DatasetInfo, RowResult, TargetSpec, TeacherInfo
from storage.grid import BEVGrid
from storage.sample import NUSCENES_CLASSES

BANDS = ["0-15m", "15-30m", "30m+"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def oracle_cache(synth_val_reader, tmp_path_factory) -> Path:
    """A cache of mini_val whose 'teacher' boxes are the ground truth (score 1): the devkit must score it ~1."""
    return _write_oracle_cache(synth_val_reader, tmp_path_factory.mktemp("oracle") / "cache")


@pytest.fixture(scope="module")
def train_oracle_cache(synth_dataroot, tmp_path_factory) -> Path:
    """The ground-truth 'teacher' cache of mini_train (the generated dataroot's other split)."""
    from storage.nuscenes_reader import NuScenesReader

    reader = NuScenesReader(synth_dataroot, version="v1.0-mini", split="mini_train")
    return _write_oracle_cache(reader, tmp_path_factory.mktemp("oracle_train") / "cache")


def _write_oracle_cache(reader, location: Path) -> Path:
    tokens = list(reader.sample_tokens)
    grid = BEVGrid(point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=(3.2, 3.2, 8.0))
    schema = CacheSchema(grid=grid, teacher=TeacherInfo(name="oracle"),
                         dataset=DatasetInfo.from_reader_id(reader.dataset_id),
                         targets=(TargetSpec(name="boxes", shape=(100, 9)),), num_rows=len(tokens), shard_size=4)
    writer = CacheWriter.create(str(location), schema, tokens)
    for shard in range(schema.num_shards):
        rows = []
        for token, _ in writer.shard_rows(shard):
            s = reader.read(token)
            boxes = np.nan_to_num(np.asarray(s.gt_boxes, np.float32))
            rows.append(RowResult(sample_token=token, targets=CacheRow(
                boxes=boxes, scores=np.ones(len(boxes), np.float32), labels=np.asarray(s.gt_labels, np.int64))))
        report = writer.write_shard(shard, rows)
        assert report.rows_failed == 0
    return location


@pytest.fixture(scope="module")
def runs(synth_dataroot, synth_val_reader, tiny_teacher, tmp_path_factory) -> list[Path]:
    """Two tiny students trained for one step from a real teacher cache (no end-of-training eval)."""
    from kd_cache import write_teacher_cache

    from student.config import StudentConfig

    hw = StudentConfig.tiny().image_hw
    root = tmp_path_factory.mktemp("runs")
    cache = write_teacher_cache(root / "cache", synth_val_reader, tiny_teacher, image_size=(hw[1], hw[0]))
    out = []
    for name, extra in (("nokd", ["--no-distill"]), ("kd", ["--cache", str(cache)])):
        rc = main(["train", "--dataroot", str(synth_dataroot), "--split", "mini_val", "--out", str(root / name),
                   "--steps", "1", "--batch-size", "2", "--student", "tiny", "--loader-workers", "0", "--no-eval",
                   *extra])
        assert rc == 0
        out.append(root / name)
    return out


def _record(folder: Path) -> dict:
    return json.loads((folder / "evaluation.json").read_text())


def test_eval_cache_scores_ground_truth_boxes_near_one_as_lidar(oracle_cache, synth_dataroot, synth_val_reader,
                                                                tmp_path, capsys):
    out = tmp_path / "teacher_eval"
    rc = main(["eval", "--cache", str(oracle_cache), "--dataroot", str(synth_dataroot), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rec = _record(out)
    present = {NUSCENES_CLASSES[int(lab)] for t in synth_val_reader.sample_tokens
               for lab in synth_val_reader.read(t).gt_labels}
    assert rec["kind"] == "teacher" and rec["name"] == "teacher:oracle" and rec["dataset"].endswith(":mini_val")
    aps = rec["metrics"]["per_class_ap"]
    # ground truth as predictions: near 1 (GT boxes the devkit drops for having no LiDAR points become false positives)
    assert rec["metrics"]["mAP"] > 0.85 and np.median([aps[c] for c in present]) > 0.95, aps
    assert rec["metrics"]["mAP"] == pytest.approx(json.loads((out / "metrics_summary.json").read_text())["mean_ap"])
    assert list(rec["metrics"]["band_ap"]) == BANDS
    assert rec["metrics"]["band_ap"]["0-15m"] > 0.95
    meta = json.loads((out / "results_nusc.json").read_text())["meta"]
    assert meta["use_lidar"] and not meta["use_camera"] and rec["metrics"]["modality"] == "lidar"
    plots = {Path(p).name for p in rec["metrics"]["plots"]}
    assert {"summary.png", "dist_pr_2.png"} <= plots and all(f"{c}_pr.png" in plots and f"{c}_tp.png" in plots
                                                          for c in present)
    assert all((out / "plots" / p).stat().st_size > 5000 for p in plots)
    assert "mAP" in text and "AP by distance" in text


def test_eval_run_declares_camera_and_renders_devkit_plots_into_the_run(runs, synth_dataroot, capsys):
    run = runs[0]
    rc = main(["eval", str(run), "--dataroot", str(synth_dataroot), "--split", "mini_val"])
    assert rc == 0, capsys.readouterr().err
    rec = _record(run / "eval")
    summary = json.loads((run / "eval" / "metrics_summary.json").read_text())
    assert rec["kind"] == "student" and rec["name"] == "nokd" and rec["metrics"]["modality"] == "camera"
    assert summary["meta"]["use_camera"] and not summary["meta"]["use_lidar"]
    assert rec["metrics"]["NDS"] == pytest.approx(summary["nd_score"]) and list(rec["metrics"]["band_ap"]) == BANDS
    assert (run / "eval" / "plots" / "summary.png").stat().st_size > 5000


def test_compare_puts_students_and_teacher_in_one_table_and_plot(runs, oracle_cache, synth_dataroot, tmp_path,
                                                                 capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", *map(str, runs), "--cache", str(oracle_cache), "--dataroot", str(synth_dataroot),
               "--out", str(out), "--no-plots"])
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0, text
    # provenance: each run records its teacher cache; the oracle cache is not the one kd learned from
    assert json.loads((runs[0] / "teacher_cache.json").read_text()) == {"cache": None}
    kd_cache = json.loads((runs[1] / "teacher_cache.json").read_text())
    assert kd_cache["cache"].endswith("cache") and kd_cache["teacher"]["name"] != "oracle"
    warnings = [ln for ln in captured.err.splitlines() if "warning" in ln and "did not learn from" in ln]
    assert len(warnings) == 1 and "teacher oracle" in warnings[0] and "['kd']" in warnings[0]
    md = (out / "compare.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(lines) == 4 and "AP 0-15m" in lines[0] and "mAP / teacher" in lines[0]
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["nokd", "kd", "teacher:oracle"]
    assert [r["sensors"] for r in rows] == ["camera", "camera", "lidar"]
    teacher = rows[2]
    assert float(teacher["mAP / teacher"]) == pytest.approx(1.0)
    for r, folder in zip(rows[:2], runs, strict=True):  # the table holds what each run's evaluation wrote
        assert float(r["mAP"]) == pytest.approx(_record(folder / "eval")["metrics"]["mAP"], abs=1e-4)
        assert float(r["mAP"]) < float(teacher["mAP"])  # one training step vs the ground truth
    assert "AP car" in rows[0] and (out / "compare.png").stat().st_size > 5000
    assert "teacher:oracle" in text
    assert "different splits" not in captured.err + md and "WARNING" not in _png_title(out / "compare.png")


def _png_title(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return str(im.text["Title"])


def test_compare_warns_in_table_stderr_and_plot_title_when_splits_differ(runs, train_oracle_cache, synth_dataroot,
                                                                         tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", str(runs[0]), "--cache", str(train_oracle_cache), "--dataroot", str(synth_dataroot),
               "--out", str(out), "--no-plots"])  # the run on mini_val (the default), the teacher on its cache's split
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    expected = ("evaluated on different splits: nuscenes:v1.0-mini:mini_val (nokd); "
                "nuscenes:v1.0-mini:mini_train (teacher:oracle)")
    assert [ln for ln in captured.err.splitlines() if "different splits" in ln] == [
        f"bevkd compare: warning: {expected}"]
    assert expected in (out / "compare.md").read_text()
    assert _png_title(out / "compare.png").endswith(f"\nWARNING: {expected}")


def test_compare_reads_stored_evaluations_and_names_a_missing_one(runs, tmp_path, capsys):
    rc = main(["compare", str(runs[0]), "--out", str(tmp_path / "a")])  # evaluated by the tests above or refused
    err = capsys.readouterr().err
    if (runs[0] / "eval" / "evaluation.json").exists():
        assert rc == 0 and (tmp_path / "a" / "compare.csv").exists()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    rc = main(["compare", str(empty), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "empty_run" in err and len(err.strip().splitlines()) == 1
    rc = main(["eval"])
    assert rc == 2 and "exactly one of RUN" in capsys.readouterr().err
