"""2D BEV backbone SECOND and neck SECONDFPN (Yan et al., "SECOND", Sensors 2018, §2.3 RPN;
CenterPoint's VoxelNet BEV backbone, Yin et al. CVPR 2021 §5).

Parameter names follow mmdetection3d (``blocks.{i}.{k}`` / ``deblocks.{i}.{k}``): block ``i`` is
``[Conv2d(stride s_i), BN, ReLU] + layer_nums[i] x [Conv2d, BN, ReLU]`` (indices 0, 1, 2, 3, ...),
deblock ``i`` is ``[ConvTranspose2d(k=s, stride=s) or Conv2d(k=1/s, stride=1/s), BN, ReLU]``.
BatchNorm eps 1e-3, momentum 0.01; convs without bias.
"""

from __future__ import annotations

import torch
from torch import nn

from teachers.config import SECONDConfig, SECONDFPNConfig


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _cbr(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), _bn(c_out),
            nn.ReLU(inplace=True)]


class SECOND(nn.Module):
    """Multi-stage 2D backbone; returns one map per stage."""

    def __init__(self, in_channels: int, config: SECONDConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        c_in = in_channels
        for c_out, n, s in zip(config.out_channels, config.layer_nums, config.layer_strides, strict=True):
            layers = _cbr(c_in, c_out, s)
            for _ in range(n):
                layers += _cbr(c_out, c_out)
            self.blocks.append(nn.Sequential(*layers))
            c_in = c_out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C_in, H, W)`` -> per stage ``(B, out_channels[i], H / prod(strides[:i+1]), ...)``."""
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    """Brings every backbone stage to one resolution and concatenates along channels."""

    def __init__(self, in_channels: tuple[int, ...], config: SECONDFPNConfig) -> None:
        super().__init__()
        self.deblocks = nn.ModuleList()
        for c_in, c_out, s in zip(in_channels, config.out_channels, config.upsample_strides, strict=True):
            if s > 1:
                up: nn.Module = nn.ConvTranspose2d(c_in, c_out, s, stride=s, bias=False)
            else:  # mmdet3d use_conv_for_no_stride=True: a (strided) conv
                k = int(round(1 / s))
                up = nn.Conv2d(c_in, c_out, k, stride=k, bias=False)
            self.deblocks.append(nn.Sequential(up, _bn(c_out), nn.ReLU(inplace=True)))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Per-stage maps -> ``(B, sum(out_channels), H_out, W_out)``."""
        return torch.cat([d(f) for d, f in zip(self.deblocks, feats, strict=True)], dim=1)
