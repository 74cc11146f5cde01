"""Configuration of the camera-only student (STYLE.md §4-6): one frozen dataclass per component.

Derived values (``num_depth_bins``, feature sizes) are properties, never fields. Every config
round-trips through :meth:`StudentConfig.to_dict` / :meth:`StudentConfig.from_dict` (JSON).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from storage.grid import DEMO_GRID, ROAD_GRID, BEVGrid
from teachers.lss import num_depth_bins


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """Image backbone (our own ResNet, He et al. CVPR 2016).

    Args:
        depth: 18, 34 or 50.
        base_width: channels of the stem and first stage (64 = the standard ResNet; smaller
            for tests).
        pretrained: load torchvision ImageNet weights when torchvision is installed and
            ``base_width == 64`` (guarded: a no-op otherwise, see ``student.model.resnet``).
    """

    depth: int = 50
    base_width: int = 64
    pretrained: bool = False

    def __post_init__(self) -> None:
        if self.depth not in (18, 34, 50):
            raise ValueError(f"BackboneConfig.depth must be 18, 34 or 50, got {self.depth}")
        if self.base_width < 1:
            raise ValueError(f"BackboneConfig.base_width must be at least 1, got {self.base_width}")


@dataclass(frozen=True, kw_only=True)
class DepthConfig:
    """Depth distribution of the LSS lift (Philion & Fidler ECCV 2020 §4.1; BEVDepth §3).

    Args:
        depth_bins: ``(d_min, d_max, step)`` metres along the camera's optical axis. Bin ``i``
            covers ``[d_min + i*step, d_min + (i+1)*step)``; its centre lifts the features. The
            one source of the student's depth bins: the depth losses read them from here.
        mid_channels: hidden channels of the depth net.
        camera_aware: BEVDepth §3.2 camera-aware depth: an MLP of the intrinsics, image
            augmentation and extrinsics gates the depth branch (squeeze-excitation).
    """

    depth_bins: tuple[float, float, float] = (2.0, 58.0, 0.5)
    mid_channels: int = 256
    camera_aware: bool = True

    def __post_init__(self) -> None:
        d_min, d_max, step = (float(v) for v in self.depth_bins)
        if not (0 < d_min < d_max and step > 0):
            raise ValueError(f"DepthConfig.depth_bins must be (d_min>0, d_max>d_min, step>0), got {self.depth_bins}")
        object.__setattr__(self, "depth_bins", (d_min, d_max, step))
        if self.mid_channels < 1:
            raise ValueError(f"DepthConfig.mid_channels must be at least 1, got {self.mid_channels}")

    @property
    def num_depth_bins(self) -> int:
        """``D``, the number of depth bins (:func:`teachers.lss.num_depth_bins`)."""
        return num_depth_bins(self.depth_bins)


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """The whole student: backbone -> FPN -> depth net -> lift-splat -> BEV encoder -> CenterHead.

    Args:
        backbone: image backbone.
        fpn_channels: channels of the stride-``feature_stride`` image feature map.
        feature_stride: image-feature stride (16: the FPN fuses C4 and C5).
        depth: depth-bin and depth-net settings.
        context_channels: channels of the lifted context feature = channels of ``camera_bev``.
        bev_grid: the student's BEV grid (lift-splat target and head output grid).
        bev_channels: channels of ``bev_feature`` (BEV encoder output, head input).
        image_hw: ``(height, width)`` pixels of the network input (after image augmentation).
        num_cameras: cameras per sample (6 for nuScenes).
        num_classes: detection classes (10 nuScenes classes).
        simdistill: add SimDistill's simulated-LiDAR branch and fuser (Zhao et al. AAAI 2024).
        head_channels: hidden channels of the CenterHead branches.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = 256
    feature_stride: int = 16
    depth: DepthConfig = field(default_factory=DepthConfig)
    context_channels: int = 80
    bev_grid: BEVGrid = field(default_factory=lambda: DEMO_GRID.with_stride(2))
    bev_channels: int = 256
    image_hw: tuple[int, int] = (256, 704)
    num_cameras: int = 6
    num_classes: int = 10
    simdistill: bool = False
    head_channels: int = 64

    def __post_init__(self) -> None:
        """Raises ValueError (naming the field) for a non-positive size or channel count, an
        ``image_hw`` not divisible by ``feature_stride``, or an odd ``bev_shape``."""
        h, w = self.image_hw
        if h < 1 or w < 1:
            raise ValueError(f"StudentConfig.image_hw must be positive (height, width) pixels, got {self.image_hw}")
        for name in ("fpn_channels", "context_channels", "bev_channels", "num_cameras", "num_classes",
                     "head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"StudentConfig.{name} must be at least 1, got {getattr(self, name)}")
        if h % self.feature_stride or w % self.feature_stride:
            raise ValueError(f"StudentConfig.image_hw {self.image_hw} (height, width) not divisible by feature_stride "
                             f"{self.feature_stride}")
        if self.feature_stride != 16:
            raise ValueError(f"StudentConfig.feature_stride: only 16 is implemented, got {self.feature_stride}")
        bh, bw = self.bev_grid.bev_shape
        if bh % 2 or bw % 2:
            raise ValueError(f"StudentConfig.bev_grid: bev_shape {self.bev_grid.bev_shape} must be even "
                             "(the BEV encoder downsamples by 2)")

    @property
    def feature_size(self) -> tuple[int, int]:
        """``(h', w')`` of the image features and of ``depth_probs``."""
        return (self.image_hw[0] // self.feature_stride, self.image_hw[1] // self.feature_stride)

    @classmethod
    def tiny(cls, *, simdistill: bool = False) -> StudentConfig:
        """The test configuration: ResNet-18 at width 16, 64x176 images, 32x32 BEV on DEMO_GRID."""
        return cls(backbone=BackboneConfig(depth=18, base_width=16), fpn_channels=32,
                   depth=DepthConfig(depth_bins=(2.0, 58.0, 2.0), mid_channels=32),
                   context_channels=16, bev_grid=DEMO_GRID.with_stride(8), bev_channels=32,
                   image_hw=(64, 176), simdistill=simdistill, head_channels=16)

    @classmethod
    def demo(cls) -> StudentConfig:
        """The demo's CPU student: ResNet-18 at width 16, 64x176 images, 2 m depth bins from 2 to
        58 m, BEV 64x32 cells of 1.6 m on ``ROAD_GRID.with_stride(8)`` (half the demo teacher's
        resolution: a training step costs ~0.27 s on 2 cores, 0.52 s on the teacher's 0.8 m grid;
        the distillation losses resample between the two grids)."""
        return cls(backbone=BackboneConfig(depth=18, base_width=16), fpn_channels=32,
                   depth=DepthConfig(depth_bins=(2.0, 58.0, 2.0), mid_channels=32), context_channels=16,
                   bev_grid=ROAD_GRID.with_stride(8), bev_channels=32, image_hw=(64, 176), head_channels=16)

    @classmethod
    def demo_base(cls) -> StudentConfig:
        """The full-size student (ResNet-50, 256x704, 0.5 m depth bins) on the demo grid, for a GPU."""
        return cls(bev_grid=ROAD_GRID.with_stride(4))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bev_grid"] = self.bev_grid.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentConfig:
        """Inverse of :meth:`to_dict`; also reads dicts of older checkpoints, whose image size
        was stored under ``image_size`` (the same ``(height, width)`` order)."""
        d = dict(d)
        if "image_size" in d:
            d["image_hw"] = d.pop("image_size")
        d["backbone"] = BackboneConfig(**d["backbone"])
        depth = dict(d["depth"])
        depth["depth_bins"] = tuple(depth["depth_bins"])
        d["depth"] = DepthConfig(**depth)
        d["bev_grid"] = BEVGrid.from_dict(d["bev_grid"])
        d["image_hw"] = tuple(d["image_hw"])
        return cls(**d)
