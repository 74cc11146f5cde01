"""BEVFusion-style teacher: LSS geometry, splat, forward on the real keyframe and generated data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from storage.grid import DEMO_GRID
from projection import project_points
from storage.sample import CameraInfo
from teachers.config import config_to_dict
from teachers.fusion import BEVFusionTeacher, fusion_config_from_dict, fusion_tiny
from teachers.input import TeacherInput
from teachers.lss import frustum_points, splat
from teachers.cache_row import view_masks

IMAGE_SIZE = (352, 192)  # divisible by the feature stride 16


@pytest.fixture(scope="module")
def keyframe_batch(keyframe_info):
    from storage.mmdet3d_reader import Mmdet3dInfoReader

    return TeacherInput.from_samples([Mmdet3dInfoReader(keyframe_info).read(0)], image_size=IMAGE_SIZE)


def test_frustum_points_project_back_to_their_pixels(keyframe_batch):
    k, l2c = keyframe_batch.cam_intrinsic[0], keyframe_batch.lidar_from_cam[0]
    depths = torch.tensor([2.0, 10.0, 40.0])
    pts = frustum_points(k[None], l2c[None], (4, 7), 16, depths)[0]  # (6, 3, 4, 7, 3)
    for cam in (0, 3):
        info = CameraInfo(name="x", image_path="", cam_intrinsic=k[cam].double().numpy(), ego_from_cam=np.eye(4),
                          lidar_from_cam=l2c[cam].double().numpy(), timestamp_us=0, image_size=IMAGE_SIZE)
        proj = project_points(pts[cam].reshape(-1, 3).double().numpy(), info)
        assert len(proj.index) == 3 * 4 * 7
        d, i, j = np.unravel_index(proj.index, (3, 4, 7))
        np.testing.assert_allclose(proj.uv[:, 0], (j + 0.5) * 16, atol=1e-2)
        np.testing.assert_allclose(proj.uv[:, 1], (i + 0.5) * 16, atol=1e-2)
        np.testing.assert_allclose(proj.depth, depths.numpy()[d], rtol=1e-4)


def test_splat_sums_features_into_cells():
    grid = DEMO_GRID.with_stride(8)
    pts = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.5, 0.0], [-30.0, 10.0, 0.0], [0.0, 0.0, 50.0]])  # last: above range
    feats = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    bev = splat(feats.view(1, 1, 4, 1, 1, 1), pts.view(1, 1, 4, 1, 1, 3), grid)
    assert float(bev.sum()) == 7.0
    r, c = grid.metric_to_cell(np.array([[1.0, 1.0]]))[0]
    assert float(bev[0, 0, r, c]) == 3.0  # the first two points share a 3.2 m cell


def test_fusion_forward_on_real_keyframe(keyframe_batch):
    torch.manual_seed(0)
    cfg = fusion_tiny()
    assert fusion_config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    model = BEVFusionTeacher(cfg).eval()
    with torch.no_grad():
        out = model(keyframe_batch)
    h, w = cfg.out_grid.bev_shape
    assert out.bev_grid.same_as(DEMO_GRID.with_stride(8))
    for name, c in (("camera_bev", cfg.camera.bev_channels), ("lidar_bev", cfg.lidar.bev_in_channels),
                    ("fused_bev", cfg.fused_channels)):
        assert out.bev_features[name].shape == (1, c, h, w)
    d = cfg.camera.num_depth_bins
    assert out.depth_probs.shape == (1, 6, d, IMAGE_SIZE[1] // 16, IMAGE_SIZE[0] // 16)
    torch.testing.assert_close(out.depth_probs.sum(2), torch.ones(1, 6, IMAGE_SIZE[1] // 16, IMAGE_SIZE[0] // 16))
    # camera features land only inside the cameras' frusta (dilated by one cell)
    vm = view_masks(keyframe_batch.cam_intrinsic[0].double().numpy(), keyframe_batch.lidar_from_cam[0].double().numpy(),
                    IMAGE_SIZE, cfg.out_grid, max_depth=61.0).any(0)
    near = torch.nn.functional.max_pool2d(torch.from_numpy(vm)[None, None].float(), 3, 1, 1)[0, 0].bool()
    active = out.bev_features["camera_bev"][0].abs().sum(0) > 0
    assert active.sum() > 0.3 * vm.sum() and not (active & ~near).any()


def test_fusion_forward_and_loss_on_generated_data(tmp_path):
    from storage.nuscenes_reader import NuScenesReader
    from storage.synth import SynthConfig, generate_dataset

    generate_dataset(SynthConfig(num_scenes=1, samples_per_scene=1, image_size=(176, 99), azimuth_steps=360), tmp_path)
    sample = NuScenesReader(str(tmp_path), version="v1.0-mini", split="mini_val").read(0)
    batch = TeacherInput.from_samples([sample], image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    model = BEVFusionTeacher(fusion_tiny())
    losses = model.loss(batch)
    losses.total.backward()
    assert torch.isfinite(losses.total)
    assert float(model.camera_branch.depthnet.weight.grad.abs().sum()) > 0  # the camera branch learns too
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert {"camera_bev", "lidar_bev", "fused_bev"} <= set(out.bev_features)
    assert all(v.shape[-2:] == (32, 32) for v in out.bev_features.values())
