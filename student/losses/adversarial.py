"""Adversarial BEV feature alignment — X3KD (Klingner et al., CVPR 2023) §3.3 "cross-modal
adversarial training" (X-AT).

A discriminator classifies BEV feature maps cell by cell as teacher (LiDAR, label 1) or
student (camera, label 0); the student is trained to make its features indistinguishable.
One loss serves both players through a gradient-reversal layer (Ganin & Lempitsky, ICML 2015):
``L = BCE(D(F_t), 1) + BCE(D(GRL(F_s)), 0)``; minimising it trains D, and the reversed gradient
pushes the student to *maximise* D's error. Only the trainer's single optimizer is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-scale`` backward."""
    return _ReverseGrad.apply(x, scale)


class BEVDiscriminator(nn.Module):
    """Per-cell teacher-vs-student logits: two 3x3 conv + LeakyReLU layers and a 1x1 classifier.

    Args:
        in_channels: channels of the (adapted) BEV maps.
        hidden: hidden channels.
    """

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv2d(hidden, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 1, H, W)`` logits (teacher = positive)."""
        return self.net(x)


class AdversarialDistillation(nn.Module):
    """X-AT: ``L = mean BCE(D(F_t), 1) + mean BCE(D(GRL_lambda(F_s)), 0)``.

    Args:
        discriminator: any module mapping ``(B, C, H, W)`` to per-cell logits.
        grl_scale: lambda of the gradient reversal applied to the student features.
    """

    def __init__(self, discriminator: nn.Module, grl_scale: float = 1.0) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.grl_scale = grl_scale

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``student``/``teacher`` ``(B, C, H, W)`` (student adapted to the teacher) -> scalar."""
        real = self.discriminator(teacher.detach())
        fake = self.discriminator(grad_reverse(student, self.grl_scale))
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
