"""What a teacher leaves behind for one (sample, view) row, before encoding.

This is the contract between teachers/target builders (producers, via ``pipeline``) and the
cache writer (``storage``). Arrays are numpy, in the row's BEV frame (the LiDAR frame, or
the augmented LiDAR frame of a view: ``view_matrix @ p_lidar``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(kw_only=True, eq=False)
class SampleTargets:
    """Distillation targets of one row.

    Attributes:
        bev_features: name -> ``(C, H, W)`` float32 BEV map on the teacher's output grid
            (names: ``lidar_bev``, ``camera_bev``, ``fused_bev``, ``neck``, ...).
        heatmap: ``(K, H, W)`` float32 class heatmap in [0, 1] (sigmoid), K = 10 classes.
        boxes: ``(M, 9)`` float32 teacher boxes ``[x, y, z, l, w, h, yaw, vx, vy]``.
        scores: ``(M,)`` float32 in [0, 1].
        labels: ``(M,)`` int64 class ids.
        instance_features: ``(M, C)`` float32 BEV features sampled at the box centres.
        lidar_depth: ``(6, h, w)`` float32 per-camera min LiDAR depth per cell, m; 0 = no point.
        depth_probs: ``(6, D, h, w)`` float32 teacher depth distributions (softmax over D), or None.
        fg_mask: ``(H, W)`` bool foreground cells.
        view_mask: ``(6, H, W)`` bool cells inside each camera's frustum.
        view_matrix: ``(4, 4)`` float64 BEV augmentation of this row (identity for the plain view).
    """

    bev_features: dict[str, np.ndarray] = field(default_factory=dict)
    heatmap: np.ndarray | None = None
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    instance_features: np.ndarray | None = None
    lidar_depth: np.ndarray | None = None
    depth_probs: np.ndarray | None = None
    fg_mask: np.ndarray | None = None
    view_mask: np.ndarray | None = None
    view_matrix: np.ndarray = field(default_factory=lambda: np.eye(4))
