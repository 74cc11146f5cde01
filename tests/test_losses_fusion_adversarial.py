"""SimDistill fusion distillation and X3KD adversarial distillation by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from student.losses.adversarial import AdversarialDistillation, grad_reverse
from student.losses.fusion import FusionDistillation


def test_fusion_terms_by_hand():
    s = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    t = torch.zeros_like(s)
    terms = FusionDistillation()((s, t), (2 * s, t), (s, s.clone()))
    assert float(terms.camera) == pytest.approx((1 + 9) / 2)
    assert float(terms.lidar) == pytest.approx((4 + 36) / 2)
    assert float(terms.fused) == 0.0
    w = torch.tensor([[[1.0, 0.0]]])
    assert float(FusionDistillation()((s, t), (s, t), (s, t), w).camera) == pytest.approx(1.0)


def _identity_discriminator() -> nn.Conv2d:
    d = nn.Conv2d(2, 1, 1)
    with torch.no_grad():
        d.weight.copy_(torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1))
        d.bias.zero_()
    return d  # logit = channel 0


def test_adversarial_loss_value_and_reversed_gradient():
    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    teacher = torch.tensor([[[[2.0, -1.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2), logits 2, -1
    student = torch.tensor([[[[0.5, 1.5]], [[0.0, 0.0]]]], requires_grad=True)
    mod = AdversarialDistillation(_identity_discriminator(), grl_scale=0.5)
    loss = mod(student, teacher)
    expected = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(1.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    # d/ds of mean softplus(s) = sigmoid(s)/2; reversed and scaled by 0.5
    assert student.grad[0, 0, 0].tolist() == pytest.approx([-0.5 * sig(0.5) / 2, -0.5 * sig(1.5) / 2])
    # the discriminator itself descends normally: d/dbias = mean(sig(t)-1) + mean(sig(s))
    db = ((sig(2.0) - 1) + (sig(-1.0) - 1)) / 2 + (sig(0.5) + sig(1.5)) / 2
    assert float(mod.discriminator.bias.grad) == pytest.approx(db, rel=1e-6)


def test_grad_reverse_is_identity_forward():
    x = torch.randn(3, requires_grad=True)
    y = grad_reverse(x, 2.0)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))
