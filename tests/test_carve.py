"""A validation split carved from the training scenes: the devkit reads it, the reported split is hidden."""

from __future__ import annotations

import json

import pytest

from pipeline.carve import carve_validation
from storage.nuscenes_reader import NuScenesReader


@pytest.fixture(scope="module")
def four_scene_root(tmp_path_factory):
    from storage.synth import SynthConfig, generate_dataset

    config = SynthConfig(num_scenes=4, samples_per_scene=2, seed=3, image_size=(64, 36), azimuth_steps=64)
    return generate_dataset(config, tmp_path_factory.mktemp("carve") / "nuscenes")


def test_carved_split_holds_only_training_scenes(four_scene_root, tmp_path):
    original_val = NuScenesReader(four_scene_root, split="mini_val")
    original_train = NuScenesReader(four_scene_root, split="mini_train")  # 2 scenes x 2 keyframes
    view = carve_validation(four_scene_root, tmp_path / "view", num_val=1)
    val = NuScenesReader(view, split="mini_val")
    train = NuScenesReader(view, split="mini_train")
    assert len(original_train) == 4 and len(val) == 2 and len(train) == 2
    assert set(val.sample_tokens) | set(train.sample_tokens) == set(original_train.sample_tokens)
    assert not set(val.sample_tokens) & set(train.sample_tokens)
    assert not set(val.sample_tokens) & set(original_val.sample_tokens)  # the reported split never appears
    # the last training scene became validation; sensor data is shared, not copied
    assert (view / "samples").is_symlink()
    marker = json.loads((view / "carved_from.json").read_text())
    assert marker["num_val"] == 1 and len(marker["val_scenes"]) == 1
    # carving again reuses the view; a foreign folder is refused
    assert carve_validation(four_scene_root, view, num_val=1) == view
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError):
        carve_validation(four_scene_root, tmp_path / "other", num_val=1)
    with pytest.raises(ValueError, match="num_val"):
        carve_validation(four_scene_root, tmp_path / "v2", num_val=2)
