"""The demo's HTML report: metrics of both students, loss curves, cache size, stage timings and
``bevkd show`` renders. Plain HTML with PNGs beside it (opens from disk, no server)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from storage.sample import NUSCENES_CLASSES


def _loss_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_META = {"step", "epoch", "lr", "seconds", "tokens"}


def plot_loss_curves(students: list[Any], out: Path) -> Path:
    """One panel per loss term, both students overlaid (raw, faint, and a moving average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    logs = {s.name: _loss_rows(s.loss_log) for s in students}
    terms = sorted({k for rows in logs.values() for r in rows for k in r if k not in _META})
    cols = 4
    nrows = (len(terms) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for name, rows in logs.items():
            pts = [(r["step"], r[term]) for r in rows if term in r]
            if not pts:
                continue
            steps, vals = np.array(pts).T
            k = max(1, min(10, len(vals) // 5))
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            line, = ax.plot(steps[k - 1:], smooth, label=name, marker="." if len(smooth) < 20 else None)
            if k > 1:
                ax.plot(steps, vals, color=line.get_color(), alpha=0.25, lw=0.6)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(terms):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _metrics_table(students: list[Any]) -> str:
    head = ["metric"] + [s.name for s in students]
    rows = [["NDS"] + [f"{s.metrics.NDS:.4f}" for s in students],
            ["mAP"] + [f"{s.metrics.mAP:.4f}" for s in students]]
    for err in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err"):
        rows.append([err] + [f"{s.metrics.tp_errors.get(err, float('nan')):.3f}" for s in students])
    for cls in NUSCENES_CLASSES:
        rows.append([f"AP {cls}"] + [f"{s.metrics.per_class_ap.get(cls, float('nan')):.4f}" for s in students])
    rows.append(["steps"] + [s.steps for s in students])
    rows.append(["s/step"] + [f"{s.seconds_per_step:.3f}" for s in students])
    return _table(head, rows)


def _cache_table(summary: Any) -> str:
    rows = [[t.name, "x".join(map(str, t.shape)), t.codec, f"{t.raw_bytes / 1e3:.1f}",
             f"{t.stored_bytes / 1e3:.1f}", f"{t.ratio:.1f}x"] for t in summary.targets]
    rows.append(["total", "", "", f"{summary.raw_bytes_per_row / 1e3:.1f}", f"{summary.stored_bytes_per_row / 1e3:.1f}",
                 f"{summary.raw_bytes_per_row / max(summary.stored_bytes_per_row, 1):.1f}x"])
    return _table(["target", "shape", "codec", "raw kB/row", "stored kB/row", "ratio"], rows)


def write_report(result: Any) -> Path:
    """Write ``result.report`` (index.html), its figures and ``summary.json`` (the same numbers,
    machine-readable); returns the page's path."""
    out = Path(result.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    curves = plot_loss_curves(result.students, out.parent / "loss_curves.png")
    job, cs, cfg = result.cache_job, result.cache_summary, result.config
    gain = result.nds_gain
    stage_rows = [[k, f"{v:.1f}"] for k, v in result.stage_seconds.items()]
    job_rows = [[k, f"{v:.2f}"] for k, v in vars(job.times).items()]
    shows = "".join(f'<p><img src="{html.escape(p.name)}" width="100%"></p>' for p in result.shows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>bevkd demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}th{{background:#eee}}</style></head><body>
<h1>bevkd demo</h1>
<p>Teacher <b>{html.escape(cs.schema.teacher.name)}</b> (weights sha256 {html.escape(cs.schema.teacher.weights_sha256[:16])}...)
cached once over {html.escape(cs.schema.dataset.dataset_id)}; two camera-only students ({html.escape(cfg.student)}) trained
with the same seed ({cfg.seed}), data order and budget ({cfg.steps} steps, batch {cfg.batch_size}); evaluated with the nuScenes
devkit's DetectionEval on the generated mini_val split.</p>
<h2>Detection metrics (devkit)</h2>
<p>NDS gain from distillation: <b>{gain:+.4f}</b></p>
{_metrics_table(result.students)}
<h2>Loss curves</h2><p><img src="{curves.name}" width="100%"></p>
<h2>Cache</h2>
<p>{cs.rows_ok} rows ok, {cs.rows_failed} failed; grid {list(cs.schema.grid.point_cloud_range)} voxel
{list(cs.schema.grid.voxel_size)}, BEV {cs.schema.grid.bev_shape}; location {html.escape(str(result.cache))}</p>
{_cache_table(cs)}
<h3>Cache job time per stage (s, summed over workers; wall {job.wall_s:.1f} s with {job.workers} worker(s))</h3>
{_table(["stage", "seconds"], job_rows)}
<h2>Demo stages (wall, s)</h2>
{_table(["stage", "seconds"], stage_rows)}
<h2>What the teacher stored (bevkd show)</h2>{shows}
<h2>Configuration</h2><pre>{html.escape(json.dumps(vars(cfg), indent=1, default=str))}</pre>
</body></html>"""
    out.write_text(page)
    summary = {"students": {s.name: {"distill": s.distill, "NDS": s.metrics.NDS, "mAP": s.metrics.mAP,
                                     "per_class_ap": s.metrics.per_class_ap, "tp_errors": s.metrics.tp_errors,
                                     "steps": s.steps, "seconds_per_step": s.seconds_per_step}
                            for s in result.students},
               "nds_gain": gain, "cache": {"rows_ok": cs.rows_ok, "rows_failed": cs.rows_failed,
                                           "stored_bytes_per_row": cs.stored_bytes_per_row,
                                           "raw_bytes_per_row": cs.raw_bytes_per_row},
               "cache_job_seconds": {**vars(job.times), "wall": job.wall_s},
               "stage_seconds": result.stage_seconds}
    (out.parent / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return out
