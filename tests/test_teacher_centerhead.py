"""CenterHead: Gaussian targets, focal/L1 losses, decoding with circle NMS (CenterPoint §3-4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from storage.grid import BEVGrid
from teachers.centerhead import (CenterHead, CenterHeadConfig, CenterHeadOutput, NUSCENES_TASKS, build_center_targets,
                                 circle_nms, decode_boxes, gaussian_focal_loss, gaussian_radius, merge_heatmaps)

GRID = BEVGrid(point_cloud_range=(-16.0, -16.0, -3.0, 16.0, 16.0, 3.0), voxel_size=(0.25, 0.25, 0.5))
OUT = GRID.with_stride(4)  # 32 x 32 cells of 1 m


def _boxes() -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array([
        [3.3, -5.6, 0.2, 4.5, 1.9, 1.6, 0.7, 1.0, -2.0],
        [-9.7, 7.2, -0.4, 0.7, 0.6, 1.7, -2.5, 0.3, 0.1],
        [12.4, 11.1, 1.0, 10.0, 2.8, 3.4, 3.0, 0.0, 0.0],
    ])
    return boxes, np.array([0, 8, 3])


def test_gaussian_radius_matches_cornernet_cases():
    # l = w = 4 cells, IoU 0.1: roots 5.706 (case 1), 10.53 (case 2), 1.7298 (case 3,
    # (-1.6 + sqrt(1.6^2 + 4*0.4*14.4)) / 2); the radius is the smallest.
    assert math.isclose(gaussian_radius(4.0, 4.0, 0.1), (-1.6 + math.sqrt(25.6)) / 2, rel_tol=1e-9)
    assert gaussian_radius(4.0, 4.0, 0.7) < gaussian_radius(4.0, 4.0, 0.1)  # tighter IoU -> smaller


def test_targets_peak_at_centre_cells_with_regression_values():
    boxes, labels = _boxes()
    targets = build_center_targets([boxes], [labels], OUT, NUSCENES_TASKS)
    by_class = {c: (t, k) for t, tc in enumerate(NUSCENES_TASKS) for k, c in enumerate(tc)}
    for box, label in zip(boxes, labels, strict=True):
        t, k = by_class[int(label)]
        tg = targets[t]
        col, row = math.floor(box[0] - OUT.point_cloud_range[0]), math.floor(box[1] - OUT.point_cloud_range[1])
        assert tg.heatmap[0, k, row, col] == 1.0
        j = int(np.flatnonzero(tg.mask[0].numpy())[0])
        assert tg.indices[0, j] == row * 32 + col
        code = tg.box_targets[0, j].numpy()
        np.testing.assert_allclose(code[:2], [box[0] + 16 - col, box[1] + 16 - row], atol=1e-5)
        np.testing.assert_allclose(np.exp(code[3:6]), box[3:6], rtol=1e-5)
        assert math.isclose(math.atan2(code[6], code[7]), box[6], abs_tol=1e-5)
        # Gaussian falls off: a neighbour is < 1 and > 0 (radius >= 2 cells)
        assert 0 < tg.heatmap[0, k, row, col + 1] < 1
    assert sum(t.num_objects for t in targets) == 3
    assert sum(int(t.heatmap.eq(1).sum()) for t in targets) == 3


def test_focal_loss_rewards_the_right_heatmap():
    boxes, labels = _boxes()
    tgt = build_center_targets([boxes], [labels], OUT, [tuple(range(10))])[0].heatmap
    good = tgt.clamp(1e-4, 1 - 1e-4)
    flat = torch.full_like(tgt, 0.1)
    shifted = torch.roll(good, shifts=3, dims=-1)
    assert gaussian_focal_loss(good, tgt) < gaussian_focal_loss(flat, tgt)
    assert gaussian_focal_loss(good, tgt) < gaussian_focal_loss(shifted, tgt)


def _perfect_output(boxes: np.ndarray, labels: np.ndarray) -> CenterHeadOutput:
    tg = build_center_targets([boxes], [labels], OUT, [tuple(range(10))])[0]
    code = torch.zeros(1, 10, 32, 32)
    for j in np.flatnonzero(tg.mask[0].numpy()):
        r, c = divmod(int(tg.indices[0, j]), 32)
        code[0, :, r, c] = tg.box_targets[0, j]
    logits = torch.logit(tg.heatmap.clamp(1e-4, 1 - 1e-4))
    return CenterHeadOutput(classes=tuple(range(10)), heatmap=logits, reg=code[:, 0:2], height=code[:, 2:3],
                            dim=code[:, 3:6], rot=code[:, 6:8], vel=code[:, 8:10])


def test_decode_inverts_targets():
    boxes, labels = _boxes()
    out = _perfect_output(boxes, labels)
    dec_boxes, scores, dec_labels = decode_boxes(out, OUT, score_threshold=0.5, max_boxes=10)
    assert len(dec_boxes) == 1 and dec_boxes[0].shape == (3, 9)
    order = np.argsort(dec_labels[0].numpy())
    np.testing.assert_array_equal(dec_labels[0].numpy()[order], np.sort(labels))
    ref = boxes[np.argsort(labels)]
    np.testing.assert_allclose(dec_boxes[0].numpy()[order], ref, atol=1e-4)
    assert torch.all(scores[0] > 0.99)


def test_decode_rejects_wrong_grid():
    boxes, labels = _boxes()
    try:
        decode_boxes(_perfect_output(boxes, labels), GRID)
    except ValueError as exc:
        assert "bev_shape" in str(exc)
    else:
        raise AssertionError("decode_boxes accepted a grid of the wrong shape")


def test_circle_nms_suppresses_only_near_duplicates():
    centers = torch.tensor([[0.0, 0.0], [0.5, 0.0], [5.0, 0.0], [5.2, 0.1]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.3])
    keep = circle_nms(centers, scores, torch.full((4,), 1.0))
    assert keep.tolist() == [1, 2]
    # with classes: the lower-scoring box of another class survives next to the car
    keep = circle_nms(centers, scores, torch.full((4,), 1.0), labels=torch.tensor([8, 0, 0, 0]))
    assert keep.tolist() == [1, 2, 0]


@pytest.mark.slow
def test_head_learns_one_scene():
    torch.manual_seed(0)
    boxes, labels = _boxes()
    cfg = CenterHeadConfig(in_channels=8, num_classes=10, tasks=NUSCENES_TASKS, shared_channels=16, head_channels=16)
    head = CenterHead(cfg)
    feat = torch.randn(1, 8, 32, 32)
    targets = head.build_targets([torch.from_numpy(boxes)], [torch.from_numpy(labels)], OUT)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        losses = head.loss(head(feat), targets)
        first = first if first is not None else float(losses.total.detach())
        opt.zero_grad()
        losses.total.backward()
        opt.step()
    assert float(losses.total.detach()) < 0.3 * first
    head.eval()
    outs = head(feat)
    assert merge_heatmaps(outs, 10).shape == (1, 10, 32, 32)
    dec, _, lab = decode_boxes(outs, OUT, score_threshold=0.3, max_boxes=10)
    assert set(lab[0].tolist()) >= {0, 3}
