"""BEV augmentation keeps cached targets consistent: a target warped by the augmentation equals
the target computed from the augmented input (exactly for 90-degree rotations and flips on a
centred grid, up to border cells otherwise); the identity is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from storage.bev_augment import BEVAugConfig, bev_augmentation_matrix
from storage.boxes import points_in_boxes
from storage.grid import BEVGrid
from storage.cache.row import CacheRow
from student.augment import residual_transform, warp_bev, warp_bev_vectors, warp_boxes
from student.losses.teacher_targets import TeacherTargets
from teachers.center_gt import build_center_targets
from teachers.cache_row import fg_mask_from_boxes

GRID = BEVGrid(point_cloud_range=(-16.0, -16.0, -5.0, 16.0, 16.0, 3.0), voxel_size=(1.0, 1.0, 8.0))
EXACT = {"rot90": bev_augmentation_matrix(rotation=math.pi / 2),
         "rot180": bev_augmentation_matrix(rotation=math.pi),
         "flip_x": bev_augmentation_matrix(flip_x=True),
         "flip_y_rot270": bev_augmentation_matrix(flip_y=True, rotation=-math.pi / 2)}
GENERAL = {"rot25_scale1.05": bev_augmentation_matrix(rotation=math.radians(25), scale=1.05),
           "rot-40_flip": bev_augmentation_matrix(rotation=math.radians(-40), flip_x=True, scale=0.95)}


def _boxes() -> np.ndarray:
    # cars, a bus and a pedestrian, centres inside cells (not on cell edges), no overlaps
    return np.array([[5.3, 2.2, -0.8, 4.5, 1.9, 1.6, 0.3, 3.0, 0.5],
                     [-7.6, 6.4, -0.7, 4.2, 1.8, 1.5, -1.2, -1.0, 2.0],
                     [-3.4, -9.3, -0.2, 11.0, 2.9, 3.2, 2.0, 0.0, 0.0],
                     [9.4, -6.7, -0.9, 0.7, 0.7, 1.8, 0.0, 0.5, -0.5]])


def test_augmentation_matrix_by_hand():
    a = bev_augmentation_matrix(rotation=math.pi / 2, scale=2.0, flip_x=True, translation=(1.0, 0.0, 0.0))
    # (1, 2, 3) -> flip x (-1, 2, 3) -> rotate 90 (-2, -1, 3) -> scale (-4, -2, 6) -> translate (-3, -2, 6)
    assert (a @ [1.0, 2.0, 3.0, 1.0]).tolist() == pytest.approx([-3.0, -2.0, 6.0, 1.0])
    rng = np.random.default_rng(0)
    m = BEVAugConfig().sample(rng)
    assert abs(abs(np.linalg.det(m[:2, :2])) - 1.0) < 0.11 and m[2, 2] > 0


def test_identity_is_exact():
    maps = torch.randn(2, 3, 32, 32)
    assert torch.equal(warp_bev(maps, np.eye(4), GRID), maps)
    mask = torch.rand(2, 32, 32) > 0.5
    assert torch.equal(warp_bev(mask, np.eye(4), GRID), mask)
    assert np.array_equal(warp_boxes(_boxes(), np.eye(4)), _boxes())


def test_rotation_moves_a_cell_where_the_matrix_says():
    m = torch.zeros(1, 1, 32, 32)
    m[0, 0, 20, 25] = 1.0  # centre x = -16 + 25.5 = 9.5, y = -16 + 20.5 = 4.5
    out = warp_bev(m, EXACT["rot90"], GRID)  # (9.5, 4.5) -> (-4.5, 9.5): col 11, row 25
    assert torch.nonzero(out[0, 0]).tolist() == [[25, 11]]
    assert float(out.sum()) == pytest.approx(1.0)
    four = m
    for _ in range(4):
        four = warp_bev(four, EXACT["rot90"], GRID)
    assert torch.allclose(four, m, atol=1e-6)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_augmentations_fg_mask_and_heatmap(name):
    a, boxes = EXACT[name], _boxes()
    aug_boxes = warp_boxes(boxes, a)
    warped_mask = warp_bev(torch.from_numpy(fg_mask_from_boxes(boxes, GRID)), a, GRID)
    assert torch.equal(warped_mask, torch.from_numpy(fg_mask_from_boxes(aug_boxes, GRID)))
    labels = np.array([0, 0, 3, 8])
    def heat(b: np.ndarray) -> torch.Tensor:
        return build_center_targets([b], [labels], GRID, [tuple(range(10))])[0].heatmap

    assert torch.allclose(warp_bev(heat(boxes), a, GRID), heat(aug_boxes), atol=1e-6)


def _border_cells(aug_boxes: np.ndarray, margin: float) -> np.ndarray:
    centres = GRID.cell_centers().reshape(-1, 2)
    pts = np.concatenate([centres, np.zeros((len(centres), 1))], axis=1)
    flat = aug_boxes.copy()
    flat[:, 2], flat[:, 5] = 0.0, 1.0
    grow, shrink = flat.copy(), flat.copy()
    grow[:, 3:5] += 2 * margin
    shrink[:, 3:5] = np.maximum(shrink[:, 3:5] - 2 * margin, 0.0)
    near = points_in_boxes(pts, grow).any(1) & ~points_in_boxes(pts, shrink).any(1)
    return near.reshape(GRID.bev_shape)


@pytest.mark.parametrize("name", sorted(GENERAL))
def test_general_augmentations_fg_mask_equal_up_to_border_cells(name):
    a, boxes = GENERAL[name], _boxes()
    aug_boxes = warp_boxes(boxes, a)
    direct = fg_mask_from_boxes(aug_boxes, GRID)
    warped = warp_bev(torch.from_numpy(fg_mask_from_boxes(boxes, GRID)), a, GRID).numpy()
    differ = direct != warped
    scale = abs(np.linalg.det(a[:2, :2])) ** 0.5
    border = _border_cells(aug_boxes, margin=0.75 * scale)  # nearest sampling moves <= half a cell diagonal
    assert direct.sum() > 40 and (direct & warped).sum() > 0.7 * direct.sum()
    assert not (differ & ~border).any(), f"{int((differ & ~border).sum())} interior cells differ"


@pytest.mark.parametrize("name", sorted(GENERAL))
def test_general_augmentations_heatmap_peaks_follow_boxes(name):
    a, boxes = GENERAL[name], _boxes()
    labels = np.zeros(len(boxes), dtype=np.int64)
    heat = build_center_targets([boxes], [labels], GRID, [(0,)])[0].heatmap[0, 0]
    warped = warp_bev(heat, a, GRID)
    for cell in GRID.metric_to_cell(warp_boxes(boxes, a)[:, :2]):
        r, c = cell
        patch = warped[r - 1:r + 2, c - 1:c + 2]
        assert float(patch.max()) > 0.6  # the peak survives the warp next to the augmented centre
        assert float(warped[r, c]) > 0.3


def _velocity_map(boxes: np.ndarray) -> torch.Tensor:
    out = torch.zeros(1, 2, *GRID.bev_shape)
    for box in boxes:
        m = torch.from_numpy(fg_mask_from_boxes(box[None], GRID))
        out[0, 0][m], out[0, 1][m] = float(box[7]), float(box[8])
    return out


@pytest.mark.parametrize("name", sorted(EXACT))
def test_velocity_maps_rotate_with_the_boxes(name):
    a, boxes = EXACT[name], _boxes()
    warped = warp_bev_vectors(_velocity_map(boxes), a, GRID)
    assert torch.allclose(warped, _velocity_map(warp_boxes(boxes, a)), atol=1e-5)


def test_residual_transform_of_a_cached_view():
    view, student = EXACT["rot90"], EXACT["flip_y_rot270"]
    r = residual_transform(student, view)
    assert np.allclose(r @ view, student)
    m = torch.randn(1, 4, 32, 32)
    cached = warp_bev(m, view, GRID)  # what a K-view cache stores for this view
    assert torch.allclose(warp_bev(cached, r, GRID), warp_bev(m, student, GRID), atol=1e-5)
    scaled_view = bev_augmentation_matrix(rotation=0.3, scale=1.05)
    assert np.allclose(residual_transform(student, scaled_view) @ scaled_view, student)


def test_teacher_targets_warped_moves_every_field():
    boxes = _boxes().astype(np.float32)
    rows = [CacheRow(bev_features={"neck": np.random.default_rng(i).normal(size=(3, 32, 32)).astype(np.float32)},
                          heatmap=np.zeros((10, 32, 32), np.float32), boxes=boxes, scores=np.ones(4, np.float32),
                          labels=np.zeros(4, np.int64), instance_features=np.ones((4, 3), np.float32),
                          fg_mask=fg_mask_from_boxes(boxes, GRID), view_mask=np.ones((6, 32, 32), bool),
                          lidar_depth=np.ones((6, 4, 11), np.float32))
            for i in range(2)]
    t = TeacherTargets.from_samples(rows, GRID)
    mats = np.stack([EXACT["rot90"], EXACT["flip_x"]])
    w = t.warped(mats)
    for i in range(2):
        assert np.allclose(w.boxes[i].numpy(), warp_boxes(boxes, mats[i]), atol=1e-5)
        assert torch.equal(w.fg_mask[i], warp_bev(t.fg_mask[i], mats[i], GRID))
        assert torch.allclose(w.bev_features["neck"][i], warp_bev(t.bev_features["neck"][i], mats[i], GRID))
    assert w.fg_mask.dtype == torch.bool and w.view_mask.shape == (2, 6, 32, 32)
    assert torch.equal(w.lidar_depth, t.lidar_depth)  # image-space target: untouched by BEV augmentation
    assert not torch.equal(w.fg_mask[0], w.fg_mask[1])


def test_consistency_figure(artefacts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, boxes = GENERAL["rot25_scale1.05"], _boxes()
    aug_boxes = warp_boxes(boxes, a)
    orig = fg_mask_from_boxes(boxes, GRID)
    warped = warp_bev(torch.from_numpy(orig), a, GRID).numpy()
    direct = fg_mask_from_boxes(aug_boxes, GRID)
    def heat(b: np.ndarray) -> torch.Tensor:
        return build_center_targets([b], [np.zeros(len(b), np.int64)], GRID, [(0,)])[0].heatmap[0, 0]

    panels = [("fg mask, original", orig), ("warped by augmentation", warped), ("from augmented boxes", direct),
              ("differences (border)", direct != warped), ("heatmap warped", warp_bev(heat(boxes), a, GRID).numpy()),
              ("heatmap from augmented boxes", heat(aug_boxes).numpy())]
    fig, axes = plt.subplots(1, 6, figsize=(18, 3.4))
    for ax, (title, img) in zip(axes, panels, strict=True):
        ax.imshow(np.asarray(img, dtype=float), origin="lower", cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("BEV augmentation (rot 25 deg, scale 1.05): warped cached targets vs targets of augmented input")
    path = artefacts / "student_augment_consistency.png"
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    assert path.stat().st_size > 5000
    assert (direct & warped).sum() > 0.6 * direct.sum()
