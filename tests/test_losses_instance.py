"""BEVDistill §3.3 InfoNCE instance distillation by hand."""

from __future__ import annotations

import math

import pytest
import torch

from storage.grid import BEVGrid
from student.losses.instance import InstanceInfoNCE

GRID = BEVGrid(point_cloud_range=(0.0, 0.0, -1.0, 4.0, 4.0, 1.0), voxel_size=(1.0, 1.0, 2.0))


def _setup():
    bev = torch.zeros(1, 2, 4, 4)
    bev[0, :, 1, 1] = torch.tensor([2.0, 0.0])  # student feature at box 0 centre -> direction (1, 0)
    bev[0, :, 2, 3] = torch.tensor([0.0, 3.0])  # at box 1 centre -> (0, 1)
    boxes = torch.tensor([[1.5, 1.5, 0, 1, 1, 1, 0, 0, 0], [3.5, 2.5, 0, 1, 1, 1, 0, 0, 0.0]])
    teacher = torch.tensor([[5.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0), (1, 1)/sqrt2
    return bev, boxes, teacher


def test_infonce_by_hand():
    bev, boxes, teacher = _setup()
    tau = 0.5
    loss = InstanceInfoNCE(2, 2, embed_dim=None, temperature=tau)(bev, GRID, [boxes], [teacher])
    r = 1 / math.sqrt(2)
    # row 0: logits [1, r]/tau, positive 0 ; row 1: logits [0, r]/tau, positive 1
    l0 = -(1 / tau) + math.log(math.exp(1 / tau) + math.exp(r / tau))
    l1 = -(r / tau) + math.log(math.exp(0.0) + math.exp(r / tau))
    assert float(loss) == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_infonce_score_filter_leaves_single_positive():
    bev, boxes, teacher = _setup()
    loss = InstanceInfoNCE(2, 2, embed_dim=None, temperature=0.5, min_score=0.5)(
        bev, GRID, [boxes], [teacher], [torch.tensor([0.9, 0.1])])
    assert float(loss) == pytest.approx(0.0, abs=1e-6)  # one instance: softmax over itself


def test_infonce_projection_heads_train():
    bev, boxes, teacher = _setup()
    bev.requires_grad_(True)
    mod = InstanceInfoNCE(2, 2, embed_dim=8)
    loss = mod(bev, GRID, [boxes], [teacher])
    loss.backward()
    assert bev.grad[0, :, 1, 1].abs().sum() > 0
    assert all(p.grad is not None for p in mod.parameters())
