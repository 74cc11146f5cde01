"""The two dataset readers agree: nuScenes devkit tables -> Samples -> mmdet3d info -> Samples.

A generated nuScenes-format dataroot (``synth_dataroot``) is read with the devkit-based
:class:`NuScenesReader`; its Samples are written as an mmdet3d info_version 1.1 pickle and read
back with :class:`Mmdet3dInfoReader`. Every field of every sample must match.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from storage.mmdet3d_reader import MMDET3D_NUSCENES_CLASSES, Mmdet3dInfoReader, write_mmdet3d_infos
from storage.nuscenes_reader import NuScenesReader
from storage.safe_pickle import safe_load
from storage.sample import NUSCENES_CLASSES


@pytest.fixture(scope="module", params=["mini_val", "mini_train"])
def nus_samples(request, synth_dataroot):
    reader = NuScenesReader(synth_dataroot, version="v1.0-mini", split=request.param)
    return reader, [reader.read(i) for i in range(len(reader))]


def test_nuscenes_samples_survive_the_mmdet3d_round_trip(nus_samples, synth_dataroot, tmp_path):
    reader, samples = nus_samples
    assert len(samples) >= 3
    assert sum(len(s.gt_boxes) for s in samples) > 0 and any((s.num_lidar_pts > 0).any() for s in samples)
    assert all(s.scene != "unknown" and all(s.instance_tokens) for s in samples)
    info = write_mmdet3d_infos(samples, tmp_path / "infos" / "nuscenes_infos.pkl", data_root=synth_dataroot,
                               version="v1.0-mini")
    mm = Mmdet3dInfoReader(info, data_root=synth_dataroot)
    assert mm.sample_tokens == reader.sample_tokens
    for s in samples:
        back = mm.read(s.sample_token)
        assert back.differences(s) == [], s.sample_token
        assert np.array_equal(back.points, s.points)
    # the file really is mmdet3d-shaped: relative paths, mmdet3d label ids
    data = safe_load(info)
    first = data["data_list"][0]
    assert first["lidar_points"]["lidar_path"].startswith("samples/LIDAR_TOP/")
    names = [MMDET3D_NUSCENES_CLASSES[i["bbox_label_3d"]] for i in first["instances"]]
    assert names == [NUSCENES_CLASSES[i] for i in samples[0].gt_labels]


def test_round_trip_with_image_sizes_from_the_jpeg_headers(nus_samples, synth_dataroot, tmp_path):
    """Infos made by mmdet3d carry no width/height: the reader reads the JPEG headers instead."""
    _, samples = nus_samples
    info = write_mmdet3d_infos(samples, tmp_path / "infos.pkl", data_root=synth_dataroot)
    data = safe_load(info)
    for d in data["data_list"]:
        for img in d["images"].values():
            del img["width"], img["height"]
    with open(info, "wb") as f:
        pickle.dump(data, f)
    mm = Mmdet3dInfoReader(info, data_root=synth_dataroot)
    for s in samples:
        back = mm.read(s.sample_token)
        assert back.differences(s) == [], s.sample_token
        assert back.camera("CAM_FRONT").image_size == s.camera("CAM_FRONT").image_size == (160, 90)


def test_a_changed_sample_is_detected(nus_samples, synth_dataroot, tmp_path):
    _, samples = nus_samples
    s = next(x for x in samples if len(x.gt_boxes))
    labels = s.gt_labels.copy()
    labels[0] = (labels[0] + 1) % len(NUSCENES_CLASSES)
    import dataclasses

    changed = dataclasses.replace(s, gt_labels=labels)
    info = write_mmdet3d_infos([changed], tmp_path / "one.pkl", data_root=synth_dataroot)
    assert Mmdet3dInfoReader(info, data_root=synth_dataroot).read(0).differences(s) == ["gt_labels"]
