"""SECOND-style sparse 3D encoder (Yan et al., "SECOND", Sensors 2018, §2.2; the CenterPoint
VoxelNet backbone, Yin et al. CVPR 2021 §5) on spconv 2.x.

Parameter names follow mmdetection3d's ``SparseEncoder`` (``block_type='basicblock'``) so
checkpoints map one-to-one (spconv 2.x kernel layout ``(out, kD, kH, kW, in)``, see
:mod:`teachers.mmdet3d_convert`):

* ``conv_input``: [SubMConv3d(in -> base, 3), BN1d, ReLU]
* ``encoder_layers.encoder_layer{i+1}.{j}``: :class:`SparseBasicBlock` (``conv1``/``bn1``/
  ``conv2``/``bn2``), then for every stage but the last [SparseConv3d(stride 2), BN1d, ReLU]
* ``conv_out``: [SparseConv3d(kernel (3,1,1), stride (2,1,1)), BN1d, ReLU]

spconv's default CUDA algorithm (MaskImplicitGemm) does not run on CPU, so before each forward
the algorithm of every sparse conv is set from the input's device (``ConvAlgo.Native`` on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from spconv.core import ConvAlgo
from torch import nn

from teachers.config import CenterPointConfig


def sparse_to_dense(x: spconv.SparseConvTensor) -> torch.Tensor:
    """The dense ``(B, C, D, H, W)`` grid of ``x`` (zeros where no voxel is active), as
    ``SparseConvTensor.dense()`` returns it; spconv 2.3.6 scatters with a list index that torch
    deprecates ("will be interpreted as tensor index"), so the scatter is done here with a tuple.

    Args:
        x: ``features`` ``(V, C)``, ``indices`` ``(V, 4)`` int32 ``[batch, z, y, x]``,
            ``spatial_shape`` ``(D, H, W)``.
    """
    d, h, w = (int(n) for n in x.spatial_shape)
    out = x.features.new_zeros((x.batch_size, d, h, w, x.features.shape[1]))
    idx = x.indices.long()
    out[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] = x.features
    return out.permute(0, 4, 1, 2, 3).contiguous()


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def _convmodule(conv: nn.Module, c_out: int) -> spconv.SparseSequential:
    return spconv.SparseSequential(conv, _bn(c_out), nn.ReLU(inplace=True))


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two 3x3x3 submanifold convs (ResNet basic block on sparse voxels)."""

    def __init__(self, channels: int, indice_key: str) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = _bn(channels)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.relu(self.bn2(out.features) + identity))
        return out


def _pad3(p: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(p, int):
        return p, p, p
    a, b, c = p
    return int(a), int(b), int(c)


class SparseEncoder(nn.Module):
    """Voxel features -> dense BEV map ``(B, output_channels * D_out, ny / 8, nx / 8)``."""

    def __init__(self, config: CenterPointConfig) -> None:
        super().__init__()
        enc = config.encoder
        self.sparse_shape = list(config.sparse_shape)
        self.conv_input = _convmodule(
            spconv.SubMConv3d(config.in_channels, enc.base_channels, 3, padding=1, bias=False, indice_key="subm1"),
            enc.base_channels)
        self.encoder_layers = spconv.SparseSequential()
        c_in = enc.base_channels
        last = len(enc.encoder_channels) - 1
        for i, (chans, pads) in enumerate(zip(enc.encoder_channels, enc.encoder_paddings, strict=True)):
            blocks: list[nn.Module] = []
            for j, c_out in enumerate(chans):
                if j == len(chans) - 1 and i != last:
                    blocks.append(_convmodule(spconv.SparseConv3d(c_in, c_out, 3, stride=2, padding=_pad3(pads[j]),
                                                                  bias=False, indice_key=f"spconv{i + 1}"), c_out))
                else:
                    if c_in != c_out:
                        raise ValueError(f"SparseEncoder: basic block {i}.{j} needs in == out, got {c_in} -> {c_out}")
                    blocks.append(SparseBasicBlock(c_out, indice_key=f"subm{i + 1}"))
                c_in = c_out
            self.encoder_layers.add_module(f"encoder_layer{i + 1}", spconv.SparseSequential(*blocks))
        self.conv_out = _convmodule(
            spconv.SparseConv3d(c_in, enc.output_channels, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
                                indice_key="spconv_down2"), enc.output_channels)

    def _set_algo(self, device: torch.device) -> None:
        algo = ConvAlgo.Native if device.type == "cpu" else ConvAlgo.MaskImplicitGemm
        for m in self.modules():
            if isinstance(m, spconv.conv.SparseConvolution):
                m.algo = algo

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Args:
            features: ``(V, C_in)`` float32 voxel features.
            coords: ``(V, 4)`` int32 ``[batch, z, y, x]`` (z in ``[0, sparse_shape[0])``).
            batch_size: B.

        Returns:
            ``(B, output_channels * D_out, H, W)`` float32 BEV map, lidar frame, row = +y.
        """
        self._set_algo(features.device)
        x = spconv.SparseConvTensor(features, coords.int(), self.sparse_shape, batch_size)
        x = self.conv_input(x)
        x = self.encoder_layers(x)
        out = sparse_to_dense(self.conv_out(x))  # (B, C, D, H, W)
        b, c, d, h, w = out.shape
        return out.reshape(b, c * d, h, w)
