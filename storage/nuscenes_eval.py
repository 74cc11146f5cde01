"""nuScenes detection evaluation with the official devkit (``DetectionEval``,
``detection_cvpr_2019`` config): mAP, NDS, per-class AP and the five TP errors.

Predictions are bevkd boxes in each sample's LiDAR frame; they are converted to the
submission format only through :func:`storage.boxes.boxes_to_nuscenes` with the sample's
``global_from_lidar`` taken from the devkit tables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from storage.boxes import boxes_to_nuscenes
from storage.nuscenes_reader import NuScenesReader
from storage.sample import NUSCENES_CLASSES

#: mmdetection3d's default attribute per class, used when a detector predicts none.
DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked", "truck": "vehicle.parked", "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving", "trailer": "vehicle.parked", "barrier": "", "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider", "pedestrian": "pedestrian.moving", "traffic_cone": "",
}
#: Error names of the devkit's summary (mATE, mASE, mAOE, mAVE, mAAE).
TP_ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")


@dataclass(frozen=True, kw_only=True, eq=False)
class Detections:
    """One sample's detections.

    Attributes:
        boxes: ``(M, 9)`` float ``[x, y, z, l, w, h, yaw, vx, vy]``, lidar frame.
        scores: ``(M,)`` float in ``[0, 1]``.
        labels: ``(M,)`` int indices into NUSCENES_CLASSES.
        attribute_names: ``M`` nuScenes attribute names, or None for :data:`DEFAULT_ATTRIBUTE`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    attribute_names: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class DetectionMetrics:
    """The devkit's headline numbers.

    Attributes:
        mAP: mean average precision over classes and distance thresholds (0.5, 1, 2, 4 m).
        NDS: nuScenes detection score.
        per_class_ap: class name -> AP averaged over the distance thresholds.
        tp_errors: ``trans_err`` (m), ``scale_err`` (1 - IoU), ``orient_err`` (rad),
            ``vel_err`` (m/s), ``attr_err`` (1 - acc): means over classes.
    """

    mAP: float
    NDS: float
    per_class_ap: dict[str, float]
    tp_errors: dict[str, float]


def _as_detections(value: Detections | tuple) -> Detections:
    if isinstance(value, Detections):
        return value
    boxes, scores, labels, *rest = value
    return Detections(boxes=np.asarray(boxes), scores=np.asarray(scores), labels=np.asarray(labels),
                      attribute_names=tuple(rest[0]) if rest and rest[0] is not None else None)


def results_json(reader: NuScenesReader, predictions: Mapping[str, Detections | tuple]) -> dict:
    """The official submission dict ``{meta, results}`` for every sample of ``reader``.

    Raises:
        ValueError: a sample of the split has no entry in ``predictions`` (the devkit needs all),
            or an entry's arrays disagree in length.
    """
    missing = [t for t in reader.sample_tokens if t not in predictions]
    if missing:
        raise ValueError(f"{reader.dataset_id}: predictions miss {len(missing)} of {len(reader)} samples "
                         f"(first: {missing[:3]}); DetectionEval needs every sample of the split")
    results = {}
    for token in reader.sample_tokens:
        det = _as_detections(predictions[token])
        boxes = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 9)
        if not len(boxes) == len(det.scores) == len(det.labels):
            raise ValueError(f"sample {token}: {len(boxes)} boxes, {len(det.scores)} scores, {len(det.labels)} labels")
        nus = boxes_to_nuscenes(boxes, reader.global_from_lidar(token))
        entries = []
        for i, label in enumerate(np.asarray(det.labels, dtype=np.int64)):
            name = NUSCENES_CLASSES[int(label)]
            attr = det.attribute_names[i] if det.attribute_names is not None else DEFAULT_ATTRIBUTE[name]
            entries.append({"sample_token": token, "translation": nus["translation"][i].tolist(),
                            "size": nus["size"][i].tolist(), "rotation": nus["rotation"][i].tolist(),
                            "velocity": np.nan_to_num(nus["velocity"][i]).tolist(), "detection_name": name,
                            "detection_score": float(det.scores[i]), "attribute_name": attr})
        results[token] = entries
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def evaluate_detections(*, dataroot: str | os.PathLike[str], version: str, split: str,
                        predictions: Mapping[str, Detections | tuple], output_dir: str | os.PathLike[str],
                        reader: NuScenesReader | None = None) -> DetectionMetrics:
    """Run the devkit's ``DetectionEval`` on ``predictions``.

    Args:
        dataroot, version, split: the nuScenes data and devkit split to evaluate on.
        predictions: sample token -> :class:`Detections` or a tuple ``(boxes (M, 9) lidar
            frame, scores (M,), labels (M,) [, attribute_names])``; every sample of the split.
        output_dir: receives ``results_nusc.json`` and the devkit's ``metrics_summary.json``.
        reader: an already opened reader of the same data (saves reloading the tables).

    Raises:
        ValueError: missing samples or inconsistent arrays (see :func:`results_json`).
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    reader = reader or NuScenesReader(dataroot, version=version, split=split)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "results_nusc.json"
    result_path.write_text(json.dumps(results_json(reader, predictions)))
    evaluator = DetectionEval(reader.nusc, config=config_factory("detection_cvpr_2019"), result_path=str(result_path),
                              eval_set=split, output_dir=str(out), verbose=False)
    metrics, _ = evaluator.evaluate()
    summary = metrics.serialize()
    summary["meta"] = evaluator.meta.copy()
    (out / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
    return DetectionMetrics(mAP=float(summary["mean_ap"]), NDS=float(summary["nd_score"]),
                            per_class_ap={k: float(v) for k, v in summary["mean_dist_aps"].items()},
                            tp_errors={k: float(summary["tp_errors"][k]) for k in TP_ERRORS})


def ground_truth_detections(reader: NuScenesReader) -> dict[str, Detections]:
    """The ground truth as predictions (score 1, GT attributes), dropping boxes with no LiDAR
    point (the devkit filters those from the GT, so submitting them would count as false
    positives). Evaluating it gives mAP = NDS = 1 when the box conversions are exact."""
    out = {}
    for token in reader.sample_tokens:
        ann = reader.annotations(token)
        keep = ann.num_lidar_pts > 0
        out[token] = Detections(boxes=ann.gt_boxes[keep], scores=np.ones(int(keep.sum())), labels=ann.gt_labels[keep],
                                attribute_names=tuple(a for a, k in zip(ann.attribute_names, keep) if k))
    return out


__all__ = ["DEFAULT_ATTRIBUTE", "DetectionMetrics", "Detections", "evaluate_detections", "ground_truth_detections",
           "results_json"]
