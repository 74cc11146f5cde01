"""The typed batch every teacher takes (tensors only: no paths reach a teacher's forward)."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

import numpy as np
import torch

from storage.sample import CAMERA_NAMES, Sample

#: ImageNet RGB mean / std (0-255 scale) used to normalise camera images.
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)


@dataclass(kw_only=True, eq=False)
class TeacherInput:
    """A batch of B samples for a teacher.

    Attributes:
        points: per sample ``(N_i, 5)`` float32 ``[x, y, z, intensity, ring_or_dt]``, lidar frame, m.
        images: ``(B, 6, 3, h, w)`` float32 RGB normalised with :data:`IMAGE_MEAN`/:data:`IMAGE_STD`,
            cameras in :data:`storage.sample.CAMERA_NAMES` order, or None (LiDAR-only teachers).
        cam_intrinsic: ``(B, 6, 3, 3)`` float32 pinhole matrices **of the resized images**:
            resizing a ``W0 x H0`` image to ``w x h`` scales row 0 (fx, skew, cx) by ``w / W0``
            and row 1 (fy, cy) by ``h / H0`` (pixel centres follow the same affine map as the
            resize). None without images.
        lidar_from_cam: ``(B, 6, 4, 4)`` float32 camera (OpenCV) -> lidar frame; unchanged by the
            resize (an image resize changes only the intrinsics). None without images.
        image_size: ``(w, h)`` pixels of ``images``, or None.
        gt_boxes: per sample ``(M_i, 9)`` float32 ``[x,y,z,l,w,h,yaw,vx,vy]`` lidar frame (training), or empty.
        gt_labels: per sample ``(M_i,)`` int64 class ids, or empty.
        sample_tokens: per sample dataset ids.
    """

    points: list[torch.Tensor]
    images: torch.Tensor | None = None
    cam_intrinsic: torch.Tensor | None = None
    lidar_from_cam: torch.Tensor | None = None
    image_size: tuple[int, int] | None = None
    gt_boxes: list[torch.Tensor] = field(default_factory=list)
    gt_labels: list[torch.Tensor] = field(default_factory=list)
    sample_tokens: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        return len(self.points)

    @property
    def device(self) -> torch.device:
        return self.points[0].device

    def to(self, device: torch.device | str) -> TeacherInput:
        """A copy on ``device``."""
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return TeacherInput(points=[p.to(device) for p in self.points], images=mv(self.images),
                            cam_intrinsic=mv(self.cam_intrinsic), lidar_from_cam=mv(self.lidar_from_cam),
                            image_size=self.image_size, gt_boxes=[b.to(device) for b in self.gt_boxes],
                            gt_labels=[lab.to(device) for lab in self.gt_labels], sample_tokens=self.sample_tokens)

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], image_size: tuple[int, int] | None = None,
                     device: torch.device | str = "cpu") -> TeacherInput:
        """Batch :class:`storage.sample.Sample` objects.

        Args:
            samples: B samples.
            image_size: ``(w, h)`` to load and resize the six camera images to, or None to skip
                images (LiDAR-only teachers).
            device: where the tensors go.

        Raises:
            storage.errors.SampleError: an image is missing or unreadable (names sample and path).
        """
        points = [torch.from_numpy(np.ascontiguousarray(s.points[:, :5], dtype=np.float32)).to(device)
                  for s in samples]
        boxes = [torch.from_numpy(np.asarray(s.gt_boxes, dtype=np.float32).reshape(-1, 9)).to(device) for s in samples]
        labels = [torch.from_numpy(np.asarray(s.gt_labels, dtype=np.int64).reshape(-1)).to(device) for s in samples]
        tokens = tuple(s.sample_token for s in samples)
        if image_size is None:
            return cls(points=points, gt_boxes=boxes, gt_labels=labels, sample_tokens=tokens)
        w, h = image_size
        imgs, ks, l2c = zip(*(_load_cameras(s, image_size) for s in samples), strict=True)
        return cls(points=points, images=torch.from_numpy(np.stack(imgs)).to(device),
                   cam_intrinsic=torch.from_numpy(np.stack(ks)).to(device),
                   lidar_from_cam=torch.from_numpy(np.stack(l2c)).to(device), image_size=(int(w), int(h)),
                   gt_boxes=boxes, gt_labels=labels, sample_tokens=tokens)


def resize_intrinsic(cam_intrinsic: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` intrinsics of an image resized from ``src_size (W0, H0)`` to ``dst_size (w, h)``."""
    k = np.asarray(cam_intrinsic, dtype=np.float64).copy()
    k[0] *= dst_size[0] / src_size[0]
    k[1] *= dst_size[1] / src_size[1]
    return k


def _load_cameras(sample: Sample, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image  # lazy

    mean = np.asarray(IMAGE_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGE_STD, dtype=np.float32)[:, None, None]
    imgs, ks, l2c = [], [], []
    for name in CAMERA_NAMES:
        cam = sample.camera(name)
        rgb = cam.load_image(sample.sample_token)
        src = (rgb.shape[1], rgb.shape[0])
        size = (int(image_size[0]), int(image_size[1]))
        if src != size:
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        imgs.append((rgb.transpose(2, 0, 1).astype(np.float32) - mean) / std)
        ks.append(resize_intrinsic(cam.cam_intrinsic, src, image_size))
        l2c.append(cam.lidar_from_cam)
    return (np.stack(imgs), np.stack(ks).astype(np.float32), np.stack(l2c).astype(np.float32))


__all__ = ["IMAGE_MEAN", "IMAGE_STD", "TeacherInput", "resize_intrinsic"]
