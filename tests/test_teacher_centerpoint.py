"""CenterPoint LiDAR teacher: voxelisation, sparse encoder, BEV maps on the declared grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from storage.grid import NUSCENES_GRID
from teachers.centerpoint import CenterPointTeacher, sample_bev
from teachers.config import (centerpoint_config_from_dict, centerpoint_tiny, centerpoint_voxel0075, config_to_dict)
from teachers.input import TeacherInput
from teachers.voxelize import voxelize


def test_voxelize_means_and_caps():
    cfg = centerpoint_tiny()
    g = cfg.grid
    # 15 points in one voxel (cell centre + jitter), 1 point in another, 1 outside the range
    c = torch.tensor([0.2, 0.2, 0.4])  # a voxel centre of DEMO_GRID
    a = torch.cat([c + 0.05 * torch.randn(15, 3).clamp(-1, 1), torch.arange(15.0)[:, None], torch.zeros(15, 1)], 1)
    b = torch.tensor([[10.1, -3.9, -0.9, 7.0, 1.0], [100.0, 0.0, 0.0, 0.0, 0.0]])
    pts = torch.cat([a, b])
    dyn = voxelize([pts], g, mode="dynamic")
    hard = voxelize([pts], g, mode="hard", max_points_per_voxel=10)
    assert len(dyn.features) == 2 and dyn.num_points.tolist() in ([15, 1], [1, 15])
    i15 = int(torch.argmax(dyn.num_points))
    torch.testing.assert_close(dyn.features[i15], a.mean(0))
    j10 = int(torch.argmax(hard.num_points))
    assert hard.num_points[j10] == 10
    torch.testing.assert_close(hard.features[j10], a[:10].mean(0))  # first 10 kept
    # coords [batch, z, y, x] of the lone point
    k = 1 - i15
    nx, ny, nz = g.grid_size
    vx, vy, vz = g.voxel_size
    expect = [0, int((-0.9 + 5.0) // vz), int((-3.9 + 51.2) // vy), int((10.1 + 51.2) // vx)]
    assert dyn.coords[k].tolist() == expect
    capped = voxelize([pts], g, mode="hard", max_voxels=1)
    assert len(capped.features) == 1 and capped.num_points[0] == 10  # the voxel seen first is kept


def test_configs_derive_mmdet3d_shapes_and_round_trip_json():
    nus = centerpoint_voxel0075()
    assert nus.grid.same_as(NUSCENES_GRID)
    assert nus.sparse_shape == (41, 1440, 1440)
    assert nus.bev_in_channels == 256 and nus.out_stride == 8 and nus.out_grid.bev_shape == (180, 180)
    back = centerpoint_config_from_dict(json.loads(json.dumps(config_to_dict(nus))))
    assert back == nus
    model = CenterPointTeacher(nus)
    sd = model.state_dict()
    assert sd["pts_middle_encoder.conv_input.0.weight"].shape == (16, 3, 3, 3, 5)  # spconv2 (out, k, k, k, in)
    assert sd["pts_backbone.blocks.1.0.weight"].shape == (256, 128, 3, 3)
    assert sd["pts_neck.deblocks.1.0.weight"].shape == (256, 256, 2, 2)
    assert sd["pts_bbox_head.task_heads.5.heatmap.1.weight"].shape == (2, 64, 3, 3)


@pytest.fixture(scope="module")
def keyframe_sample(keyframe_info):
    from storage.mmdet3d_reader import Mmdet3dInfoReader

    return Mmdet3dInfoReader(keyframe_info).read(0)


def test_teacher_on_real_keyframe(keyframe_sample):
    torch.manual_seed(0)
    cfg = centerpoint_tiny()
    model = CenterPointTeacher(cfg).eval()
    batch = TeacherInput.from_samples([keyframe_sample])
    with torch.no_grad():
        out = model(batch)
    h, w = cfg.out_grid.bev_shape
    assert out.bev_grid.same_as(cfg.out_grid)
    assert out.bev_features["lidar_bev"].shape == (1, cfg.bev_in_channels, h, w)
    assert out.bev_features["neck"].shape == (1, sum(cfg.neck.out_channels), h, w)
    assert out.heatmap.shape == (1, 10, h, w) and float(out.heatmap.min()) >= 0 and float(out.heatmap.max()) <= 1
    # the encoder map is zero where no LiDAR point lies within the sparse convs' reach (~2 cells)
    occupied = np.zeros((h, w), bool)
    cells = cfg.out_grid.metric_to_cell(keyframe_sample.points[cfg.grid.in_range(keyframe_sample.points)])
    occupied[cells[:, 0], cells[:, 1]] = True
    near = torch.nn.functional.max_pool2d(torch.from_numpy(occupied)[None, None].float(), 5, 1, 2)[0, 0].bool()
    active = out.bev_features["lidar_bev"][0].abs().sum(0) > 0
    assert active.any() and not (active & ~near).any()
    # instance features are the neck sampled at the decoded centres
    m = len(out.boxes[0])
    assert out.instance_features[0].shape == (m, sum(cfg.neck.out_channels)) and m > 0
    rc = cfg.out_grid.metric_to_cell(out.boxes[0][:1, :2].numpy())[0]
    centre = torch.from_numpy(cfg.out_grid.cell_to_metric(rc[None])).float()
    at_centre = sample_bev(out.bev_features["neck"], cfg.out_grid, [centre])[0][0]
    torch.testing.assert_close(at_centre, out.bev_features["neck"][0, :, rc[0], rc[1]])
    st = out.row(0)
    assert st.heatmap.shape == (10, h, w) and st.boxes.shape == (m, 9)


def test_teacher_loss_backpropagates_on_keyframe(keyframe_sample):
    torch.manual_seed(0)
    model = CenterPointTeacher(centerpoint_tiny()).train()
    batch = TeacherInput.from_samples([keyframe_sample])
    losses = model.loss(batch)
    losses.total.backward()
    g = model.pts_middle_encoder.conv_input[0].weight.grad
    assert g is not None and float(g.abs().sum()) > 0
    assert torch.isfinite(losses.total)


def test_sparse_to_dense_equals_spconv_dense_without_its_deprecated_indexing():
    import warnings

    import spconv.pytorch as spconv

    from teachers.sparse_encoder import sparse_to_dense

    g = torch.Generator().manual_seed(0)
    shape, batch = (3, 5, 7), 2
    cells = torch.randperm(batch * 3 * 5 * 7, generator=g)[:40]
    coords = torch.stack([cells // 105, cells // 35 % 3, cells // 7 % 5, cells % 7], dim=1).int()
    x = spconv.SparseConvTensor(torch.randn(40, 4, generator=g), coords, list(shape), batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # spconv's own list indexing, the reason for sparse_to_dense
        reference = x.dense()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = sparse_to_dense(x)
    assert ours.shape == (batch, 4, *shape)
    assert torch.equal(ours, reference) and int((ours != 0).any(dim=1).sum()) == 40
