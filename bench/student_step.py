"""What distillation costs the student's training step (one run, side by side).

Run from the repository root: ``.venv/bin/python -m bench.student_step [--steps 5 --config tiny]``

Measures, on the same model and batch, the wall time of one training step (forward, loss,
backward, optimizer step) with
  (a) detection + BEVDepth depth BCE only (the student trained alone),
  (b) (a) + every distillation term from cached targets (13 terms: BEVDistill, BEV-LGKD,
      X3KD, UniDistill, SimDistill),
  (c) the BEV augmentation of the cached targets (:meth:`TeacherTargets.warped`) alone,
and prints the ratios (b)/(a) and (c)/(a). Variants run interleaved; each reports its fastest step.
A live teacher's forward is *not* in (b): that is
the point of the cache.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/storage.py is not `storage`
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from storage.grid import DEMO_GRID  # noqa: E402
from storage.bev_augment import bev_augmentation_matrix  # noqa: E402
from student.config import StudentConfig  # noqa: E402
from student.losses import DistillationConfig, DistillationLoss, LossWeights, TeacherShapes, TeacherTargets  # noqa: E402
from student.model import StudentBatch, StudentModel  # noqa: E402

ALL = LossWeights(detection=1.0, depth_bce=3.0, dense_feature=1.0, lgkd_feature=1.0, depth_distill=0.5, heatmap=1.0,
                  keypoint_response=1.0, instance=0.5, fusion_camera=1.0, fusion_lidar=1.0, fusion_fused=1.0,
                  adversarial=0.1)


def _batch(cfg: StudentConfig, b: int) -> StudentBatch:
    k = torch.tensor([[cfg.image_hw[1] * 0.6, 0.0, cfg.image_hw[1] / 2], [0.0, cfg.image_hw[1] * 0.6,
                      cfg.image_hw[0] / 2], [0.0, 0.0, 1.0]]).expand(b, 6, 3, 3).clone()
    lfc = torch.zeros(b, 6, 4, 4)
    for i in range(6):
        y = i * math.pi / 3
        lfc[:, i, :3, :3] = torch.tensor([[math.sin(y), 0, math.cos(y)], [-math.cos(y), 0, math.sin(y)], [0, -1.0, 0]])
        lfc[:, i, 2, 3], lfc[:, i, 3, 3] = 1.5, 1.0
    boxes = [torch.tensor([[12.0, 3.0, 0.0, 4.5, 1.9, 1.6, 0.2, 1.0, 0.0]] * 20) + torch.randn(20, 9) * 5
             for _ in range(b)]
    for bx in boxes:
        bx[:, 3:6] = bx[:, 3:6].abs() + 1
    return StudentBatch(images=torch.randn(b, 6, 3, *cfg.image_hw), cam_intrinsic=k, lidar_from_cam=lfc,
                        img_aug=torch.eye(3).expand(b, 6, 3, 3).clone(), gt_boxes=boxes,
                        gt_labels=[torch.zeros(20, dtype=torch.long) for _ in range(b)])


def _targets(cfg: StudentConfig, b: int, boxes: list[torch.Tensor]) -> tuple[TeacherShapes, TeacherTargets]:
    grid = cfg.bev_grid
    h, w = grid.bev_shape
    ch = {"neck": 64, "camera_bev": 32, "lidar_bev": 64, "fused_bev": 64}
    d, (fh, fw) = cfg.depth.num_depth_bins, cfg.feature_size
    t = TeacherTargets(bev_grid=grid, bev_features={k: torch.randn(b, c, h, w) for k, c in ch.items()},
                       heatmap=torch.rand(b, 10, h, w) * 0.3, boxes=boxes, scores=[torch.ones(len(x)) for x in boxes],
                       labels=[torch.zeros(len(x), dtype=torch.long) for x in boxes],
                       instance_features=[torch.randn(len(x), 64) for x in boxes],
                       lidar_depth=torch.rand(b, 6, fh, fw) * 50, depth_probs=torch.rand(b, 6, d, fh, fw).softmax(2),
                       fg_mask=torch.rand(b, h, w) > 0.8, view_mask=torch.rand(b, 6, h, w) > 0.5)
    return TeacherShapes(bev_grid=grid, bev_channels=ch, instance_channels=64), t


def _interleaved_min(fns: list, steps: int) -> list[float]:
    """Run the variants alternately (robust to other load on the machine) and keep each one's
    fastest step, seconds; one untimed warm-up each."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(steps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=2, help="samples per batch (6 cameras each)")
    ap.add_argument("--config", choices=("tiny", "small"), default="tiny",
                    help="tiny: R18/16, 64x176 images, 32x32 BEV; small: R18/64, 128x352 images, 64x64 BEV")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = StudentConfig.tiny(simdistill=True)
    if args.config == "small":
        from dataclasses import replace
        from student.config import BackboneConfig
        cfg = replace(cfg, backbone=BackboneConfig(depth=18, base_width=64), image_hw=(128, 352),
                      bev_grid=DEMO_GRID.with_stride(4), fpn_channels=128, context_channels=64, bev_channels=64)
    model = StudentModel(cfg)
    batch = _batch(cfg, args.batch)
    spec, targets = _targets(cfg, args.batch, batch.gt_boxes)
    alone = DistillationLoss.for_student(DistillationConfig(weights=LossWeights()), model)
    full = DistillationLoss.for_student(DistillationConfig(weights=ALL), model, spec)

    def step(loss_fn: DistillationLoss) -> None:
        opt = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=1e-4)
        res = loss_fn(model(batch), targets, gt_boxes=batch.gt_boxes, gt_labels=batch.gt_labels)
        opt.zero_grad()
        res.total.backward()
        opt.step()

    aug = np.stack([bev_augmentation_matrix(rotation=0.3, scale=1.02, flip_x=True)] * args.batch)
    t_alone, t_full, t_warp = _interleaved_min([lambda: step(alone), lambda: step(full),
                                                lambda: targets.warped(aug)], args.steps)
    print(f"config={args.config} batch={args.batch} threads={torch.get_num_threads()} device=cpu")
    print(f"(a) detection + depth step      {t_alone * 1e3:9.1f} ms")
    print(f"(b) + 13 distillation terms      {t_full * 1e3:9.1f} ms   ratio b/a = {t_full / t_alone:.2f}")
    print(f"(c) warp cached targets (BEV aug) {t_warp * 1e3:8.1f} ms   ratio c/a = {t_warp / t_alone:.3f}")


if __name__ == "__main__":
    main()
