"""Evaluating the student with the nuScenes devkit's ``DetectionEval`` (mAP, NDS, per-class AP).

Boxes are decoded from the student's CenterHead (CenterPoint §4: peaks, regression read-out,
circle NMS; :func:`teachers.centerhead.decode_boxes`) on un-augmented inputs, in each sample's
LiDAR frame, and handed to :func:`storage.nuscenes_eval.evaluate_detections`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from storage.sample import SampleReader
from student.config import StudentConfig
from student.dataset import Collate, DataConfig, StudentDataset
from teachers.centerhead import decode_boxes

if TYPE_CHECKING:  # the devkit is imported only when evaluating
    from storage.nuscenes_eval import DetectionMetrics, Detections


@torch.no_grad()
def predict(model: torch.nn.Module, reader: SampleReader, student: StudentConfig, *, device: torch.device | str,
            batch_size: int = 2, workers: int = 0, score_threshold: float = 0.1, max_boxes: int = 500
            ) -> dict[str, Detections]:
    """Student detections for every sample of ``reader``.

    Returns:
        sample token -> ``Detections`` (boxes ``(M, 9)`` lidar frame, scores, labels).
    """
    from storage.nuscenes_eval import Detections

    ds = StudentDataset(reader, student, DataConfig(bev_aug=None, image_aug=None), train=False, depth_targets=False)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=Collate(ds.grid, student.image_hw))
    was_training = model.training
    model.eval()
    out: dict[str, Detections] = {}
    for lb in loader:
        res = model(lb.student_batch(device))
        boxes, scores, labels = decode_boxes(res.head, res.bev_grid, score_threshold=score_threshold,
                                             max_boxes=max_boxes)
        for tok, b, s, lab in zip(lb.sample_tokens, boxes, scores, labels, strict=True):
            out[tok] = Detections(boxes=b.cpu().numpy().astype(np.float64), scores=s.cpu().numpy(),
                                  labels=lab.cpu().numpy())
    model.train(was_training)
    return out


def evaluate_student(model: torch.nn.Module, reader: SampleReader, student: StudentConfig, *,
                     device: torch.device | str, output_dir: str | os.PathLike[str], batch_size: int = 2,
                     workers: int = 0, score_threshold: float = 0.1,
                     distance_bands: tuple[float, ...] = ()) -> DetectionMetrics | None:
    """Devkit metrics of the student on ``reader``'s split, or None when ``reader`` is not a
    nuScenes devkit reader (an mmdet3d info file carries no devkit tables to evaluate against).

    The submission declares camera-only input (``use_camera``). ``distance_bands`` (m) adds the
    devkit's mAP per ego-distance band (:func:`storage.nuscenes_eval.evaluate_detections`).
    Writes ``results_nusc.json`` and ``metrics_summary.json`` under ``output_dir``.
    """
    from storage.nuscenes_eval import evaluate_detections
    from storage.nuscenes_reader import NuScenesReader

    if not isinstance(reader, NuScenesReader):
        return None
    preds = predict(model, reader, student, device=device, batch_size=batch_size, workers=workers,
                    score_threshold=score_threshold)
    return evaluate_detections(dataroot=reader.dataroot, version=reader.version, split=reader.split,
                               predictions=preds, output_dir=output_dir, reader=reader, modality="camera",
                               distance_bands=distance_bands)


__all__ = ["evaluate_student", "predict"]
