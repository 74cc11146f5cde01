"""CenterPoint detection head (Yin et al., "Center-based 3D Object Detection and Tracking",
CVPR 2021, §3 "CenterPoint" and §4 "first stage"), shared by the LiDAR teacher and the student.

Structure and parameter names follow mmdetection3d's ``CenterHead`` so official checkpoints
load without renaming (``shared_conv.conv.weight``, ``task_heads.0.heatmap.1.bias`` ...):

* ``shared_conv``: 3x3 conv + BN + ReLU, ``in_channels -> shared_channels``.
* ``task_heads[t]``: one :class:`SeparateHead` per class group with branches ``reg`` (2),
  ``height`` (1), ``dim`` (3, log size), ``rot`` (2, sin/cos), ``vel`` (2) and ``heatmap``
  (K_t logits); each branch is ``(num_convs - 1)`` x [3x3 conv + BN + ReLU] + a 3x3 conv.

Targets and losses live in :mod:`teachers.center_gt` and are re-exported here.

Typical use::

    head = CenterHead(CenterHeadConfig(in_channels=64, num_classes=10))
    outs = head(bev)                                   # list[CenterHeadOutput], one per task
    targets = build_center_targets(boxes, labels, out_grid, head.config.task_classes)
    losses = head.loss(outs, targets)
    boxes, scores, labels = decode_boxes(outs, out_grid, score_threshold=0.1, max_boxes=100)
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from storage.grid import BEVGrid
from teachers.center_gt import (CODE_SIZE, DEFAULT_CODE_WEIGHTS, CenterTargets, GaussianFocalLoss,
                                     build_center_targets, gather_at, gaussian_focal_loss, gaussian_radius,
                                     regression_l1_loss)

#: mmdetection3d's nuScenes task grouping of the 10 classes (indices into NUSCENES_CLASSES):
#: [car], [truck, construction_vehicle], [bus, trailer], [barrier], [motorcycle, bicycle],
#: [pedestrian, traffic_cone].
NUSCENES_TASKS: tuple[tuple[int, ...], ...] = ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))
#: Circle-NMS radius per class in metres (CenterPoint nuScenes ``min_radius`` per task, as distance).
NUSCENES_NMS_RADIUS: tuple[float, ...] = (4.0, 12.0, 12.0, 10.0, 10.0, 1.0, 0.85, 0.85, 0.175, 0.175)
#: Regression branches: name -> channels, in ``anno_box`` order.
REGRESSION_HEADS: tuple[tuple[str, int], ...] = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))


@dataclass(frozen=True, kw_only=True)
class CenterHeadConfig:
    """CenterHead hyper-parameters (mmdet3d nuScenes CenterPoint values as defaults where they exist).

    Attributes:
        in_channels: channels of the input BEV map.
        num_classes: K, total classes.
        tasks: class ids per task head; ``None`` = one task holding all classes in order.
        shared_channels: output channels of ``shared_conv`` (mmdet3d ``share_conv_channel``).
        head_channels: hidden channels of each branch (mmdet3d ``head_conv``).
        num_convs: convs per regression branch (mmdet3d ``common_heads`` second value).
        num_heatmap_convs: convs in the heatmap branch.
        init_bias: initial heatmap logit bias (-2.19 = sigmoid 0.1, CenterNet §4).
        code_weights: per-value weights of the L1 loss.
        reg_weight: weight of the L1 loss (mmdet3d ``loss_bbox.loss_weight``).
        min_overlap / min_radius: Gaussian target radius (CenterPoint: 0.1, 2 cells).
        max_objs: objects per sample and task in the targets.
    """

    in_channels: int
    num_classes: int = 10
    tasks: tuple[tuple[int, ...], ...] | None = None
    shared_channels: int = 64
    head_channels: int = 64
    num_convs: int = 2
    num_heatmap_convs: int = 2
    init_bias: float = -2.19
    code_weights: tuple[float, ...] = DEFAULT_CODE_WEIGHTS
    reg_weight: float = 0.25
    min_overlap: float = 0.1
    min_radius: int = 2
    max_objs: int = 500

    @property
    def task_classes(self) -> tuple[tuple[int, ...], ...]:
        """Class ids per task (``tasks`` or one task with every class)."""
        return self.tasks if self.tasks is not None else (tuple(range(self.num_classes)),)


class ConvBNReLU(nn.Module):
    """3x3 conv (no bias) + BatchNorm + ReLU; submodule names ``conv``/``bn`` as mmcv ``ConvModule``.

    BN defaults are mmdet3d CenterHead's (``BN2d``: eps 1e-5, momentum 0.1).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=eps, momentum=momentum)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _branch(c_in: int, hidden: int, c_out: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs - 1):
        layers.append(ConvBNReLU(c_in, hidden))
        c_in = hidden
    layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=True))
    return nn.Sequential(*layers)


@dataclass(kw_only=True, eq=False)
class CenterHeadOutput:
    """Raw maps of one task head on the output grid (lidar frame, row = +y, col = +x).

    Attributes:
        classes: global class ids of the ``heatmap`` channels.
        heatmap: ``(B, K_t, H, W)`` float32 logits (apply sigmoid for probabilities).
        reg: ``(B, 2, H, W)`` centre offset inside the cell, cells ``[dx, dy]``.
        height: ``(B, 1, H, W)`` gravity-centre z, m.
        dim: ``(B, 3, H, W)`` log ``[l, w, h]``, log m.
        rot: ``(B, 2, H, W)`` ``[sin yaw, cos yaw]``.
        vel: ``(B, 2, H, W)`` ``[vx, vy]`` m/s.
    """

    classes: tuple[int, ...]
    heatmap: torch.Tensor
    reg: torch.Tensor
    height: torch.Tensor
    dim: torch.Tensor
    rot: torch.Tensor
    vel: torch.Tensor

    def code(self) -> torch.Tensor:
        """``(B, 10, H, W)`` regression maps concatenated in target order."""
        return torch.cat([self.reg, self.height, self.dim, self.rot, self.vel], dim=1)


@dataclass(kw_only=True, eq=False)
class CenterHeadLosses:
    """Scalar losses: ``heatmap`` (focal, per task summed), ``regression`` (weighted L1), ``total``."""

    heatmap: torch.Tensor
    regression: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.heatmap + self.regression


class SeparateHead(nn.Module):
    """One task's branches (attribute names = mmdet3d ``SeparateHead``)."""

    def __init__(self, config: CenterHeadConfig, num_task_classes: int) -> None:
        super().__init__()
        c, hid = config.shared_channels, config.head_channels
        for name, ch in REGRESSION_HEADS:
            self.add_module(name, _branch(c, hid, ch, config.num_convs))
        self.heatmap = _branch(c, hid, num_task_classes, config.num_heatmap_convs)
        last = self.heatmap[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, config.init_bias)

    def forward(self, x: torch.Tensor, classes: tuple[int, ...]) -> CenterHeadOutput:
        maps = {name: getattr(self, name)(x) for name, _ in REGRESSION_HEADS}
        return CenterHeadOutput(classes=classes, heatmap=self.heatmap(x), **maps)


class CenterHead(nn.Module):
    """CenterPoint head: shared conv + one :class:`SeparateHead` per task (CenterPoint §3)."""

    def __init__(self, config: CenterHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.shared_conv = ConvBNReLU(config.in_channels, config.shared_channels)
        self.task_heads = nn.ModuleList(SeparateHead(config, len(c)) for c in config.task_classes)
        self.focal = GaussianFocalLoss()

    def forward(self, x: torch.Tensor) -> list[CenterHeadOutput]:
        """``x``: ``(B, in_channels, H, W)`` BEV features -> one output per task."""
        shared = self.shared_conv(x)
        return [head(shared, classes) for head, classes in zip(self.task_heads, self.config.task_classes, strict=True)]

    def build_targets(self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                      grid: BEVGrid) -> list[CenterTargets]:
        """Targets for every task on the output ``grid`` (see :func:`build_center_targets`)."""
        device = next(self.parameters()).device
        return build_center_targets(gt_boxes, gt_labels, grid, self.config.task_classes,
                                    max_objs=self.config.max_objs, min_overlap=self.config.min_overlap,
                                    min_radius=self.config.min_radius, device=device)

    def loss(self, outputs: Sequence[CenterHeadOutput], targets: Sequence[CenterTargets]) -> CenterHeadLosses:
        """Focal heatmap loss + ``reg_weight`` x L1 box loss, summed over tasks (CenterPoint §3)."""
        pairs = list(zip(outputs, targets, strict=True))
        hm = functools.reduce(operator.add, [self.focal(o.heatmap, t.heatmap) for o, t in pairs])
        reg = functools.reduce(operator.add, [regression_l1_loss(o.code(), t, self.config.code_weights)
                                              for o, t in pairs])
        return CenterHeadLosses(heatmap=hm, regression=self.config.reg_weight * reg)


def merge_heatmaps(outputs: Sequence[CenterHeadOutput], num_classes: int) -> torch.Tensor:
    """``(B, K, H, W)`` class probabilities (sigmoid) in global class order from per-task logits."""
    first = outputs[0].heatmap
    b, _, h, w = first.shape
    out = first.new_zeros((b, num_classes, h, w))
    for o in outputs:
        out[:, list(o.classes)] = o.heatmap.sigmoid()
    return out


def circle_nms(centers: torch.Tensor, scores: torch.Tensor, radius: torch.Tensor,
               labels: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy centre-distance NMS (CenterPoint §4: boxes within ``radius`` m of a higher-scoring
    box are suppressed). With ``labels``, only boxes of the same class suppress each other
    (mmdet3d runs it per task head; per class keeps a pedestrian next to a car).

    Args:
        centers: ``(M, 2)`` BEV centres, m. scores: ``(M,)``. radius: ``(M,)`` m, per box (its class).
        labels: ``(M,)`` class ids, or None for class-agnostic suppression.

    Returns:
        ``(M',)`` int64 kept indices, by descending score.
    """
    order = scores.argsort(descending=True)
    c = centers[order]
    dist = torch.cdist(c, c)
    suppress = dist <= radius[order][:, None]
    if labels is not None:
        lab = labels[order]
        suppress &= lab[:, None] == lab[None, :]
    keep = torch.ones(len(order), dtype=torch.bool, device=centers.device)
    for i in range(len(order)):
        if keep[i]:
            later = suppress[i].clone()
            later[: i + 1] = False
            keep &= ~later
    return order[keep]


def _decode_task(o: CenterHeadOutput, b: int, grid: BEVGrid, score_threshold: float, pre_max: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k, h, w = o.heatmap.shape[1:]
    probs = o.heatmap[b].sigmoid().reshape(-1)
    top = min(pre_max, probs.numel())
    scores, flat = probs.topk(top)
    keep = scores > score_threshold
    scores, flat = scores[keep], flat[keep]
    cls, cell = flat // (h * w), flat % (h * w)
    row, col = cell // w, cell % w
    code = o.code()[b].reshape(CODE_SIZE, -1)[:, cell]  # (10, M)
    xy = grid.cell_float_to_metric(torch.stack([row + code[1], col + code[0]], dim=-1))  # (M, 2)
    x, y = xy[:, 0], xy[:, 1]
    size = code[3:6].exp()
    yaw = torch.atan2(code[6], code[7])
    boxes = torch.stack([x, y, code[2], size[0], size[1], size[2], yaw, code[8], code[9]], dim=1)
    labels = torch.as_tensor(o.classes, device=cls.device)[cls]
    return boxes, scores, labels


@torch.no_grad()
def decode_boxes(outputs: CenterHeadOutput | Sequence[CenterHeadOutput], grid: BEVGrid,
                 score_threshold: float = 0.1, max_boxes: int = 500,
                 nms_radius: Sequence[float] | None = NUSCENES_NMS_RADIUS, pre_max: int = 1000
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Boxes from CenterHead maps: top-k peaks, regression read-out, circle NMS (CenterPoint §4).

    Args:
        outputs: one output or one per task, maps ``(B, *, H, W)``.
        grid: the output grid, ``grid.bev_shape == (H, W)``.
        score_threshold: keep peaks with probability above this.
        max_boxes: boxes kept per sample after NMS (highest scores).
        nms_radius: per global class, metres (``None`` disables NMS).
        pre_max: peaks taken per task before thresholding.

    Returns:
        Per sample (lists of length B): boxes ``(M, 9)`` float32 ``[x,y,z,l,w,h,yaw,vx,vy]``
        lidar frame, scores ``(M,)`` float32, labels ``(M,)`` int64 global class ids.

    Raises:
        ValueError: if the maps' ``(H, W)`` differ from ``grid.bev_shape``.
    """
    outs = [outputs] if isinstance(outputs, CenterHeadOutput) else list(outputs)
    if tuple(outs[0].heatmap.shape[-2:]) != grid.bev_shape:
        raise ValueError(f"decode_boxes: heatmap {tuple(outs[0].heatmap.shape[-2:])} does not match "
                         f"grid bev_shape {grid.bev_shape}; pass the head's output grid")
    all_boxes, all_scores, all_labels = [], [], []
    for b in range(outs[0].heatmap.shape[0]):
        parts = [_decode_task(o, b, grid, score_threshold, pre_max) for o in outs]
        boxes, scores, labels = (torch.cat(p) for p in zip(*parts, strict=True))
        if nms_radius is not None and len(boxes):
            radius = boxes.new_tensor(nms_radius)[labels]
            keep = circle_nms(boxes[:, :2], scores, radius, labels)
        else:
            keep = scores.argsort(descending=True)
        keep = keep[:max_boxes]
        all_boxes.append(boxes[keep].float())
        all_scores.append(scores[keep].float())
        all_labels.append(labels[keep].long())
    return all_boxes, all_scores, all_labels


__all__ = [
    "CODE_SIZE", "NUSCENES_NMS_RADIUS", "NUSCENES_TASKS", "CenterHead", "CenterHeadConfig", "CenterHeadLosses",
    "CenterHeadOutput", "CenterTargets", "ConvBNReLU", "GaussianFocalLoss", "SeparateHead", "build_center_targets",
    "circle_nms", "decode_boxes", "gather_at", "gaussian_focal_loss", "gaussian_radius", "merge_heatmaps",
    "regression_l1_loss",
]
