"""The DAPT ablation's report (``experiments/ablation``): ``ablation.md`` (tables of means, standard
deviations and intervals in percentage points) and the figures ``ablation.png`` (bars with error
bars) and ``convergence.png`` (validation accuracy per epoch), all from the ``ablation.json`` content.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from experiments.ablation.stats import excludes_zero
from classify.plots import plt, save_figure  # pyplot on the Agg backend

METRIC_TITLES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "f1": "F1", "precision": "precision", "recall": "recall",
                 "roc_auc": "ROC AUC"}


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _mean_std(block: dict) -> str:
    if block["mean"] is None:
        return "—"
    return _fmt(block["mean"]) + (f" ± {_fmt(block['std'])}" if block["std"] is not None else "")


def _points(interval: Optional[dict]) -> str:
    """A difference and its interval in percentage points: ``+0.62 [+0.40, +0.84]``."""
    if not interval:
        return "—"
    centre = interval.get("mean")
    if centre is None:
        return "—"
    text = f"{100 * centre:+.2f}"
    if interval.get("low") is not None and interval.get("high") is not None and not math.isnan(interval["low"]):
        text += f" [{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}]"
        if excludes_zero(interval):
            text += " *"
    return text


def markdown_report(report: dict) -> str:
    config, analysis = report["config"], report["analysis"]
    arms, baseline = [arm["name"] for arm in report["arms"]], report["baseline"]
    confidence = round(100 * config["confidence"])
    lines = ["# DAPT ablation", ""]
    lines.append(f"Base encoder `{report['base_encoder']}`; seeds {', '.join(map(str, config['seeds']))}; "
                 f"stage 2 `{config['classify']['config']}`; {report['num_processes']} process(es); "
                 f"{report['wall_time_s'] / 60:.1f} min.")
    for name, stage in report["stage1"].items():
        ppl = ""
        if stage.get("perplexity_before") is not None:
            ppl = f", held-out perplexity {stage['perplexity_before']:.2f} → {stage['perplexity_after']:.2f}"
        lines.append(f"Stage 1 `{name}`: `{stage['output_dir']}` ({'reused' if stage['reused'] else 'trained here'}{ppl}).")
    lines += ["", "| arm | encoder | stage 1 | overrides |", "|---|---|---|---|"]
    for arm in report["arms"]:
        chain = " → ".join(arm.get("chain") or []) or "—"
        lines.append(f"| {arm['name']} | `{arm['encoder']}` | {chain} | {' '.join(f'`{o}`' for o in arm['overrides']) or '—'} |")
    metrics = config["metrics"]
    headline = metrics[0]  # the table's difference columns: the first metric configured (macro-F1 for K classes)
    for ds in analysis["datasets"]:
        n = sorted(set(analysis["summary"][arms[0]][ds]["n"]))
        lines += ["", f"## {ds} (n = {', '.join(map(str, n))})", ""]
        header = ["arm"] + [METRIC_TITLES[m] for m in metrics] + [
            f"Δ {METRIC_TITLES[headline]} vs {baseline}, pt ({confidence} % t, seeds)",
            f"Δ {METRIC_TITLES[headline]}, pt ({confidence} % bootstrap, examples)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arm in arms:
            row = [arm] + [_mean_std(analysis["summary"][arm][ds][m]) for m in metrics]
            comparison = analysis["comparisons"].get(arm, {}).get(ds, {}).get(headline)
            if comparison is None:
                row += ["(baseline)" if arm == baseline else "—", "—"]
            else:
                row += [_points(comparison["paired_t"]), _points(comparison["bootstrap"])]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"### Every difference vs {baseline} (percentage points, {confidence} % intervals)", "",
              "| arm | dataset | metric | per seed | paired t (seeds) | bootstrap (examples) |", "|---|---|---|---|---|---|"]
    for arm, by_ds in analysis["comparisons"].items():
        for ds, by_metric in by_ds.items():
            for metric, entry in by_metric.items():
                per_seed = ", ".join(f"{100 * d:+.2f}" for d in entry["per_seed"])
                lines.append(f"| {arm} | {ds} | {METRIC_TITLES[metric]} | {per_seed} | {_points(entry['paired_t'])} | "
                             f"{_points(entry['bootstrap'])} |")
    epochs = max((len(c["epochs"]) for c in analysis["convergence"].values()), default=0)
    lines += ["", "## Validation accuracy per epoch (mean ± std over seeds)", "",
              "| arm | " + " | ".join(f"epoch {e + 1}" for e in range(epochs)) + " |", "|---|" + "---|" * epochs]
    for arm in arms:
        curve = analysis["convergence"][arm]
        cells = [_mean_std({"mean": m, "std": s}) for m, s in zip(curve["val_acc_mean"], curve["val_acc_std"])]
        lines.append(f"| {arm} | " + " | ".join(cells + ["—"] * (epochs - len(cells))) + " |")
    for arm in arms:
        if arm == baseline:
            continue
        diffs = analysis["convergence"][arm]["val_acc_difference"]
        lines.append(f"| Δ {arm} vs {baseline}, pt | " + " | ".join(_points(d) for d in diffs) + " |")
    lines += ["", f"mean ± sample standard deviation over seeds. Δ: the arm minus `{baseline}`, in percentage points, "
              f"with a {confidence} % interval; * marks an interval that excludes zero. *paired t*: the per-seed "
              "differences (same seed, same data order and validation split), a Student-t interval — the variation "
              "between training runs. *bootstrap*: test examples resampled with replacement "
              f"({config['bootstrap']['samples']} resamples, seed {config['bootstrap']['seed']}), the same resample for "
              "both arms, the difference averaged over seeds, percentile interval — the variation due to the finite "
              "test set. Stage 1 ran once per DAPT encoder, so its own randomness is not sampled.", ""]
    return "\n".join(lines)


def bar_chart_png(report: dict, path: Path) -> Path:
    """Mean ± std over seeds, one panel per dataset, one group of bars per metric, one bar per arm."""
    analysis, metrics = report["analysis"], report["config"]["metrics"]
    arms, datasets = [arm["name"] for arm in report["arms"]], analysis["datasets"]
    figure, axes = plt.subplots(1, len(datasets), figsize=(1.2 + 2.2 * len(metrics) * len(datasets), 4.2), squeeze=False)
    width = 0.8 / len(arms)
    for axis, ds in zip(axes[0], datasets):
        lows, highs = [], []
        for position, arm in enumerate(arms):
            blocks = [analysis["summary"][arm][ds][m] for m in metrics]
            means = [b["mean"] if b["mean"] is not None else np.nan for b in blocks]
            stds = [b["std"] or 0.0 for b in blocks]
            x = np.arange(len(metrics)) + (position - (len(arms) - 1) / 2) * width
            axis.bar(x, means, width, yerr=stds, capsize=3, label=arm)
            for xi, mean, std in zip(x, means, stds):
                if not np.isnan(mean):
                    axis.annotate(f"{mean:.3f}", (xi, mean + std), textcoords="offset points", xytext=(0, 3), ha="center",
                                  va="bottom", fontsize=7, rotation=90)
            lows += [m - s for m, s in zip(means, stds) if not np.isnan(m)]
            highs += [m + s for m, s in zip(means, stds) if not np.isnan(m)]
        if lows:
            span = max(highs) - min(lows)
            axis.set_ylim(max(0.0, min(lows) - max(0.02, span)), max(highs) + max(0.04, 0.8 * span))
        axis.set_xticks(np.arange(len(metrics)), [METRIC_TITLES[m] for m in metrics])
        axis.set_title(f"{ds} (mean ± std, {len(report['config']['seeds'])} seeds)", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper right", ncol=min(len(arms), 3))
    return save_figure(figure, path)


def convergence_png(report: dict, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(5.2, 3.8))
    arms, epochs = report["arms"], set()
    for position, arm in enumerate(arms):
        curve = report["analysis"]["convergence"][arm["name"]]
        stds = [s or 0.0 for s in curve["val_acc_std"]]
        shift = (position - (len(arms) - 1) / 2) * 0.04  # side by side, so that error bars do not hide each other
        axis.errorbar(np.asarray(curve["epochs"]) + shift, curve["val_acc_mean"], yerr=stds, marker="o", capsize=3, label=arm["name"])
        epochs.update(curve["epochs"])
    axis.set_xticks(sorted(epochs))
    axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.set_title("Validation accuracy per epoch (mean ± std over seeds)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)
