"""The student's detection loss (CenterPoint Gaussian focal + L1, reusing teachers.centerhead) by hand."""

from __future__ import annotations

import math

import pytest
import torch

from storage.grid import BEVGrid
from student.losses.detection import DetectionLoss
from teachers.centerhead import CenterHead, CenterHeadConfig, CenterHeadOutput

GRID = BEVGrid(point_cloud_range=(0.0, 0.0, -1.0, 8.0, 8.0, 1.0), voxel_size=(1.0, 1.0, 2.0))


def _zero_output() -> CenterHeadOutput:
    def z(c: int) -> torch.Tensor:
        return torch.zeros(1, c, 8, 8)

    return CenterHeadOutput(classes=(0,), heatmap=z(1), reg=z(2), height=z(1), dim=z(3), rot=z(2), vel=z(2))


def test_detection_loss_by_hand():
    head = CenterHead(CenterHeadConfig(in_channels=4, num_classes=1))
    box = torch.tensor([[3.5, 4.5, 0.2, 1.0, 1.0, 2.0, 0.0, 1.0, -2.0]])  # centre of cell (row 4, col 3)
    losses = DetectionLoss(head)([_zero_output()], [box], [torch.tensor([0])], GRID)
    # heatmap: p = 0.5 everywhere; Gaussian radius 2 (min_radius), sigma = 5/6, peak at (4, 3)
    sigma2 = (5 / 6) ** 2
    neg = 0.0
    for r in range(8):
        for c in range(8):
            dr, dc = r - 4, c - 3
            if (dr, dc) == (0, 0):
                continue
            g = math.exp(-(dr * dr + dc * dc) / (2 * sigma2)) if abs(dr) <= 2 and abs(dc) <= 2 else 0.0
            neg += (1 - g) ** 4
    focal = 0.25 * math.log(2) * (1 + neg)  # -log(0.5) * 0.5^2 per positive / weighted negative
    assert float(losses.heatmap) == pytest.approx(focal, rel=1e-4)
    # regression target [0.5, 0.5, 0.2, 0, 0, ln 2, 0, 1, 1, -2] vs 0, code weights 1 (x8), 0.2, 0.2
    l1 = 0.5 + 0.5 + 0.2 + math.log(2) + 1.0 + 0.2 * 1.0 + 0.2 * 2.0
    assert float(losses.regression) == pytest.approx(0.25 * l1 / (1 + 1e-4), rel=1e-5)
