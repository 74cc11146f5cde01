"""BEVDepth depth BCE and BEV-LGKD depth distillation against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from student.losses.depth import DepthBCELoss, DepthDistillation, depth_one_hot, min_pool_depth


def test_min_pool_depth_keeps_nearest_positive_depth():
    d = torch.tensor([[0.0, 5.0, 3.0, 0.0, 0.0, 0.0],
                      [7.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert min_pool_depth(d, (1, 3)).tolist() == [[5.0, 3.0, 0.0]]
    with pytest.raises(ValueError, match="multiple"):
        min_pool_depth(d, (1, 4))


def test_depth_one_hot_bins_and_validity():
    # bins (2, 10, 2): [2,4) [4,6) [6,8) [8,10)
    depth = torch.tensor([3.0, 9.9, 10.5, 0.0, 1.0, 4.0])
    one_hot, valid = depth_one_hot(depth, (2.0, 10.0, 2.0), 4)
    assert valid.tolist() == [True, True, False, False, False, True]
    assert one_hot.argmax(-1)[valid].tolist() == [0, 3, 1]
    assert one_hot[~valid].sum() == 0


def test_depth_bce_by_hand():
    # D=2 bins (2, 6, 2); two image cells; cell 0 has LiDAR at 5 m (bin 1), cell 1 none
    probs = torch.tensor([0.7, 0.3, 0.4, 0.6]).reshape(2, 2).T.reshape(1, 1, 2, 1, 2)  # (B,N,D,h,w)
    lidar = torch.tensor([[[[5.0, 0.0]]]])
    loss = DepthBCELoss((2.0, 6.0, 2.0))(probs, lidar)
    expected = -(math.log(1 - 0.7) + math.log(0.3))  # bin 0 target 0, bin 1 target 1
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_depth_bce_pools_finer_lidar_depth():
    probs = torch.full((1, 1, 2, 1, 1), 0.5)
    lidar = torch.tensor([[[[0.0, 5.0], [3.0, 0.0]]]])  # min positive = 3 m -> bin 0
    loss = DepthBCELoss((2.0, 6.0, 2.0))(probs, lidar)
    assert float(loss) == pytest.approx(-2 * math.log(0.5), rel=1e-5)
    probs2 = torch.tensor([0.9, 0.1]).reshape(1, 1, 2, 1, 1)
    assert float(DepthBCELoss((2.0, 6.0, 2.0))(probs2, lidar)) == pytest.approx(-2 * math.log(0.9), rel=1e-5)


def test_depth_distillation_kl_by_hand():
    s = torch.tensor([0.25, 0.75, 0.5, 0.5]).reshape(2, 2).T.reshape(1, 1, 2, 1, 2)
    t = torch.tensor([0.5, 0.5, 0.5, 0.5]).reshape(2, 2).T.reshape(1, 1, 2, 1, 2)
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(DepthDistillation()(s, t)) == pytest.approx(kl0 / 2, rel=1e-5)  # cell 1 has KL 0
    mask = torch.tensor([[[[True, False]]]])
    assert float(DepthDistillation()(s, t, mask)) == pytest.approx(kl0, rel=1e-5)
