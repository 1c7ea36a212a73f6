"""The figures of ``benchmarks/bench.py``: medians over repeated runs, project / baseline ratios
against the targets, and the markdown table printed at the end.
"""

from __future__ import annotations

import math
import statistics
from typing import Optional

TARGETS = {"mlm": 4.0, "classify": 2.4, "infer": 3.0}  # project / baseline, same run
RATE_KEYS = ("tokens_per_s", "samples_per_s", "model_tflops_per_s", "executed_tflops_per_s", "mfu", "step_ms")


def summarize(runs: list[dict]) -> dict:
    """The first run's details with every rate replaced by its median over the runs."""
    summary = dict(runs[0])
    for key in RATE_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = statistics.median(values) if values else None
    summary["runs"] = len(runs)
    summary["runs_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    summary["runs_samples_per_s"] = [r["samples_per_s"] for r in runs]
    return summary


def ratio(project: Optional[float], baseline: Optional[float]) -> Optional[float]:
    if project is None or baseline is None or not baseline or not math.isfinite(project) or not math.isfinite(baseline):
        return None
    return project / baseline


def compare(stage: str, baseline: dict, project: dict, keys: tuple[str, ...]) -> dict:
    ratios = {key: ratio(project.get(key), baseline.get(key)) for key in keys}
    headline = "reviews_per_s" if stage == "infer" else ("tokens_per_s" if stage == "mlm" else "samples_per_s")
    return {"baseline": baseline, "project": project, "ratio": ratios, "headline": headline, "target": TARGETS[stage],
            "meets_target": None if ratios[headline] is None else ratios[headline] >= TARGETS[stage]}


def fmt(value, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def markdown_table(report: dict) -> str:
    lines = [
        f"device: {report['device'].get('name')} ({report['device']['type']}), torch {report['versions']['torch']}, "
        f"transformers {report['versions']['transformers']}; size {report['model']['size']}; data: {report['data']['source']}",
        "",
        "| stage | metric | Trainer / naive baseline | project | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for stage, block in report["stages"].items():
        b, p, r = block["baseline"], block["project"], block["ratio"]
        target = f"≥ {block['target']:g}×" + ("" if block["meets_target"] is None else (" ✓" if block["meets_target"] else " ✗"))
        if stage == "infer":
            lines.append(f"| infer | reviews/s | {fmt(b['reviews_per_s'], 1)} | {fmt(p['reviews_per_s'], 1)} | {fmt(r['reviews_per_s'], 2, '×')} | {target} |")
            lines.append(f"| infer | model GFLOP/s | {fmt(b.get('model_gflops_per_s'), 1)} | {fmt(p.get('model_gflops_per_s'), 1)} | | |")
            frac = ["refused: above the ceiling" if s.get("ceiling_refused") else
                    fmt(None if s.get("ceiling_fraction") is None else 100 * s["ceiling_fraction"], 0, " %") for s in (b, p)]
            ceiling = block["inputs"].get("matmul_ceiling_gflops_per_s")
            lines.append(f"| infer | of the GEMM ceiling ({fmt(ceiling, 1)} GFLOP/s, same run) | {frac[0]} | {frac[1]} | | |")
            continue
        name = {"mlm": "MLM (stage 1)", "classify": "classifier (stage 2)"}[stage]
        head = block["headline"]
        rows = [("tokens/s (non-pad)", "tokens_per_s", 0), ("samples/s", "samples_per_s", 1)]
        for label, key, digits in rows:
            mark = target if key == head else ""
            lines.append(f"| {name} | {label} | {fmt(b[key], digits)} | {fmt(p[key], digits)} | {fmt(r[key], 2, '×')} | {mark} |")
        mfu_b = None if b["mfu"] is None else 100 * b["mfu"]
        mfu_p = None if p["mfu"] is None else 100 * p["mfu"]
        lines.append(f"| {name} | MFU (model FLOPs) | {fmt(mfu_b, 1, '%')} | {fmt(mfu_p, 1, '%')} | {fmt(r['mfu'], 2, '×')} | |")
        lines.append(f"| {name} | model TFLOP/s | {fmt(b['model_tflops_per_s'], 3)} | {fmt(p['model_tflops_per_s'], 3)} | | |")
        lines.append(f"| {name} | peak memory GiB | {fmt(b['peak_memory_gib'], 2)} | {fmt(p['peak_memory_gib'], 2)} | | |")
    for name, entry in report["stages"].get("infer", {}).get("sweep", {}).items():
        lines.append(f"| infer (diagnostic) | reviews/s: {name} | | {fmt(entry['reviews_per_s'], 2)} | "
                     f"{fmt(entry['ratio_vs_naive'], 2, '×')} | |")
    lines += ["", "model FLOPs = 6·N·tokens + 12·L·H·Σ T_i² (N = encoder matmul params, + MLM head H²+H·V for MLM), "
                  "the same for both sides; MFU against --peak-tflops."]
    if "infer" in report["stages"]:
        agreement = report["stages"]["infer"]["agreement"]
        lines.append(f"infer: same label for {100 * agreement['same_label']:.1f}% of reviews, "
                     f"max confidence difference {agreement['max_confidence_diff']:.2e}")
    return "\n".join(lines)
