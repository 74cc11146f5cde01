"""Mmdet3dInfoReader / write_mmdet3d_infos / safe_load on the real keyframe and broken copies of it.

Broken inputs are built in ``tmp_path`` from copies of the shared files (never in the repo).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyquaternion import Quaternion

from storage.errors import SampleError, UnsafePickleError
from storage.mmdet3d_reader import MMDET3D_NUSCENES_CLASSES, Mmdet3dInfoReader, write_mmdet3d_infos
from storage.safe_pickle import safe_load, safe_loads
from storage.sample import CAMERA_NAMES, NUSCENES_CLASSES, POINT_DIM
from storage.transforms import apply_transform, make_transform

TOKEN = "ca9a282c9e77460f8360f564131a8af5"


@pytest.fixture(scope="module")
def raw(keyframe_info: Path) -> dict:
    return safe_load(keyframe_info)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def sample(keyframe_info: Path):
    return Mmdet3dInfoReader(keyframe_info).read(0)


@pytest.fixture
def root(keyframe_info: Path, tmp_path: Path) -> Path:
    """A private copy of the keyframe's dataroot (samples/ + info pickle) to break."""
    dst = tmp_path / "root"
    shutil.copytree(keyframe_info.parent / "samples", dst / "samples")
    shutil.copy(keyframe_info, dst / keyframe_info.name)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _info(root: Path) -> Path:
    return next(root.glob("*.pkl"))


def _rewrite(path: Path, edit) -> Path:
    data = safe_load(path)
    edit(data)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def _file_timestamp(path: str) -> int:
    return int(Path(path).name.split("__")[-1].split(".")[0])


# ---- the real keyframe ----------------------------------------------------------------------------
def test_real_keyframe_reads_into_a_sample(keyframe_info, sample, raw):
    reader = Mmdet3dInfoReader(keyframe_info)
    assert len(reader) == 1 and reader.sample_tokens == (TOKEN,)
    assert reader.dataset_id == "mmdet3d:v1.0-mini:mmdet3d_v1.1_scene-0061_sample0"
    assert sample.sample_token == TOKEN and sample.scene == "unknown"
    assert sample.points.shape == (34688, POINT_DIM) and sample.points.dtype == np.float32
    assert os.path.getsize(sample.lidar_path) == 34688 * POINT_DIM * 4
    assert sample.timestamp_us == _file_timestamp(sample.lidar_path)  # the file name carries the time
    assert tuple(c.name for c in sample.cameras) == CAMERA_NAMES
    for cam in sample.cameras:
        assert Path(cam.image_path).is_file() and f"__{cam.name}__" in cam.image_path
        assert cam.timestamp_us == _file_timestamp(cam.image_path)
        with Image.open(cam.image_path) as im:
            assert cam.image_size == im.size == (1600, 900)
    # boxes: the instance labelled -1 is dropped, the rest keep their class name and point count
    kept = [i for i in raw["data_list"][0]["instances"] if i["bbox_label_3d"] != -1]
    assert len(raw["data_list"][0]["instances"]) == 69 and len(kept) == 68
    assert sample.gt_boxes.shape == (68, 9) and sample.gt_labels.dtype == np.int64
    id_to_name = {v: k for k, v in raw["metainfo"]["categories"].items()}
    assert [NUSCENES_CLASSES[i] for i in sample.gt_labels] == [id_to_name[i["bbox_label_3d"]] for i in kept]
    np.testing.assert_array_equal(sample.num_lidar_pts, [i["num_lidar_pts"] for i in kept])
    np.testing.assert_allclose(sample.gt_boxes[:, :6], [i["bbox_3d"][:6] for i in kept])
    # bbox_3d_isvalid does not filter; it equals num_lidar_pts > 0 on this keyframe
    assert [i["bbox_3d_isvalid"] for i in kept] == list(sample.num_lidar_pts > 0)
    assert (sample.num_lidar_pts == 0).sum() == 3
    assert sample.instance_tokens == ("",) * 68
    assert reader.read(TOKEN).differences(sample) == []


def _assert_rigid(t: np.ndarray) -> None:
    assert t.shape == (4, 4) and t.dtype == np.float64
    np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-6)
    assert np.linalg.det(t[:3, :3]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(t[3], [0, 0, 0, 1])


def test_real_keyframe_transforms_are_sensible(sample):
    for t in [sample.ego_from_lidar, sample.global_from_ego] + [
            m for c in sample.cameras for m in (c.ego_from_cam, c.lidar_from_cam)]:
        _assert_rigid(t)
    # the roof LiDAR sits ~1.8 m up, its z axis is the ego's z axis
    assert 1.5 < sample.ego_from_lidar[2, 3] < 2.2 and sample.ego_from_lidar[2, 2] > 0.99
    axis = {c.name: c.ego_from_cam[:3, 2] for c in sample.cameras}  # optical axes in ego
    assert axis["CAM_FRONT"][0] > 0.99 and axis["CAM_BACK"][0] < -0.99
    assert axis["CAM_FRONT_LEFT"][1] > 0.5 and axis["CAM_FRONT_RIGHT"][1] < -0.5
    for cam in sample.cameras:
        k = cam.cam_intrinsic
        assert k.shape == (3, 3) and k[0, 0] > 500 and k[2, 2] == 1.0
        assert abs(k[0, 2] - cam.image_size[0] / 2) < 60 and abs(k[1, 2] - cam.image_size[1] / 2) < 60
        # lidar2cam goes through global (cameras fire up to 43 ms before the LiDAR); it must agree
        # with the static calibration ego_from_lidar^-1 @ ego_from_cam up to that ego motion
        static = np.linalg.inv(sample.ego_from_lidar) @ cam.ego_from_cam
        assert np.abs(cam.lidar_from_cam[:3, 3] - static[:3, 3]).max() < 0.5
        assert np.abs(cam.lidar_from_cam[:3, :3] - static[:3, :3]).max() < 0.02


def test_reader_pickles_small_and_reads_after_unpickling(keyframe_info, sample):
    reader = Mmdet3dInfoReader(keyframe_info)
    blob = pickle.dumps(reader)
    assert len(blob) < 2000  # the parsed infos are not shipped; workers reload them
    again = pickle.loads(blob)
    assert again.sample_tokens == reader.sample_tokens and again.read(TOKEN).differences(sample) == []
    with pytest.raises(KeyError, match="no sample nope"):
        reader.read("nope")
    with pytest.raises(IndexError, match="index 1 out of range"):
        reader.read(1)


def test_paths_resolve_against_an_explicit_data_root(keyframe_info, sample, tmp_path):
    info = shutil.copy(keyframe_info, tmp_path / "elsewhere.pkl")
    with pytest.raises(SampleError, match=f"sample {TOKEN}: LiDAR points missing"):
        Mmdet3dInfoReader(info).read(0)  # default data_root is the info's folder
    s = Mmdet3dInfoReader(info, data_root=keyframe_info.parent).read(0)
    assert s.differences(sample) == []


# ---- writer round trip ----------------------------------------------------------------------------
def test_write_then_read_gives_identical_samples(sample, keyframe_info, tmp_path):
    out = write_mmdet3d_infos([sample], tmp_path / "infos" / "x.pkl", data_root=keyframe_info.parent,
                              version="v1.0-mini")
    data = safe_load(out)
    info = data["data_list"][0]
    assert data["metainfo"]["info_version"] == "1.1"
    assert info["lidar_points"]["lidar_path"].startswith("samples/LIDAR_TOP/")
    assert info["images"]["CAM_BACK"]["img_path"].startswith("samples/CAM_BACK/")
    mm = [MMDET3D_NUSCENES_CLASSES[i["bbox_label_3d"]] for i in info["instances"]]
    assert mm == [NUSCENES_CLASSES[i] for i in sample.gt_labels]
    back = Mmdet3dInfoReader(out, data_root=keyframe_info.parent)
    assert back.read(0).differences(sample) == []
    # an altered sample is detected by the comparison the round trip relies on
    moved = Mmdet3dInfoReader(out, data_root=keyframe_info.parent).read(0)
    moved.gt_boxes[0, 6] += 1e-3
    assert moved.differences(sample) == ["gt_boxes"]


# ---- v0.x layout ------------------------------------------------------------------------------------
def _v0_info(s) -> dict:
    """The keyframe written in mmdet3d 0.x's layout: numpy arrays, quaternions, us timestamps."""
    def quat(t):
        return Quaternion(matrix=t[:3, :3], atol=1e-5).elements

    cams = {}
    for c in s.cameras:
        cams[c.name] = {"data_path": "./data/nuscenes/samples/" + c.name + "/" + Path(c.image_path).name,
                        "cam_intrinsic": c.cam_intrinsic, "sensor2ego_rotation": quat(c.ego_from_cam),
                        "sensor2ego_translation": c.ego_from_cam[:3, 3], "timestamp": c.timestamp_us,
                        "sensor2lidar_rotation": c.lidar_from_cam[:3, :3],
                        "sensor2lidar_translation": c.lidar_from_cam[:3, 3]}
    b = s.gt_boxes
    gt = np.concatenate([b[:, :3], b[:, [4, 3, 5]], -b[:, 6:7] - np.pi / 2], axis=1)
    names = [NUSCENES_CLASSES[i] for i in s.gt_labels]
    return {"infos": [{
        "token": s.sample_token, "timestamp": s.timestamp_us, "sweeps": [],
        "lidar_path": "./data/nuscenes/samples/LIDAR_TOP/" + Path(s.lidar_path).name,
        "lidar2ego_rotation": quat(s.ego_from_lidar), "lidar2ego_translation": s.ego_from_lidar[:3, 3],
        "ego2global_rotation": quat(s.global_from_ego), "ego2global_translation": s.global_from_ego[:3, 3],
        "cams": cams, "gt_boxes": np.concatenate([gt, np.zeros((1, 7))]), "gt_names": np.array(names + ["animal"]),
        "gt_velocity": np.concatenate([b[:, 7:9], np.full((1, 2), np.nan)]),
        "num_lidar_pts": np.concatenate([s.num_lidar_pts, [3]]), "valid_flag": np.ones(len(b) + 1, bool)}],
        "metadata": {"version": "v1.0-mini"}}


def test_v0_layout_reads_into_the_same_sample(sample, keyframe_info, tmp_path):
    path = tmp_path / "nuscenes_infos_val.pkl"
    with open(path, "wb") as f:
        pickle.dump(_v0_info(sample), f)
    reader = Mmdet3dInfoReader(path, data_root=keyframe_info.parent)
    assert reader.layout == "v0" and reader.dataset_id == "mmdet3d:v1.0-mini:nuscenes_infos_val"
    v0 = reader.read(0)
    assert len(v0.gt_boxes) == 68  # "animal" dropped
    # quaternions of the slightly non-orthonormal float32-derived matrices agree to ~1e-7
    assert v0.differences(sample, atol=1e-5) == []


def test_v0_sweeps_use_sensor2lidar(sample, keyframe_info, tmp_path):
    info = _v0_info(sample)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    info["infos"][0]["sweeps"] = [{"data_path": sample.lidar_path, "sensor2lidar_rotation": rot,
                                   "sensor2lidar_translation": np.array([0.5, 0.0, 0.0]),
                                   "timestamp": sample.timestamp_us - 50_000}]
    path = tmp_path / "v0_sweeps.pkl"
    path.write_bytes(pickle.dumps(info))
    pts = Mmdet3dInfoReader(path, data_root=keyframe_info.parent, sweeps=1).read(0).points
    n = len(sample.points)
    assert pts.shape == (2 * n, 5)
    expected = np.stack([0.5 - sample.points[:, 1], sample.points[:, 0], sample.points[:, 2]], axis=1)
    np.testing.assert_allclose(pts[n:, :3], expected, atol=1e-4)
    np.testing.assert_allclose(pts[n:, 4], 0.05)


# ---- sweeps ----------------------------------------------------------------------------------------
def test_sweeps_are_moved_into_the_keyframe_lidar_frame(root, sample):
    info = _info(root)
    name = Path(sample.lidar_path).name
    (root / "sweeps" / "LIDAR_TOP").mkdir(parents=True)
    shutil.copy(root / "samples" / "LIDAR_TOP" / name, root / "sweeps" / "LIDAR_TOP" / ("sweep_" + name))
    c, s_ = np.cos(0.2), np.sin(0.2)
    lidar_from_sweep = make_transform([[c, -s_, 0], [s_, c, 0], [0, 0, 1]], (1.0, -2.0, 0.1))

    def add_sweep(d):
        d["data_list"][0]["lidar_sweeps"] = [{"timestamp": d["data_list"][0]["timestamp"] - 0.05, "lidar_points": {
            "lidar_path": "sweep_" + name, "lidar2sensor": np.linalg.inv(lidar_from_sweep).tolist()}}]

    _rewrite(info, add_sweep)
    n = len(sample.points)
    assert Mmdet3dInfoReader(info).read(0).points.shape == (n, 5)  # sweeps=0 ignores them
    pts = Mmdet3dInfoReader(info, sweeps=3).read(0).points
    assert pts.shape == (2 * n, 5) and pts.dtype == np.float32
    np.testing.assert_array_equal(pts[:n, :4], sample.points[:, :4])
    np.testing.assert_array_equal(pts[:n, 4], 0.0)
    np.testing.assert_allclose(pts[n:, :3], apply_transform(lidar_from_sweep, sample.points), atol=1e-4)
    np.testing.assert_allclose(pts[n:, 4], 0.05, atol=1e-6)


# ---- broken inputs ---------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, keyframe_info):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    data = safe_load(keyframe_info)
    data["data_list"][0]["instances"][3]["velocity"] = _Exploit(marker)  # hidden deep inside a real info
    bad.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafePickleError) as err:
        safe_load(bad)
    assert str(bad) in str(err.value) and f"'{os.system.__module__}.system'" in str(err.value)
    assert err.value.global_name == f"{os.system.__module__}.system"
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        Mmdet3dInfoReader(bad)
    assert not marker.exists()
    # the same pickle does run code with the plain unpickler: the test can tell
    pickle.loads(bad.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("obj", [Path("/x"), np.random.default_rng(0), eval, getattr])
def test_other_globals_are_refused(obj):
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        safe_loads(pickle.dumps(obj))


def test_numpy_1_and_2_array_pickles_load():
    arrays = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.int64(7), "b": b"\x00\xff", "s": {1, 2},
              "fs": frozenset([3]), "c": 1 + 2j, "ba": bytearray(b"ab")}
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        back = safe_loads(pickle.dumps(arrays, protocol=proto))
        np.testing.assert_array_equal(back["f"], arrays["f"])
        assert back["f"].dtype == np.float32 and back["i"] == 7 and back["b"] == b"\x00\xff"
        assert back["s"] == {1, 2} and back["fs"] == frozenset([3]) and back["ba"] == bytearray(b"ab")
    numpy2 = pickle.dumps(arrays["f"], protocol=2).replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
    assert b"numpy._core" in numpy2
    np.testing.assert_array_equal(safe_loads(numpy2), arrays["f"])
    evil_codec = pickle.dumps(b"ab", protocol=2).replace(b"latin1", b"utf-16")
    with pytest.raises(ValueError, match="not a readable info pickle"):
        safe_loads(evil_codec)


def test_corrupt_or_foreign_pickles_name_the_file(tmp_path, keyframe_info):
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(keyframe_info.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.pkl: not a readable info pickle"):
        Mmdet3dInfoReader(cut)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match=r"other.pkl: not an mmdet3d info file"):
        Mmdet3dInfoReader(other)


def _one_error(reader: Mmdet3dInfoReader, field: str, problem: str, path: Path) -> SampleError:
    with pytest.raises(SampleError) as err:
        reader.read(0)
    e = err.value
    assert e.sample_token == TOKEN and e.field == field and Path(e.path) == path
    assert str(e).startswith(f"sample {TOKEN}: {field} {problem}") and str(path) in str(e)
    return e


def test_missing_lidar_file(root, sample):
    lidar = root / "samples" / "LIDAR_TOP" / Path(sample.lidar_path).name
    lidar.unlink()
    # the error names the first candidate (<data_root>/<bare name>) and the samples/<SENSOR> one it also tried
    e = _one_error(Mmdet3dInfoReader(_info(root)), "LiDAR points", "missing", root / lidar.name)
    assert str(lidar) in str(e)


def test_truncated_and_nan_point_clouds(root, sample):
    lidar = root / "samples" / "LIDAR_TOP" / Path(sample.lidar_path).name
    data = lidar.read_bytes()
    lidar.write_bytes(data[:-7])
    _one_error(Mmdet3dInfoReader(_info(root)), "LiDAR points", "truncated", lidar)
    pts = np.frombuffer(data, dtype=np.float32).copy()
    pts[5 * 100 + 1] = np.nan
    lidar.write_bytes(pts.tobytes())
    _one_error(Mmdet3dInfoReader(_info(root)), "LiDAR points", "contain NaN", lidar)


def test_missing_and_unreadable_images(root, sample):
    front = root / "samples" / "CAM_FRONT" / Path(sample.camera("CAM_FRONT").image_path).name
    data = front.read_bytes()
    # a JPEG cut short: the header (size) reads, decoding fails in load_image
    front.write_bytes(data[:5000])
    s = Mmdet3dInfoReader(_info(root)).read(0)
    assert s.camera("CAM_FRONT").image_size == (1600, 900)
    assert s.camera("CAM_BACK").load_image(TOKEN).shape == (900, 1600, 3)
    with pytest.raises(SampleError) as err:
        s.camera("CAM_FRONT").load_image(TOKEN)
    assert str(err.value).startswith(f"sample {TOKEN}: CAM_FRONT image unreadable") and str(front) in str(err.value)
    # not a JPEG at all: the header read in read() fails
    front.write_bytes(b"this is not an image" * 10)
    _one_error(Mmdet3dInfoReader(_info(root)), "CAM_FRONT image", "unreadable header", front)
    front.unlink()
    _one_error(Mmdet3dInfoReader(_info(root)), "CAM_FRONT image", "missing", root / front.name)


def test_camera_absent_from_the_info(root):
    info = _rewrite(_info(root), lambda d: d["data_list"][0]["images"].pop("CAM_BACK_LEFT"))
    _one_error(Mmdet3dInfoReader(info), "CAM_BACK_LEFT calibration", "missing from the info file", info)
