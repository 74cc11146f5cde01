"""Augmentation that keeps cached teacher targets consistent with the student's inputs.

BEV augmentation (BEVDet §3.3 "BEV data augmentation": rotation, scaling, flipping in BEV) is a
``(4, 4)`` float64 matrix ``aug_from_lidar`` acting on lidar-frame points (rotation about +z,
uniform scale, x/y flips), built and drawn by :mod:`storage.bev_augment`. The same matrix

* is passed to the student (``StudentBatch.bev_aug``) so lifted camera features land in the
  augmented frame;
* warps every cached BEV map, mask and heatmap (:func:`warp_bev`: each output cell centre is
  mapped back through the inverse and sampled; bilinear for features, nearest for masks);
* moves boxes (:func:`storage.boxes.transform_boxes`) and rotates vector channels such as
  velocity or ``[cos, sin]`` headings (:func:`warp_bev_vectors`).

Image augmentation (BEVDepth §4.1: resize, crop, flip) is a ``(3, 3)`` matrix ``aug_from_orig``
on pixel coordinates (continuous, pixel ``k`` spans ``[k, k+1)``), applied to images
(:func:`warp_images`) and to per-camera LiDAR depth maps (:func:`warp_depth`, which scatters
each valid depth to its new pixel and keeps the minimum, so no depth is interpolated).

A cache that stores K pre-augmented views of each sample (``view_matrix`` per row) is reused
for a fresh student augmentation through :func:`residual_transform`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from storage.boxes import transform_boxes
from storage.grid import BEVGrid


# ---- BEV (lidar-frame) augmentation: matrices from storage.bev_augment ---------------------
def residual_transform(student_aug: np.ndarray, view_matrix: np.ndarray) -> np.ndarray:
    """``(4, 4)`` warp taking a cached view (stored in ``view_matrix @ p_lidar``) to the
    student's augmented frame: ``student_aug @ inverse(view_matrix)`` (general inverse, the
    view may include a scale)."""
    return np.asarray(student_aug, dtype=np.float64) @ np.linalg.inv(np.asarray(view_matrix, dtype=np.float64))


def _as_batch_matrix(m: np.ndarray | torch.Tensor, b: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(m, dtype=torch.float64, device=device)
    return t.expand(b, *t.shape[-2:]) if t.ndim == 2 else t


def bev_sampling_grid(dst_from_src: np.ndarray | torch.Tensor, src_grid: BEVGrid, dst_grid: BEVGrid | None = None,
                      batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """The one BEV sampling grid: ``(B, H_dst, W_dst, 2)`` float32 ``grid_sample`` coordinates
    (``align_corners=False``, :meth:`BEVGrid.grid_sample_coords`) of the source position
    ``inverse(dst_from_src) @ p`` of each destination cell centre ``p``, on ``src_grid``.

    Only the xy block of the transform is used (rotations about z, scales, flips). Computed
    elementwise in float64 (a batched matmul is ~100x slower on small CPU grids).

    Args:
        dst_from_src: ``(4, 4)`` or ``(B, 4, 4)`` (a ``(4, 4)`` is repeated ``batch`` times).
        src_grid: grid of the maps that will be sampled.
        dst_grid: grid of the output (default ``src_grid``).
        device: where the coordinates are built.
    """
    device = torch.device(device)
    a = torch.linalg.inv(_as_batch_matrix(dst_from_src, batch, device))  # src_from_dst, (B, 4, 4)
    centres = (dst_grid or src_grid).cell_centers(like=a)  # (H, W, 2) float64
    xs, ys = centres[None, ..., 0], centres[None, ..., 1]  # (1, H, W)
    def coef(i: int, j: int) -> torch.Tensor:
        return a[:, i, j].view(-1, 1, 1)

    sx = coef(0, 0) * xs + coef(0, 1) * ys + coef(0, 3)
    sy = coef(1, 0) * xs + coef(1, 1) * ys + coef(1, 3)
    return src_grid.grid_sample_coords(torch.stack([sx, sy], dim=-1)).float()


def warp_bev(maps: torch.Tensor, dst_from_src: np.ndarray | torch.Tensor, grid: BEVGrid, *,
             dst_grid: BEVGrid | None = None, mode: str = "bilinear") -> torch.Tensor:
    """Resample BEV maps into the transformed frame (and optionally another grid).

    ``out[..., r, c] = maps[..., inverse(dst_from_src) @ centre(r, c)]``; cells that come from
    outside the source range are 0 (False for masks).

    Args:
        maps: ``(C, H, W)``, ``(B, C, H, W)`` float, or bool masks ``(H, W)``/``(B, H, W)``/
            ``(B, C, H, W)`` (bool is always sampled nearest and returned bool).
        dst_from_src: ``(4, 4)`` or ``(B, 4, 4)``, e.g. ``aug_from_lidar``.
        grid: the grid of ``maps``.
        dst_grid: the output grid (default ``grid``).
        mode: ``"bilinear"`` for features/heatmaps, ``"nearest"`` for masks/labels.

    Raises:
        ValueError: ``maps``' last two dims differ from ``grid.bev_shape``.
    """
    if tuple(maps.shape[-2:]) != grid.bev_shape:
        raise ValueError(f"warp_bev: maps {tuple(maps.shape)} do not match grid bev_shape {grid.bev_shape}")
    is_bool = maps.dtype == torch.bool
    x = maps.float() if is_bool else maps
    shape = x.shape
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None] if not is_bool or torch.as_tensor(dst_from_src).ndim == 2 else x[:, None]
    coords = bev_sampling_grid(dst_from_src, grid, dst_grid or grid, x.shape[0], x.device)
    out = F.grid_sample(x, coords.to(x.dtype), mode="nearest" if is_bool else mode, padding_mode="zeros",
                        align_corners=False)
    out = out.reshape(*shape[:-2], *out.shape[-2:])
    return out > 0.5 if is_bool else out


def warp_bev_vectors(maps: torch.Tensor, dst_from_src: np.ndarray | torch.Tensor, grid: BEVGrid, *,
                     dst_grid: BEVGrid | None = None, normalize: bool = False) -> torch.Tensor:
    """Warp maps of 2-vectors (channel pairs ``[vx, vy]`` or ``[cos yaw, sin yaw]``) spatially
    *and* rotate each vector by the transform's xy block (as :func:`transform_boxes` does for
    box velocities).

    Args:
        maps: ``(B, 2P, H, W)`` float, P vector pairs.
        normalize: renormalise to unit length (for heading ``[cos, sin]`` pairs, which a scale
            would otherwise stretch).
    """
    b, c, h, w = maps.shape
    if c % 2:
        raise ValueError(f"warp_bev_vectors: channel count {c} is not a multiple of 2")
    warped = warp_bev(maps, dst_from_src, grid, dst_grid=dst_grid)
    lin = _as_batch_matrix(dst_from_src, b, maps.device)[:, :2, :2].to(maps.dtype)  # (B, 2, 2)
    pairs = warped.reshape(b, c // 2, 2, *warped.shape[-2:])
    rotated = torch.einsum("bij,bpjhw->bpihw", lin, pairs)
    if normalize:
        rotated = rotated / rotated.norm(dim=2, keepdim=True).clamp(min=1e-12)
    return rotated.reshape(warped.shape)


def warp_boxes(boxes: np.ndarray | torch.Tensor, dst_from_src: np.ndarray) -> np.ndarray:
    """``(M, 9)`` boxes into the augmented frame (centres, sizes by the scale, yaw, velocity);
    :func:`storage.boxes.transform_boxes`. Returns float64 numpy."""
    b = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    return transform_boxes(b.astype(np.float64).reshape(-1, 9), np.asarray(dst_from_src, dtype=np.float64))


# ---- image augmentation -------------------------------------------------------------------
def image_augmentation_matrix(*, resize: float = 1.0, crop: tuple[float, float] = (0.0, 0.0), flip: bool = False,
                              out_width: int | None = None, rotation: float = 0.0) -> np.ndarray:
    """``(3, 3)`` float64 ``aug_from_orig`` pixel transform: resize, then crop, then flip, then
    rotate about the output centre (BEVDepth's image-data augmentation, §4.1).

    Args:
        resize: scale factor of the image.
        crop: ``(left, top)`` pixels of the crop window in the resized image.
        flip: mirror horizontally: ``u -> out_width - u``.
        out_width: width of the output image (required when ``flip``).
        rotation: radians (image-plane rotation about the crop centre is rarely used; default 0).

    Raises:
        ValueError: ``flip`` without ``out_width``; non-positive ``resize``.
    """
    if resize <= 0:
        raise ValueError(f"image_augmentation_matrix: resize must be > 0, got {resize}")
    m = np.diag([resize, resize, 1.0])
    m = np.array([[1.0, 0.0, -crop[0]], [0.0, 1.0, -crop[1]], [0.0, 0.0, 1.0]]) @ m
    if flip:
        if out_width is None:
            raise ValueError("image_augmentation_matrix: flip needs out_width")
        m = np.array([[-1.0, 0.0, float(out_width)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    if rotation:
        c, s = math.cos(rotation), math.sin(rotation)
        m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


@dataclass(frozen=True, kw_only=True)
class ImageAugConfig:
    """Random image augmentation around the base resize (BEVDepth §4.1, nuScenes defaults).

    The base transform scales the original image by ``max(w / W0, h / H0)`` and crops the
    bottom-centre ``w x h`` window. Training multiplies the scale by ``1 + U(resize_jitter)``,
    moves the crop uniformly left/right and up by ``U(0, crop_up) x`` the spare height, and
    flips with ``flip_prob``. A negative jitter can leave black borders (as BEVDepth's).
    """

    resize_jitter: tuple[float, float] = (-0.06, 0.11)
    crop_up: float = 0.2
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        """Raises ValueError (naming the field) unless ``-1 < resize_jitter[0] <= resize_jitter[1]``
        (the scale stays positive), ``crop_up`` and ``flip_prob`` lie in ``[0, 1]``."""
        low, high = self.resize_jitter
        if not -1.0 < low <= high < math.inf:
            raise ValueError(f"ImageAugConfig.resize_jitter must be (low, high) with -1 < low <= high, got "
                             f"{self.resize_jitter}")
        for name in ("crop_up", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ImageAugConfig.{name} must be in [0, 1], got {getattr(self, name)}")

    def sample(self, orig_wh: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator | None = None
               ) -> np.ndarray:
        """``(3, 3)`` float64 ``aug_from_orig`` for a source image of ``orig_wh`` ``(W0, H0)``
        and an output of ``out_hw`` ``(h, w)``; ``rng=None`` gives the deterministic base
        transform (:func:`base_image_transform`)."""
        return base_image_transform(orig_wh, out_hw, rng, self)


def base_image_transform(orig_wh: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator | None = None,
                         aug: ImageAugConfig | None = None) -> np.ndarray:
    """``(3, 3)`` float64 ``aug_from_orig`` (see :class:`ImageAugConfig`); deterministic when
    ``rng`` or ``aug`` is None. ``orig_wh`` is ``(W0, H0)``, ``out_hw`` ``(h, w)``."""
    (w0, h0), (h, w) = orig_wh, out_hw
    r = max(w / w0, h / h0)
    if rng is not None and aug is not None:
        r *= 1.0 + rng.uniform(*aug.resize_jitter)
    nw, nh = w0 * r, h0 * r
    left, top = (nw - w) / 2, nh - h
    flip = False
    if rng is not None and aug is not None:
        left = rng.uniform(0.0, max(nw - w, 0.0))
        top -= rng.uniform(0.0, aug.crop_up) * max(nh - h, 0.0)
        flip = bool(rng.random() < aug.flip_prob)
    return image_augmentation_matrix(resize=r, crop=(left, top), flip=flip, out_width=w)


def warp_images(images: torch.Tensor, img_aug: np.ndarray | torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Apply ``aug_from_orig`` to images by inverse bilinear sampling.

    Args:
        images: ``(N, C, H, W)`` float.
        img_aug: ``(3, 3)`` or ``(N, 3, 3)``.
        out_size: ``(h, w)`` of the output.

    Returns:
        ``(N, C, h, w)``; pixels from outside the source image are 0.
    """
    n, _, h_in, w_in = images.shape
    coords = _pixel_sampling_grid(img_aug, (h_in, w_in), out_size, n, images.device)
    return F.grid_sample(images, coords.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def _pixel_sampling_grid(img_aug: np.ndarray | torch.Tensor, in_size: tuple[int, int], out_size: tuple[int, int],
                         n: int, device: torch.device) -> torch.Tensor:
    a = torch.linalg.inv(_as_batch_matrix(img_aug, n, device))  # orig_from_aug
    h, w = out_size
    v, u = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64) + 0.5,
                          torch.arange(w, device=device, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (h, w, 3)
    src = torch.einsum("nij,hwj->nhwi", a, pix)
    src = src[..., :2] / src[..., 2:3]
    return torch.stack([src[..., 0] / in_size[1] * 2 - 1, src[..., 1] / in_size[0] * 2 - 1], dim=-1).float()


def warp_depth(depth: torch.Tensor, img_aug: np.ndarray | torch.Tensor, out_size: tuple[int, int],
               src_stride: float = 1.0, dst_stride: float = 1.0) -> torch.Tensor:
    """Move sparse per-camera LiDAR depth maps through an image augmentation, min-preserving.

    Every valid source cell (depth > 0) is mapped, at its centre, to the augmented image and
    scattered into the output cell it lands in; where several land together the minimum depth
    is kept (the nearest surface, as BEVDepth's depth-label downsampling). Depth values are
    not changed (metres along the optical axis are invariant to resize/crop/flip).

    Args:
        depth: ``(N, h_in, w_in)`` float metres, 0 = no point.
        img_aug: ``(3, 3)`` or ``(N, 3, 3)`` pixel transform from the image the depth map was
            built for to the augmented image (if the cache built depth for a resized image with
            ``K' = S @ K``, pass ``img_aug @ inverse(S)``).
        out_size: ``(h, w)`` cells of the output.
        src_stride: pixels per source cell (1 for full-resolution depth maps).
        dst_stride: pixels per output cell (e.g. 16 to land directly on the depth-net grid).

    Returns:
        ``(N, h, w)`` float, 0 where no point landed.
    """
    n, h_in, w_in = depth.shape
    a = _as_batch_matrix(img_aug, n, depth.device)
    v, u = torch.meshgrid((torch.arange(h_in, device=depth.device, dtype=torch.float64) + 0.5) * src_stride,
                          (torch.arange(w_in, device=depth.device, dtype=torch.float64) + 0.5) * src_stride,
                          indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    dst = torch.einsum("nij,pj->npi", a, pix)
    col = torch.floor(dst[..., 0] / dst[..., 2] / dst_stride).long()
    row = torch.floor(dst[..., 1] / dst[..., 2] / dst_stride).long()
    h, w = out_size
    vals = depth.reshape(n, -1)
    keep = (vals > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    cam = torch.arange(n, device=depth.device)[:, None].expand_as(col)
    index = (cam * h * w + row * w + col)[keep]
    inf = torch.full((n * h * w,), float("inf"), dtype=depth.dtype, device=depth.device)
    out = inf.scatter_reduce(0, index, vals[keep], reduce="amin", include_self=True)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out).reshape(n, h, w)
