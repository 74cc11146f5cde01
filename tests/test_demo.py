"""`bevkd demo` end to end at toy scale: generated data with unlabelled frames, the project's saved
teacher, the Ray cache job over keyframes and unlabelled frames, three students (no KD / KD / KD with
unlabelled frames) over two seeds evaluated by the devkit, and the HTML report."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.cli import main
from pipeline.demo import DEFAULT_TEACHER


@pytest.mark.ray
def test_demo_writes_a_report_with_both_students_metrics(tmp_path, ray_session, capsys):
    assert DEFAULT_TEACHER.exists(), "the project's reference teacher checkpoint must ship with the repo"
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--scenes", "3", "--samples-per-scene", "2", "--steps", "2",
            "--batch-size", "1", "--loader-workers", "0", "--device", "cpu", "--seeds", "2",
            "--unlabelled-per-sample", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = out / "report" / "index.html"
    assert f"report: {report.resolve()}" in printed

    summary = json.loads((out / "report" / "summary.json").read_text())
    students = summary["students"]
    assert set(students) == {"student_no_kd", "student_kd", "student_unlabelled"}
    assert students["student_kd"]["distill"] and not students["student_no_kd"]["distill"]
    for s in students.values():
        assert s["seeds"] == [0, 1] and s["steps"] == 2
        nds = s["NDS"]["per_seed"]
        assert all(0.0 <= v <= 1.0 for v in nds) and nds and s["NDS"]["mean"] == pytest.approx(sum(nds) / len(nds))
        assert set(s["band_ap"]) == {"0-15m", "15-30m", "30m+"}
    # the gains are per-seed differences, summarised as the keys
    for key, name in (("kd_gain", "student_kd"), ("unlabelled_gain", "student_unlabelled")):
        g = summary[key]
        assert set(g) == {"nds_mean", "nds_std", "map_mean", "map_std", "seeds"} and g["seeds"] == [0, 1]
        diffs = [a - b for a, b in zip(students[name]["NDS"]["per_seed"], students["student_no_kd"]["NDS"]["per_seed"],
                                       strict=True)]
        assert g["nds_mean"] == pytest.approx(sum(diffs) / 2)
        assert g["nds_std"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2 ** 0.5)
    page = report.read_text()
    assert f"{summary['kd_gain']['nds_mean']:+.4f}" in page
    for name, s in students.items():
        assert f"{s['NDS']['mean']:.4f} ± {s['NDS']['std']:.4f}" in re.search(r"<td>NDS</td>(.*?)</tr>", page).group(1)
        assert name in printed
    assert summary["cache"]["rows_ok"] == 2 and summary["cache"]["rows_failed"] == 0  # 1 train scene x 2 keyframes
    shows = sorted((out / "report").glob("show-*.png"))
    assert len(shows) == 2 and all(p.name in page for p in shows)
    assert (out / "report" / "loss_curves.png").stat().st_size > 10_000
    assert (out / "report" / "band_gain.png").stat().st_size > 10_000

    # the demo's cache explains itself: a bevkd-free zarr + numpy decode equals CacheReader, and xarray opens it
    from test_self_describing import assert_plain_decode_equals_reader, assert_xarray_opens

    assert_plain_decode_equals_reader(out / "cache", tmp_path)
    assert_xarray_opens(out / "cache")

    # rerunning reuses every finished stage: same data, same cache, students resumed at their last step
    capsys.readouterr()
    assert main(argv) == 0
    again = json.loads((out / "report" / "summary.json").read_text())
    kd_nds = students["student_kd"]["NDS"]["per_seed"]
    assert again["students"]["student_kd"]["NDS"]["per_seed"] == pytest.approx(kd_nds)
    assert "dataset: reusing" in capsys.readouterr().out
