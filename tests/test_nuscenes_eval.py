"""The devkit's DetectionEval through storage.nuscenes_eval on generated mini_val."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storage.nuscenes_eval import Detections, evaluate_detections
from storage.nuscenes_reader import NuScenesReader


def ground_truth_detections(reader: NuScenesReader) -> dict[str, Detections]:
    """The ground truth as predictions (score 1, GT attributes), dropping boxes with no LiDAR
    point (the devkit filters those from the GT, so submitting them would count as false
    positives). Evaluating it gives mAP = NDS = 1 when the box conversions are exact."""
    out = {}
    for token in reader.sample_tokens:
        ann = reader.annotations(token)
        keep = ann.num_lidar_pts > 0
        out[token] = Detections(boxes=ann.gt_boxes[keep], scores=np.ones(int(keep.sum())), labels=ann.gt_labels[keep],
                                attribute_names=tuple(a for a, k in zip(ann.attribute_names, keep, strict=True) if k))
    return out


@pytest.fixture(scope="module")
def reader(synth_dataroot) -> NuScenesReader:
    return NuScenesReader(synth_dataroot, split="mini_val")


@pytest.fixture(scope="module")
def gt(reader):
    return ground_truth_detections(reader)


def _evaluate(reader, predictions, out):
    return evaluate_detections(dataroot=reader.dataroot, version="v1.0-mini", split="mini_val",
                               predictions=predictions, output_dir=out, reader=reader)


def _shifted(gt, metres: float):
    """Every box moved ``metres`` along a fixed direction in its sample's LiDAR frame."""
    step = np.zeros(9)
    step[:2] = metres * np.array([0.6, 0.8])
    return {t: Detections(boxes=d.boxes + step, scores=d.scores, labels=d.labels, attribute_names=d.attribute_names)
            for t, d in gt.items()}


def test_ground_truth_scores_one(reader, gt, tmp_path):
    m = _evaluate(reader, gt, tmp_path)
    assert m.mAP == pytest.approx(1.0, abs=1e-6)
    assert pytest.approx(1.0, abs=1e-6) == m.NDS
    assert set(m.per_class_ap) == {"car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
                                   "motorcycle", "bicycle", "traffic_cone", "barrier"}
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in m.per_class_ap.values())
    assert all(abs(v) < 1e-6 for v in m.tp_errors.values())
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())
    assert summary["nd_score"] == pytest.approx(m.NDS) and summary["mean_ap"] == pytest.approx(m.mAP)
    # every box with points was submitted once
    submitted = json.loads((tmp_path / "results_nusc.json").read_text())["results"]
    assert sum(len(v) for v in submitted.values()) == sum(len(d.boxes) for d in gt.values()) > 20


def test_shifted_boxes_score_lower_in_order(reader, gt, tmp_path):
    exact = _evaluate(reader, gt, tmp_path / "0")
    one = _evaluate(reader, _shifted(gt, 1.0), tmp_path / "1")
    two = _evaluate(reader, _shifted(gt, 2.0), tmp_path / "2")
    assert exact.mAP > one.mAP > two.mAP
    assert exact.NDS > one.NDS > two.NDS
    # matching thresholds are 0.5/1/2/4 m: a 1 m offset loses at least the two strict ones
    assert 0.4 < one.mAP < 0.8 and 0.15 < two.mAP < 0.55
    assert one.tp_errors["trans_err"] == pytest.approx(1.0, abs=0.05)


def test_tuples_without_attributes_use_default_attributes(reader, gt, tmp_path):
    preds = {t: (d.boxes, d.scores, d.labels) for t, d in gt.items()}
    m = _evaluate(reader, preds, tmp_path)
    assert m.mAP == pytest.approx(1.0, abs=1e-6)
    moving_cars = any("vehicle.moving" in d.attribute_names for d in gt.values())
    assert moving_cars and m.tp_errors["attr_err"] > 0.0  # default 'vehicle.parked' misses moving ones
    assert m.NDS < 1.0


def test_every_sample_needs_predictions(reader, gt, tmp_path):
    partial = dict(list(gt.items())[:-1])
    with pytest.raises(ValueError, match="miss 1 of 6 samples"):
        _evaluate(reader, partial, tmp_path)


def test_distance_bands_split_the_ground_truth_by_ego_distance(reader, gt, tmp_path):
    """GT as predictions: every band with ground truth scores 1; dropping the near predictions
    zeroes the near band and leaves the far band at 1 (the bands really filter by distance)."""
    m = evaluate_detections(dataroot=reader.dataroot, version="v1.0-mini", split="mini_val", predictions=gt,
                            output_dir=tmp_path / "all", reader=reader, distance_bands=(15.0,))
    assert list(m.band_ap) == ["0-15m", "15m+"]
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in m.band_ap.values())
    def far(d: Detections):
        return np.hypot(d.boxes[:, 0], d.boxes[:, 1]) > 15.0  # lidar-frame distance; the bands use ego distance
    far_only = {t: Detections(boxes=d.boxes[far(d)], scores=d.scores[far(d)], labels=d.labels[far(d)])
                for t, d in gt.items()}
    cut = evaluate_detections(dataroot=reader.dataroot, version="v1.0-mini", split="mini_val", predictions=far_only,
                              output_dir=tmp_path / "far", reader=reader, distance_bands=(15.0,))
    assert cut.band_ap["0-15m"] < 0.1
    # boxes near the 15 m edge can change sides between lidar and ego distance: most of the far band survives
    assert cut.band_ap["15m+"] > 0.5
    assert json.loads((tmp_path / "far" / "band_ap.json").read_text()) == pytest.approx(cut.band_ap)


def test_submission_declares_the_sensor_modality(reader, gt, tmp_path):
    from storage.nuscenes_eval import results_json

    meta = results_json(reader, gt, modality="camera")["meta"]
    assert meta["use_camera"] and not meta["use_lidar"]
    assert results_json(reader, gt)["meta"]["use_lidar"]
    with pytest.raises(ValueError, match="modality"):
        results_json(reader, gt, modality="radar")
