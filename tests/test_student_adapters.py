"""Adapters: metric resampling between different BEV grids and 1x1 channel projection."""

from __future__ import annotations

import pytest
import torch

from storage.grid import BEVGrid
from student.adapters import BEVAdapter, resample_bev

STUDENT = BEVGrid(point_cloud_range=(-8.0, -8.0, -5.0, 8.0, 8.0, 3.0), voxel_size=(1.0, 1.0, 8.0))  # 16x16
TEACHER = BEVGrid(point_cloud_range=(-6.0, -6.0, -5.0, 6.0, 6.0, 3.0), voxel_size=(0.5, 0.5, 8.0))  # 24x24


def test_resample_puts_values_at_the_same_metric_place():
    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 10, 4] = 1.0  # student cell centre (x, y) = (-3.5, 2.5)
    out = resample_bev(m, STUDENT, TEACHER, mode="nearest")
    assert out.shape == (1, 1, 24, 24)
    # teacher cells whose centres fall in [-4, -3) x [2, 3): cols 4..5, rows 16..17
    assert torch.nonzero(out[0, 0]).tolist() == [[16, 4], [16, 5], [17, 4], [17, 5]]


def test_equal_grids_are_a_no_op_and_identity_adapter_is_exact():
    m = torch.randn(2, 3, 16, 16)
    assert resample_bev(m, STUDENT, STUDENT) is m
    assert torch.equal(BEVAdapter(3, 3, STUDENT, STUDENT, learnable=False)(m), m)
    with pytest.raises(ValueError, match="learnable"):
        BEVAdapter(3, 4, STUDENT, STUDENT, learnable=False)


def test_learnable_adapter_changes_channels_and_grid():
    a = BEVAdapter(3, 7, STUDENT, TEACHER)
    out = a(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 7, 24, 24)
    out.sum().backward()
    assert a.proj.weight.grad.abs().sum() > 0
