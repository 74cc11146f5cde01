"""Streaming dataset: uint8 across workers and late dequantisation, augmentation-consistent
targets (BEV and image), multi-view draws, and refusal of mismatched caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kd_cache import write_teacher_cache
from storage.cache import CacheReader, QuantizedArray
from storage.errors import CacheMismatchError
from storage.nuscenes_reader import NuScenesReader
from storage.bev_augment import BEVAugConfig, bev_augmentation_matrix
from student.augment import warp_depth
from student.config import StudentConfig
from student.dataset import Collate, DataConfig, ImageAugConfig, StudentDataset, open_cache
from student.packed_targets import align_targets, packed_to_teacher_targets, unpack_targets
from teachers.cache_row import fg_mask_from_boxes, lidar_depth_maps
from tiny_student import CFG, IMAGE_WH

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for this module


def test_workers_ship_uint8_and_targets_dequantise_to_the_decoded_cache(reader, student_cache):
    ds = StudentDataset(reader, CFG, DataConfig(bev_aug=None, image_aug=None), cache=student_cache, train=False)
    collate = Collate(ds.grid, CFG.image_hw)
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (2, 6, 3, *CFG.image_hw)
    neck = batch.targets.dense["bev_features/neck"]
    assert isinstance(neck, QuantizedArray) and neck.data.dtype == torch.uint8 and neck.power == 2
    float_bytes = sum((v.data if isinstance(v, QuantizedArray) else v).numel() * 4
                      for v in batch.targets.dense.values())
    print(f"targets shipped: {batch.targets.nbytes()} B vs {float_bytes} B as float32")
    assert batch.targets.nbytes() < 0.4 * float_bytes
    same = collate([ds[0], ds[1]])  # workers and the main process produce the same bytes
    assert torch.equal(same.images, batch.images) and torch.equal(same.targets.dense["heatmap"].data,
                                                                   batch.targets.dense["heatmap"].data)
    targets = packed_to_teacher_targets(batch.targets, "cpu")
    decoded = CacheReader(student_cache).read(batch.sample_tokens[1])  # numpy dequantisation in the reader
    for name in ("neck", "lidar_bev"):
        np.testing.assert_allclose(targets.bev_features[name][1].numpy(), decoded.bev_features[name], rtol=0, atol=1e-6)
    np.testing.assert_allclose(targets.heatmap[1].numpy(), decoded.heatmap, atol=1e-7)
    np.testing.assert_array_equal(targets.fg_mask[1].numpy(), decoded.fg_mask)
    np.testing.assert_array_equal(targets.boxes[1].numpy(), decoded.boxes)
    images = batch.student_batch("cpu").images
    assert images.dtype == torch.float32 and -3 < float(images.mean()) < 3


def test_bev_augmentation_moves_masks_boxes_and_maps_with_the_student(reader, student_cache):
    bev_aug = BEVAugConfig(rotation_range=(0.5, 0.5), scale_range=(1.04, 1.04), flip_prob=1.0)
    ds = StudentDataset(reader, CFG, DataConfig(bev_aug=bev_aug, image_aug=None),
                        cache=student_cache, train=True, seed=3)
    item = ds[0]
    a = bev_augmentation_matrix(rotation=0.5, scale=1.04, flip_x=True, flip_y=True)
    np.testing.assert_allclose(item.bev_aug, a, atol=1e-6)
    np.testing.assert_allclose(item.residual_bev, a, atol=1e-9)  # one view: the residual is the augmentation
    t = packed_to_teacher_targets(Collate(ds.grid, CFG.image_hw)([item]).targets, "cpu")
    sample = reader.read(item.sample_token)
    expected = fg_mask_from_boxes(item.gt_boxes, ds.grid)  # mask recomputed from the augmented GT boxes
    got = t.fg_mask[0].numpy()
    iou = (got & expected).sum() / max((got | expected).sum(), 1)
    unwarped = CacheReader(student_cache).read(item.sample_token).fg_mask
    iou_unwarped = (unwarped & expected).sum() / max((unwarped | expected).sum(), 1)
    print(f"fg_mask IoU with the augmented GT: warped {iou:.3f}, unwarped {iou_unwarped:.3f}")
    assert iou > 0.35 and iou > iou_unwarped + 0.3  # small boxes on 3.2 m cells: nearest resampling costs IoU
    raw = CacheReader(student_cache).read(item.sample_token)
    centre = raw.boxes[0, :2]
    moved = a[:2, :2] @ centre + a[:2, 3]
    np.testing.assert_allclose(t.boxes[0][0, :2].numpy(), moved, atol=1e-4)
    assert len(sample.gt_boxes) == len(item.gt_boxes)


def test_image_augmentation_moves_the_cached_depth_like_a_fresh_projection(reader, student_cache):
    data = DataConfig(bev_aug=None, image_aug=ImageAugConfig(resize_jitter=(0.1, 0.1), crop_up=0.0, flip_prob=1.0))
    ds = StudentDataset(reader, CFG, data, cache=student_cache, train=True, seed=1)
    item = ds[2]
    t = packed_to_teacher_targets(Collate(ds.grid, CFG.image_hw)([item]).targets, "cpu")
    sample = reader.read(item.sample_token)
    direct = lidar_depth_maps(sample.points, item.img_aug.astype(np.float64) @ item.cam_intrinsic,
                              item.lidar_from_cam, IMAGE_WH, 16)
    got = t.lidar_depth[0].numpy()
    assert got.shape == direct.shape == (6, *CFG.feature_size)
    both = (got > 0) & (direct > 0)
    close = np.abs(got[both] - direct[both]) < 0.1 * direct[both]
    unflipped = CacheReader(student_cache).read(item.sample_token).lidar_depth
    both_u = (unflipped > 0) & (direct > 0)
    close_u = np.abs(unflipped[both_u] - direct[both_u]) < 0.1 * direct[both_u]
    print(f"depth cells agreeing with a fresh projection: warped {close.mean():.3f} of {both.sum()}, "
          f"unwarped {close_u.mean():.3f} of {both_u.sum()}")
    # 16-px cells re-binned through a resize + crop + flip cannot all agree; a wrong transform agrees far less
    assert both.sum() >= 10 and close.mean() > 0.6 and close.mean() > close_u.mean() + 0.25
    raw = unpack_targets(Collate(ds.grid, CFG.image_hw)([item]).targets, "cpu")
    flip = torch.tensor([[-1.0, 0.0, IMAGE_WH[0]], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    flipped = align_targets(raw, None, flip.expand(1, 6, 3, 3), CFG.feature_size, 16.0)
    torch.testing.assert_close(flipped.lidar_depth, raw.lidar_depth.flip(-1), rtol=0, atol=0)  # cell-exact


def test_multi_view_cache_draws_views_and_applies_only_the_residual(reader, teacher, tmp_path):
    views_cache = write_teacher_cache(tmp_path / "kv", reader, teacher, image_size=IMAGE_WH, views=1)
    # the job's draws
    views = [CacheReader(views_cache).read(reader.sample_tokens[0], view=v).view_matrix for v in range(2)]
    ds = StudentDataset(reader, CFG, DataConfig(bev_aug=None, image_aug=None), cache=views_cache, train=True, seed=0)
    drawn = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]
        view = int(np.argmin([np.abs(item.bev_aug - v).max() for v in views]))
        drawn.add(view)
        np.testing.assert_allclose(item.residual_bev, np.eye(4), atol=1e-6)  # student takes the view's augmentation
        t = unpack_targets(Collate(ds.grid, CFG.image_hw)([item]).targets, "cpu")
        stored = CacheReader(views_cache).read(item.sample_token, view=view).bev_features["neck"]
        np.testing.assert_allclose(t.bev_features["neck"][0].numpy(), stored, atol=1e-6)
    assert drawn == {0, 1}
    fresh = StudentDataset(reader, CFG, DataConfig(image_aug=None), cache=views_cache, train=True, seed=0)
    item = fresh[0]
    assert not np.allclose(item.residual_bev, np.eye(4))
    assert any(np.allclose(item.residual_bev @ v, item.bev_aug, atol=1e-5) for v in views)


def test_mismatched_caches_are_refused_naming_what_differs(synth_dataroot, reader, student_cache):
    from storage.grid import DEMO_GRID

    other_split = NuScenesReader(synth_dataroot, version="v1.0-mini", split="mini_train")
    with pytest.raises(CacheMismatchError, match="dataset"):
        open_cache(student_cache, other_split)
    with pytest.raises(CacheMismatchError, match="grid"):
        open_cache(student_cache, reader, expect_grid=DEMO_GRID.with_stride(4))
    with pytest.raises(CacheMismatchError, match=r"lacks targets \['depth_probs'\]"):
        open_cache(student_cache, reader, required_targets=["heatmap", "depth_probs"])
    assert open_cache(student_cache, reader, required_targets=["heatmap"]).schema.grid.same_as(DEMO_GRID.with_stride(8))


def test_real_keyframe_augmented_cameras_and_depth_overlay(keyframe_info, artefacts):
    """The real nuScenes keyframe (1600x900 cameras) through the loader at BEVDepth's 256x704:
    LiDAR depth projected into the augmented (resized, cropped, flipped) images lands on the
    image content; an overlay PNG of CAM_FRONT is written for a person to check."""
    from PIL import Image, ImageDraw

    from storage.mmdet3d_reader import Mmdet3dInfoReader

    reader = Mmdet3dInfoReader(keyframe_info)
    cfg = StudentConfig(image_hw=(256, 704))
    data = DataConfig(image_aug=ImageAugConfig(resize_jitter=(0.05, 0.05), crop_up=0.1, flip_prob=1.0), depth_stride=8)
    item = StudentDataset(reader, cfg, data, train=True, seed=0)[0]
    sample = reader.read(0)
    assert item.images.shape == (6, 3, 256, 704) and item.images.dtype == np.uint8
    assert item.img_aug[0][0, 0] < 0 and abs(abs(item.img_aug[0][0, 0]) - 704 / 1600 * 1.05) < 1e-5  # flipped, resized
    depth = np.asarray(item.targets.lidar_depth, dtype=np.float32)
    assert depth.shape == (6, 32, 88) and (depth > 0).sum() > 500
    # full-resolution depth of the original image, moved through img_aug, agrees with the loader's
    full = lidar_depth_maps(sample.points, item.cam_intrinsic.astype(np.float64), item.lidar_from_cam, (1600, 900), 1)
    moved = warp_depth(torch.from_numpy(full), torch.from_numpy(item.img_aug.astype(np.float64)), (32, 88),
                       dst_stride=8.0).numpy()
    both = (moved > 0) & (depth > 0)
    agree = (np.abs(moved[both] - depth[both]) < 0.05 * depth[both]).mean()
    print(f"loader depth vs warped full-resolution depth: {agree:.3f} of {both.sum()} cells agree within 5 %")
    assert both.sum() > 0.9 * (depth > 0).sum() and agree > 0.9
    img = Image.fromarray(item.images[0].transpose(1, 2, 0).copy())
    draw = ImageDraw.Draw(img)
    rows, cols = np.nonzero(depth[0])
    for r, c in zip(rows, cols, strict=True):
        d = float(depth[0, r, c])
        color = (int(255 * min(d / 40, 1)), int(255 * (1 - min(d / 40, 1))), 0)
        draw.ellipse([c * 8 + 2, r * 8 + 2, c * 8 + 6, r * 8 + 6], fill=color)
    png = artefacts / "student_loader_cam_front_depth.png"
    img.save(png)
    print(f"CAM_FRONT: {len(rows)} depth cells on the augmented image -> {png}")
