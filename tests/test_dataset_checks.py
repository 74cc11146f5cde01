"""Dataset sanity checks (issue 12): the box-convention check, custom nuScenes-format datasets
(``--split all``, ``--scenes FILE``, one-line errors for malformed tables) and ``bevkd info``'s
image check and stderr discipline.

Broken inputs are built in ``tmp_path``: copies of the generated dataroot (hard links, files
replaced, never edited in place) and info pickles that point at the shared keyframe's files.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_checks import edit_table, linked_copy
from pipeline.cli import main
from storage.box_convention import check_box_convention
from storage.boxes import boxes_from_mmdet3d_v1, boxes_to_mmdet3d_v0
from storage.errors import BoxConventionError, DatasetTableError, SampleError
from storage.mmdet3d_reader import Mmdet3dInfoReader
from storage.nuscenes_reader import NuScenesReader
from storage.safe_pickle import safe_load


# ---- helpers ------------------------------------------------------------------------------------------
def _rewrite_boxes(keyframe_info: Path, out: Path, convert) -> Path:
    """The keyframe's v1.1 info with every ``bbox_3d`` replaced by ``convert((1, 9) boxes) -> 7 values``."""
    data = safe_load(keyframe_info)
    for inst in data["data_list"][0]["instances"]:  # type: ignore[index]
        inst["bbox_3d"] = list(convert(boxes_from_mmdet3d_v1(np.array([inst["bbox_3d"]]))))
    with open(out, "wb") as f:
        pickle.dump(data, f)
    return out


def _v0_boxes(b: np.ndarray) -> list[float]:
    return boxes_to_mmdet3d_v0(b)[0][0].tolist()


def _bottom_boxes(b: np.ndarray) -> list[float]:
    return [*b[0, :2], b[0, 2] - b[0, 5] / 2, *b[0, 3:7]]


@pytest.fixture
def broken(synth_dataroot, tmp_path) -> Path:
    return linked_copy(synth_dataroot, tmp_path / "broken")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- A. box convention ---------------------------------------------------------------------------------
def test_box_check_passes_the_real_keyframe(keyframe_info):
    report = check_box_convention(Mmdet3dInfoReader(keyframe_info))
    read, swapped, bottom, _ = report.fits
    assert report.verdict == "ok" and report.ok and report.samples_checked == 1 and report.boxes_checked == 68
    assert read.agreement == 1.0 and read.relative_error == pytest.approx(29 / 999)
    assert swapped.relative_error > 2 * read.relative_error and swapped.decisive_wins < 0
    assert bottom.agreement < 0.7


def test_box_check_flags_v0_boxes_in_a_v1_info(keyframe_info, tmp_path):
    info = _rewrite_boxes(keyframe_info, tmp_path / "v0_boxes_in_v1.pkl", _v0_boxes)
    reader = Mmdet3dInfoReader(info, data_root=keyframe_info.parent)
    assert reader.layout == "v1"  # reads without a word: only the check notices
    report = check_box_convention(reader)
    read, swapped = report.fits[:2]
    assert report.verdict == "mismatch" and not report.ok
    assert report.likely_cause == swapped.description and "v0.x" in swapped.description
    assert read.relative_error == pytest.approx(60 / 999) and swapped.relative_error == pytest.approx(29 / 999)
    assert swapped.decisive_wins >= 2
    assert "\n" not in report.summary() and "likely cause" in report.summary()


def test_box_check_flags_bottom_centre_boxes(keyframe_info, tmp_path):
    info = _rewrite_boxes(keyframe_info, tmp_path / "bottom.pkl", _bottom_boxes)
    report = check_box_convention(Mmdet3dInfoReader(info, data_root=keyframe_info.parent))
    assert report.verdict == "mismatch" and "bottom-face centre" in str(report.likely_cause)
    assert "l/w" not in report.summary().split("read as ")[1].split(":")[0]  # the z fix alone, not the swap


def test_box_check_on_generated_data_and_without_point_counts(synth_val_reader, keyframe_info, tmp_path):
    report = check_box_convention(synth_val_reader)
    assert report.verdict == "ok" and report.fits[0].relative_error == 0.0 and report.samples_checked == 4
    data = safe_load(keyframe_info)
    for inst in data["data_list"][0]["instances"]:  # type: ignore[index]
        del inst["num_lidar_pts"]
    (tmp_path / "no_counts.pkl").write_bytes(pickle.dumps(data))
    blind = check_box_convention(Mmdet3dInfoReader(tmp_path / "no_counts.pkl", data_root=keyframe_info.parent))
    assert blind.verdict == "unchecked" and blind.ok and "0 boxes with num_lidar_pts" in blind.summary()


def test_cache_refuses_mismatched_boxes_unless_told(keyframe_info, tmp_path, capsys):
    from pipeline.dataset_args import add_reader_arguments, reader_from_args

    info = _rewrite_boxes(keyframe_info, tmp_path / "v0.pkl", _v0_boxes)
    out = tmp_path / "cache"
    rc = main(["cache", "--info", str(info), "--info-root", str(keyframe_info.parent), "--out", str(out),
               "--no-ray", "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "likely cause" in line and "v0.x" in line and "--skip-box-check" in line
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written
    parser = argparse.ArgumentParser()
    add_reader_arguments(parser, box_check=True)
    argv = ["--info", str(info), "--info-root", str(keyframe_info.parent)]
    with pytest.raises(BoxConventionError):
        reader_from_args(parser.parse_args(argv))
    assert len(reader_from_args(parser.parse_args([*argv, "--skip-box-check"]))) == 1


def test_info_reports_the_box_check(keyframe_info, tmp_path, capsys):
    assert main(["info", "--info", str(keyframe_info)]) == 0
    out, err = capsys.readouterr()
    assert "box convention check ok: 100.0% of 68 boxes" in out and err.count("\n") <= 1  # tqdm at most
    info = _rewrite_boxes(keyframe_info, tmp_path / "v0.pkl", _v0_boxes)
    assert main(["info", "--info", str(info), "--info-root", str(keyframe_info.parent)]) == 1
    out, err = capsys.readouterr()
    assert "l/w swap + yaw offset" in out and "likely cause" not in out.split("box convention (")[0]
    assert any("bevkd info:" in ln and "likely cause" in ln for ln in err.splitlines())


# ---- B. custom nuScenes-format datasets -----------------------------------------------------------------
def test_split_all_and_scene_list_on_custom_scene_names(broken, tmp_path, capsys):
    edit_table(broken, "scene", lambda rows: [r.update(name=f"my-log-{i}") for i, r in enumerate(rows)])
    with pytest.raises(ValueError, match="no scene of split 'mini_val'.*--split all"):
        NuScenesReader(broken, split="mini_val")
    every = NuScenesReader(broken, split="all")
    assert every.dataset_id == "nuscenes:v1.0-mini:all" and len(every) == 9
    assert sorted({every.read(i).scene for i in range(0, 9, 3)}) == ["my-log-0", "my-log-1", "my-log-2"]
    listed = tmp_path / "scenes.txt"
    listed.write_text("# two of them\nmy-log-2\n\nmy-log-0  # trailing comment\n")
    assert main(["info", "--dataroot", str(broken), "--scenes", str(listed), "--box-check-samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "samples: 6 (read 6), scenes: 2" in out and "dataset: nuscenes:v1.0-mini:scenes-2-" in out
    again = NuScenesReader(broken, scenes=["my-log-0", "my-log-2"])
    assert again.dataset_id in out and {again.read(i).scene for i in (0, 5)} == {"my-log-0", "my-log-2"}
    listed.write_text("my-log-0\nnot-a-scene\n")
    assert main(["info", "--dataroot", str(broken), "--scenes", str(listed)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "scene.json: no scene named not-a-scene" in line


@pytest.mark.parametrize("field", ["filename", "ego_pose_token"])
def test_sample_data_row_missing_a_field_fails_only_its_sample(broken, field, capsys):
    reader = NuScenesReader(broken, split="mini_val")
    token = reader.sample_tokens[1]
    row = {}

    def drop(rows):
        row.update(next(r for r in rows if r["sample_token"] == token and "LIDAR_TOP" in r["filename"]
                        and r["is_key_frame"]))
        del next(r for r in rows if r["token"] == row["token"])[field]

    path = edit_table(broken, "sample_data", drop)
    reader = NuScenesReader(broken, split="mini_val")
    with pytest.raises(SampleError, match=f"sample_data.{field} missing in record {row['token']}") as exc:
        reader.read(token)
    assert token in str(exc.value) and str(path) in str(exc.value)
    reader.read(0)  # the other samples still read
    assert main(["info", "--dataroot", str(broken), "--box-check-samples", "0"]) == 1
    out, err = capsys.readouterr()
    assert "samples: 6 (read 5)" in out and row["token"] not in out
    assert sum(f"sample_data.{field} missing in record {row['token']}" in ln for ln in err.splitlines()) == 1


def test_malformed_rows_the_devkit_chokes_on_give_one_line(broken, capsys):
    sd_path = edit_table(broken, "sample_data", lambda rows: rows[0].pop("calibrated_sensor_token"))
    rows = json.loads(sd_path.read_text())
    with pytest.raises(SampleError, match="sample_data.calibrated_sensor_token missing in record") as exc:
        NuScenesReader(broken, split="mini_val")  # the devkit indexes it at load: KeyError before
    assert rows[0]["token"] in str(exc.value) and rows[0]["sample_token"] in str(exc.value)
    assert main(["info", "--dataroot", str(broken)]) == 2
    assert "calibrated_sensor_token" in _one_line(capsys.readouterr().err)


def test_scene_row_missing_a_field_names_table_row_and_field(broken, capsys):
    path = edit_table(broken, "scene", lambda rows: rows[1].pop("first_sample_token"))
    row = json.loads(path.read_text())[1]["token"]
    with pytest.raises(DatasetTableError) as exc:
        NuScenesReader(broken, split="all")
    assert (exc.value.path, exc.value.row_token, exc.value.field) == (str(path), row, "first_sample_token")
    assert str(exc.value) == f"{path}: record {row} field first_sample_token missing"
    assert main(["info", "--dataroot", str(broken), "--split", "all"]) == 2
    assert str(path) in _one_line(capsys.readouterr().err)


# ---- C. info: images, stderr, flag names ----------------------------------------------------------------
def test_info_reports_a_zero_byte_jpeg_on_stderr(broken, capsys):
    reader = NuScenesReader(broken, split="mini_val")
    s = reader.read(2)
    bad = Path(s.camera("CAM_BACK_LEFT").image_path)
    bad.unlink()
    bad.write_bytes(b"")
    truncated = Path(reader.read(4).camera("CAM_FRONT").image_path)
    data = truncated.read_bytes()
    truncated.unlink()
    truncated.write_bytes(data[: len(data) // 2])
    assert main(["info", "--dataroot", str(broken), "--split", "mini_val"]) == 1
    out, err = capsys.readouterr()
    assert "images checked (draft): 36, broken: 2" in out and str(bad) not in out
    lines = [ln for ln in err.splitlines() if "broken image" in ln]
    assert len(lines) == 2
    assert s.sample_token in lines[0] and "CAM_BACK_LEFT image empty (0 bytes)" in lines[0] and str(bad) in lines[0]
    assert "CAM_FRONT image unreadable" in lines[1] and str(truncated) in lines[1]


def test_info_root_flag_and_its_deprecated_spelling(keyframe_info, tmp_path, capsys):
    from pipeline.dataset_args import add_reader_arguments

    parser = argparse.ArgumentParser(prog="bevkd x")
    add_reader_arguments(parser)
    assert "--data-root" not in parser.format_help() and "--info-root" in parser.format_help()
    assert parser.parse_args(["--info-root", "d"]).info_root == "d" and capsys.readouterr().err == ""
    assert parser.parse_args(["--data-root", "d"]).info_root == "d"
    assert _one_line(capsys.readouterr().err) == "bevkd x: --data-root is deprecated, use --info-root (same meaning)"
    info = shutil.copy(keyframe_info, tmp_path / "elsewhere.pkl")
    assert main(["info", "--info", str(info), "--data-root", str(keyframe_info.parent)]) == 0
    assert "deprecated" in capsys.readouterr().err
    assert main(["info", "--info", str(info)]) == 1  # without the root its files are not found
    assert "LiDAR points missing" in capsys.readouterr().err


def test_dangling_sample_data_token_names_table_row_and_field(broken, capsys):
    reader = NuScenesReader(broken, split="mini_val")
    token = reader.sample_tokens[0]
    row = {}

    def dangle(rows):
        rec = next(r for r in rows if r["sample_token"] == token and "LIDAR_TOP" in r["filename"] and r["is_key_frame"])
        rec["ego_pose_token"] = "e" * 32
        row.update(rec)

    edit_table(broken, "sample_data", dangle)
    assert main(["info", "--dataroot", str(broken), "--box-check-samples", "0"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if "unreadable" in ln]
    assert len(err) == 1 and token in err[0] and f"(record {row['token']})" in err[0]
    assert "sample_data.ego_pose_token references missing ego_pose token " + "e" * 32 in err[0]


def test_v0_box_conversion_round_trips():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.normal(size=(5, 3)), rng.uniform(0.5, 5, (5, 3)), rng.uniform(-3, 3, (5, 1)),
                            rng.normal(size=(5, 2))], axis=1)
    from storage.boxes import boxes_from_bottom_centre, boxes_from_mmdet3d_v0, wrap_angle

    gt, vel = boxes_to_mmdet3d_v0(boxes)
    np.testing.assert_allclose(gt[:, 3:5], boxes[:, [4, 3]])
    back = boxes_from_mmdet3d_v0(gt, vel)
    np.testing.assert_allclose(back[:, :6], boxes[:, :6])
    np.testing.assert_allclose(wrap_angle(back[:, 6] - boxes[:, 6]), 0, atol=1e-12)
    np.testing.assert_allclose(boxes_from_bottom_centre(boxes)[:, 2], boxes[:, 2] + boxes[:, 5] / 2)
