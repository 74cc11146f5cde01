"""X3KD X-OD heatmap distillation and UniDistill keypoint response distillation by hand."""

from __future__ import annotations

import math

import pytest
import torch

from storage.grid import BEVGrid
from student.losses.response import HeatmapDistillation, KeypointResponseDistillation, box_keypoints

GRID = BEVGrid(point_cloud_range=(0.0, 0.0, -1.0, 8.0, 8.0, 1.0), voxel_size=(1.0, 1.0, 2.0))


def test_heatmap_distillation_soft_bce_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)  # sigmoid 0.5, 0.75
    teacher = torch.tensor([0.2, 1.0]).reshape(1, 1, 1, 2)
    expected = (math.log(2.0) + -math.log(0.75)) / 2
    assert float(HeatmapDistillation()(logits, teacher)) == pytest.approx(expected, rel=1e-5)


def test_box_keypoints_follow_yaw():
    box = torch.tensor([[1.0, 2.0, 0, 4.0, 2.0, 1, 0.0, 0, 0]])
    kp = box_keypoints(box)[0]
    expected = [(1, 2), (3, 3), (3, 1), (-1, 1), (-1, 3), (3, 2), (1, 1), (-1, 2), (1, 3)]
    assert kp.tolist() == [list(map(float, p)) for p in expected]
    rot = box.clone()
    rot[0, 6] = math.pi / 2  # length now along +y
    kp_r = box_keypoints(rot)[0]
    assert kp_r[1].tolist() == pytest.approx([1 - 1.0, 2 + 2.0], abs=1e-6)  # (+l/2, +w/2) -> (-w/2, +l/2)


def test_keypoint_response_by_hand():
    torch.manual_seed(0)
    teacher = torch.rand(1, 2, 8, 8)
    student = torch.zeros(1, 2, 8, 8)  # sigmoid = 0.5 everywhere
    # box centred on cell (row 4, col 3) with l = w = 2: every keypoint is a cell centre
    box = torch.tensor([[3.5, 4.5, 0, 2.0, 2.0, 1, 0.0, 0, 0]])
    loss = KeypointResponseDistillation()(student, teacher, [box], GRID)
    cells = [(4, 3), (5, 4), (3, 4), (3, 2), (5, 2), (4, 4), (3, 3), (4, 2), (5, 3)]  # (row, col) of kp order
    expected = sum(abs(0.5 - float(teacher[0, k, r, c])) for r, c in cells for k in range(2)) / 18
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_keypoint_response_without_boxes_is_zero():
    loss = KeypointResponseDistillation()(torch.zeros(1, 2, 8, 8, requires_grad=True), torch.rand(1, 2, 8, 8),
                                          [torch.zeros((0, 9))], GRID)
    assert loss.item() == 0.0
