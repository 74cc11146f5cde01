"""``bevkd compare``: several students (and the teacher of their cache) in one table and one plot.

Each RUN's evaluation is read from ``RUN/eval/evaluation.json`` (``bevkd eval RUN``), or from the
devkit summary ``bevkd train`` wrote at the end of training (``RUN/eval/metrics_summary.json`` and
``band_ap.json``). With ``--dataroot`` every RUN is evaluated afresh on ``--split`` (default
``mini_val``) first. ``--cache`` adds the teacher's stored boxes (evaluated into ``OUT/teacher``,
or read from ``<CACHE>-eval/evaluation.json``) on ``--split`` when given, else on the split the
cache covers: a teacher-vs-student row on one split needs a cache of the evaluation split
(``bevkd cache --split mini_val``); the table's ``dataset`` column shows a mismatch, and a warning
(:func:`split_warning`) on stderr, under the table and in the plot's title.

Writes ``OUT/compare.md`` (markdown table), ``OUT/compare.csv`` (every number, per-class AP
included) and ``OUT/compare.png`` (mAP, NDS and AP per distance band, one bar per model).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

from pipeline.cmd_eval import (RECORD, EvalRecord, add_dataset_arguments, evaluate_cache, evaluate_run,
                               open_eval_reader)

EPILOG = """examples:
  bevkd compare runs/nokd runs/kd                  # their last evaluations (bevkd train / bevkd eval)
  bevkd compare runs/nokd runs/kd --cache cache/val --dataroot data/nuscenes --split mini_val --out compare/"""

#: The devkit's TP error columns, with their summary names.
TP_COLUMNS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="student run folders written by `bevkd train`")
    parser.add_argument("--cache", metavar="DIR", default=None, help="add the teacher boxes stored in this cache")
    parser.add_argument("--out", metavar="DIR", default="compare",
                        help="folder for compare.md / .csv / .png (default: %(default)s)")
    add_dataset_arguments(parser)


def stored_record(run: Path) -> EvalRecord:
    """A run's last evaluation: ``eval/evaluation.json``, else the training-time devkit summary.

    Raises:
        FileNotFoundError: the run has neither (evaluate it with ``bevkd eval RUN`` or pass ``--dataroot``).
    """
    from storage.nuscenes_eval import DetectionMetrics

    ev = run / "eval"
    if (ev / RECORD).is_file():
        return EvalRecord.from_dict(json.loads((ev / RECORD).read_text()))
    if (ev / "metrics_summary.json").is_file():
        bands = json.loads((ev / "band_ap.json").read_text()) if (ev / "band_ap.json").is_file() else {}
        metrics = DetectionMetrics.from_summary(json.loads((ev / "metrics_summary.json").read_text()), bands)
        return EvalRecord(name=run.name, kind="student", source=str(run), dataset="", metrics=metrics,
                          output_dir=str(ev))
    raise FileNotFoundError(f"run {run}: no evaluation in {ev} (run `bevkd eval {run} --dataroot ...` or pass "
                            "--dataroot to compare)")


def table(records: list[EvalRecord]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the comparison: model, kind, sensors, dataset, mAP, NDS, AP per band,
    the five TP errors, and mAP relative to the teacher (when one is present)."""
    bands = list(dict.fromkeys(b for r in records for b in r.metrics.band_ap))
    teacher = next((r for r in records if r.kind == "teacher"), None)
    head = ["model", "kind", "sensors", "dataset", "mAP", "NDS", *[f"AP {b}" for b in bands], *TP_COLUMNS.values()]
    if teacher is not None:
        head.append("mAP / teacher")
    rows = []
    for r in records:
        m = r.metrics
        row: list[Any] = [r.name, r.kind, m.modality, r.dataset, m.mAP, m.NDS,
                          *[m.band_ap.get(b, math.nan) for b in bands], *[m.tp_errors[k] for k in TP_COLUMNS]]
        if teacher is not None:
            row.append(m.mAP / teacher.metrics.mAP if teacher.metrics.mAP > 0 else math.nan)
        rows.append(row)
    return head, rows


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(records: list[EvalRecord], path: Path) -> None:
    """One row per model: the table's columns plus ``AP <class>`` for every class."""
    head, rows = table(records)
    classes = list(dict.fromkeys(c for r in records for c in r.metrics.per_class_ap))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*head, *[f"AP {c}" for c in classes], "source"])
        for r, row in zip(records, rows, strict=True):
            w.writerow([*row, *[r.metrics.per_class_ap.get(c, math.nan) for c in classes], r.source])


def split_warning(records: list[EvalRecord]) -> str | None:
    """``"evaluated on different splits: <dataset> (<models>); ..."`` when the records were
    evaluated on more than one dataset (records without one are not counted), else ``None``."""
    models: dict[str, list[str]] = {}
    for r in records:
        if r.dataset:
            models.setdefault(r.dataset, []).append(r.name)
    if len(models) < 2:
        return None
    return "evaluated on different splits: " + "; ".join(f"{d} ({', '.join(n)})" for d, n in models.items())


def plot(records: list[EvalRecord], path: Path) -> Path:
    """Grouped bars: mAP, NDS and AP per distance band, one bar per model (teacher hatched).

    The title (also saved as the PNG's ``Title`` text chunk) ends with :func:`split_warning`, in
    red, when the records were evaluated on different splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bands = list(dict.fromkeys(b for r in records for b in r.metrics.band_ap))
    groups = ["mAP", "NDS", *[f"AP {b}" for b in bands]]
    x = np.arange(len(groups))
    width = 0.8 / max(len(records), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 0.4 * len(records)), 4))
    for i, r in enumerate(records):
        vals = [r.metrics.mAP, r.metrics.NDS, *[r.metrics.band_ap.get(b, math.nan) for b in bands]]
        ax.bar(x + (i - (len(records) - 1) / 2) * width, np.nan_to_num(vals), width, label=f"{r.name} ({r.kind})",
               hatch="//" if r.kind == "teacher" else None, edgecolor="black", linewidth=0.5)
    ax.set_xticks(x, groups)
    ax.set_ylabel("nuScenes devkit score")
    ax.set_ylim(0, max(1e-3, max(max(r.metrics.mAP, r.metrics.NDS, *r.metrics.band_ap.values(), 0) for r in records)
                       * 1.15))
    title = "students vs teacher (DetectionEval, detection_cvpr_2019)"
    warning = split_warning(records)
    if warning is None:
        ax.set_title(title)
    else:
        wrapped = textwrap.wrap(f"WARNING: {warning}", int(fig.get_figwidth() * 14))  # 8 pt characters per line
        ax.set_title("\n".join([title, *wrapped]), fontsize=8, color="firebrick")
        title += f"\nWARNING: {warning}"
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": title})
    plt.close(fig)
    return path


def compare(records: list[EvalRecord], out: Path) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.csv`` and ``compare.png`` under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    head, rows = table(records)
    text = markdown(head, rows)
    warning = split_warning(records)
    if warning is not None:
        text += f"\n**Warning:** the rows were {warning}\n"
    paths = {"md": out / "compare.md", "csv": out / "compare.csv", "png": out / "compare.png"}
    paths["md"].write_text(text)
    write_csv(records, paths["csv"])
    plot(records, paths["png"])
    return paths


def provenance_warnings(runs: list[Path], cache: str | None) -> list[str]:
    """Why the runs may not be comparable: they learned from different caches or teachers
    (``RUN/teacher_cache.json``, written by ``bevkd train``), or not from ``cache``. Runs without
    distillation (``"cache": null``) and runs older than the record are not counted."""
    from storage.cache import CacheReader
    from student.trainer import PROVENANCE

    seen: dict[str, list[str]] = {}
    for run_dir in runs:
        f = run_dir / PROVENANCE
        if not f.is_file():
            continue
        record = json.loads(f.read_text())
        if record.get("cache") is None:
            continue
        t = record["teacher"]
        ds = record['dataset']
        key = (f"teacher {t['name']} weights {t['weights_sha256'][:12]} on "
               f"{ds.get('dataset_id', '?')}:{ds.get('version', '?')}:{ds.get('split', '?')}")
        seen.setdefault(key, []).append(run_dir.name)
    out = []
    if len(seen) > 1:
        out.append("the runs learned from different teacher caches: " +
                   "; ".join(f"{', '.join(names)}: {key}" for key, names in seen.items()))
    if cache is not None and seen:
        t = CacheReader(cache, targets=["boxes"]).schema.teacher
        mine = f"teacher {t.name} weights {t.weights_sha256[:12]}"
        others = [names for key, names in seen.items() if not key.startswith(mine)]
        if others:
            out.append(f"--cache {cache} holds {mine}, which runs {sorted(sum(others, []))} did not learn from")
    return out


def run(args: argparse.Namespace) -> int:
    bands = tuple(args.distance_bands or ())
    out = Path(args.out)
    try:
        records: list[EvalRecord] = []
        reader = teacher_reader = None
        if args.dataroot:
            reader = open_eval_reader(args)
            if args.cache:  # the teacher on --split when given, else on the split its cache covers
                from storage.cache import CacheReader

                cache_dataset = CacheReader(args.cache, targets=["boxes"]).schema.dataset
                teacher_reader = reader if args.split else open_eval_reader(args, cache_dataset)
        for run_dir in map(Path, args.runs):
            if reader is not None:
                records.append(evaluate_run(run_dir, reader, device=args.device, bands=bands, plots=not args.no_plots))
            else:
                records.append(stored_record(run_dir))
        if args.cache:
            done = Path(args.cache).with_name(Path(args.cache).name + "-eval") / RECORD
            if teacher_reader is not None:
                records.append(evaluate_cache(args.cache, teacher_reader, out=out / "teacher", bands=bands,
                                              plots=not args.no_plots))
            elif done.is_file():
                records.append(EvalRecord.from_dict(json.loads(done.read_text())))
            else:
                raise ValueError(f"--cache {args.cache}: the teacher is not evaluated yet ({done} missing); pass "
                                 "--dataroot to evaluate it")
    except ValueError as exc:
        print(f"bevkd compare: {exc}", file=sys.stderr)
        return 2
    split = split_warning(records)
    for line in provenance_warnings([Path(r) for r in args.runs], args.cache) + ([split] if split else []):
        print(f"bevkd compare: warning: {line}", file=sys.stderr)
    paths = compare(records, out)
    print(paths["md"].read_text(), end="")
    print(f"written: {paths['md']}, {paths['csv']}, {paths['png']}")
    return 0
