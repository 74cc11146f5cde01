"""Image augmentation (resize, crop, flip) as a 3x3 pixel matrix, applied to images and to
per-camera LiDAR depth maps; depth warped from the original equals depth projected with the
augmented camera."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from student.augment import image_augmentation_matrix, warp_depth, warp_images
from teachers.cache_row import lidar_depth_maps


def test_matrix_by_hand():
    a = image_augmentation_matrix(resize=0.5, crop=(10.0, 4.0), flip=True, out_width=100)
    # (60, 30) -> resize (30, 15) -> crop (20, 11) -> flip (80, 11)
    assert (a @ [60.0, 30.0, 1.0]).tolist() == pytest.approx([80.0, 11.0, 1.0])
    with pytest.raises(ValueError, match="out_width"):
        image_augmentation_matrix(flip=True)


def test_warp_images_identity_flip_and_downscale_are_exact():
    img = torch.randn(2, 3, 8, 12)
    assert torch.allclose(warp_images(img, np.eye(3), (8, 12)), img, atol=1e-6)
    flip = image_augmentation_matrix(flip=True, out_width=12)
    assert torch.allclose(warp_images(img, flip, (8, 12)), img.flip(-1), atol=1e-6)
    blocks = torch.randn(1, 1, 4, 6).repeat_interleave(2, -1).repeat_interleave(2, -2)  # 2x2-constant 8x12
    half = warp_images(blocks, image_augmentation_matrix(resize=0.5), (4, 6))
    assert torch.allclose(half, blocks[..., ::2, ::2], atol=1e-6)
    crop = warp_images(img, image_augmentation_matrix(crop=(3.0, 2.0)), (4, 5))
    assert torch.allclose(crop, img[..., 2:6, 3:8], atol=1e-6)


def test_warp_depth_keeps_the_minimum_and_moves_with_the_flip():
    d = torch.zeros(1, 4, 4)
    d[0, 0, 0], d[0, 1, 1], d[0, 3, 2] = 9.0, 4.0, 7.0
    half = warp_depth(d, image_augmentation_matrix(resize=0.5), (2, 2))
    assert half.tolist() == [[[4.0, 0.0], [0.0, 7.0]]]  # 9 and 4 share a cell: nearest kept, no blending
    flipped = warp_depth(d, image_augmentation_matrix(flip=True, out_width=4), (4, 4))
    assert torch.equal(flipped, d.flip(-1))


def _camera() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = np.array([[80.0, 0.0, 64.0], [0.0, 80.0, 24.0], [0.0, 0.0, 1.0]])
    lidar_from_cam = np.eye(4)
    lidar_from_cam[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # camera looks along +x
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(3, 40, 4000), rng.uniform(-30, 30, 4000), rng.uniform(-2, 2, 4000)], 1)
    return k[None], lidar_from_cam[None], pts


@pytest.mark.parametrize("resize,crop,flip",
                         [(0.5, (0.0, 0.0), False), (0.5, (8.0, 2.0), True), (1.0, (5.0, 3.0), True)])
def test_warped_depth_equals_depth_of_the_augmented_camera(resize, crop, flip):
    k, l2c, pts = _camera()
    out_w, out_h = 48, 20
    a = image_augmentation_matrix(resize=resize, crop=crop, flip=flip, out_width=out_w)
    original = torch.from_numpy(lidar_depth_maps(pts, k, l2c, (128, 48), stride=1))
    warped = warp_depth(original, a, (out_h, out_w))
    if flip:  # a mirrored image is seen by a mirrored camera: flip the direct map instead of the points
        a_noflip = image_augmentation_matrix(resize=resize, crop=crop)
        direct = lidar_depth_maps(pts, a_noflip @ k[0][None], l2c, (out_w, out_h), stride=1)[:, :, ::-1].copy()
    else:
        direct = lidar_depth_maps(pts, a @ k[0][None], l2c, (out_w, out_h), stride=1)
    assert (direct > 0).sum() > 100
    assert np.array_equal(warped.numpy(), direct)


def test_warp_depth_to_a_coarser_stride_is_min_pooling():
    k, l2c, pts = _camera()
    full = torch.from_numpy(lidar_depth_maps(pts, k, l2c, (128, 48), stride=1))
    coarse = warp_depth(full, np.eye(3), (3, 8), dst_stride=16)
    assert np.array_equal(coarse.numpy(), lidar_depth_maps(pts, k, l2c, (128, 48), stride=16))


def test_random_image_augmentation_stays_inside_the_source_image():
    from student.augment import ImageAugConfig

    cfg = ImageAugConfig(resize_jitter=(0.0, 0.11))  # no shrinking: the crop stays inside the image
    rng = np.random.default_rng(0)
    for a in [cfg.sample((1600, 900), (256, 704), rng) for _ in range(20)] + [cfg.sample((1600, 900), (256, 704))]:
        # the four output corners come from inside the 1600x900 source image
        corners = np.array([[0, 0, 1], [704, 0, 1], [0, 256, 1], [704, 256, 1]], dtype=float)
        src = corners @ np.linalg.inv(a).T
        assert (src[:, 0] >= -1e-6).all() and (src[:, 0] <= 1600 + 1e-6).all()
        assert (src[:, 1] >= -1e-6).all() and (src[:, 1] <= 900 + 1e-6).all()
    test_time = cfg.sample((1600, 900), (256, 704))
    # deterministic, unflipped
    assert test_time[0, 0] > 0 and np.allclose(test_time, cfg.sample((1600, 900), (256, 704)))
