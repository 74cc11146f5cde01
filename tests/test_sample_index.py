"""The sample index: Samples read from it equal the source reader's, field by field (generated
nuScenes data through the devkit, the real keyframe through its mmdet3d info), and the
tables-only generator that makes trainval-sized tables for index-scale tests."""

from __future__ import annotations

import os
import pickle
from dataclasses import fields

import numpy as np
import pytest

from pipeline.cli import main
from storage.errors import SampleError
from storage.mmdet3d_reader import Mmdet3dInfoReader, write_mmdet3d_infos
from storage.nuscenes_reader import NuScenesReader
from storage.sample import Sample
from storage.sample_index import IndexReader, build_sample_index
from storage.synth import SynthConfig, SynthSummary, generate_dataset
from storage.synth.scene import scene_names


def assert_same_sample(a: Sample, b: Sample) -> None:
    """Every field equal, arrays bit for bit (same dtype and shape), cameras field by field."""
    for f in fields(Sample):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name == "cameras":
            assert [c.name for c in va] == [c.name for c in vb]
            for ca, cb in zip(va, vb, strict=True):
                for g in fields(ca):
                    x, y = getattr(ca, g.name), getattr(cb, g.name)
                    if isinstance(x, np.ndarray):
                        assert x.dtype == y.dtype and np.array_equal(x, y), f"{ca.name}.{g.name}"
                    else:
                        assert x == y and type(x) is type(y), f"{ca.name}.{g.name}"
        elif isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and va.shape == vb.shape and np.array_equal(va, vb), f.name
        else:
            assert va == vb and type(va) is type(vb), f.name
    assert not a.differences(b, atol=0)


def check_index(reader, path) -> IndexReader:
    assert build_sample_index(reader, path) == len(reader)
    index = IndexReader(path)
    assert index.dataset_id == reader.dataset_id and len(index) == len(reader)
    assert list(index.sample_tokens) == list(reader.sample_tokens)
    for i, token in enumerate(reader.sample_tokens):
        expected = reader.read(i)
        assert_same_sample(expected, index.read(i))
        assert_same_sample(expected, index.read(token))
    return index


@pytest.mark.parametrize("split,sweeps", [("mini_val", 0), ("mini_val", 1), ("mini_train", 1)])
def test_index_equals_devkit_reader(synth_dataroot, tmp_path, split, sweeps):
    reader = NuScenesReader(synth_dataroot, version="v1.0-mini", split=split, sweeps=sweeps)
    index = check_index(reader, tmp_path / "index" / "samples.parquet")
    if sweeps:
        assert index.read(1).points.shape[0] > reader.read(1).points.shape[0] // 2 > 0
    shipped = pickle.dumps(index)
    assert len(shipped) < 500  # workers get the path, not tables
    assert_same_sample(reader.read(2), pickle.loads(shipped).read(2))


def test_index_equals_devkit_reader_on_unlabelled_frames(tmp_path):
    root = generate_dataset(SynthConfig(num_scenes=2, samples_per_scene=2, seed=5, image_size=(32, 18),
                                        azimuth_steps=64, camera_sweeps_per_sample=1), tmp_path / "nuscenes")
    reader = NuScenesReader(root, version="v1.0-mini", split="mini_val", frames="all")
    index = check_index(reader, tmp_path / "samples.parquet")
    assert [index.read(i).labelled for i in range(len(index))] == [True, False, True] * 2  # 2 mini_val scenes


def test_index_equals_real_keyframe_reader(keyframe_info, tmp_path):
    reader = Mmdet3dInfoReader(keyframe_info)
    index = check_index(reader, tmp_path / "samples.parquet")
    sample = index.read(0)
    assert len(sample.gt_boxes) == 68 and sample.points.shape == (34688, 5)


def test_a_sample_the_source_cannot_resolve_fails_alone(synth_val_reader, tmp_path):
    samples = [synth_val_reader.read(i) for i in range(3)]
    info = write_mmdet3d_infos(samples, tmp_path / "infos.pkl", data_root=synth_val_reader.dataroot)
    reader = Mmdet3dInfoReader(info, data_root=synth_val_reader.dataroot)
    missing = samples[1].camera("CAM_BACK").image_path
    hidden = missing + ".hidden"
    os.rename(missing, hidden)
    try:
        with pytest.raises(SampleError) as source:
            reader.read(1)
        build_sample_index(reader, tmp_path / "samples.parquet")
    finally:
        os.rename(hidden, missing)
    index = IndexReader(tmp_path / "samples.parquet")
    with pytest.raises(SampleError) as indexed:
        index.read(1)
    assert str(indexed.value) == str(source.value) and missing in str(indexed.value)
    assert_same_sample(reader.read(2), index.read(2))


def test_tables_only_generator_writes_trainval_tables_the_devkit_reads(tmp_path, capsys):
    names = scene_names(SynthConfig(version="v1.0-trainval", num_scenes=850, tables_only=True))
    assert len(set(n for n, _ in names)) == 850 and sum(s == "val" for _, s in names) == 150
    out = tmp_path / "tables"
    assert main(["synth", "--out", str(out), "--version", "v1.0-trainval", "--scenes", "3",
                 "--samples-per-scene", "4", "--tables-only", "--image-hw", "36", "64"]) == 0
    assert "tables only" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["maps", "synth_summary.json", "v1.0-trainval"]
    assert SynthSummary.load(out).config.image_size == (64, 36)
    reader = NuScenesReader(out, version="v1.0-trainval", split="val")
    assert len(reader) == 8
    build_sample_index(reader, tmp_path / "samples.parquet")
    index = IndexReader(tmp_path / "samples.parquet")
    for i in range(len(reader)):
        ann, sample = reader.annotations(i), index.read_without_points(i)
        assert np.array_equal(ann.gt_boxes, sample.gt_boxes) and np.array_equal(ann.num_lidar_pts, sample.num_lidar_pts)
        assert sample.cameras[0].image_size == (64, 36) and sample.points.shape == (0, 5)
    pts = np.concatenate([index.read_without_points(i).num_lidar_pts for i in range(len(index))])
    assert (pts > 0).mean() > 0.5 and pts.max() > 50  # estimated hits: near boxes get many
    with pytest.raises(SampleError, match="LiDAR points missing"):
        index.read(0)


def test_synth_image_size_flag_is_a_deprecated_alias(tmp_path, capsys):
    args = ["synth", "--version", "v1.0-trainval", "--scenes", "1", "--samples-per-scene", "1", "--tables-only"]
    assert main([*args, "--out", str(tmp_path / "a"), "--image-size", "64", "36"]) == 0
    err = capsys.readouterr().err.splitlines()  # then the progress bar
    assert err[0] == "bevkd synth: --image-size W H is deprecated; use --image-hw 36 64"
    assert sum("deprecated" in line for line in err) == 1
    assert SynthSummary.load(tmp_path / "a").config.image_size == (64, 36)
    assert main([*args, "--out", str(tmp_path / "b"), "--image-size", "64", "36", "--image-hw", "36", "64"]) == 2


def test_a_malformed_calibration_fails_only_its_sample(synth_val_reader, tmp_path):
    """A camera intrinsic of 2 values instead of 3x3 (a broken calibration in the source): the
    index is still built, that sample raises one SampleError naming the field, the others read."""
    import dataclasses

    samples = [synth_val_reader.read(i) for i in range(3)]
    broken_cam = dataclasses.replace(samples[1].cameras[0], cam_intrinsic=np.array([1266.4, 816.3]))
    samples[1] = dataclasses.replace(samples[1], cameras=(broken_cam, *samples[1].cameras[1:]))
    info = write_mmdet3d_infos(samples, tmp_path / "infos.pkl", data_root=synth_val_reader.dataroot)
    reader = Mmdet3dInfoReader(info, data_root=synth_val_reader.dataroot)
    assert build_sample_index(reader, tmp_path / "samples.parquet") == 3
    index = IndexReader(tmp_path / "samples.parquet")
    with pytest.raises(SampleError) as err:
        index.read(1)
    assert samples[1].sample_token in str(err.value) and "not 3x3 numbers" in str(err.value)
    assert err.value.field == "images.CAM_FRONT.cam2img"  # the info file's own field
    assert_same_sample(reader.read(2), index.read(2))
    assert_same_sample(reader.read(0), index.read(0))


def test_threads_sharing_one_index_reader_get_their_own_samples(synth_val_reader, tmp_path):
    """The cache job's prefetch threads share one IndexReader: samples from different row groups
    read concurrently must each be the right sample (the cached row group is per read)."""
    from concurrent.futures import ThreadPoolExecutor

    import storage.sample_index as si

    path = tmp_path / "samples.parquet"
    old = si.ROW_GROUP_SAMPLES
    si.ROW_GROUP_SAMPLES = 1  # one sample per row group: every read swaps the cached group
    try:
        build_sample_index(synth_val_reader, path)
    finally:
        si.ROW_GROUP_SAMPLES = old
    index = IndexReader(path)
    order = [i % len(index) for i in range(200)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: index.read_without_points(i).sample_token, order))
    assert got == [index.sample_tokens[i] for i in order]
