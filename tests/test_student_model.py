"""The camera-only student: lift-splat geometry by hand, shapes, forward+backward, and an
overfit sanity check (the loss falls on a fixed batch)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from storage.grid import BEVGrid
from storage.bev_augment import bev_augmentation_matrix
from student.augment import image_augmentation_matrix
from student.config import StudentConfig
from student.losses import DistillationConfig, DistillationLoss, LossWeights, TeacherShapes, TeacherTargets
from student.model import StudentBatch, StudentModel
from teachers.lss import frustum_points, voxel_pool
from teachers.cache_row import lidar_depth_maps


def ring_rig(b: int, k_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Six cameras at 1.5 m, yaw 0, 60, ... deg; intrinsics for 176x64 images (``k_scale`` rescales)."""
    k = torch.tensor([[100.0, 0.0, 88.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]])
    k[:2] *= k_scale
    lfc = torch.zeros(6, 4, 4)
    for i in range(6):
        yaw = i * math.pi / 3
        # optical axis (cam +z) -> (cos, sin, 0); cam +x (right) -> (sin, -cos, 0); cam +y (down) -> -z
        lfc[i, :3, :3] = torch.tensor([[math.sin(yaw), 0.0, math.cos(yaw)], [-math.cos(yaw), 0.0, math.sin(yaw)],
                                       [0.0, -1.0, 0.0]])
        lfc[i, 2, 3], lfc[i, 3, 3] = 1.5, 1.0
    return k.expand(b, 6, 3, 3).clone(), lfc.expand(b, 6, 4, 4).clone()


def tiny_batch(b: int = 2, seed: int = 0) -> StudentBatch:
    g = torch.Generator().manual_seed(seed)
    k, lfc = ring_rig(b)
    boxes = [torch.tensor([[12.0, 3.0, 0.0, 4.5, 1.9, 1.6, 0.2, 1.0, 0.0],
                           [-20.0, 15.0, 0.0, 4.0, 1.8, 1.5, 1.0, 0, 0]]),
             torch.tensor([[5.0, -18.0, 0.0, 10.0, 2.8, 3.0, -0.5, 0.0, 0.0]])][:b]
    labels = [torch.tensor([0, 0]), torch.tensor([3])][:b]
    return StudentBatch(images=torch.randn(b, 6, 3, 64, 176, generator=g), cam_intrinsic=k, lidar_from_cam=lfc,
                        img_aug=torch.eye(3).expand(b, 6, 3, 3).clone(), gt_boxes=boxes, gt_labels=labels,
                        sample_tokens=tuple(f"s{i}" for i in range(b)))


def test_frustum_centre_ray_by_hand():
    k, lfc = ring_rig(1)
    k[0, 0, 0, 2], k[0, 0, 1, 2] = 8.0 + 16 * 5, 8.0 + 16 * 2  # principal point on feature cell (2, 5)
    pts = frustum_points(k, lfc, (4, 11), 16, torch.tensor([10.0, 20.0]), img_aug=torch.eye(3).expand(1, 6, 3, 3))
    assert pts.shape == (1, 6, 2, 4, 11, 3)
    assert pts[0, 0, 1, 2, 5].tolist() == pytest.approx([20.0, 0.0, 1.5], abs=1e-5)  # CAM_FRONT looks along +x
    c, s = math.cos(math.pi / 3), math.sin(math.pi / 3)
    # camera 1, feature cell (0, 0): pixel (8, 8) -> ray ((8-88)/100, (8-32)/100, 1) in the camera frame
    ray = np.array([(8 - 88) / 100, (8 - 32) / 100, 1.0]) * 10.0
    expected = np.array([[s, 0, c], [-c, 0, s], [0, -1, 0]]) @ ray + [0, 0, 1.5]
    assert pts[0, 1, 0, 0, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-4)


def test_frustum_accounts_for_image_resize_crop_flip():
    k, lfc = ring_rig(1)
    depths = torch.tensor([5.0, 30.0])
    a = torch.from_numpy(image_augmentation_matrix(resize=0.5, crop=(0.0, 0.0))).float()
    # a half-size image with img_aug = resize(0.5) sees the same rays as a camera with halved intrinsics
    aug = frustum_points(k, lfc, (2, 5), 16, depths, img_aug=a.expand(1, 6, 3, 3))
    direct = frustum_points(a @ k, lfc, (2, 5), 16, depths, img_aug=torch.eye(3).expand(1, 6, 3, 3))
    assert torch.allclose(aug, direct, atol=1e-4)
    f = torch.from_numpy(image_augmentation_matrix(flip=True, out_width=176)).float()
    flipped = frustum_points(k, lfc, (4, 11), 16, depths, img_aug=f.expand(1, 6, 3, 3))
    plain = frustum_points(k, lfc, (4, 11), 16, depths, img_aug=torch.eye(3).expand(1, 6, 3, 3))
    assert torch.allclose(flipped, plain.flip(4), atol=1e-4)  # flipped columns see mirrored rays


def test_frustum_applies_the_bev_augmentation():
    k, lfc = ring_rig(1)
    a = bev_augmentation_matrix(rotation=0.4, scale=1.05, flip_y=True)
    eye = torch.eye(3).expand(1, 6, 3, 3)
    plain = frustum_points(k, lfc, (4, 11), 16, torch.tensor([7.0]), img_aug=eye)
    moved = frustum_points(k, lfc, (4, 11), 16, torch.tensor([7.0]), img_aug=eye,
                           bev_aug=torch.from_numpy(a)[None].float())
    expected = plain @ torch.from_numpy(a[:3, :3]).float().T + torch.from_numpy(a[:3, 3]).float()
    assert torch.allclose(moved, expected, atol=1e-4)


def test_voxel_pool_by_hand():
    grid = BEVGrid(point_cloud_range=(0.0, 0.0, -1.0, 4.0, 4.0, 1.0), voxel_size=(1.0, 1.0, 2.0))
    pts = torch.tensor([[1.5, 2.5, 0.0], [1.2, 2.9, 0.5], [3.5, 0.5, 0.0], [3.5, 0.5, 1.5]]).reshape(1, 1, 4, 1, 1, 3)
    probs = torch.tensor([0.5, 0.25, 1.0, 1.0]).reshape(1, 1, 4, 1, 1)
    ctx = torch.tensor([2.0, -4.0]).reshape(1, 1, 2, 1, 1)
    bev = voxel_pool(pts, probs, ctx, grid)
    assert bev.shape == (1, 2, 4, 4)
    assert bev[0, :, 2, 1].tolist() == [1.5, -3.0]  # (0.5 + 0.25) * ctx
    assert bev[0, :, 0, 3].tolist() == [2.0, -4.0]  # the z = 1.5 point is above the range
    assert float(bev.abs().sum()) == pytest.approx(1.5 + 3.0 + 2.0 + 4.0)


@pytest.mark.parametrize("simdistill", [False, True])
def test_forward_shapes_and_backward(simdistill):
    torch.manual_seed(0)
    cfg = StudentConfig.tiny(simdistill=simdistill)
    model = StudentModel(cfg)
    out = model(tiny_batch())
    d, (h, w) = cfg.depth.num_depth_bins, cfg.feature_size
    assert out.bev_feature.shape == (2, 32, 32, 32) and out.camera_bev.shape == (2, 16, 32, 32)
    assert out.depth_probs.shape == (2, 6, d, h, w)
    assert torch.allclose(out.depth_probs.sum(2), torch.ones(2, 6, h, w), atol=1e-5)
    assert out.heatmap_logits().shape == (2, 10, 32, 32)
    assert (out.camera_bev.abs().sum(1) > 0).float().mean() > 0.3  # the six cameras cover the grid
    assert (out.fused_bev is not None) == simdistill and (out.sim_lidar_bev is not None) == simdistill
    out.bev_feature.sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0  # gradients reach the image backbone through the splat
    assert model.depth_net.depth[-1].weight.grad.abs().sum() > 0


def test_predict_decodes_boxes_on_the_student_grid():
    torch.manual_seed(0)
    model = StudentModel(StudentConfig.tiny()).eval()
    boxes, scores, labels = model.predict(tiny_batch(), score_threshold=0.0, max_boxes=7)
    assert len(boxes) == 2 and boxes[0].shape == (7, 9) and scores[0].shape == (7,) and labels[0].dtype == torch.int64
    r = StudentConfig.tiny().bev_grid.point_cloud_range
    assert (boxes[0][:, 0] >= r[0]).all() and (boxes[0][:, 0] <= r[3]).all()


def test_config_round_trips_through_json_and_rejects_bad_inputs():
    cfg = StudentConfig.tiny(simdistill=True)
    assert StudentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="divisible"):
        StudentConfig(image_hw=(60, 176))
    batch = tiny_batch(1)
    batch.images = batch.images[..., :32, :]
    with pytest.raises(ValueError, match="do not match config"):
        StudentModel(StudentConfig.tiny())(batch)


def _lidar_depth(batch: StudentBatch, stride: int = 16) -> torch.Tensor:
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-45, 45, 20000), rng.uniform(-45, 45, 20000), rng.uniform(-1.5, 1.0, 20000)], 1)
    maps = [lidar_depth_maps(pts, batch.cam_intrinsic[i].numpy(), batch.lidar_from_cam[i].numpy(), (176, 64), stride)
            for i in range(batch.batch_size)]
    return torch.from_numpy(np.stack(maps))


@pytest.mark.slow
def test_overfit_a_fixed_batch():
    torch.manual_seed(0)
    cfg = StudentConfig.tiny()
    model = StudentModel(cfg)
    batch = tiny_batch()
    spec = TeacherShapes(bev_grid=cfg.bev_grid, bev_channels={"neck": 24})
    targets = TeacherTargets(bev_grid=cfg.bev_grid, bev_features={"neck": torch.randn(2, 24, 32, 32)},
                             heatmap=torch.rand(2, 10, 32, 32) * 0.2, lidar_depth=_lidar_depth(batch))
    weights = LossWeights(detection=1.0, depth_bce=3.0, dense_feature=1.0, heatmap=1.0)
    loss_fn = DistillationLoss.for_student(DistillationConfig(weights=weights),
                                           model, spec)
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=3e-3)
    history = []
    for _ in range(12):
        losses = loss_fn(model(batch), targets, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels)
        opt.zero_grad()
        losses.total.backward()
        opt.step()
        history.append(losses.as_floats())
    assert set(history[0]) == {"detection_heatmap", "detection_regression", "depth_bce", "dense_feature", "heatmap",
                               "total"}
    assert history[-1]["total"] < 0.6 * history[0]["total"], [h["total"] for h in history]
    for name in ("detection_heatmap", "depth_bce", "dense_feature"):
        assert history[-1][name] < history[0][name], name
