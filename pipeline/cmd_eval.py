"""``bevkd eval``: the nuScenes devkit's ``DetectionEval`` on a trained student run, or on the
teacher boxes stored in a cache, with AP per distance band and the devkit's PR / TP plots.

A student run is a folder written by ``bevkd train`` (``checkpoints/last.pt``); its boxes are
predicted on un-augmented images and submitted as camera-only (``use_camera``). A cache's
teacher boxes are the plain view (view 0, the sample's LiDAR frame) of each sample, submitted as
LiDAR (or LiDAR + camera for a fusion teacher). Each evaluation writes, under its output folder,
the devkit's ``results_nusc.json`` and ``metrics_summary.json``, ``band_ap.json``,
``plots/*.png`` (the devkit's curves) and ``evaluation.json`` (:class:`EvalRecord`, what
``bevkd compare`` reads).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from storage.nuscenes_eval import DetectionMetrics, Detections
    from storage.nuscenes_reader import NuScenesReader

EPILOG = """examples:
  bevkd eval runs/kd --dataroot data/nuscenes --version v1.0-mini --split mini_val
  bevkd eval --cache cache/train --dataroot data/nuscenes        # the teacher, on the cache's own split
  bevkd compare runs/nokd runs/kd --cache cache/val --dataroot data/nuscenes --out compare/"""
#: Name of the record each evaluation writes beside the devkit's files.
RECORD = "evaluation.json"
#: Default AP distance bands (m), as in ``bevkd demo``.
DEFAULT_BANDS = (15.0, 30.0)


@dataclass(frozen=True, kw_only=True)
class EvalRecord:
    """One evaluated model: a row of ``bevkd compare``.

    Attributes:
        name: display name (the run or cache folder name, ``teacher:<name>`` for a cache).
        kind: ``student`` or ``teacher``.
        source: the run folder or cache location.
        dataset: ``"nuscenes:<version>:<split>"`` evaluated on.
        metrics: the devkit's numbers (mAP, NDS, per-class AP, TP errors, AP per distance band).
        output_dir: the folder holding the devkit's files and this record.
    """

    name: str
    kind: str
    source: str
    dataset: str
    metrics: DetectionMetrics
    output_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "source": self.source, "dataset": self.dataset,
                "metrics": self.metrics.to_dict(), "output_dir": self.output_dir}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalRecord:
        from storage.nuscenes_eval import DetectionMetrics

        return cls(name=d["name"], kind=d["kind"], source=d["source"], dataset=d["dataset"],
                   metrics=DetectionMetrics.from_dict(d["metrics"]), output_dir=d.get("output_dir", ""))

    def save(self) -> Path:
        """Write ``<output_dir>/evaluation.json``."""
        path = Path(self.output_dir) / RECORD
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


class _DistanceBands(argparse.Action):
    """``--distance-bands``: finite, positive, strictly increasing edges (m), checked at parse time
    (:func:`storage.nuscenes_eval.check_distance_bands`), so a bad list is an argparse error naming the flag."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from storage.nuscenes_eval import check_distance_bands

        try:
            edges = check_distance_bands([float(v) for v in values])
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, list(edges))


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataroot/--version/--split``, ``--distance-bands``, ``--device``, ``--no-plots`` (shared with compare)."""
    g = parser.add_argument_group("evaluation data (nuScenes devkit)")
    g.add_argument("--dataroot", metavar="DIR", default=None, help="nuScenes dataroot with the devkit tables")
    g.add_argument("--version", default=None,
                   help="table version (default: the cache's recorded version, else v1.0-mini)")
    g.add_argument("--split", default=None,
                   help="devkit split evaluated (default: the cache's recorded split, else mini_val)")
    parser.add_argument("--distance-bands", type=float, nargs="*", default=list(DEFAULT_BANDS), metavar="M",
                        action=_DistanceBands,
                        help="edges (m) of the AP-per-ego-distance bands, positive and increasing "
                             "(default: %(default)s; none: no bands)")
    parser.add_argument("--device", default="cpu", help="device for student inference (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the devkit's PR / TP curve PNGs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN", help="student run folder written by `bevkd train`")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="evaluate the teacher boxes stored in this cache (instead of a RUN)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder, created if needed; not an existing file (default: RUN/eval, or "
                             "<CACHE>-eval beside the cache)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="drop boxes below this score (default: the run's eval_score_threshold; 0 for a cache)")
    parser.add_argument("--modality", choices=("lidar", "camera", "fusion"), default=None,
                        help="sensors declared in the submission (default: camera for a student; lidar, or fusion "
                             "for a teacher whose config has a camera branch)")
    add_dataset_arguments(parser)


def open_eval_reader(args: argparse.Namespace, cache_dataset: Any = None) -> NuScenesReader:
    """The devkit reader of ``--dataroot/--version/--split`` (defaults from the cache's dataset).

    Raises:
        ValueError: no ``--dataroot``.
    """
    from storage.nuscenes_reader import NuScenesReader

    if not args.dataroot:
        raise ValueError("--dataroot is required: the devkit evaluates against a nuScenes dataroot's tables")
    version = args.version or (cache_dataset.version if cache_dataset is not None and cache_dataset.version else
                               "v1.0-mini")
    split = args.split or (cache_dataset.split if cache_dataset is not None and cache_dataset.split else "mini_val")
    return NuScenesReader(args.dataroot, version=version, split=split)


def _evaluate(preds: dict[str, Detections], reader: NuScenesReader, out: Path, *, modality: str,
              bands: tuple[float, ...], plots: bool) -> DetectionMetrics:
    from storage.nuscenes_eval import evaluate_detections

    return evaluate_detections(dataroot=reader.dataroot, version=reader.version, split=reader.split, predictions=preds,
                               output_dir=out, reader=reader, modality=modality, distance_bands=bands,
                               plot_dir=out / "plots" if plots else None)


def evaluate_run(run: str | Path, reader: NuScenesReader, *, out: Path | None = None, device: str = "cpu",
                 score_threshold: float | None = None, bands: tuple[float, ...] = DEFAULT_BANDS,
                 plots: bool = True, modality: str = "camera") -> EvalRecord:
    """Evaluate the student of a ``bevkd train`` run folder; writes under ``out`` (default ``RUN/eval``).

    Raises:
        FileNotFoundError: ``RUN/checkpoints/last.pt`` is missing.
        storage.errors.CheckpointError: the checkpoint is not a student's.
    """
    from storage.checkpoint import load_checkpoint
    from student.evaluate import predict
    from student.trainer import load_student

    run = Path(run)
    ckpt = run / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"run {run}: no student checkpoint at {ckpt} (is it a `bevkd train` --out folder?)")
    model = load_student(ckpt, device)
    config = load_checkpoint(ckpt).get("config", {})
    threshold = score_threshold if score_threshold is not None else float(config.get("eval_score_threshold", 0.1))
    preds = predict(model, reader, model.config, device=device, score_threshold=threshold)
    out = out or run / "eval"
    metrics = _evaluate(preds, reader, out, modality=modality, bands=bands, plots=plots)
    record = EvalRecord(name=run.name, kind="student", source=str(run), dataset=reader.dataset_id, metrics=metrics,
                        output_dir=str(out))
    record.save()
    return record


def teacher_detections(cache: str | Path, tokens: list[str], *, score_threshold: float = 0.0
                       ) -> tuple[dict[str, Detections], list[str]]:
    """The teacher boxes of a cache (view 0 of each sample) for ``tokens``.

    Returns:
        ``(token -> Detections, tokens without a usable row)``; the latter get no boxes.

    Raises:
        ValueError: the cache's grid is not in the LiDAR frame, or it holds none of ``tokens``.
    """
    from storage.cache import CacheReader
    from storage.errors import CacheRowError
    from storage.nuscenes_eval import Detections

    reader = CacheReader(cache, targets=["boxes"])
    if reader.schema.grid.frame != "lidar":
        raise ValueError(f"cache {cache}: boxes are in the {reader.schema.grid.frame!r} frame; only 'lidar' is "
                         "evaluated")
    preds, missing = {}, []
    for token in tokens:
        try:
            row = reader.read(token, 0)
        except (KeyError, CacheRowError):
            missing.append(token)
            preds[token] = Detections(boxes=np.zeros((0, 9)), scores=np.zeros(0), labels=np.zeros(0, np.int64))
            continue
        assert row.boxes is not None and row.scores is not None and row.labels is not None
        keep = row.scores >= score_threshold
        preds[token] = Detections(boxes=row.boxes[keep].astype(np.float64), scores=row.scores[keep],
                                  labels=row.labels[keep])
    if len(missing) == len(tokens):
        raise ValueError(f"cache {cache} holds none of the {len(tokens)} samples evaluated (first: {tokens[:1]}); "
                         "evaluate on the cache's own split (--split)")
    return preds, missing


def teacher_modality(cache_schema: Any) -> str:
    """``fusion`` when the recorded teacher config has a camera branch, else ``lidar``."""
    return "fusion" if "camera" in cache_schema.teacher.config else "lidar"


def evaluate_cache(cache: str | Path, reader: NuScenesReader, *, out: Path | None = None,
                   score_threshold: float = 0.0, bands: tuple[float, ...] = DEFAULT_BANDS, plots: bool = True,
                   modality: str | None = None) -> EvalRecord:
    """Evaluate the teacher boxes stored in ``cache`` on ``reader``'s split; writes under ``out``
    (default ``<cache>-eval``). Samples without a committed ok row count as detecting nothing
    (reported on stderr).

    Raises:
        FileNotFoundError: no cache at ``cache``.
        ValueError: see :func:`teacher_detections`.
    """
    from storage.cache import CacheReader

    schema = CacheReader(cache, targets=["boxes"]).schema
    preds, missing = teacher_detections(cache, list(reader.sample_tokens), score_threshold=score_threshold)
    if missing:
        print(f"bevkd eval: cache {cache}: {len(missing)} of {len(preds)} samples have no ok row (e.g. {missing[0]}); "
              "counted as no detections", file=sys.stderr)
    cache = Path(cache)
    out = out or cache.with_name(cache.name + "-eval")
    metrics = _evaluate(preds, reader, out, modality=modality or teacher_modality(schema), bands=bands, plots=plots)
    record = EvalRecord(name=f"teacher:{schema.teacher.name}", kind="teacher", source=str(cache),
                        dataset=reader.dataset_id, metrics=metrics, output_dir=str(out))
    record.save()
    return record


def format_record(r: EvalRecord) -> str:
    m = r.metrics
    bands = "  ".join(f"{k} {v:.4f}" for k, v in m.band_ap.items())
    return (f"{r.name} ({r.kind}, {m.modality}) on {r.dataset}: mAP {m.mAP:.4f}  NDS {m.NDS:.4f}"
            + (f"\n  AP by distance: {bands}" if bands else "")
            + "\n  per-class AP: " + ", ".join(f"{k} {v:.3f}" for k, v in m.per_class_ap.items()))


def run(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.cache):
        print("bevkd eval: give exactly one of RUN (a student run folder) or --cache CACHE (its teacher boxes)",
              file=sys.stderr)
        return 2
    bands = tuple(args.distance_bands or ())
    out = Path(args.out) if args.out else None
    try:
        if out is not None:  # before the evaluation, not after it
            from storage.nuscenes_eval import check_output_dir

            check_output_dir(out)
        if args.cache:
            from storage.cache import CacheReader

            reader = open_eval_reader(args, CacheReader(args.cache, targets=["boxes"]).schema.dataset)
            record = evaluate_cache(args.cache, reader, out=out, score_threshold=args.score_threshold or 0.0,
                                    bands=bands, plots=not args.no_plots, modality=args.modality)
        else:
            reader = open_eval_reader(args)
            record = evaluate_run(args.run, reader, out=out, device=args.device, score_threshold=args.score_threshold,
                                  bands=bands, plots=not args.no_plots, modality=args.modality or "camera")
    except (ValueError, NotADirectoryError) as exc:
        print(f"bevkd eval: {exc}", file=sys.stderr)
        return 2
    print(format_record(record))
    plots = record.metrics.plots
    print(f"  written: {Path(record.output_dir) / RECORD}, metrics_summary.json"
          + (f"; {len(plots)} devkit plots in {Path(plots[0]).parent}" if plots else ""))
    return 0
