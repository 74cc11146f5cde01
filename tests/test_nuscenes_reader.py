"""NuScenesReader on generated data, checked against the devkit and the written files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from storage.boxes import count_points_in_boxes, points_in_boxes
from storage.errors import SampleError
from storage.nuscenes_reader import NuScenesReader
from projection import project_points
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES
from storage.synth.scene import CLASS_SPECS


@pytest.fixture(scope="module")
def reader(synth_dataroot) -> NuScenesReader:
    return NuScenesReader(synth_dataroot, version="v1.0-mini", split="mini_val")


def test_split_ids_and_order(reader, synth_dataroot):
    assert reader.dataset_id == "nuscenes:v1.0-mini:mini_val"
    assert len(reader) == 6 and len(NuScenesReader(synth_dataroot, split="mini_train")) == 3
    samples = [reader.read(i) for i in range(len(reader))]
    assert [s.scene for s in samples] == ["scene-0103"] * 3 + ["scene-0916"] * 3
    assert all(np.diff([s.timestamp_us for s in samples[:3]]) == 500_000)
    assert reader.read(reader.sample_tokens[4]).sample_token == samples[4].sample_token
    with pytest.raises(ValueError, match="mini_train, mini_val"):
        NuScenesReader(synth_dataroot, split="minival")
    with pytest.raises(ValueError, match="v1.0-mini"):
        NuScenesReader(synth_dataroot, split="val")


def test_num_lidar_pts_equals_points_in_boxes(reader):
    total = 0
    for i in range(len(reader)):
        s = reader.read(i)
        counts = count_points_in_boxes(s.points, s.gt_boxes)
        assert np.array_equal(counts, s.num_lidar_pts), s.sample_token
        total += counts.sum()
    assert total > 1000


def test_boxes_agree_with_devkit_sensor_frame(reader):
    nusc = reader.nusc
    s = reader.read(1)
    _, dev_boxes, _ = nusc.get_sample_data(nusc.get("sample", s.sample_token)["data"]["LIDAR_TOP"])
    assert len(dev_boxes) == len(s.gt_boxes)
    for box, ours, label in zip(dev_boxes, s.gt_boxes, s.gt_labels, strict=True):
        assert np.allclose(box.center, ours[:3], atol=1e-9)
        assert np.allclose(box.wlh, ours[[4, 3, 5]], atol=1e-9)
        heading = box.orientation.rotation_matrix[:, 0]
        assert np.arctan2(heading[1], heading[0]) == pytest.approx(ours[6], abs=1e-9)
        assert box.name == CLASS_SPECS[NUSCENES_CLASSES[label]].category


def test_camera_geometry_puts_boxes_on_their_pixels(reader, artefacts):
    """Project each box's LiDAR points into every camera through the reader's lidar_from_cam and
    cam_intrinsic: the rendered JPEG shows the box's class colour there."""
    from PIL import Image

    s = reader.read(1)
    assert tuple(c.name for c in s.cameras) == CAMERA_NAMES
    colours = np.array([CLASS_SPECS[c].colour for c in NUSCENES_CLASSES], dtype=np.float64)
    chroma = lambda rgb: rgb / np.maximum(rgb.sum(axis=-1, keepdims=True), 1)  # noqa: E731
    checked = good = 0
    for cam in s.cameras:
        image = cam.load_image(s.sample_token).astype(np.float64)
        assert image.shape == (cam.image_size[1], cam.image_size[0], 3)
        for box, label in zip(s.gt_boxes, s.gt_labels, strict=True):
            pts = s.points[points_in_boxes(s.points, box[None])[:, 0]]
            proj = project_points(pts, cam)
            if len(proj.index) < 30 or NUSCENES_CLASSES[label] == "barrier":
                continue
            uv = proj.uv.astype(int)
            median = np.median(image[uv[:, 1], uv[:, 0]], axis=0)
            checked += 1
            good += np.abs(chroma(median) - chroma(colours[label])).max() < 0.08
    print(f"camera colour check: {good}/{checked} boxes")
    assert checked >= 5 and good / checked >= 0.8, (good, checked)
    tiles = [np.asarray(Image.open(c.image_path)) for c in s.cameras]
    order = [2, 0, 1, 4, 3, 5]  # FRONT_LEFT FRONT FRONT_RIGHT / BACK_LEFT BACK BACK_RIGHT
    rows = [np.concatenate([tiles[i] for i in order[:3]], 1), np.concatenate([tiles[i] for i in order[3:]], 1)]
    Image.fromarray(np.concatenate(rows, 0)).save(artefacts / "synth_cameras.png")
    front = s.camera("CAM_FRONT")
    overlay = front.load_image(s.sample_token).copy()
    proj = project_points(s.points, front)
    shade = np.clip(proj.depth / 40.0, 0, 1)[:, None]
    overlay[proj.uv[:, 1].astype(int), proj.uv[:, 0].astype(int)] = (255 * np.concatenate(
        [1 - shade, shade, np.zeros_like(shade)], axis=1)).astype(np.uint8)
    Image.fromarray(overlay).resize((front.image_size[0] * 3, front.image_size[1] * 3), Image.NEAREST).save(
        artefacts / "synth_cam_front_lidar.png")


def test_sweeps_land_in_the_keyframe_frame(synth_dataroot, reader):
    """Past sweeps, moved into the keyframe LiDAR frame, put as many points into static boxes as
    the raw sweep has inside the devkit's boxes of that sweep's own sensor frame."""
    swept = NuScenesReader(synth_dataroot, split="mini_val", sweeps=2)
    s = swept.read(1)
    key = reader.read(1)
    lags = np.unique(s.points[:, 4])
    assert lags[0] == 0 and len(lags) == 3 and np.allclose(lags[1:], [0.25, 0.5], atol=1e-6)
    assert len(s.points) > 2.5 * len(key.points)
    static = np.hypot(s.gt_boxes[:, 7], s.gt_boxes[:, 8]) == 0
    nusc = reader.nusc
    sd = nusc.get("sample_data", nusc.get("sample", s.sample_token)["data"]["LIDAR_TOP"])
    for lag in lags[1:]:
        sd = nusc.get("sample_data", sd["prev"])
        raw = np.fromfile(nusc.get_sample_data_path(sd["token"]), dtype=np.float32).reshape(-1, 5)
        _, dev_boxes, _ = nusc.get_sample_data(sd["token"])
        ann_static = [b for b, st in zip(dev_boxes, static, strict=True) if st]
        raw_count = sum(int(np.sum(_in_devkit_box(raw, b))) for b in ann_static)
        ours = s.points[np.isclose(s.points[:, 4], lag)]
        assert raw_count > 50
        assert count_points_in_boxes(ours, s.gt_boxes[static]).sum() == raw_count
    assert len(swept.read(0).points) < len(s.points)  # the first keyframe has one sweep before it


def _in_devkit_box(points: np.ndarray, box) -> np.ndarray:
    from nuscenes.utils.geometry_utils import points_in_box

    return points_in_box(box, points[:, :3].T.astype(np.float64))


def test_pickled_reader_reloads_lazily(reader):
    reader.read(0)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._nusc is None
    assert clone.read(2).differences(reader.read(2)) == []


@pytest.fixture()
def broken(synth_dataroot, tmp_path) -> Path:
    """A copy of the dataroot (files hard-linked: replace, never edit in place)."""
    root = tmp_path / "broken"
    shutil.copytree(synth_dataroot, root, copy_function=os.link)
    return root


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _first_val_sample(root: Path) -> tuple[str, dict]:
    r = NuScenesReader(root, split="mini_val")
    return r.sample_tokens[0], json.loads((root / "v1.0-mini" / "sample_data.json").read_text())


def test_missing_and_truncated_lidar_file(broken):
    r = NuScenesReader(broken, split="mini_val")
    s = r.read(0)
    _replace(Path(s.lidar_path), Path(s.lidar_path).read_bytes()[:-6])
    with pytest.raises(SampleError, match="truncated") as exc:
        r.read(0)
    assert s.sample_token in str(exc.value) and s.lidar_path in str(exc.value)
    Path(s.lidar_path).unlink()
    with pytest.raises(SampleError, match="LiDAR points missing") as exc:
        r.read(0)
    assert s.sample_token in str(exc.value) and s.lidar_path in str(exc.value)


def test_unreadable_jpeg(broken):
    r = NuScenesReader(broken, split="mini_val")
    s = r.read(0)
    cam = s.camera("CAM_BACK")
    _replace(Path(cam.image_path), b"not a jpeg at all")
    with pytest.raises(SampleError, match="CAM_BACK image unreadable") as exc:
        cam.load_image(s.sample_token)
    assert s.sample_token in str(exc.value) and cam.image_path in str(exc.value)


def test_table_referencing_a_missing_calibrated_sensor(broken):
    token, sd = _first_val_sample(broken)
    rec = next(r for r in sd if r["sample_token"] == token and "CAM_FRONT" in r["filename"])
    rec["calibrated_sensor_token"] = "0" * 32
    _replace(broken / "v1.0-mini" / "sample_data.json", json.dumps(sd).encode())
    with pytest.raises(SampleError) as exc:
        NuScenesReader(broken, split="mini_val")  # the devkit indexes calibrated sensors at load time
    msg = str(exc.value)
    assert token in msg and "0" * 32 in msg and str(broken / "v1.0-mini" / "sample_data.json") in msg


def test_table_referencing_a_missing_ego_pose(broken):
    token, sd = _first_val_sample(broken)
    rec = next(r for r in sd if r["sample_token"] == token and "LIDAR_TOP" in r["filename"] and r["is_key_frame"])
    rec["ego_pose_token"] = "f" * 32
    _replace(broken / "v1.0-mini" / "sample_data.json", json.dumps(sd).encode())
    r = NuScenesReader(broken, split="mini_val")  # loads: the devkit only looks ego poses up on use
    with pytest.raises(SampleError, match="sample_data.ego_pose_token references missing ego_pose") as exc:
        r.read(token)
    assert token in str(exc.value) and "f" * 32 in str(exc.value) and "sample_data.json" in str(exc.value)
    r.read(1)  # other samples still read


def test_info_command_summarises_nuscenes(synth_dataroot, reader, capsys):
    assert main(["info", "--dataroot", str(synth_dataroot), "--split", "mini_val"]) == 0
    out = capsys.readouterr().out
    assert "dataset: nuscenes:v1.0-mini:mini_val" in out
    assert "samples: 6 (read 6), scenes: 2" in out
    n_car = sum(int((reader.read(i).gt_labels == 0).sum()) for i in range(len(reader)))
    assert any(line.split()[:2] == ["car", str(n_car)] for line in out.splitlines())
    assert main(["info", "--dataroot", str(synth_dataroot), "--split", "nope"]) == 2


def test_info_command_reads_mmdet3d_infos(keyframe_info, capsys):
    assert main(["info", "--info", str(keyframe_info)]) == 0
    out = capsys.readouterr().out
    assert "samples: 1 (read 1), scenes: 1" in out and "points per sample: mean 34688" in out


def test_table_level_dangling_reference_names_the_table(broken):
    from storage.nuscenes_reader import NuScenesTableError

    path = broken / "v1.0-mini" / "instance.json"
    instances = json.loads(path.read_text())
    instances[0]["category_token"] = "c" * 32
    _replace(path, json.dumps(instances).encode())
    with pytest.raises(NuScenesTableError, match="category token c{32}") as exc:
        NuScenesReader(broken, split="mini_val")
    assert str(path) in str(exc.value) and instances[0]["token"] in str(exc.value)


def _reader_parser():
    import argparse

    from pipeline.dataset_args import add_reader_arguments

    parser = argparse.ArgumentParser()
    add_reader_arguments(parser)
    return parser


def test_reader_from_args_nuscenes(synth_dataroot):
    from pipeline.dataset_args import reader_from_args

    parser = _reader_parser()
    nus = reader_from_args(parser.parse_args(["--dataroot", str(synth_dataroot), "--split", "mini_train"]))
    assert nus.dataset_id == "nuscenes:v1.0-mini:mini_train" and len(nus) == 3
    with pytest.raises(ValueError, match="--dataroot DIR"):
        reader_from_args(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataroot", "a", "--info", "b"])


def test_reader_from_args_mmdet3d(keyframe_info):
    from pipeline.dataset_args import reader_from_args

    mm = reader_from_args(_reader_parser().parse_args(["--info", str(keyframe_info)]))
    assert mm.dataset_id.startswith("mmdet3d:") and len(mm) == 1
