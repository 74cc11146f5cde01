"""`bevkd demo` end to end at toy scale: generated data, the project's saved teacher, the Ray
cache job, two students (no KD / KD) evaluated by the devkit, and the HTML report."""

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
    argv = ["demo", "--out", str(out), "--scenes", "3", "--samples-per-scene", "2", "--steps", "3",
            "--batch-size", "1", "--workers", "0", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = out / "report" / "index.html"
    assert f"report: {report.resolve()}" in printed

    summary = json.loads((out / "report" / "summary.json").read_text())
    students = summary["students"]
    assert set(students) == {"student_no_kd", "student_kd"}
    assert students["student_kd"]["distill"] and not students["student_no_kd"]["distill"]
    assert summary["nds_gain"] == pytest.approx(students["student_kd"]["NDS"] - students["student_no_kd"]["NDS"])
    page = report.read_text()
    for name, s in students.items():
        assert 0.0 <= s["NDS"] <= 1.0 and s["steps"] == 3
        # the page's NDS row carries both students' devkit scores
        assert f"{s['NDS']:.4f}" in re.search(r"<td>NDS</td>(.*?)</tr>", page).group(1), name
        assert f"{name:<15} NDS {s['NDS']:.4f}" in printed
    assert summary["cache"]["rows_ok"] == 2 and summary["cache"]["rows_failed"] == 0  # 1 train scene x 2 keyframes
    shows = sorted((out / "report").glob("show-*.png"))
    assert len(shows) == 2 and all(p.name in page for p in shows)
    assert (out / "report" / "loss_curves.png").stat().st_size > 10_000

    # rerunning reuses every finished stage: same data, same cache, students resumed at their last step
    capsys.readouterr()
    assert main(argv) == 0
    again = json.loads((out / "report" / "summary.json").read_text())
    assert again["students"]["student_kd"]["NDS"] == pytest.approx(students["student_kd"]["NDS"])
    assert "dataset: reusing" in capsys.readouterr().out
