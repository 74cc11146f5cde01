"""Distillation on unlabelled frames: the generator's non-keyframe camera sweeps (as nuScenes
stores them), the reader exposing them as unannotated Samples, the cache job over them (the
manifest's ``labelled`` column) and training on labelled + unlabelled rows (detection loss on
labelled rows only, distillation on every row).

Real components: the devkit on generated data, the real cache job and Zarr cache, the tiny
teacher and the tiny student.
"""

from __future__ import annotations

import json
from dataclasses import replace
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from kd_cache import write_teacher_cache
from storage.cache import CacheReader
from storage.nuscenes_reader import NuScenesReader
from storage.sample import CAMERA_NAMES
from storage.synth import SynthConfig, generate_dataset
from storage.transforms import invert_transform, transform_from_quaternion
from student.config import StudentConfig
from student.losses import DistillationConfig, LossWeights
from student.trainer import TrainConfig, train_student
from teachers.cache_row import fg_mask_from_boxes

CFG = StudentConfig.tiny()
IMAGE_WH = (CFG.image_hw[1], CFG.image_hw[0])
SYNTH = SynthConfig(num_scenes=2, samples_per_scene=2, seed=5, image_size=(160, 90), sweeps_per_sample=2,
                    camera_sweeps_per_sample=3, lidar_beams=16, azimuth_steps=360)
CHANNELS = ("LIDAR_TOP", *CAMERA_NAMES)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return generate_dataset(SYNTH, tmp_path_factory.mktemp("unlabelled") / "nuscenes")


@pytest.fixture(scope="module")
def nusc(dataroot):
    from storage.nuscenes_reader import load_nuscenes

    return load_nuscenes(str(dataroot), "v1.0-mini")


def _chains(nusc) -> dict[tuple[str, str], list[dict]]:
    """(scene token, channel) -> its sample_data rows in time order."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for sd in nusc.sample_data:
        out[nusc.get("sample", sd["sample_token"])["scene_token"], sd["channel"]].append(sd)
    return {k: sorted(v, key=lambda r: r["timestamp"]) for k, v in out.items()}


def test_generator_writes_camera_sweeps_linked_as_nuscenes_does(dataroot, nusc, synth_dataroot):
    chains = _chains(nusc)
    n_cam = SYNTH.num_scenes * (SYNTH.samples_per_scene - 1) * SYNTH.camera_sweeps_per_sample
    for channel in CAMERA_NAMES:
        sweeps = [sd for sd in nusc.sample_data if sd["channel"] == channel and not sd["is_key_frame"]]
        assert len(sweeps) == n_cam
        assert all(sd["filename"].startswith(f"sweeps/{channel}/") and (dataroot / sd["filename"]).is_file()
                   for sd in sweeps)
    keyframe_times = {s["token"]: s["timestamp"] for s in nusc.sample}
    for (scene, channel), rows in chains.items():
        # the prev/next chain, walked from the first keyframe's row, is exactly the time-ordered rows
        first = nusc.get("sample", nusc.get("scene", scene)["first_sample_token"])["data"][channel]
        walked, tok = [], nusc.get("sample_data", first)
        while tok["prev"]:
            tok = nusc.get("sample_data", tok["prev"])
        while True:
            walked.append(tok["token"])
            if not tok["next"]:
                break
            tok = nusc.get("sample_data", tok["next"])
        assert walked == [r["token"] for r in rows]
        assert np.all(np.diff([r["timestamp"] for r in rows]) > 0)
        scene_samples = [t for t, s in ((s["token"], s) for s in nusc.sample) if s["scene_token"] == scene]
        for r in rows:  # every row points at its scene's keyframe nearest in time
            dt = {t: abs(keyframe_times[t] - r["timestamp"]) for t in scene_samples}
            assert dt[r["sample_token"]] == min(dt.values())
    for s in nusc.sample:  # the devkit's sample.data lists keyframes only
        assert all(nusc.get("sample_data", t)["is_key_frame"] for t in s["data"].values())
    # default: no camera sweeps at all
    default_rows = json.loads((synth_dataroot / "v1.0-mini" / "sample_data.json").read_text())
    assert not any(not r["is_key_frame"] and "/CAM_" in r["filename"] for r in default_rows)
    assert "camera_sweeps_per_sample" not in json.loads((synth_dataroot / "synth_summary.json").read_text())["config"]


def _pose(nusc, sd: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(global_from_ego, ego_from_sensor)`` of a sample_data row, from the devkit's records."""
    ego, cs = nusc.get("ego_pose", sd["ego_pose_token"]), nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return (transform_from_quaternion(ego["rotation"], ego["translation"]),
            transform_from_quaternion(cs["rotation"], cs["translation"]))


def test_reader_exposes_sweeps_as_unannotated_samples_with_nearest_sensors(dataroot, nusc):
    keys = NuScenesReader(dataroot, split="mini_val")
    sweeps = NuScenesReader(dataroot, split="mini_val", frames="sweeps")
    both = NuScenesReader(dataroot, split="mini_val", frames="all")
    front = [sd["token"] for sd in nusc.sample_data if sd["channel"] == "CAM_FRONT" and not sd["is_key_frame"]]
    assert sorted(sweeps.sample_tokens) == sorted(front)
    assert len(set(both.sample_tokens)) == len(both) == len(keys) + len(sweeps)
    assert set(both.sample_tokens) == set(keys.sample_tokens) | set(sweeps.sample_tokens)
    assert sweeps.dataset_id == "nuscenes:v1.0-mini:mini_val:sweeps"
    assert keys.dataset_id == "nuscenes:v1.0-mini:mini_val"
    chains = _chains(nusc)
    for token in sweeps.sample_tokens[:4]:
        s = sweeps.read(token)
        assert s.sample_token == token and s.labelled is False and not sweeps.is_labelled(token)
        assert s.gt_boxes.shape == (0, 9) and s.gt_labels.shape == (0,) and len(s.points) > 0
        cam_front = nusc.get("sample_data", token)
        scene = nusc.get("sample", cam_front["sample_token"])["scene_token"]
        nearest = {ch: min(chains[scene, ch], key=lambda r: abs(r["timestamp"] - cam_front["timestamp"]))
                   for ch in CHANNELS}
        assert s.lidar_path.endswith(nearest["LIDAR_TOP"]["filename"]) and "/sweeps/LIDAR_TOP/" in s.lidar_path
        assert s.timestamp_us == nearest["LIDAR_TOP"]["timestamp"]
        g_ego_l, ego_l = _pose(nusc, nearest["LIDAR_TOP"])
        np.testing.assert_allclose(s.global_from_ego, g_ego_l)
        for cam in s.cameras:
            sd = nearest[cam.name]
            assert cam.image_path.endswith(sd["filename"]) and cam.timestamp_us == sd["timestamp"]
            g_ego_c, ego_c = _pose(nusc, sd)
            np.testing.assert_allclose(cam.lidar_from_cam, invert_transform(g_ego_l @ ego_l) @ g_ego_c @ ego_c,
                                       atol=1e-9)
    key = keys.sample_tokens[1]
    assert keys.read(key).differences(both.read(key)) == [] and both.read(key).labelled


@pytest.fixture(scope="module")
def caches(dataroot, tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled_caches")
    keys = NuScenesReader(dataroot, split="mini_val")
    sweeps = NuScenesReader(dataroot, split="mini_val", frames="sweeps")
    return (keys, write_teacher_cache(root / "keys", keys, tiny_teacher, image_size=IMAGE_WH),
            sweeps, write_teacher_cache(root / "sweeps", sweeps, tiny_teacher, image_size=IMAGE_WH))


def test_cache_job_over_unlabelled_frames_records_labelled_per_row(dataroot, tiny_teacher, tmp_path):
    reader = NuScenesReader(dataroot, split="mini_val", frames="all")
    cache = CacheReader(write_teacher_cache(tmp_path / "all", reader, tiny_teacher, image_size=IMAGE_WH))
    assert len(cache) == len(reader)
    assert cache.rows.column("labelled").to_pylist() == [reader.is_labelled(t) for t in cache.sample_tokens]
    for r in cache.ok_rows:
        row = cache.read(int(r))
        if cache.is_labelled(int(r)):
            assert row.fg_mask.any()  # from the GT boxes
        else:  # from the teacher's boxes (no GT on a sweep)
            expected = fg_mask_from_boxes(row.boxes[row.scores >= 0.3], cache.schema.grid)
            np.testing.assert_array_equal(row.fg_mask, expected)
    assert sum(not cache.is_labelled(int(r)) for r in cache.ok_rows) == len(reader) - 4


def _steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_on_labelled_and_unlabelled_masks_detection_on_unlabelled_rows(caches, tmp_path):
    keys, key_cache, sweeps, sweep_cache = caches
    unlabelled = set(sweeps.sample_tokens)
    config = TrainConfig(student=CFG, epochs=1, batch_size=2, progress=False, out_dir=str(tmp_path / "m"), recipe="all")
    result = train_student(config, keys, key_cache, unlabelled_reader=sweeps, unlabelled_cache=sweep_cache)
    log = _steps(result.loss_log)
    assert result.steps == (len(keys) + len(sweeps)) // 2 == len(log)
    seen = [t for step in log for t in step["tokens"]]
    assert sorted(seen) == sorted([*keys.sample_tokens, *sweeps.sample_tokens])
    all_unlabelled = [s for s in log if set(s["tokens"]) <= unlabelled]
    with_labels = [s for s in log if not set(s["tokens"]) <= unlabelled]
    assert all_unlabelled and with_labels  # 6 sweeps in 5 pairs: at least one pair has no keyframe
    for s in all_unlabelled:  # no GT: detection exactly zero; the teacher's dense heatmap still distils
        assert s["detection_heatmap"] == 0.0 and s["detection_regression"] == 0.0
        assert s["heatmap"] > 0 and s["depth_bce"] > 0
    assert all(s["detection_heatmap"] > 0 and s["dense_feature"] > 0 for s in with_labels)

    # every teacher box kept (the untrained teacher scores low): pseudo-labels give unlabelled rows a
    # detection loss, and their BEVDistill soft mask comes from the teacher's boxes
    distill = DistillationConfig(weights=LossWeights(dense_feature=1.0, heatmap=1.0), pseudo_label_min_score=0.0)
    pseudo = train_student(replace(config, distill=distill, steps=len(log), unlabelled_pseudo_labels=True,
                                   out_dir=str(tmp_path / "p")),
                           keys, key_cache, unlabelled_reader=sweeps, unlabelled_cache=sweep_cache)
    assert pseudo.distill.unlabelled_pseudo_labels
    plog = _steps(pseudo.loss_log)
    assert [s["tokens"] for s in plog] == [s["tokens"] for s in log]  # same data order
    assert all(s["detection_heatmap"] > 0 and s["dense_feature"] > 0 for s in plog if set(s["tokens"]) <= unlabelled)


def test_unlabelled_data_needs_a_cache_when_the_labelled_data_has_one(caches, tmp_path):
    keys, key_cache, sweeps, _ = caches
    with pytest.raises(ValueError, match="for both the labelled and the unlabelled"):
        train_student(TrainConfig(student=CFG, steps=1, progress=False, out_dir=str(tmp_path / "x")), keys, key_cache,
                      unlabelled_reader=sweeps)
