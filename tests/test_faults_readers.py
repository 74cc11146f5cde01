"""Broken inputs to the dataset readers, ``bevkd eval`` and ``bevkd show`` give one line naming the
sample, file and field (tester's defects 11, 14, 15, 16, 19, 21), and one broken row fails only the
sample that owns it (the project's convention, as for a missing table field).

Broken copies are built in ``tmp_path``: of the generated dataroot (tables replaced, never edited in
place) and of the shared keyframe's info pickle (its files stay where they are).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest

from cli_checks import edit_table, linked_copy
from pipeline.cli import main
from storage.errors import SampleError
from storage.mmdet3d_reader import Mmdet3dInfoReader
from storage.nuscenes_eval import Detections, check_distance_bands, evaluate_detections
from storage.nuscenes_reader import NuScenesReader
from storage.safe_pickle import safe_load


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture
def dataroot(synth_dataroot, tmp_path) -> Path:
    return linked_copy(synth_dataroot, tmp_path / "nuscenes")


def _unreadable(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if "unreadable" in ln]


def _lidar_sd(reader: NuScenesReader, token: str) -> dict:
    return reader.nusc.get("sample_data", reader.nusc.get("sample", token)["data"]["LIDAR_TOP"])


# ---- 15: numeric fields of the nuScenes tables are checked for type and shape -----------------------------
@pytest.mark.parametrize(("table", "field", "value", "problem"), [
    ("ego_pose", "rotation", "north", "is not 4 numbers (got 'north')"),
    ("ego_pose", "translation", [1.0, 2.0], "is not 3 numbers (got [1.0, 2.0])"),
    ("calibrated_sensor", "rotation", [0, 0, 0, 0], "is a zero quaternion"),
    ("calibrated_sensor", "camera_intrinsic", [[1, 0], [0, 1]], "is not 3x3 numbers"),
    ("sample_annotation", "size", "big", "is not 3 numbers (got 'big')"),
    ("sample_annotation", "num_lidar_pts", "many", "is not a number (got 'many')"),
])
def test_malformed_numeric_field_fails_its_sample_naming_table_record_and_field(dataroot, table, field, value,
                                                                                problem, capsys):
    reader = NuScenesReader(dataroot, split="mini_val")
    token = reader.sample_tokens[1]
    sample = reader.nusc.get("sample", token)
    row = {"ego_pose": _lidar_sd(reader, token)["ego_pose_token"],
           "calibrated_sensor": reader.nusc.get("sample_data", sample["data"]["CAM_FRONT"])["calibrated_sensor_token"],
           "sample_annotation": sample["anns"][0]}[table]
    path = edit_table(dataroot, table, lambda rows: next(r for r in rows if r["token"] == row).update({field: value}))
    with pytest.raises(SampleError) as exc:
        NuScenesReader(dataroot, split="mini_val").read(token)
    assert exc.value.sample_token == token and exc.value.field == f"{table}.{field}" and exc.value.path == str(path)
    assert f"{problem}" in str(exc.value) and f"in record {row}" in str(exc.value)
    # only the samples whose rows use the broken one fail (a camera's calibration: its whole scene)
    uses = {t for t in reader.sample_tokens if row in reader.nusc.get("sample", t)["anns"] or any(
        row in (sd["ego_pose_token"], sd["calibrated_sensor_token"])
        for sd in map(lambda k: reader.nusc.get("sample_data", k), reader.nusc.get("sample", t)["data"].values()))}
    assert token in uses and len(uses) < len(reader)
    assert main(["info", "--dataroot", str(dataroot), "--box-check-samples", "0"]) == 1
    out, err = capsys.readouterr()
    lines = _unreadable(err)
    assert f"samples: 6 (read {6 - len(uses)})" in out, out
    assert len(lines) == len(uses) and all(f"{table}.{field} {problem}" in ln and f"in record {row} at {path}" in ln
                                           for ln in lines), lines


# ---- 16: one annotation row without translation is one error, on its own sample ---------------------------
def test_annotation_without_translation_is_one_line_and_neighbours_still_read(dataroot, capsys):
    reader = NuScenesReader(dataroot, split="mini_val")
    token = reader.sample_tokens[1]  # a middle keyframe: its annotations have prev and next rows
    ann = next(reader.nusc.get("sample_annotation", a) for a in reader.nusc.get("sample", token)["anns"]
               if reader.nusc.get("sample_annotation", a)["prev"] and reader.nusc.get("sample_annotation", a)["next"])
    path = edit_table(dataroot, "sample_annotation",
                       lambda rows: next(r for r in rows if r["token"] == ann["token"]).pop("translation"))
    broken = NuScenesReader(dataroot, split="mini_val")
    with pytest.raises(SampleError, match=f"sample_annotation.translation missing in record {ann['token']}"):
        broken.read(token)
    for neighbour in (reader.sample_tokens[0], reader.sample_tokens[2]):  # their velocity is one-sided now
        assert len(broken.read(neighbour).gt_boxes) == len(reader.read(neighbour).gt_boxes)
    assert main(["info", "--dataroot", str(dataroot), "--box-check-samples", "0"]) == 1
    out, err = capsys.readouterr()
    lines = _unreadable(err)
    assert "samples: 6 (read 5)" in out and len(lines) == 1, err
    assert f"sample {token}: sample_annotation.translation missing in record {ann['token']} at {path}" in lines[0]


def test_velocity_is_the_devkits_and_a_dangling_prev_names_its_record(dataroot):
    reader = NuScenesReader(dataroot, split="mini_val")
    checked = 0
    for token in reader.sample_tokens:
        for a in reader.nusc.get("sample", token)["anns"]:
            ann = reader.nusc.get("sample_annotation", a)
            np.testing.assert_array_equal(reader._velocity(ann, token), reader.nusc.box_velocity(a)[:2])
            checked += 1
    assert checked > 20
    token = reader.sample_tokens[1]
    row = reader.nusc.get("sample", token)["anns"][0]
    edit_table(dataroot, "sample_annotation",
                lambda rows: next(r for r in rows if r["token"] == row).update({"prev": "f" * 32}))
    with pytest.raises(SampleError, match=f"sample_annotation.prev references missing sample_annotation token "
                                          f"{'f' * 32} \\(record {row}\\)"):
        NuScenesReader(dataroot, split="mini_val").read(token)


# ---- 14: mmdet3d info fields --------------------------------------------------------------------------------
def _broken_info(keyframe_info: Path, out: Path, edit) -> Path:
    data = safe_load(keyframe_info)
    edit(data["data_list"][0])  # type: ignore[index]
    out.write_bytes(pickle.dumps(data))
    return out


@pytest.mark.parametrize(("field", "edit", "problem"), [
    ("lidar_points.lidar2ego", lambda s: s["lidar_points"].pop("lidar2ego"), "missing from the info file"),
    ("instances[2].bbox_3d", lambda s: s["instances"][2].update(bbox_3d="oops"), "is not 7 numbers (got 'oops')"),
    ("ego2global", lambda s: s.update(ego2global=[[1.0, 0.0], [0.0, 1.0]]), "is not 4x4 numbers"),
    ("images.CAM_FRONT.cam2img", lambda s: s["images"]["CAM_FRONT"].update(cam2img="K"), "is not 3x3 numbers"),
    ("instances[0].bbox_label_3d", lambda s: s["instances"][0].update(bbox_label_3d="car"), "is not a number"),
    ("timestamp", lambda s: s.pop("timestamp"), "missing from the info file"),
])
def test_broken_info_field_is_one_line_naming_sample_field_and_file(keyframe_info, tmp_path, field, edit, problem,
                                                                    capsys):
    info = _broken_info(keyframe_info, tmp_path / "p.pkl", edit)
    reader = Mmdet3dInfoReader(info, data_root=keyframe_info.parent)
    with pytest.raises(SampleError) as exc:
        reader.read(0)
    assert (exc.value.sample_token, exc.value.field, exc.value.path) == (reader.sample_tokens[0], field, str(info))
    assert problem in exc.value.problem
    assert main(["info", "--info", str(info), "--info-root", str(keyframe_info.parent)]) == 1
    lines = _unreadable(capsys.readouterr().err)
    assert len(lines) == 1 and f"sample {reader.sample_tokens[0]}: {field} {problem}" in lines[0], lines
    assert str(info) in lines[0]


def test_broken_v0_info_field_names_sample_field_and_file(keyframe_info, tmp_path):
    from test_mmdet3d_reader import _v0_info

    good = Mmdet3dInfoReader(keyframe_info).read(0)
    data = _v0_info(good)
    data["infos"][0]["ego2global_rotation"] = "north"
    data["infos"][0]["cams"]["CAM_BACK"]["cam_intrinsic"] = None
    path = tmp_path / "v0.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(SampleError, match="cams.CAM_BACK.cam_intrinsic missing from the info file") as exc:
        Mmdet3dInfoReader(path, data_root=keyframe_info.parent).read(0)
    assert exc.value.path == str(path)
    data["infos"][0]["cams"]["CAM_BACK"]["cam_intrinsic"] = good.camera("CAM_BACK").cam_intrinsic
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(SampleError, match=r"ego2global_rotation is not 4 numbers \(got 'north'\)"):
        Mmdet3dInfoReader(path, data_root=keyframe_info.parent).read(0)
    data["infos"].append({"lidar_path": "x.bin"})
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=r"infos\[1\] has no sample token"):
        Mmdet3dInfoReader(path, data_root=keyframe_info.parent)


# ---- 11 / 21: eval --out and --distance-bands ---------------------------------------------------------------
def test_eval_out_that_is_a_file_is_one_line_and_the_file_is_kept(student_cache, synth_dataroot, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "sub"):
        assert main(["eval", "--cache", str(student_cache), "--dataroot", str(synth_dataroot), "--out", str(out),
                     "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1 and f"{afile} is an existing file" in err, err
    assert afile.read_text() == "keep me"
    reader = NuScenesReader(synth_dataroot, split="mini_val")
    none = {t: Detections(boxes=np.zeros((0, 9)), scores=np.zeros(0), labels=np.zeros(0, np.int64))
            for t in reader.sample_tokens}
    with pytest.raises(NotADirectoryError, match="existing file"):
        evaluate_detections(dataroot=synth_dataroot, version="v1.0-mini", split="mini_val", predictions=none,
                            output_dir=afile, reader=reader)


@pytest.mark.parametrize("bands", [["30", "10"], ["-5"], ["0", "10"], ["10", "10"], ["10", "nan"]])
@pytest.mark.parametrize("command", [["eval", "--cache", "c"], ["compare", "run"]])
def test_distance_bands_must_be_positive_and_increasing(command, bands, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--distance-bands", *bands])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --distance-bands: distance band edges must be positive and strictly increasing" in err, err
    with pytest.raises(ValueError, match="strictly increasing"):
        check_distance_bands([float(b) for b in bands])


def test_good_distance_bands_parse():
    from pipeline.cmd_eval import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--distance-bands", "10", "20.5"]).distance_bands == [10.0, 20.5]
    assert parser.parse_args(["--distance-bands"]).distance_bands == []
    assert parser.parse_args([]).distance_bands == [15.0, 30.0]


# ---- 19: show --out ------------------------------------------------------------------------------------------
def test_show_refuses_a_folder_out_and_prints_the_file_it_writes(student_cache, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    assert main(["show", str(student_cache), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and f"--out {folder} is a folder" in err, err
    assert not (tmp_path / "d.png").exists() and list(folder.iterdir()) == []
    assert main(["show", str(student_cache), "--out", str(tmp_path / "pic")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'pic.png'} ") and (tmp_path / "pic.png").stat().st_size > 1000
    assert not (tmp_path / "pic").exists()
    assert main(["show", str(student_cache), "--out", str(tmp_path / "x.foo")]) == 2
    assert "cannot write '.foo' images" in capsys.readouterr().err
