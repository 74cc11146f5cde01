"""The synthetic nuScenes-format generator: devkit-loadable, realistic, deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from storage.boxes import points_in_boxes
from storage.sample import NUSCENES_CLASSES
from storage.synth import SynthConfig, SynthSummary, generate_dataset
from storage.synth.scene import CLASS_SPECS
from storage.synth.tables import TABLE_NAMES


@pytest.fixture(scope="module")
def nusc(synth_dataroot):
    from nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(synth_dataroot), verbose=False)


def test_devkit_loads_all_tables_and_splits(nusc, synth_dataroot):
    from nuscenes.utils.splits import mini_train, mini_val

    assert sorted(p.stem for p in (synth_dataroot / "v1.0-mini").glob("*.json")) == sorted(TABLE_NAMES)
    names = [s["name"] for s in nusc.scene]
    assert names == [mini_val[0], mini_val[1], mini_train[0]]
    assert len(nusc.sample) == 9
    # per scene: 6 cameras x 3 keyframes + LiDAR: 3 keyframes, 2 in-between sweeps, 1 before the first
    assert len(nusc.sample_data) == 3 * (3 * 6 + 6)
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK",
                                       "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
    lidar_cs = [nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                for sd in nusc.sample_data if sd["channel"] == "LIDAR_TOP"]
    assert np.allclose(lidar_cs[0]["translation"], [0.943713, 0.0, 1.84023])
    from pyquaternion import Quaternion
    assert Quaternion(lidar_cs[0]["rotation"]).yaw_pitch_roll[0] == pytest.approx(-np.pi / 2)


def test_every_class_tracked_with_chains(nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name

    classes = {category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation}
    assert classes == set(NUSCENES_CLASSES)
    for inst in nusc.instance:
        chain, tok = [], inst["first_annotation_token"]
        while tok:
            ann = nusc.get("sample_annotation", tok)
            chain.append(ann)
            tok = ann["next"]
        assert len(chain) == inst["nbr_annotations"] == 3
        assert chain[-1]["token"] == inst["last_annotation_token"]
        ts = [nusc.get("sample", a["sample_token"])["timestamp"] for a in chain]
        assert np.diff(ts).tolist() == [500_000, 500_000]  # 2 Hz keyframes, microseconds


def test_sizes_motion_and_attributes_are_realistic(nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name

    moving = {name: [] for name in NUSCENES_CLASSES}
    for ann in nusc.sample_annotation:
        name = category_to_detection_name(ann["category_name"])
        w, length, h = ann["size"]
        ref_l, ref_w, ref_h = CLASS_SPECS[name].lwh
        for size, ref in ((length, ref_l), (w, ref_w), (h, ref_h)):
            assert abs(size / ref - 1) <= 0.1 + 1e-9
        speed = float(np.linalg.norm(nusc.box_velocity(ann["token"])[:2]))
        attrs = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
        moving[name].append(speed)
        if name in ("barrier", "traffic_cone"):
            assert speed == 0.0 and attrs == []
        else:
            assert len(attrs) == 1
            moving_attr = attrs[0] in ("vehicle.moving", "cycle.with_rider", "pedestrian.moving")
            assert moving_attr == (speed > 0.1), (name, attrs)
    assert max(moving["car"] + moving["bus"] + moving["truck"]) > 2.0  # some traffic moves
    assert max(moving["pedestrian"]) < 2.0


def test_objects_do_not_overlap(nusc):
    from storage.nuscenes_reader import NuScenesReader

    reader = NuScenesReader(nusc.dataroot, split="mini_val")
    xs = np.arange(-60, 60, 0.1)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    pts = np.concatenate([grid, np.zeros((len(grid), 1))], axis=1)
    for token in reader.sample_tokens[::2]:
        boxes = reader.annotations(token).gt_boxes.copy()
        boxes[:, 2], boxes[:, 5] = 0.0, 10.0  # BEV footprint test
        inside = points_in_boxes(pts, boxes).sum(axis=1)
        assert inside.max() == 1, f"sample {token}: overlapping boxes"


def test_point_cloud_format(synth_dataroot):
    files = sorted((synth_dataroot / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    assert len(files) == 9 and len(list((synth_dataroot / "sweeps" / "LIDAR_TOP").glob("*.pcd.bin"))) == 9
    pts = np.fromfile(files[0], dtype=np.float32).reshape(-1, 5)
    assert 25_000 < len(pts) < 34_560  # 32 x 1080 rays, sky rays give no return
    ring = pts[:, 4]
    assert np.array_equal(np.unique(ring), np.arange(32))
    assert pts[:, 3].min() >= 0 and pts[:, 3].max() <= 255 and np.array_equal(pts[:, 3], np.round(pts[:, 3]))
    ground = np.abs(pts[:, 2] + 1.84023) < 1e-3  # flat ground seen from 1.84 m
    assert 0.3 < ground.mean() < 0.95
    assert np.linalg.norm(pts[:, :3], axis=1).max() <= 70.0 + 1e-3


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = SynthConfig(num_scenes=1, samples_per_scene=2, seed=3, image_size=(64, 36), azimuth_steps=256)
    a = generate_dataset(cfg, tmp_path / "a")
    b = generate_dataset(cfg, tmp_path / "b")
    c = generate_dataset(SynthConfig(**{**cfg.to_json(), "seed": 4, "image_size": (64, 36),
                                        "objects_per_scene": (16, 28)}), tmp_path / "c")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert any(str(f).endswith(".pcd.bin") for f in files) and any(str(f).endswith(".jpg") for f in files)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    for table in ("sample_annotation.json", "ego_pose.json"):
        assert (a / "v1.0-mini" / table).read_bytes() != (c / "v1.0-mini" / table).read_bytes()
    pa = sorted((a / "samples" / "LIDAR_TOP").iterdir())[0].read_bytes()
    pc = sorted((c / "samples" / "LIDAR_TOP").iterdir())[0].read_bytes()
    assert pa != pc


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_scenes"):
        SynthConfig(num_scenes=11)
    with pytest.raises(ValueError, match="objects_per_scene"):
        SynthConfig(objects_per_scene=(3, 5))
    assert SynthConfig.from_json(json.loads(SynthConfig(seed=5).dumps())) == SynthConfig(seed=5)


def test_synth_command_writes_a_loadable_dataroot(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--scenes", "2", "--samples-per-scene", "2", "--seed", "1",
                 "--image-size", "64", "36"]) == 0
    text = capsys.readouterr().out
    summary = SynthSummary.load(out)
    assert str(out.resolve()) in text and "2 mini_val" in text
    assert summary.num_samples == 4 and summary.config.image_size == (64, 36)
    from nuscenes import NuScenes

    nusc = NuScenes(version="v1.0-mini", dataroot=str(out), verbose=False)
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])
    assert (sd["width"], sd["height"]) == (64, 36)
    assert main(["synth", "--out", str(tmp_path / "bad"), "--scenes", "12"]) == 2
