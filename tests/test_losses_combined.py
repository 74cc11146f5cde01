"""DistillationLoss: every term on at once, cached targets = live-teacher targets, typed breakdown,
missing inputs named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storage.grid import DEMO_GRID
from student.config import StudentConfig
from student.losses import DistillationConfig, DistillationLoss, LossWeights, TeacherShapes, TeacherTargets
from student.model import StudentBatch, StudentModel
from teachers.output import TeacherOutput

ALL = LossWeights(detection=1.0, depth_bce=3.0, dense_feature=1.0, lgkd_feature=1.0, depth_distill=0.5, heatmap=1.0,
                  keypoint_response=1.0, instance=0.5, fusion_camera=1.0, fusion_lidar=1.0, fusion_fused=1.0,
                  adversarial=0.1)
CHANNELS = {"neck": 24, "camera_bev": 12, "lidar_bev": 20, "fused_bev": 24}


def _batch(cfg: StudentConfig) -> StudentBatch:
    import math
    k = torch.tensor([[100.0, 0.0, 88.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]]).expand(2, 6, 3, 3)
    lfc = torch.zeros(2, 6, 4, 4)
    for i in range(6):
        y = i * math.pi / 3
        lfc[:, i, :3, :3] = torch.tensor([[math.sin(y), 0, math.cos(y)], [-math.cos(y), 0, math.sin(y)], [0, -1.0, 0]])
        lfc[:, i, 2, 3], lfc[:, i, 3, 3] = 1.5, 1.0
    boxes = [torch.tensor([[12.0, 3.0, 0.0, 4.5, 1.9, 1.6, 0.2, 1.0, 0.0]]),
             torch.tensor([[5.0, -18.0, 0.0, 10.0, 2.8, 3.0, -0.5, 0.0, 0.0]])]
    return StudentBatch(images=torch.randn(2, 6, 3, *cfg.image_hw, generator=torch.Generator().manual_seed(0)),
                        cam_intrinsic=k.clone(), lidar_from_cam=lfc, img_aug=torch.eye(3).expand(2, 6, 3, 3).clone(),
                        gt_boxes=boxes, gt_labels=[torch.tensor([0]), torch.tensor([3])])


def _teacher(grid, d: int, hw: tuple[int, int]) -> tuple[TeacherOutput, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    h, w = grid.bev_shape
    out = TeacherOutput(
        bev_grid=grid, bev_features={k: torch.randn(2, c, h, w, generator=g) for k, c in CHANNELS.items()},
        heatmap=torch.rand(2, 10, h, w, generator=g) * 0.3,
        boxes=[torch.tensor([[12.2, 3.1, 0.0, 4.4, 1.9, 1.6, 0.2, 1, 0], [-20.0, 15.0, 0.0, 4.0, 1.8, 1.5, 1.0, 0, 0]]),
               torch.tensor([[5.0, -18.0, 0.0, 10.0, 2.8, 3.0, -0.5, 0, 0]])],
        scores=[torch.tensor([0.9, 0.6]), torch.tensor([0.8])], labels=[torch.tensor([0, 0]), torch.tensor([3])],
        instance_features=[torch.randn(2, 24, generator=g), torch.randn(1, 24, generator=g)],
        depth_probs=torch.rand(2, 6, d, *hw, generator=g).softmax(2))
    extra = {"fg_mask": torch.rand(2, h, w, generator=g) > 0.7, "view_mask": torch.rand(2, 6, h, w, generator=g) > 0.4,
             "lidar_depth": torch.rand(2, 6, *hw, generator=g) * 60 * (torch.rand(2, 6, *hw, generator=g) > 0.5)}
    return out, extra


def _setup(teacher_stride: int = 8):
    torch.manual_seed(0)
    cfg = StudentConfig.tiny(simdistill=True)
    model = StudentModel(cfg)
    tgrid = DEMO_GRID.with_stride(teacher_stride)
    out, extra = _teacher(tgrid, cfg.depth.num_depth_bins, cfg.feature_size)
    spec = TeacherShapes(bev_grid=tgrid, bev_channels=CHANNELS, instance_channels=24)
    loss = DistillationLoss.for_student(DistillationConfig(weights=ALL,
                                                           soft_mask_boxes="teacher"), model, spec)
    return cfg, model, loss, out, extra


def test_cached_targets_give_the_same_losses_as_the_live_teacher():
    cfg, model, loss, out, extra = _setup()
    online = TeacherTargets.from_teacher_output(out, **extra)
    rows = []
    for i in range(2):
        row = out.row(i)  # what the cache job writes, as numpy
        row.fg_mask, row.view_mask = extra["fg_mask"][i].numpy(), extra["view_mask"][i].numpy()
        row.lidar_depth = extra["lidar_depth"][i].numpy()
        rows.append(row)
    cached = TeacherTargets.from_samples(rows, out.bev_grid)
    batch = _batch(cfg)
    model.eval()
    with torch.no_grad():
        student = model(batch)
        a = loss(student, online, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels).as_floats()
        b = loss(student, cached, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels).as_floats()
    assert set(a) == {"detection_heatmap", "detection_regression", *ALL.active(), "total"} - {"detection"}
    assert a == b
    assert all(np.isfinite(v) for v in a.values())


@pytest.mark.parametrize("teacher_stride", [8, 4])
def test_all_terms_sum_and_train_every_module(teacher_stride):
    cfg, model, loss, out, extra = _setup(teacher_stride)
    targets = TeacherTargets.from_teacher_output(out, **extra)
    batch = _batch(cfg)
    res = loss(model(batch), targets, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels)
    terms = res.terms()
    assert len(terms) == 13
    assert torch.allclose(res.total, sum(terms.values()))
    assert all(v.item() > 0 for v in terms.values())
    res.total.backward()
    for name, p in [*loss.named_parameters(), ("backbone", model.backbone.conv1.weight),
                    ("geometry", model.geometry.block[0][0].weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_weights_scale_terms_linearly():
    cfg, model, loss, out, extra = _setup()
    targets = TeacherTargets.from_teacher_output(out, **extra)
    batch = _batch(cfg)
    model.eval()
    double = DistillationLoss.for_student(
        DistillationConfig(weights=LossWeights(detection=0.0, depth_bce=6.0, heatmap=2.0)),
        model, loss.teacher)
    with torch.no_grad():
        s = model(batch)
        a, b = loss(s, targets, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels), double(s, targets)
    assert float(b.depth_bce) == pytest.approx(2 * float(a.depth_bce), rel=1e-6)
    assert float(b.heatmap) == pytest.approx(2 * float(a.heatmap), rel=1e-6)
    assert b.dense_feature is None and b.detection_heatmap is None


def test_missing_inputs_are_named():
    cfg, model, loss, out, extra = _setup()
    batch = _batch(cfg)
    s = model(batch)
    no_masks = TeacherTargets.from_teacher_output(out, lidar_depth=extra["lidar_depth"])
    with pytest.raises(ValueError, match="targets.fg_mask"):
        loss(s, no_masks, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels)
    with pytest.raises(ValueError, match="need a TeacherShapes"):
        DistillationLoss.for_student(DistillationConfig(weights=ALL), model, None)
    with pytest.raises(ValueError, match="no BEV map 'lidar_bev'"):
        DistillationLoss.for_student(DistillationConfig(weights=ALL), model,
                                     TeacherShapes(bev_grid=out.bev_grid, bev_channels={"neck": 24, "camera_bev": 12,
                                                                                       "fused_bev": 24},
                                                 instance_channels=24))


def test_distillation_config_round_trips():
    import json
    cfg = DistillationConfig(weights=ALL, soft_mask_boxes="teacher")
    assert DistillationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="soft_mask_boxes"):
        DistillationConfig(soft_mask_boxes="lidar")


def test_teacher_pseudo_labels_replace_ground_truth():
    cfg, model, _, out, extra = _setup()
    targets = TeacherTargets.from_teacher_output(out, **extra)
    batch = _batch(cfg)
    model.eval()
    pseudo = DistillationLoss.for_student(
        DistillationConfig(weights=LossWeights(detection=1.0, depth_bce=0.0), detection_boxes="teacher",
                           pseudo_label_min_score=0.7), model, loss_spec(out))
    plain = DistillationLoss.for_student(DistillationConfig(weights=LossWeights(detection=1.0, depth_bce=0.0)), model)
    with torch.no_grad():
        s = model(batch)
        a = pseudo(s, targets)
        # scores 0.9 / 0.6 and 0.8: the 0.6 box is dropped
        b = plain(s, None, gt_boxes=[out.boxes[0][:1], out.boxes[1]], gt_labels=[out.labels[0][:1], out.labels[1]])
    assert a.as_floats() == b.as_floats()


def loss_spec(out: TeacherOutput) -> TeacherShapes:
    return TeacherShapes(bev_grid=out.bev_grid, bev_channels=CHANNELS, instance_channels=24)


def test_depth_bins_come_from_the_student_and_a_mismatch_raises():
    """Issue 10's silent bug: the BCE targets must use the student's depth bins (the tiny
    student bins 2 m, the loss's old default was 0.5 m), and a depth net / loss disagreement raises."""
    from student.config import DepthConfig
    from student.losses.depth import DepthBCELoss

    torch.manual_seed(0)
    cfg = StudentConfig.tiny()
    model = StudentModel(cfg)
    loss = DistillationLoss.for_student(DistillationConfig(weights=LossWeights(detection=0.0, depth_bce=3.0)), model)
    assert loss.depth_bce.depth_bins == cfg.depth.depth_bins == (2.0, 58.0, 2.0)
    assert loss.depth_bce.num_bins == cfg.depth.num_depth_bins == model.depth_net.depth[-1].out_channels == 28
    assert "depth_bins" not in DistillationConfig().to_dict()  # one source: the student's DepthConfig
    old = {**DistillationConfig().to_dict(), "depth_bins": [2.0, 58.0, 0.5]}  # an older checkpoint's dict
    assert DistillationConfig.from_dict(old) == DistillationConfig()
    # a loss built for other bins than the student's depth net refuses its output
    other = DepthBCELoss(DepthConfig(depth_bins=(2.0, 58.0, 0.5)).depth_bins)
    probs = torch.full((1, 6, cfg.depth.num_depth_bins, *cfg.feature_size), 1.0 / cfg.depth.num_depth_bins)
    with pytest.raises(ValueError, match="28 bins.*give 112"):
        other(probs, torch.zeros(1, 6, *cfg.feature_size))
    assert torch.isfinite(loss.depth_bce(probs, torch.full((1, 6, *cfg.feature_size), 7.0)))


def test_warmup_scales_only_the_distillation_terms():
    assert [DistillationConfig(warmup_steps=4).kd_scale(s) for s in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
    assert DistillationConfig().kd_scale(0) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        DistillationConfig(warmup_steps=-1)
    cfg, model, loss, out, extra = _setup()
    targets = TeacherTargets.from_teacher_output(out, **extra)
    batch = _batch(cfg)
    model.eval()
    with torch.no_grad():
        s = model(batch)
        full = loss(s, targets, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels).as_floats()
        loss.kd_scale = 0.25
        ramped = loss(s, targets, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels).as_floats()
    loss.kd_scale = 1.0
    supervised = {"detection_heatmap", "detection_regression", "depth_bce"}
    assert supervised <= set(full) and len(set(full) - supervised - {"total"}) >= 5
    for k, v in full.items():
        if k == "total":
            continue
        want = v if k in supervised else 0.25 * v
        assert ramped[k] == pytest.approx(want, rel=1e-5), k
    assert ramped["total"] == pytest.approx(sum(v for k, v in ramped.items() if k != "total"), rel=1e-5)
