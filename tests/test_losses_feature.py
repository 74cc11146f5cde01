"""BEVDistill dense and BEV-LGKD masked feature distillation against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from storage.grid import BEVGrid
from student.losses.feature import DenseFeatureDistillation, LiDARGuidedFeatureDistillation, gaussian_soft_mask

GRID = BEVGrid(point_cloud_range=(0.0, 0.0, -1.0, 8.0, 8.0, 1.0), voxel_size=(1.0, 1.0, 2.0))


def test_gaussian_soft_mask_matches_eq3_by_hand():
    # box centred on cell (row 3, col 2), 1 m x 1 m -> radius = min_radius = 2 cells, sigma = 5/6
    box = torch.tensor([[2.5, 3.5, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    w = gaussian_soft_mask([box], GRID, min_radius=2)
    sigma2 = (5 / 6) ** 2
    assert w.shape == (1, 8, 8)
    assert w[0, 3, 2] == pytest.approx(1.0)
    assert w[0, 3, 3] == pytest.approx(math.exp(-1 / (2 * sigma2)), rel=1e-5)
    assert w[0, 5, 4] == pytest.approx(math.exp(-8 / (2 * sigma2)), rel=1e-5)
    assert w[0, 3, 5] == 0.0  # 3 cells away: outside the radius-2 kernel
    assert w[0, 6, 2] == 0.0


def test_gaussian_soft_mask_takes_max_over_boxes_and_samples():
    a = torch.tensor([[2.5, 3.5, 0, 1, 1, 1, 0, 0, 0.0]])
    b = torch.tensor([[3.5, 3.5, 0, 1, 1, 1, 0, 0, 0.0]])
    both = gaussian_soft_mask([torch.cat([a, b]), torch.zeros((0, 9))], GRID)
    single = gaussian_soft_mask([a], GRID)
    assert both[0, 3, 3] == pytest.approx(1.0)  # b's peak wins over a's tail
    assert both[0, 3, 2] == pytest.approx(1.0)
    assert both[0, 3, 1] == pytest.approx(float(single[0, 3, 1]))
    assert both[1].abs().sum() == 0  # empty sample


def test_dense_feature_distillation_eq4_by_hand():
    # B=1, C=2, H=1, W=2; teacher 0; per-cell channel-mean squared error: (1+9)/2=5, (4+16)/2=10
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], requires_grad=True)
    t = torch.zeros(1, 2, 1, 2, requires_grad=True)
    w = torch.tensor([[[0.5, 1.0]]])
    loss = DenseFeatureDistillation()(s, t, w)
    assert loss.item() == pytest.approx((0.5 * 5 + 1.0 * 10) / 1.5)
    loss.backward()
    assert t.grad is None  # teacher is a target, never trained
    # d/ds of W*mean_c(s^2)/sum W = W * 2s / (C * sum W)
    assert float(s.grad[0, 1, 0, 1]) == pytest.approx(1.0 * 2 * 4 / (2 * 1.5))


def test_lgkd_masked_distillation_averages_per_view():
    # C=1, H=1, W=3; squared errors per cell: 1, 4, 9
    s = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    t = torch.zeros_like(s)
    fg = torch.tensor([[[True, True, False]]])
    view = torch.tensor([[[[True, True, True]], [[False, True, False]], [[False, False, True]]]])  # (1, 3, 1, 3)
    loss = LiDARGuidedFeatureDistillation()(s, t, fg, view)
    # view 0: cells {0,1} -> (1+4)/2 = 2.5 ; view 1: cell {1} -> 4 ; view 2: fg-empty, excluded
    assert float(loss) == pytest.approx((2.5 + 4.0) / 2)


def test_lgkd_without_foreground_is_zero_and_differentiable():
    s = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = LiDARGuidedFeatureDistillation()(s, torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool),
                                            torch.ones(1, 6, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None


def test_shape_mismatch_names_the_adapter():
    with pytest.raises(ValueError, match="BEVAdapter"):
        DenseFeatureDistillation()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), torch.ones(1, 4, 4))
