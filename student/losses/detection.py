"""Detection loss of the student: CenterPoint's Gaussian focal heatmap loss + weighted L1 box
regression (Yin et al., CVPR 2021, §3; focal loss of CornerNet §3.3 Eq. 1), reusing the
teacher's implementation in :mod:`teachers.centerhead` so both heads train identically.

Targets come from boxes: ground truth, or a teacher's boxes as pseudo-labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from storage.grid import BEVGrid
from teachers.centerhead import CenterHead, CenterHeadLosses, CenterHeadOutput


class DetectionLoss(nn.Module):
    """``L = focal(heatmap) + reg_weight * L1(box code)`` through ``head.build_targets`` and ``head.loss``.

    Args:
        head: the student's :class:`teachers.centerhead.CenterHead` (its config fixes tasks,
            Gaussian radius and code weights).
    """

    def __init__(self, head: CenterHead) -> None:
        super().__init__()
        self._head = [head]  # not a submodule: its parameters belong to the student

    def forward(self, outputs: Sequence[CenterHeadOutput], boxes: Sequence[torch.Tensor],
                labels: Sequence[torch.Tensor], grid: BEVGrid) -> CenterHeadLosses:
        """Per-sample ``boxes (M, 9)`` and ``labels (M,)`` on the head's output ``grid``."""
        head = self._head[0]
        targets = head.build_targets(boxes, labels, grid)
        return head.loss(outputs, targets)
