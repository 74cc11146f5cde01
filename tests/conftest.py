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
