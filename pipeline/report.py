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
    for ax, term in zip(axes.flat, terms, strict=False):  # more panels than terms
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


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of per-seed figures."""
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def format_mean_std(values: list[float], digits: int = 4) -> str:
    """``"0.1234 ± 0.0056"`` of :func:`mean_std`."""
    m, sd = mean_std(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def student_stats(result: Any, name: str) -> dict[str, Any]:
    """Mean, std and per-seed values of one student's devkit metrics over its seeds."""
    runs = result.runs_of(name)
    m = [r.metrics for r in runs]

    def stat(values: list[float]) -> dict[str, Any]:
        mean, sd = mean_std(values)
        return {"mean": mean, "std": sd, "per_seed": values}
    bands = list(m[0].band_ap) if m and m[0].band_ap else []
    return {"distill": runs[0].distill, "seeds": [r.seed for r in runs], "steps": runs[0].steps,
            "seconds_per_step": mean_std([r.seconds_per_step for r in runs])[0],
            "NDS": stat([x.NDS for x in m]), "mAP": stat([x.mAP for x in m]),
            "per_class_ap": {c: stat([x.per_class_ap.get(c, float("nan")) for x in m]) for c in NUSCENES_CLASSES},
            "tp_errors": {e: stat([x.tp_errors.get(e, float("nan")) for x in m]) for e in TP_ERRORS},
            "band_ap": {b: stat([x.band_ap[b] for x in m]) for b in bands}}


TP_ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")


def _metrics_table(result: Any) -> str:
    names = result.names
    runs = {n: result.runs_of(n) for n in names}
    head = ["metric (mean ± std over seeds)"] + names

    def row(label: str, get: Any, digits: int = 4) -> list[Any]:
        return [label] + [format_mean_std([get(r.metrics) for r in runs[n]], digits) for n in names]
    rows = [row("NDS", lambda m: m.NDS), row("mAP", lambda m: m.mAP)]
    bands = list(runs[names[0]][0].metrics.band_ap) if runs[names[0]][0].metrics.band_ap else []
    rows += [row(f"mAP {b}", lambda m, b=b: m.band_ap[b]) for b in bands]
    rows += [row(err, lambda m, e=err: m.tp_errors.get(e, float("nan")), 3) for err in TP_ERRORS]
    rows += [row(f"AP {c}", lambda m, c=c: m.per_class_ap.get(c, float("nan"))) for c in NUSCENES_CLASSES]
    rows.append(["seeds"] + [", ".join(str(r.seed) for r in runs[n]) for n in names])
    rows.append(["steps"] + [runs[n][0].steps for n in names])
    rows.append(["s/step"] + [f"{mean_std([r.seconds_per_step for r in runs[n]])[0]:.3f}" for n in names])
    return _table(head, rows)


def _gain_table(result: Any) -> str:
    rows = []
    for n in result.names:
        if n == "student_no_kd":
            continue
        g = result.gain(n)
        rows.append([f"{n} - student_no_kd", f"{g['nds_mean']:+.4f} ± {g['nds_std']:.4f}",
                     f"{g['map_mean']:+.4f} ± {g['map_std']:.4f}", ", ".join(f"{v:+.4f}" for v in g["nds"])])
    return _table(["difference (per seed)", "NDS", "mAP", "NDS per seed"], rows)


def plot_band_gain(result: Any, out: Path) -> Path | None:
    """Bar chart: mAP per distance band for every student (mean, std error bars) and the KD gain."""
    names = result.names
    first = result.runs_of(names[0])[0].metrics
    if not first.band_ap:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bands = list(first.band_ap)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / len(names)
    x = np.arange(len(bands))
    for i, n in enumerate(names):
        stats = [mean_std([r.metrics.band_ap[b] for r in result.runs_of(n)]) for b in bands]
        ax.bar(x + i * width, [m for m, _ in stats], width, yerr=[sd for _, sd in stats], label=n, capsize=3)
    ax.set_xticks(x + width * (len(names) - 1) / 2, bands)
    ax.set_ylabel("devkit mAP in band")
    ax.set_title("mAP by distance to ego (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    base = {r.seed: r for r in result.runs_of("student_no_kd")}
    for n in names:
        if n == "student_no_kd":
            continue
        diffs = [[r.metrics.band_ap[b] - base[r.seed].metrics.band_ap[b] for r in result.runs_of(n) if r.seed in base]
                 for b in bands]
        stats = [mean_std(d) for d in diffs]
        ax2.errorbar(x, [m for m, _ in stats], yerr=[sd for _, sd in stats], marker="o", capsize=3, label=n)
    ax2.axhline(0.0, color="k", lw=0.6)
    ax2.set_xticks(x, bands)
    ax2.set_ylabel("mAP gain over no-KD")
    ax2.set_title("gain per band (per-seed difference, mean ± std)", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _cache_table(summary: Any) -> str:
    rows = [[t.name, "x".join(map(str, t.shape)), t.codec, f"{t.raw_bytes / 1e3:.1f}",
             f"{t.stored_bytes / 1e3:.1f}", f"{t.ratio:.1f}x"] for t in summary.targets]
    rows.append(["total", "", "", f"{summary.raw_bytes_per_row / 1e3:.1f}", f"{summary.stored_bytes_per_row / 1e3:.1f}",
                 f"{summary.raw_bytes_per_row / max(summary.stored_bytes_per_row, 1):.1f}x"])
    return _table(["target", "shape", "codec", "raw kB/row", "stored kB/row", "ratio"], rows)


def _band_section(png: Path | None) -> str:
    if png is None:
        return ""
    return ("<h2>AP by distance band</h2><p>Each band is the devkit's evaluation (same matching and thresholds) on "
            "the ground-truth and predicted boxes whose distance to the ego vehicle lies in the band.</p>"
            f'<p><img src="{html.escape(png.name)}" width="100%"></p>')


def _gain_summary(result: Any, name: str) -> dict[str, Any] | None:
    """``{nds_mean, nds_std, map_mean, map_std, seeds}`` of ``name`` - no KD, or None without that student."""
    if name not in result.names:
        return None
    g = result.gain(name)
    return {k: g[k] for k in ("nds_mean", "nds_std", "map_mean", "map_std", "seeds")}


def write_report(result: Any) -> Path:
    """Write ``result.report`` (index.html), its figures and ``summary.json`` (the same numbers,
    machine-readable); returns the page's path."""
    out = Path(result.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    curves = plot_loss_curves([r for n in result.names for r in result.runs_of(n)[:1]], out.parent / "loss_curves.png")
    band_png = plot_band_gain(result, out.parent / "band_gain.png")
    job, cs, cfg = result.cache_job, result.cache_summary, result.config
    gain = result.gain("student_kd")
    stage_rows = [[k, f"{v:.1f}"] for k, v in result.stage_seconds.items()]
    job_rows = [[k, f"{v:.2f}"] for k, v in vars(job.times).items()]
    shows = "".join(f'<p><img src="{html.escape(p.name)}" width="100%"></p>' for p in result.shows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>bevkd demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}th{{background:#eee}}</style></head><body>
<h1>bevkd demo</h1>
<p>Teacher <b>{html.escape(cs.schema.teacher.name)}</b>
(weights sha256 {html.escape(cs.schema.teacher.weights_sha256[:16])}...) cached once over
{html.escape(cs.schema.dataset.dataset_id)}; camera-only students ({html.escape(cfg.student)}) trained
with the same budget ({cfg.steps} steps, batch {cfg.batch_size}) once per seed ({cfg.seeds} seeds from {cfg.seed}: model
init, data order, augmentation); evaluated with the nuScenes devkit's DetectionEval on the generated mini_val split,
which no setting was chosen on (the recipe was chosen on scenes carved from mini_train: docs/ablation.md).</p>
<h2>Distillation gain (per-seed difference, mean ± std over seeds)</h2>
<p>KD - no KD: NDS <b>{gain["nds_mean"]:+.4f} ± {gain["nds_std"]:.4f}</b>, mAP <b>{gain["map_mean"]:+.4f} ±
{gain["map_std"]:.4f}</b></p>
{_gain_table(result)}
<h2>Detection metrics (devkit)</h2>
{_metrics_table(result)}
{_band_section(band_png)}
<h2>Loss curves (first seed)</h2><p><img src="{curves.name}" width="100%"></p>
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
    summary = {"students": {n: student_stats(result, n) for n in result.names},
               "kd_gain": _gain_summary(result, "student_kd"),
               "unlabelled_gain": _gain_summary(result, "student_unlabelled"),
               "nds_gain": gain["nds_mean"],
               "cache": {"rows_ok": cs.rows_ok, "rows_failed": cs.rows_failed,
                         "stored_bytes_per_row": cs.stored_bytes_per_row, "raw_bytes_per_row": cs.raw_bytes_per_row},
               "cache_job_seconds": {**vars(job.times), "wall": job.wall_s},
               "stage_seconds": result.stage_seconds}
    (out.parent / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return out
