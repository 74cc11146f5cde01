"""Synthetic :class:`CacheRow` with realistic statistics, for tests and benches (a test fixture).

BEV features imitate post-ReLU detector maps: spatially smooth (low-resolution noise upsampled),
about half zeros, per-channel gains spread log-normally. LiDAR depth is sparse (a few percent of
pixels carry a depth), depth distributions are softmaxes, heatmaps are Gaussians at box centres
(CenterPoint-style), masks follow from boxes and camera sectors. Numbers, not semantics: use a
real teacher for anything that judges a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.cache.row import CacheRow


@dataclass(frozen=True, kw_only=True)
class SyntheticTargetsConfig:
    """Shapes of the generated targets (defaults: a tiny test set).

    Args:
        bev_channels: stage name -> channels C of ``(C, H, W)`` BEV maps.
        bev_shape: ``(H, W)``.
        num_classes: heatmap classes K.
        num_boxes: boxes M per row.
        instance_channels: C of ``(M, C)`` instance features (0: none).
        depth_shape: ``(h, w)`` of per-camera maps (``None``: no lidar_depth).
        depth_bins: D of depth distributions (0: none).
        depth_density: fraction of camera pixels with a LiDAR depth.
        zero_fraction: target fraction of zeros in BEV features (ReLU).
    """

    bev_channels: tuple[tuple[str, int], ...] = (("lidar_bev", 8),)
    bev_shape: tuple[int, int] = (16, 16)
    num_classes: int = 3
    num_boxes: int = 5
    instance_channels: int = 8
    depth_shape: tuple[int, int] | None = (4, 8)
    depth_bins: int = 6
    depth_density: float = 0.05
    zero_fraction: float = 0.5


def smooth_relu_features(rng: np.random.Generator, c: int, h: int, w: int, zero_fraction: float = 0.5,
                         factor: int = 4) -> np.ndarray:
    """``(C, H, W)`` float32 post-ReLU-like features (smooth, ~``zero_fraction`` zeros)."""
    lh, lw = -(-h // factor), -(-w // factor)
    low = rng.standard_normal((c, lh, lw)).astype(np.float32)
    x = np.repeat(np.repeat(low, factor, axis=1), factor, axis=2)[:, :h, :w]
    x = 0.5 * (x + np.roll(x, 1, axis=1)) + 0.3 * rng.standard_normal((c, h, w)).astype(np.float32)
    bias = np.quantile(x.reshape(c, -1), zero_fraction, axis=1)[:, None, None]
    gain = np.exp(0.5 * rng.standard_normal((c, 1, 1))).astype(np.float32)
    return (np.maximum(x - bias, 0) * gain).astype(np.float32)


def _heatmap(rng: np.random.Generator, k: int, h: int, w: int, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hm = np.zeros((k, h, w), np.float32)
    for (cy, cx), lab in zip(centres, labels, strict=True):
        sigma = rng.uniform(0.7, 2.0)
        hm[lab] = np.maximum(hm[lab], np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)))
    return hm


def synthetic_targets(rng: np.random.Generator, cfg: SyntheticTargetsConfig = SyntheticTargetsConfig()) -> CacheRow:
    """One row of synthetic targets (see the module docstring); all float arrays float32."""
    h, w = cfg.bev_shape
    m = cfg.num_boxes
    centres = rng.uniform([0, 0], [h, w], size=(m, 2)).astype(np.float32)
    labels = rng.integers(0, cfg.num_classes, size=m).astype(np.int64)
    boxes = np.concatenate([rng.uniform(-50, 50, (m, 2)), rng.uniform(-2, 1, (m, 1)), rng.uniform(0.5, 5, (m, 3)),
                            rng.uniform(-np.pi, np.pi, (m, 1)), rng.normal(0, 2, (m, 2))], axis=1).astype(np.float32)
    heatmap = _heatmap(rng, cfg.num_classes, h, w, centres, labels)
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.arctan2(yy - h / 2 + 0.5, xx - w / 2 + 0.5)
    view_mask = np.stack([np.cos(angle - a) > 0.3 for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)])
    out = CacheRow(
        bev_features={name: smooth_relu_features(rng, c, h, w, cfg.zero_fraction) for name, c in cfg.bev_channels},
        heatmap=heatmap, boxes=boxes, scores=rng.uniform(0.1, 1.0, m).astype(np.float32), labels=labels,
        instance_features=(rng.standard_normal((m, cfg.instance_channels)).astype(np.float32)
                           if cfg.instance_channels else None),
        fg_mask=heatmap.max(axis=0) > 0.5, view_mask=view_mask)
    if cfg.depth_shape is not None:
        dh, dw = cfg.depth_shape
        hit = rng.random((6, dh, dw)) < cfg.depth_density
        out.lidar_depth = np.where(hit, rng.uniform(1.0, 60.0, (6, dh, dw)), 0.0).astype(np.float32)
        if cfg.depth_bins:
            logits = 2.0 * rng.standard_normal((6, cfg.depth_bins, dh, dw)).astype(np.float32)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            out.depth_probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out
