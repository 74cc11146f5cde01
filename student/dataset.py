"""The student's streaming dataset: sensor inputs from a dataset reader, teacher targets from the cache.

One item is one sample: its six camera images augmented (resize, crop, flip; BEVDepth §4.1) and
kept **uint8**, its calibration, its GT boxes in the BEV-augmented frame (BEVDet §3.3), and the
cache row of its ``sample_token`` read with ``decode=False`` (uint8 codes, float16, bool). Rows of
a multi-view cache (K stored BEV augmentations per sample) are drawn at random; only the
residual between the drawn view and the student's augmentation is applied, later, on the
training device (:mod:`student.packed_targets`). Normalising images and dequantising targets
happens there too, so DataLoader workers ship 1 byte per pixel / per map value.

Without a cache the item carries LiDAR depth maps computed from the sample's points (for
BEVDepth's depth loss); for online distillation it carries the points and the network-free
LiDAR targets (the cache row's network-free part, :func:`teachers.cache_row.build_cache_row`)
instead of a stored row.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from storage.cache import CacheReader, CacheRow, DatasetInfo
from storage.cache.layout import JOB_ATTR
from storage.errors import CacheMismatchError
from storage.grid import BEVGrid
from storage.sample import CAMERA_NAMES, Sample, SampleReader
from storage.bev_augment import BEVAugConfig
from student.augment import ImageAugConfig, base_image_transform, residual_transform, warp_boxes
from student.config import StudentConfig
from student.model.types import StudentBatch
from student.packed_targets import PackedTargets, collate_targets
from teachers.input import IMAGE_MEAN, IMAGE_STD
from teachers.cache_row import build_cache_row, lidar_depth_maps


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What the loader produces besides the student's image size (from :class:`StudentConfig`).

    Attributes:
        bev_aug: random BEV augmentation for training, or None (with a multi-view cache the
            drawn view's own ``view_matrix`` is then the student's augmentation).
        image_aug: random image augmentation for training, or None (base resize/crop only).
        depth_image_size: ``(w, h)`` of the images the cache's ``lidar_depth`` maps were built
            for (:func:`teachers.cache_row.build_cache_row`); None = the student's image size.
        depth_stride: pixels per depth cell for depth maps built here (no cache / online).
    """

    bev_aug: BEVAugConfig | None = field(default_factory=BEVAugConfig)
    image_aug: ImageAugConfig | None = field(default_factory=ImageAugConfig)
    depth_image_size: tuple[int, int] | None = None
    depth_stride: int = 16

    def __post_init__(self) -> None:
        """Raises ValueError for a ``depth_stride`` or ``depth_image_size`` that is not positive."""
        if self.depth_stride < 1:
            raise ValueError(f"DataConfig.depth_stride must be at least 1, got {self.depth_stride}")
        if self.depth_image_size is not None and min(self.depth_image_size) < 1:
            raise ValueError(f"DataConfig.depth_image_size must be positive (w, h) pixels, got {self.depth_image_size}")


def open_cache(location: str | os.PathLike[str], reader: SampleReader, *, expect_grid: BEVGrid | None = None,
               required_targets: Sequence[str] = ()) -> CacheReader:
    """Open a cache for training on ``reader``'s samples, refusing a mismatched one.

    Raises:
        CacheMismatchError: schema version, grid or dataset (id, version, split) differ, or the
            cache lacks a target the enabled losses need; the message says which.
        FileNotFoundError: no cache at ``location``.
    """
    cache = CacheReader(os.fspath(location), expect_grid=expect_grid,
                        expect_dataset=DatasetInfo.from_reader_id(reader.dataset_id))
    stored = {t.name for t in cache.schema.targets}
    missing = [n for n in required_targets if n not in stored]
    if missing:
        raise CacheMismatchError(f"cache {cache.location}: schema lacks targets {missing} needed by the enabled "
                                 f"losses (stored: {sorted(stored)})")
    return cache


def cache_depth_geometry(cache: CacheReader) -> tuple[tuple[int, int], int] | None:
    """``((w, h), depth_stride)`` the cache job built ``lidar_depth`` for (from its recorded job
    settings), or None when the cache does not record them (e.g. written by hand)."""
    import zarr  # storage's dependency; only the root attributes are read

    job = zarr.open_group(store=cache.store, mode="r", zarr_format=3).attrs.get(JOB_ATTR)
    if not isinstance(job, dict):
        return None
    size, stride = job.get("image_size"), job.get("depth_stride", 16)
    if not isinstance(size, list | tuple) or len(size) != 2 or not isinstance(stride, int | float):
        return None
    w, h = size
    if not isinstance(w, int) or not isinstance(h, int):
        return None
    return (w, h), int(stride)


def warp_image_u8(rgb: np.ndarray, img_aug: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``(H0, W0, 3)`` uint8 -> ``(3, h, w)`` uint8 through ``aug_from_orig`` (PIL bilinear affine,
    pixel-centre convention; outside pixels black)."""
    from PIL import Image  # lazy

    inv = np.linalg.inv(img_aug)
    out = Image.fromarray(rgb).transform((out_hw[1], out_hw[0]), Image.Transform.AFFINE,
                                         data=tuple(inv[:2].reshape(-1)),
                                         resample=Image.Resampling.BILINEAR)
    return np.asarray(out).transpose(2, 0, 1).copy()


@dataclass(kw_only=True, eq=False)
class StudentItem:
    """One sample as a worker produces it (small dtypes; see the module docstring).

    Attributes:
        sample_token: the sample.
        images: ``(6, 3, h, w)`` uint8 augmented RGB.
        cam_intrinsic: ``(6, 3, 3)`` float32 of the original images; lidar_from_cam ``(6, 4, 4)``.
        img_aug: ``(6, 3, 3)`` float32 ``aug_from_orig``; bev_aug ``(4, 4)`` float32 ``aug_from_lidar``.
        gt_boxes: ``(M, 9)`` float32, augmented lidar frame; gt_labels ``(M,)`` int64.
        targets: the sample's :class:`CacheRow`: read from the cache (``decode=False``), or its
            network-free part (online teacher), or LiDAR depth only (no teacher); None for inference.
        residual_bev: ``(4, 4)``; residual_img ``(6, 3, 3)`` float64 (see :class:`PackedTargets`).
        depth_stride: pixels per cell of ``targets.lidar_depth``.
        points: ``(N, 5)`` float32 lidar frame (online distillation only).
        labelled: the sample is annotated (:attr:`storage.sample.Sample.labelled`); False rows get
            no detection loss on their (empty) GT boxes.
    """

    sample_token: str
    images: np.ndarray
    cam_intrinsic: np.ndarray
    lidar_from_cam: np.ndarray
    img_aug: np.ndarray
    bev_aug: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    targets: CacheRow | None = None
    residual_bev: np.ndarray = field(default_factory=lambda: np.eye(4))
    residual_img: np.ndarray = field(default_factory=lambda: np.tile(np.eye(3), (6, 1, 1)))
    depth_stride: float = 16.0
    points: np.ndarray | None = None
    labelled: bool = True


class StudentDataset(Dataset):
    """Map-style dataset over the samples of ``reader`` that the cache holds.

    Args:
        reader: the dataset reader (sensor inputs and GT).
        student: the student config (image size, camera count).
        data: augmentation and depth-target settings.
        cache: cache directory/URL, an open :class:`CacheReader` (checked by :func:`open_cache`), or None.
        train: random augmentation (per ``(seed, epoch, index)``, so workers and resumes agree).
        seed: augmentation seed.
        online_grid: the live teacher's grid: items then carry points and network-free LiDAR targets.
        cache_targets: read only these cache targets (default: all stored).
        depth_targets: without cache or teacher, attach LiDAR depth maps (False for inference).

    Raises:
        CacheMismatchError: the cache holds none of the reader's samples.
    """

    def __init__(self, reader: SampleReader, student: StudentConfig, data: DataConfig = DataConfig(), *,
                 cache: str | os.PathLike[str] | CacheReader | None = None, train: bool = True, seed: int = 0,
                 online_grid: BEVGrid | None = None, cache_targets: Sequence[str] | None = None,
                 depth_targets: bool = True) -> None:
        self.reader, self.student, self.data, self.train, self.seed = reader, student, data, train, seed
        self.online_grid, self.epoch, self.depth_targets = online_grid, 0, depth_targets
        self.cache_targets = None if cache_targets is None else list(cache_targets)
        self._cache: CacheReader | None = None
        self.cache_location: str | None = None
        self.views: dict[str, list[int]] = {}
        self.tokens = [str(t) for t in reader.sample_tokens]
        if cache is not None:
            c = cache if isinstance(cache, CacheReader) else CacheReader(os.fspath(cache))
            self.cache_location, self.grid = os.fspath(cache) if not isinstance(cache, CacheReader) else c.location, \
                c.schema.grid
            for r in c.ok_rows.tolist():
                self.views.setdefault(c.sample_tokens[r // c.schema.views], []).append(int(r))
            missing = [t for t in self.tokens if t not in self.views]
            if len(missing) == len(self.tokens):
                raise CacheMismatchError(f"cache {c.location}: holds none of the {len(self.tokens)} samples of "
                                         f"{reader.dataset_id} (first: {self.tokens[:2]})")
            if missing:
                warnings.warn(f"cache {c.location}: {len(missing)} of {len(self.tokens)} samples of "
                              f"{reader.dataset_id} have no ok row and are skipped (first: {missing[:3]})",
                              stacklevel=2)
            self.tokens = [t for t in self.tokens if t in self.views]
            self._cache, self._pid = None, os.getpid()
        else:
            self.grid = online_grid or student.bev_grid

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call before each epoch, as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # reopened in each worker process
        return state

    def cache(self) -> CacheReader:
        if self._cache is None or self._pid != os.getpid():
            if self.cache_location is None:
                raise ValueError("StudentDataset: no cache given, so no cache to read")
            self._cache = CacheReader(self.cache_location, targets=self.cache_targets, expect_schema_version=None)
            self._pid = os.getpid()
        return self._cache

    @property
    def depth_image_size(self) -> tuple[int, int]:
        h, w = self.student.image_hw
        dw, dh = self.data.depth_image_size or (w, h)
        return int(dw), int(dh)

    def __getitem__(self, index: int) -> StudentItem:
        token = self.tokens[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        sample = self.reader.read(token)
        row = None
        view_matrix = np.eye(4)
        if self.cache_location is not None:
            rows = self.views[token]
            r = int(rng.choice(rows)) if rng is not None and len(rows) > 1 else rows[0]
            row = self.cache().read(r, decode=False)
            view_matrix = np.asarray(row.view_matrix, dtype=np.float64)
        if rng is not None and self.data.bev_aug is not None:
            bev_aug = self.data.bev_aug.sample(rng)
        else:
            bev_aug = view_matrix if rng is not None else np.eye(4)
        images, ks, l2c, img_aug = self._cameras(sample, rng)
        item = StudentItem(sample_token=token, images=images, cam_intrinsic=ks.astype(np.float32),
                           lidar_from_cam=l2c.astype(np.float32), img_aug=img_aug.astype(np.float32),
                           bev_aug=bev_aug.astype(np.float32),
                           gt_boxes=warp_boxes(sample.gt_boxes, bev_aug).astype(np.float32),
                           gt_labels=np.asarray(sample.gt_labels, dtype=np.int64).reshape(-1),
                           residual_bev=residual_transform(bev_aug, view_matrix), labelled=bool(sample.labelled))
        self._attach_targets(item, sample, row, ks, l2c, img_aug)
        return item

    def _cameras(self, sample: Sample, rng: np.random.Generator | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        hw = (int(self.student.image_hw[0]), int(self.student.image_hw[1]))
        imgs, ks, l2c, augs = [], [], [], []
        for name in CAMERA_NAMES[:self.student.num_cameras]:
            cam = sample.camera(name)
            a = base_image_transform(cam.image_size, hw, rng, self.data.image_aug)
            imgs.append(warp_image_u8(cam.load_image(sample.sample_token), a, hw))
            ks.append(np.asarray(cam.cam_intrinsic, np.float64))
            l2c.append(np.asarray(cam.lidar_from_cam, np.float64))
            augs.append(a)
        return np.stack(imgs), np.stack(ks), np.stack(l2c), np.stack(augs)

    def _residual_img(self, sample: Sample, img_aug: np.ndarray) -> np.ndarray:
        wd, hd = self.depth_image_size
        out = []
        for a, name in zip(img_aug, CAMERA_NAMES, strict=False):
            w0, h0 = sample.camera(name).image_size
            out.append(a @ np.diag([w0 / wd, h0 / hd, 1.0]))  # img_aug @ inverse(cache resize)
        return np.stack(out)

    def _attach_targets(self, item: StudentItem, sample: Sample, row: CacheRow | None, ks: np.ndarray, l2c: np.ndarray,
                        img_aug: np.ndarray) -> None:
        stride = self.data.depth_stride
        if row is not None or self.online_grid is not None:
            if row is None:
                row = build_cache_row(None, sample, bev_grid=self.online_grid, image_wh=self.depth_image_size,
                                      depth_stride=stride)
                item.points = np.ascontiguousarray(sample.points[:, :5], dtype=np.float32)
            item.targets = row
            item.residual_img = self._residual_img(sample, img_aug)
            if row.lidar_depth is not None:
                item.depth_stride = self.depth_image_size[0] / np.asarray(row.lidar_depth).shape[-1]
            return
        if not self.depth_targets:
            return
        h, w = self.student.image_hw  # no cache: LiDAR depth straight in the augmented images
        depth = lidar_depth_maps(sample.points, img_aug @ ks, l2c, (w, h), stride)
        item.targets = CacheRow(sample_token=sample.sample_token, lidar_depth=depth.astype(np.float16))
        item.depth_stride = float(stride)


@dataclass(kw_only=True, eq=False)
class LoaderBatch:
    """A collated batch as it leaves a worker: uint8 images, packed targets (see the module docstring).

    Attributes:
        images: ``(B, 6, 3, h, w)`` uint8. Other camera fields as in :class:`StudentBatch`.
        targets: packed teacher targets, or None.
        points: per sample ``(N_i, 5)`` float32 lidar frame (online distillation), or None.
        labelled: ``(B,)`` bool, the sample is annotated (see :attr:`StudentItem.labelled`).
    """

    images: torch.Tensor
    cam_intrinsic: torch.Tensor
    lidar_from_cam: torch.Tensor
    img_aug: torch.Tensor
    bev_aug: torch.Tensor
    gt_boxes: list[torch.Tensor]
    gt_labels: list[torch.Tensor]
    sample_tokens: tuple[str, ...]
    targets: PackedTargets | None = None
    points: list[torch.Tensor] | None = None
    labelled: torch.Tensor | None = None

    def student_batch(self, device: torch.device | str) -> StudentBatch:
        """Move to ``device`` and normalise the images there (ImageNet mean/std, float32)."""
        mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD, device=device).view(1, 1, 3, 1, 1)
        images = (self.images.to(device, non_blocking=True).float() - mean) / std
        return StudentBatch(images=images, cam_intrinsic=self.cam_intrinsic.to(device),
                            lidar_from_cam=self.lidar_from_cam.to(device), img_aug=self.img_aug.to(device),
                            bev_aug=self.bev_aug.to(device), gt_boxes=[b.to(device) for b in self.gt_boxes],
                            gt_labels=[lab.to(device) for lab in self.gt_labels], sample_tokens=self.sample_tokens)

    def pin_memory(self) -> LoaderBatch:
        """Page-locked copies (DataLoader ``pin_memory=True`` calls this) for asynchronous GPU copies."""
        return replace(self, images=self.images.pin_memory(), targets=None if self.targets is None
                       else self.targets.pin_memory(), points=None if self.points is None
                       else [p.pin_memory() for p in self.points])

    def nbytes(self) -> int:
        """Bytes of the tensors shipped from the worker."""
        t = [self.images, self.cam_intrinsic, self.lidar_from_cam, self.img_aug, self.bev_aug, *self.gt_boxes,
             *self.gt_labels, *(self.points or [])]
        return sum(x.numel() * x.element_size() for x in t) + (self.targets.nbytes() if self.targets else 0)


class Collate:
    """``collate_fn`` for :class:`StudentDataset` items (picklable for worker processes).

    Args:
        grid: the targets' BEV grid (``StudentDataset.grid``).
        image_hw: ``(h, w)`` of the student's images (sets the aligned depth-map size).
    """

    def __init__(self, grid: BEVGrid, image_hw: tuple[int, int]) -> None:
        self.grid, self.image_hw = grid, tuple(image_hw)

    def __call__(self, items: Sequence[StudentItem]) -> LoaderBatch:
        def st(name: str, dt: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.from_numpy(np.stack([getattr(i, name) for i in items])).to(dt)

        targets = None
        if items[0].targets is not None:
            stride = float(items[0].depth_stride)
            out_size = (self.image_hw[0] // int(round(stride)), self.image_hw[1] // int(round(stride)))
            targets = collate_targets([i.targets for i in items], self.grid, np.stack([i.residual_bev for i in items]),
                                      np.stack([i.residual_img for i in items]), out_size, stride)
        points = [torch.from_numpy(i.points) for i in items] if items[0].points is not None else None
        return LoaderBatch(images=st("images", torch.uint8), cam_intrinsic=st("cam_intrinsic"),
                           lidar_from_cam=st("lidar_from_cam"), img_aug=st("img_aug"), bev_aug=st("bev_aug"),
                           gt_boxes=[torch.from_numpy(i.gt_boxes).reshape(-1, 9) for i in items],
                           gt_labels=[torch.from_numpy(i.gt_labels) for i in items],
                           sample_tokens=tuple(i.sample_token for i in items), targets=targets, points=points,
                           labelled=torch.tensor([bool(i.labelled) for i in items], dtype=torch.bool))


class MixedDataset(Dataset):
    """A labelled and an unlabelled :class:`StudentDataset` as one map-style dataset: indices
    ``[0, len(labelled))`` are the labelled one's, the rest the unlabelled one's (items keep their
    ``labelled`` flag, so the detection loss skips the unlabelled rows).

    Raises:
        ValueError: the two datasets' target grids differ.
    """

    def __init__(self, labelled: StudentDataset, unlabelled: StudentDataset) -> None:
        if not labelled.grid.same_as(unlabelled.grid):
            raise ValueError(f"unlabelled data: grid {unlabelled.grid.to_dict()} differs from the labelled data's "
                             f"{labelled.grid.to_dict()}")
        self.parts, self.grid = (labelled, unlabelled), labelled.grid

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.parts[0]) + len(self.parts[1])

    def __getitem__(self, index: int) -> StudentItem:
        n = len(self.parts[0])
        return self.parts[0][index] if index < n else self.parts[1][index - n]


__all__ = ["Collate", "DataConfig", "MixedDataset", "ImageAugConfig", "LoaderBatch", "StudentDataset", "StudentItem",
           "base_image_transform", "cache_depth_geometry", "open_cache", "warp_image_u8"]
