"""Shared fixtures. Tests that need the real keyframe skip when ../shared is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KEYFRAME_ROOT = SHARED / "data" / "nuscenes_keyframes"
KEYFRAME_INFO = KEYFRAME_ROOT / "mmdet3d_v1.1_scene-0061_sample0.pkl"
#: Where tests write PNG artefacts a person can look at.
ARTEFACTS = Path(os.environ.get("BEVKD_ARTEFACTS", REPO / "artefacts"))


@pytest.fixture(scope="session")
def keyframe_info() -> Path:
    """Path of the real nuScenes keyframe's mmdet3d v1.1 info pickle."""
    if not KEYFRAME_INFO.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have ../shared: {KEYFRAME_INFO} not found")
        pytest.skip(f"real nuScenes keyframe not available: {KEYFRAME_INFO} missing (../shared absent)")
    return KEYFRAME_INFO


@pytest.fixture(scope="session")
def artefacts() -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS


@pytest.fixture(scope="session")
def synth_dataroot(tmp_path_factory) -> Path:
    """A tiny generated nuScenes-format dataroot (v1.0-mini): 2 mini_val + 1 mini_train scenes
    x 3 keyframes, 160x90 images, one non-keyframe LiDAR sweep between keyframes."""
    from storage.synth import SynthConfig, generate_dataset

    config = SynthConfig(num_scenes=3, samples_per_scene=3, seed=7, image_size=(160, 90), sweeps_per_sample=1)
    return generate_dataset(config, tmp_path_factory.mktemp("synth") / "nuscenes")
