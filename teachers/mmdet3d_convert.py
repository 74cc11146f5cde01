"""Load official mmdetection3d CenterPoint checkpoints into :class:`teachers.centerpoint.CenterPointTeacher`.

Mapping (mmdet3d ``centerpoint_voxel0075_second_secfpn_*_nus`` and ``voxel01``):

=====================================================  ==============================================
mmdet3d key                                             bevkd key / change
=====================================================  ==============================================
``pts_voxel_encoder.*`` (HardSimpleVFE: no weights)     none (:func:`teachers.voxelize.voxelize`)
``pts_middle_encoder.conv_input.{0,1}.*``               same name; ``.0.weight`` kernel layout below
``pts_middle_encoder.encoder_layers.encoder_layerI.J``  same name (``conv1/bn1/conv2/bn2`` in basic blocks,
                                                        ``.0``/``.1`` = conv/BN in downsampling convs)
``pts_middle_encoder.conv_out.{0,1}.*``                 same name; kernel layout below
``pts_backbone.blocks.I.K.*`` (SECOND)                  same name, unchanged
``pts_neck.deblocks.I.{0,1}.*`` (SECONDFPN)              same name, unchanged
``pts_bbox_head.shared_conv.{conv,bn}.*``               same name, unchanged
``pts_bbox_head.task_heads.T.<branch>.{0.conv,0.bn,1}`` same name, unchanged (6 tasks on nuScenes:
                                                        [car], [truck, construction_vehicle], [bus,
                                                        trailer], [barrier], [motorcycle, bicycle],
                                                        [pedestrian, traffic_cone] = NUSCENES_TASKS)
=====================================================  ==============================================

Sparse-conv kernel layout: checkpoints trained with MMCV's spconv 1.x ops (all official
CenterPoint nuScenes checkpoints) store ``(kD, kH, kW, in, out)``; spconv 2.x stores
``(out, kD, kH, kW, in)``. mmdet3d's own spconv-2 loader permutes the last axis to the front
unless the state dict's metadata says ``version == 2`` (mmdet3d ``write_spconv2.py``); here a
5-D weight is permuted ``(4, 0, 1, 2, 3)`` when its shape matches that layout and left as is
when it already matches the model (``layout="auto"``), or as forced by ``layout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping

import torch
from torch import nn

#: Prefixes carried over unchanged (the model uses mmdet3d's names).
KEPT_PREFIXES = ("pts_middle_encoder.", "pts_backbone.", "pts_neck.", "pts_bbox_head.")


@dataclass(kw_only=True)
class ConversionReport:
    """What :func:`convert_mmdet3d_centerpoint` did: ``permuted`` sparse kernels, ``dropped`` keys
    (outside :data:`KEPT_PREFIXES`, e.g. ``pts_voxel_encoder`` or training state)."""

    permuted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _unwrap(checkpoint: Mapping[str, object]) -> Mapping[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        inner = checkpoint.get(key) if isinstance(checkpoint, Mapping) else None
        if isinstance(inner, Mapping):
            return inner
    return checkpoint  # type: ignore[return-value]


def convert_mmdet3d_centerpoint(checkpoint: Mapping[str, object], model: nn.Module,
                                layout: str = "auto") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """An mmdet3d CenterPoint state dict (or checkpoint dict holding ``state_dict``) as ours.

    Args:
        checkpoint: the loaded ``.pth`` (``torch.load``) or its ``state_dict``.
        model: the target :class:`CenterPointTeacher` (its parameter shapes resolve ``auto``).
        layout: ``"auto"``, ``"spconv1"`` (always permute 5-D kernels) or ``"spconv2"`` (never).

    Returns:
        ``(state_dict, report)`` ready for ``model.load_state_dict(state_dict, strict=True)``.

    Raises:
        ValueError: unknown ``layout``, or a 5-D kernel whose shape fits neither layout (names the key).
    """
    if layout not in ("auto", "spconv1", "spconv2"):
        raise ValueError(f"convert_mmdet3d_centerpoint: layout must be auto, spconv1 or spconv2, got {layout!r}")
    source = _unwrap(checkpoint)
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    report = ConversionReport()
    for key, value in source.items():
        if not key.startswith(KEPT_PREFIXES):
            report.dropped.append(key)
            continue
        t = torch.as_tensor(value)
        if t.dim() == 5 and key.startswith("pts_middle_encoder."):
            t, permuted = _sparse_kernel(key, t, ours.get(key), layout)
            if permuted:
                report.permuted.append(key)
        out[key] = t
    return out, report


def _sparse_kernel(key: str, t: torch.Tensor, target: torch.Tensor | None, layout: str) -> tuple[torch.Tensor, bool]:
    as_v2 = t.permute(4, 0, 1, 2, 3).contiguous()
    if layout == "spconv1":
        return as_v2, True
    if layout == "spconv2" or target is None:
        return t, False
    if tuple(t.shape) == tuple(target.shape):
        return t, False
    if tuple(as_v2.shape) == tuple(target.shape):
        return as_v2, True
    raise ValueError(f"mmdet3d checkpoint key {key}: kernel shape {tuple(t.shape)} fits neither spconv 1.x "
                     f"(kD,kH,kW,in,out) nor 2.x (out,kD,kH,kW,in) for model shape {tuple(target.shape)}")


def load_mmdet3d_centerpoint(model: nn.Module, checkpoint: Mapping[str, object],
                              layout: str = "auto") -> ConversionReport:
    """Convert and load strictly into ``model``.

    Raises:
        ValueError: missing or unexpected keys after conversion (lists the first ones), e.g. a
            checkpoint of another head/task layout than the model's config.
    """
    sd, report = convert_mmdet3d_centerpoint(checkpoint, model, layout)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"mmdet3d checkpoint does not fit the model: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    return report


__all__ = ["ConversionReport", "KEPT_PREFIXES", "convert_mmdet3d_centerpoint", "load_mmdet3d_centerpoint"]
