"""``bevkd show``: the Rerun recording of a scene (read back with rerun's dataframe API), the PNG's
``--stage``, score threshold and colour bars, and one-line errors for bad tokens, stages and a
missing rerun-sdk. Real cache job output on the generated dataset; no mocks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.show import render_sample
from storage.cache import CacheReader
from storage.sample import CAMERA_NAMES

DATA = ["--split", "mini_val"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def cache(synth_val_reader, tiny_teacher, tmp_path_factory):
    from kd_cache import write_teacher_cache

    return write_teacher_cache(tmp_path_factory.mktemp("show") / "cache", synth_val_reader, tiny_teacher,
                               image_size=(176, 64))


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _mid_threshold(reader: CacheReader) -> float:
    """A threshold that keeps some but not all teacher boxes of the first row."""
    scores = np.sort(reader[0].scores)
    assert len(scores) > 2 and scores[0] < scores[-1], scores
    return float(scores[len(scores) // 2])


def test_rrd_records_the_scene_on_a_timeline(cache, synth_dataroot, synth_val_reader, tmp_path, capsys):
    rr = pytest.importorskip("rerun", reason="the viewer needs the [viz] extra (rerun-sdk)")
    import rerun.dataframe as rdf

    reader = CacheReader(cache)
    thr = _mid_threshold(reader)
    token = synth_val_reader.sample_tokens[1]
    out = tmp_path / "scene.rrd"
    rr.set_strict_mode(True)  # a component rerun cannot convert raises instead of being dropped with a warning
    try:
        assert main(["show", str(cache), "--dataroot", str(synth_dataroot), *DATA, "--sample", token,
                     "--rrd", str(out), "--score-threshold", str(thr)]) == 0
    finally:
        rr.set_strict_mode(False)
    assert str(out) in capsys.readouterr().out

    samples = [synth_val_reader.read(t) for t in synth_val_reader.sample_tokens]
    scene = sorted((s for s in samples if s.scene == synth_val_reader.read(token).scene),
                   key=lambda s: s.timestamp_us)
    assert len(scene) == 3  # the fixture's 3 keyframes per scene, the asked-for one in the middle

    recording = rdf.load_recording(str(out))
    table = recording.view(index="frame", contents="/**").select().read_all()
    cols = set(table.column_names)
    assert table.column("frame").to_pylist() == [0, 1, 2]
    stamps = [t.value // 1000 for t in table.column("timestamp")]  # ns -> us
    assert stamps == [s.timestamp_us for s in scene]
    texts = [v[0] for v in table.column("/sample:Text").to_pylist()]
    assert [t.split()[1] for t in texts] == [s.sample_token for s in scene]

    for i, s in enumerate(scene):
        row = reader.read(s.sample_token)
        keep = row.scores >= thr
        centres = np.asarray(table.column("/world/ego/teacher_boxes:PoseTranslation3D").to_pylist()[i])
        assert len(centres) == keep.sum()
        np.testing.assert_allclose(centres.reshape(-1, 3), row.boxes[keep, :3], atol=1e-5)
        assert len(table.column("/bev/teacher_boxes:LineStrip2D").to_pylist()[i] or []) == keep.sum()
        assert len(table.column("/world/ego/gt_boxes:HalfSize3D").to_pylist()[i]) == len(s.gt_boxes)
        pts = np.asarray(table.column("/world/ego/lidar:Position3D").to_pylist()[i])
        np.testing.assert_allclose(pts, s.points[:, :3], atol=1e-5)  # view 0: BEV frame = lidar frame
    assert any(0 < (reader.read(s.sample_token).scores >= thr).sum() < len(reader.read(s.sample_token).scores)
               for s in scene)

    h, w = reader.schema.grid.bev_shape
    for stage in reader[0].bev_features:
        for kind in ("l2_norm", "pca"):
            fmt = table.column(f"/bev/bev_feature/{stage}/{kind}:ImageFormat").to_pylist()
            assert [(f[0]["width"], f[0]["height"]) for f in fmt] == [(w, h)] * 3
    for name in ("/bev/heatmap/max", "/bev/heatmap/car", "/bev/fg_mask", "/bev/view_mask"):
        assert f"{name}:ImageBuffer" in cols, name
    for cam in CAMERA_NAMES:
        k = CAMERA_NAMES.index(cam)
        pinhole = table.column(f"/world/ego/{cam}:PinholeProjection").to_pylist()[0][0]
        intrinsic = scene[0].camera(cam).cam_intrinsic
        np.testing.assert_allclose(np.asarray(pinhole).reshape(3, 3).T, intrinsic, rtol=1e-6)  # column-major
        assert f"/world/ego/{cam}/image:Blob" in cols
        dots = table.column(f"/world/ego/{cam}/lidar_depth:Position2D").to_pylist()[0] or []
        assert len(dots) == int((reader.read(scene[0].sample_token).lidar_depth[k] > 0).sum())
        assert f"/lidar_depth/{cam}:ImageBuffer" in cols


def test_rrd_without_the_dataset_holds_the_one_sample(cache, tmp_path, capsys):
    pytest.importorskip("rerun", reason="the viewer needs the [viz] extra (rerun-sdk)")
    import rerun.dataframe as rdf

    reader = CacheReader(cache)
    out = tmp_path / "one.rrd"
    assert main(["show", str(cache), "--rrd", str(out), "--score-threshold", "0"]) == 0
    capsys.readouterr()
    table = rdf.load_recording(str(out)).view(index="frame", contents="/**").select().read_all()
    assert table.column("frame").to_pylist() == [0]
    assert len(table.column("/world/ego/teacher_boxes:HalfSize3D").to_pylist()[0]) == len(reader[0].boxes)
    assert not any(c.startswith("/world/ego/lidar") or c.startswith("/world/ego/CAM_") for c in table.column_names)


def test_rrd_without_rerun_says_what_to_install(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rerun", None)  # `import rerun` raises ImportError, as when not installed
    assert main(["show", str(cache), "--rrd", str(tmp_path / "x.rrd")]) == 2
    assert "pip install bevkd[viz]" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "x.rrd").exists()


def test_png_stage_threshold_and_colour_bars(cache, synth_val_reader, tmp_path, capsys):
    reader = CacheReader(cache)
    token, thr = reader[0].sample_token, _mid_threshold(reader)
    stages = list(reader[0].bev_features)
    res = render_sample(reader, token, tmp_path / "a.png", stage=stages[-1], score_threshold=thr,
                        sample=synth_val_reader.read(token))
    assert res.bev_stage == stages[-1] and res.path.stat().st_size > 20_000
    assert res.teacher_boxes_drawn == int((reader[0].scores >= thr).sum()) < len(reader[0].scores)
    assert res.colour_bars == ("channel L2 norm", "heatmap", "lidar depth (m)")

    assert main(["show", str(cache), "--stage", "no_such_stage", "--out", str(tmp_path / "b.png")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "no_such_stage" in err and stages[0] in err and str(cache) in err
    assert not (tmp_path / "b.png").exists()


def test_unknown_sample_is_one_line_naming_token_and_cache(cache, tmp_path, capsys):
    assert main(["show", str(cache), "--sample", "not-a-token", "--out", str(tmp_path / "c.png")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("bevkd show:") and "not-a-token" in err and str(cache) in err


def test_png_defaults_to_the_dataset_the_cache_was_built_on(synth_dataroot, tiny_teacher, tmp_path, capsys):
    from kd_cache import write_teacher_cache

    from storage.nuscenes_reader import NuScenesReader

    train = NuScenesReader(synth_dataroot, version="v1.0-mini", split="mini_train")  # not show's old default
    cache = write_teacher_cache(tmp_path / "cache", train, tiny_teacher, image_size=(176, 64))
    token = train.sample_tokens[-1]
    out = tmp_path / "train.png"
    assert main(["show", str(cache), "--dataroot", str(synth_dataroot), "--sample", token, "--out", str(out)]) == 0
    assert f"GT boxes {len(train.read(token).gt_boxes)}," in capsys.readouterr().out  # GT drawn: the dataset was read
    assert out.stat().st_size > 20_000

    args = ["show", str(cache), "--dataroot", str(synth_dataroot), "--sample", token, "--out", str(tmp_path / "v.png")]
    assert main([*args, "--split", "mini_val"]) == 2  # an explicit --split still wins
    err = _one_line(capsys.readouterr().err)
    assert token in err and "nuscenes:v1.0-mini:mini_val" in err and "nuscenes:v1.0-mini:mini_train" in err


def test_pca_rgb_spreads_the_occupied_cells_and_blacks_out_the_empty_ones():
    from pipeline.show import pca_rgb

    rng = np.random.default_rng(0)
    c, h, w = 16, 32, 32
    feature = np.zeros((c, h, w), np.float32)  # a sparse LiDAR-like map: 91% of the cells empty
    occupied = np.zeros((h, w), bool)
    centres = rng.normal(size=(3, c)) + 3.0
    for centre, (r0, c0) in zip(centres, [(4, 4), (12, 20), (24, 8)], strict=True):  # three kinds of occupied cell
        feature[:, r0:r0 + 5, c0:c0 + 6] = centre[:, None, None] + 0.1 * rng.normal(size=(c, 5, 6))
        occupied[r0:r0 + 5, c0:c0 + 6] = True
    feature[:, 30, 30] = 40 * centres[0]  # one outlier cell
    occupied[30, 30] = True

    rgb = pca_rgb(feature)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.float64 and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[~occupied] == 0).all()  # empty cells black (fit on all cells they took one mid colour)
    # each channel spreads over the occupied cells (min-max scaling with the outlier: red std 0.10)
    assert rgb[occupied].std(axis=0).min() > 0.3, rgb[occupied].std(axis=0)
    assert (pca_rgb(np.zeros((4, 8, 8), np.float32)) == 0).all()  # nothing occupied: no error, all black
