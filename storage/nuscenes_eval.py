"""nuScenes detection evaluation with the official devkit (``DetectionEval``,
``detection_cvpr_2019`` config): mAP, NDS, per-class AP and the five TP errors.

Predictions are bevkd boxes in each sample's LiDAR frame; they are converted to the
submission format only through :func:`storage.boxes.boxes_to_nuscenes` with the sample's
``global_from_lidar`` taken from the devkit tables.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

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

    boxes: npt.NDArray[np.floating[Any]]
    scores: npt.NDArray[np.floating[Any]]
    labels: npt.NDArray[np.integer[Any]]
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
        band_ap: distance band name (``"0-15m"``) -> mAP of the devkit on the boxes of that band
            (see :func:`evaluate_detections`); empty when no bands were asked for.
        modality: the sensors the submission declared (``lidar``, ``camera`` or ``fusion``).
        plots: paths of the devkit's PR / TP curve PNGs (:func:`render_plots`); empty when not rendered.
    """

    mAP: float
    NDS: float
    per_class_ap: dict[str, float]
    tp_errors: dict[str, float]
    band_ap: dict[str, float] = field(default_factory=dict)
    modality: str = ""
    plots: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN band APs stay ``NaN``, which :mod:`json` writes and reads)."""
        return {"mAP": self.mAP, "NDS": self.NDS, "per_class_ap": dict(self.per_class_ap),
                "tp_errors": dict(self.tp_errors), "band_ap": dict(self.band_ap), "modality": self.modality,
                "plots": list(self.plots)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectionMetrics:
        return cls(mAP=float(d["mAP"]), NDS=float(d["NDS"]), per_class_ap=dict(d["per_class_ap"]),
                   tp_errors=dict(d["tp_errors"]), band_ap=dict(d.get("band_ap", {})),
                   modality=str(d.get("modality", "")), plots=tuple(d.get("plots", ())))

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], band_ap: Mapping[str, float] | None = None
                     ) -> DetectionMetrics:
        """From the devkit's ``metrics_summary.json`` (its ``meta`` gives the modality)."""
        meta = summary.get("meta", {})
        modality = ("fusion" if meta.get("use_camera") and meta.get("use_lidar") else
                    "camera" if meta.get("use_camera") else "lidar" if meta.get("use_lidar") else "")
        return cls(mAP=float(summary["mean_ap"]), NDS=float(summary["nd_score"]),
                   per_class_ap={k: float(v) for k, v in summary["mean_dist_aps"].items()},
                   tp_errors={k: float(summary["tp_errors"][k]) for k in TP_ERRORS}, band_ap=dict(band_ap or {}),
                   modality=modality)


def _as_detections(value: Detections | tuple[Any, ...]) -> Detections:
    if isinstance(value, Detections):
        return value
    boxes, scores, labels, *rest = value
    return Detections(boxes=np.asarray(boxes), scores=np.asarray(scores), labels=np.asarray(labels),
                      attribute_names=tuple(rest[0]) if rest and rest[0] is not None else None)


def results_json(reader: NuScenesReader, predictions: Mapping[str, Detections | tuple[Any, ...]], *,
                 modality: str = "lidar") -> dict[str, Any]:
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
    if modality not in ("lidar", "camera", "fusion"):
        raise ValueError(f"results_json: modality must be 'lidar', 'camera' or 'fusion', got {modality!r}")
    meta = {"use_camera": modality in ("camera", "fusion"), "use_lidar": modality in ("lidar", "fusion"),
            "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def evaluate_detections(*, dataroot: str | os.PathLike[str], version: str, split: str,
                        predictions: Mapping[str, Detections | tuple[Any, ...]], output_dir: str | os.PathLike[str],
                        reader: NuScenesReader | None = None, modality: str = "lidar",
                        distance_bands: Sequence[float] = (), plot_dir: str | os.PathLike[str] | None = None
                        ) -> DetectionMetrics:
    """Run the devkit's ``DetectionEval`` on ``predictions``.

    Args:
        dataroot, version, split: the nuScenes data and devkit split to evaluate on.
        predictions: sample token -> :class:`Detections` or a tuple ``(boxes (M, 9) lidar
            frame, scores (M,), labels (M,) [, attribute_names])``; every sample of the split.
        output_dir: receives ``results_nusc.json`` and the devkit's ``metrics_summary.json``.
        reader: an already opened reader of the same data (saves reloading the tables).
        modality: sensors the detector used (``lidar``, ``camera`` or ``fusion``), written to the
            submission's ``meta``.
        distance_bands: band edges in metres, e.g. ``(15, 30)`` -> bands ``0-15m``, ``15-30m``,
            ``30m+``. Each band is the devkit's own evaluation (same matching, thresholds and
            class ranges) run on the ground-truth *and* predicted boxes whose 2D distance to the
            ego vehicle (the devkit's ``ego_dist``) lies in the band, so a prediction and its
            ground truth on opposite sides of an edge count as a miss and a false positive.
            Classes with no ground truth in a band are left out of that band's mean.
        plot_dir: if given, the devkit's PR and TP curves are rendered there as PNGs
            (:func:`render_plots`).

    Raises:
        ValueError: missing samples or inconsistent arrays (see :func:`results_json`), or
            ``distance_bands`` not positive and strictly increasing (:func:`check_distance_bands`).
        NotADirectoryError: ``output_dir`` or ``plot_dir`` (or a folder above) is an existing file.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    check_distance_bands(distance_bands)
    out = Path(output_dir)
    for folder in (out, *([Path(plot_dir)] if plot_dir is not None else [])):
        check_output_dir(folder)
    reader = reader or NuScenesReader(dataroot, version=version, split=split)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "results_nusc.json"
    result_path.write_text(json.dumps(results_json(reader, predictions, modality=modality)))
    evaluator = DetectionEval(reader.nusc, config=config_factory("detection_cvpr_2019"), result_path=str(result_path),
                              eval_set=split, output_dir=str(out), verbose=False)
    metrics, md_list = evaluator.evaluate()
    summary = metrics.serialize()
    summary["meta"] = evaluator.meta.copy()
    (out / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
    band_ap = _band_aps(evaluator, distance_bands)
    if band_ap:
        (out / "band_ap.json").write_text(json.dumps(band_ap, indent=2))
    plots = render_plots(evaluator, metrics, md_list, plot_dir) if plot_dir is not None else []
    return replace(DetectionMetrics.from_summary(summary, band_ap), plots=tuple(str(p) for p in plots))


def render_plots(evaluator: Any, metrics: Any, md_list: Any, plot_dir: str | os.PathLike[str]) -> list[Path]:
    """The devkit's curves (``DetectionEval.render``'s plot functions) as PNGs in ``plot_dir``:
    ``summary.png``, ``<class>_pr.png`` and ``<class>_tp.png`` for every class with ground truth,
    ``dist_pr_<th>.png`` per matching threshold (m).

    Returns:
        the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nuscenes.eval.detection.render import class_pr_curve, class_tp_curve, dist_pr_curve, summary_plot

    cfg, out = evaluator.cfg, Path(plot_dir)
    out.mkdir(parents=True, exist_ok=True)
    present = sorted({b.detection_name for b in evaluator.gt_boxes.all})
    written: list[Path] = []

    def path(name: str) -> str:
        written.append(out / f"{name}.png")
        return str(written[-1])

    summary_plot(md_list, metrics, min_precision=cfg.min_precision, min_recall=cfg.min_recall,
                 dist_th_tp=cfg.dist_th_tp, savepath=path("summary"))
    for name in present:
        class_pr_curve(md_list, metrics, name, cfg.min_precision, cfg.min_recall, savepath=path(f"{name}_pr"))
        class_tp_curve(md_list, metrics, name, cfg.min_recall, cfg.dist_th_tp, savepath=path(f"{name}_tp"))
    for th in cfg.dist_ths:
        dist_pr_curve(md_list, metrics, th, cfg.min_precision, cfg.min_recall, savepath=path(f"dist_pr_{th:g}"))
    plt.close("all")
    return written


def check_distance_bands(edges: Sequence[float]) -> tuple[float, ...]:
    """``edges`` as floats, when they are finite, positive and strictly increasing (``(15, 30)``).

    Raises:
        ValueError: e.g. ``distance band edges must be positive and strictly increasing (m), got 30 10``.
    """
    values = tuple(float(e) for e in edges)
    ok = all(np.isfinite(v) and v > 0 for v in values) and all(a < b for a, b in itertools.pairwise(values))
    if not ok:
        raise ValueError("distance band edges must be positive and strictly increasing (m), got "
                         + " ".join(f"{v:g}" for v in values))
    return values


def check_output_dir(folder: str | os.PathLike[str]) -> Path:
    """``folder`` as a Path, when it is a directory or can be made one.

    Raises:
        NotADirectoryError: ``folder``, or a folder above it, is an existing file (names it).
    """
    path = Path(folder)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"output folder {path}: {p} is an existing file, not a folder")
            break
    return path


def band_names(edges: Sequence[float]) -> list[str]:
    """``(15, 30)`` -> ``["0-15m", "15-30m", "30m+"]``."""
    lo = [0.0, *edges]
    return [f"{a:g}-{b:g}m" for a, b in itertools.pairwise(lo)] + [f"{lo[-1]:g}m+"]


def _band_aps(evaluator: Any, edges: Sequence[float]) -> dict[str, float]:
    """mAP per distance band: the devkit's ``accumulate`` / ``calc_ap`` on band-filtered boxes."""
    if not edges:
        return {}
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.algo import accumulate, calc_ap

    cfg = evaluator.cfg
    bounds = [0.0, *[float(e) for e in edges], float("inf")]
    out: dict[str, float] = {}
    for name, lo, hi in zip(band_names(edges), bounds[:-1], bounds[1:], strict=True):
        def band(boxes: Any, lo: float = lo, hi: float = hi) -> Any:
            kept = EvalBoxes()
            for token in boxes.sample_tokens:
                kept.add_boxes(token, [b for b in boxes[token] if lo <= b.ego_dist < hi])
            return kept
        gt, pred = band(evaluator.gt_boxes), band(evaluator.pred_boxes)
        aps = []
        for cls in cfg.class_names:
            if not any(b.detection_name == cls for b in gt.all):
                continue
            per_th = [calc_ap(accumulate(gt, pred, cls, cfg.dist_fcn_callable, th), cfg.min_recall, cfg.min_precision)
                      for th in cfg.dist_ths]
            aps.append(float(np.mean(per_th)))
        out[name] = float(np.mean(aps)) if aps else float("nan")
    return out


__all__ = ["DEFAULT_ATTRIBUTE", "DetectionMetrics", "Detections", "band_names", "check_distance_bands",
           "check_output_dir", "evaluate_detections", "render_plots", "results_json"]
