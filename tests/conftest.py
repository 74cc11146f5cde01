"""Shared fixtures. Tests that need the real keyframe skip when ../shared is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KEYFRAME_ROOT = SHARED / "data" / "nuscenes_keyframes"
KEYFRAME_INFO = KEYFRAME_ROOT / "mmdet3d_v1.1_scene-0061_sample0.pkl"
#: Where tests write PNG artefacts a person can look at: ``BEVKD_ARTEFACTS=<dir>`` to keep them
#: (e.g. ``BEVKD_ARTEFACTS=artefacts``); unset, a temporary directory of the session.
ARTEFACTS_ENV = "BEVKD_ARTEFACTS"


@pytest.fixture(scope="session")
def keyframe_info() -> Path:
    """Path of the real nuScenes keyframe's mmdet3d v1.1 info pickle."""
    if not KEYFRAME_INFO.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have ../shared: {KEYFRAME_INFO} not found")
        pytest.skip(f"real nuScenes keyframe not available: {KEYFRAME_INFO} missing (../shared absent)")
    return KEYFRAME_INFO


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> Path:
    """Directory for PNG artefacts: ``$BEVKD_ARTEFACTS`` if set, else a temporary one (never the repository)."""
    chosen = os.environ.get(ARTEFACTS_ENV)
    if not chosen:
        return tmp_path_factory.mktemp("artefacts")
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def synth_dataroot(tmp_path_factory) -> Path:
    """A tiny generated nuScenes-format dataroot (v1.0-mini): 2 mini_val + 1 mini_train scenes
    x 3 keyframes, 160x90 images, one non-keyframe LiDAR sweep between keyframes."""
    from storage.synth import SynthConfig, generate_dataset

    config = SynthConfig(num_scenes=3, samples_per_scene=3, seed=7, image_size=(160, 90), sweeps_per_sample=1)
    return generate_dataset(config, tmp_path_factory.mktemp("synth") / "nuscenes")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for the whole session (tests marked ``ray``; never under xdist): 2 CPUs, a
    100 MB object store, ``RAY_TMPDIR`` in the session's tmp dir, no auth, no dashboard, Ray's
    deprecation warnings filtered; ``tests/`` is on the workers' PYTHONPATH so test-only teachers
    (``test_cache_job_support:tiny_bev_teacher``) import there, and ``$BEVKD_TEST_TMP`` is a folder
    tests and workers share. Job code reuses this Ray as is."""
    import warnings

    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("Ray tests do not run under xdist (one session-scoped Ray per process)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray(\.|$)")
    ray_tmp = tmp_path_factory.mktemp("ray")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_TMPDIR", "PYTHONPATH", "BEVKD_TEST_TMP")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(ray_tmp),
                      BEVKD_TEST_TMP=str(tmp_path_factory.mktemp("raytest")),
                      PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "tests"), saved["PYTHONPATH"]) if p))
    import ray

    ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(ray_tmp))
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for the module: small ops on a shared 2-core machine only contend.

    A module opts in for all its tests, set up before its other module fixtures (so its caches
    are written on one thread too), with ``pytestmark = pytest.mark.usefixtures("one_thread")``;
    never autouse here, which would change every module's threading."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synth_val_reader(synth_dataroot):
    """The devkit reader over the tiny generated dataroot's ``mini_val`` split."""
    from storage.nuscenes_reader import NuScenesReader

    return NuScenesReader(synth_dataroot, version="v1.0-mini", split="mini_val")


@pytest.fixture(scope="session")
def tiny_teacher():
    """The tiny CenterPoint teacher, untrained, seeded (``torch.manual_seed(0)``), in eval mode."""
    import torch

    from teachers.centerpoint import CenterPointTeacher
    from teachers.config import centerpoint_tiny

    torch.manual_seed(0)
    return CenterPointTeacher(centerpoint_tiny()).eval()


@pytest.fixture(scope="session")
def reader(synth_val_reader):
    """Short name of ``synth_val_reader`` (the student tests' reader); a module may define its own."""
    return synth_val_reader


@pytest.fixture(scope="session")
def teacher(tiny_teacher):
    """Short name of ``tiny_teacher`` (the student tests' teacher); a module may define its own."""
    return tiny_teacher


@pytest.fixture(scope="module")
def student_cache(synth_val_reader, tiny_teacher, tmp_path_factory) -> Path:
    """A teacher-target cache written afresh for each module that asks for it (tests may break
    copies of it): ``tiny_teacher`` over ``synth_val_reader`` by the real cache job, default
    codecs, images of the tiny student (``tiny_student.IMAGE_WH``)."""
    from kd_cache import write_teacher_cache
    from tiny_student import IMAGE_WH

    return write_teacher_cache(tmp_path_factory.mktemp("kd") / "cache", synth_val_reader, tiny_teacher,
                               image_size=IMAGE_WH)
