"""The one BEV augmentation (BEVDet §3.3 "BEV data augmentation"; SECOND §2.5 / CenterPoint global
rotation, scaling and flipping): a ``(4, 4)`` float64 matrix ``aug_from_lidar`` acting on
lidar-frame points, and the one random sampler of it.

It lives in ``storage`` because it defines what the cache persists (a multi-view cache stores
each row's ``view_matrix``) and because teachers (training), the cache job (views) and the
student (training) all draw it; applying it to maps is the student's
(:mod:`student.augment`), to points and boxes the teacher trainer's and the cache job's.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from storage.arrays import Float64Array


def bev_augmentation_matrix(*, rotation: float = 0.0, scale: float = 1.0, flip_x: bool = False,
                            flip_y: bool = False, translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
                            ) -> Float64Array:
    """``(4, 4)`` float64 ``aug_from_lidar = T @ (scale * R_z(rotation)) @ F``.

    Args:
        rotation: radians, counter-clockwise about +z.
        scale: uniform scale (> 0).
        flip_x: mirror x (``x -> -x``) before rotating.
        flip_y: mirror y (``y -> -y``) before rotating.
        translation: metres, applied last.

    Raises:
        ValueError: non-positive scale.
    """
    if scale <= 0:
        raise ValueError(f"bev_augmentation_matrix: scale must be > 0, got {scale}")
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    c, s = math.cos(rotation), math.sin(rotation)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    out = np.eye(4)
    out[:3, :3] = scale * rot @ flip
    out[:3, 3] = translation
    return out


@dataclass(frozen=True, kw_only=True)
class BEVAugConfig:
    """Ranges of the random BEV augmentation (BEVDepth nuScenes defaults: +-22.5 deg, 0.95-1.05,
    flips 0.5; mmdet3d's CenterPoint uses +-0.3925 rad, the same scales and flips).

    Attributes:
        rotation_range: radians, rotation drawn uniformly in it.
        scale_range: uniform scale drawn uniformly in it.
        flip_prob: probability of each of the x and y mirrors (0 disables flips).
    """

    rotation_range: tuple[float, float] = (-math.pi / 8, math.pi / 8)
    scale_range: tuple[float, float] = (0.95, 1.05)
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        """Raises ValueError (naming the field) for a range with low > high, a scale range not
        above 0, or ``flip_prob`` outside [0, 1]."""
        name = type(self).__name__
        for field_name in ("rotation_range", "scale_range"):
            low, high = getattr(self, field_name)
            if not low <= high:
                raise ValueError(f"{name}.{field_name} must be (low, high) with low <= high, got ({low}, {high})")
        if not 0.0 < self.scale_range[0] < math.inf:
            raise ValueError(f"{name}.scale_range must be above 0, got {self.scale_range}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"{name}.flip_prob must be in [0, 1], got {self.flip_prob}")

    def sample(self, rng: np.random.Generator) -> Float64Array:
        """A random ``(4, 4)`` ``aug_from_lidar`` (:func:`bev_augmentation_matrix`); draws
        rotation, scale, flip x, flip y from ``rng`` in that order."""
        return bev_augmentation_matrix(rotation=float(rng.uniform(*self.rotation_range)),
                                       scale=float(rng.uniform(*self.scale_range)),
                                       flip_x=bool(rng.random() < self.flip_prob),
                                       flip_y=bool(rng.random() < self.flip_prob))


@dataclass(frozen=True, kw_only=True)
class ViewAugmentConfig(BEVAugConfig):
    """The BEV augmentation of a cache's views ``k > 0`` (BEVDet §3.3): :meth:`BEVAugConfig.sample`
    with a generator seeded by ``seed``, the sample token and the view index, so a rerun of the
    cache job draws the same matrices.
    """

    seed: int = 0

    def matrix(self, sample_token: str, view: int) -> Float64Array:
        """``(4, 4)`` float64 ``aug_from_lidar`` of a row; identity for view 0."""
        if view == 0:
            return np.eye(4)
        return self.sample(np.random.default_rng([self.seed, zlib.crc32(sample_token.encode()), view]))


__all__ = ["BEVAugConfig", "ViewAugmentConfig", "bev_augmentation_matrix"]
