"""The throughput part of ``tools/gpu/gpu_check.py``: ``benchmarks/bench.py`` on the DistilBERT shape,
with and without ``torch.compile``, each a same-run comparison against the Hugging Face ``Trainer``.

Run 1 (``compile``) is the product's GPU default and also times inference; run 2 (``no-compile``)
sizes the compile lever. The ``Trainer`` baseline runs in both: its two rates are a noise check
(the same code timed twice). Figures: tokens/s, samples/s, MFU (model FLOPs against the bench's
``--peak-tflops``), peak memory, project / baseline ratios, and project(compile) / project(no compile).
"""

from __future__ import annotations

from gpu_common import Context, Deadline, fmt, ok, read_json, run_command

STAGE_KEYS = ("tokens_per_s", "samples_per_s", "mfu", "model_tflops_per_s", "peak_memory_gib", "step_ms")


def bench_argv(ctx: Context, compile_: bool, json_path, fixtures: dict) -> list:
    argv = ["--json", str(json_path), "--compile" if compile_ else "--no-compile"]
    if ctx.dry_run:  # CPU: the tiny shape, synthetic ids, one measured step
        return argv + ["--device", "cpu", "--size", "tiny", "--synthetic", "--steps", "1", "--warmup", "1", "--threads", "1",
                       "--stages", "mlm,classify"]
    argv += ["--device", "cuda", "--size", "distilbert", "--data-dir", str(ctx.data_dir / "imdb"), "--tokenizer", str(fixtures["tokenizer"])]
    return argv + ["--stages", "mlm,classify,infer" if compile_ else "mlm,classify"]


def extract(report: dict) -> dict:
    stages = {}
    for stage, block in report.get("stages", {}).items():
        if stage == "infer":
            stages[stage] = {"baseline_reviews_per_s": block["baseline"].get("reviews_per_s"),
                             "project_reviews_per_s": block["project"].get("reviews_per_s"),
                             "ratio": block["ratio"].get("reviews_per_s"), "agreement": block.get("agreement")}
            continue
        stages[stage] = {
            "baseline": {k: block["baseline"].get(k) for k in STAGE_KEYS},
            "project": {k: block["project"].get(k) for k in STAGE_KEYS},
            "ratio": block["ratio"], "headline": block["headline"], "target": block["target"], "meets_target": block["meets_target"],
            "project_settings": {k: block["project"].get(k) for k in ("precision", "compile", "batch", "block", "batching", "optimizer")
                                 if k in block["project"]},
        }
    return {"device": report.get("device"), "versions": report.get("versions"), "data": report.get("data"),
            "model": report.get("model"), "peak_tflops": report.get("flops", {}).get("peak_tflops"), "stages": stages,
            "wall_time_s": report.get("wall_time_s")}


def run_throughput(ctx: Context, fixtures: dict) -> dict:
    deadline = Deadline(ctx.budget_s)
    work = ctx.work / "throughput"
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"status": "incomplete", "runs": {}, "variants": {}}
    for name, compile_ in (("compile", True), ("no-compile", False)):
        path = work / f"bench-{name}.json"
        path.unlink(missing_ok=True)
        run = run_command(ctx, f"throughput-{name}", bench_argv(ctx, compile_, path, fixtures), deadline,
                          observe_module="benchmarks.bench")
        result["runs"][name] = run
        report = read_json(path)
        if ok(run) and report:
            result["variants"][name] = extract(report)
    compiled, eager = result["variants"].get("compile"), result["variants"].get("no-compile")
    if compiled and eager:
        result["compile_speedup"] = {}
        for stage, block in compiled["stages"].items():
            if stage == "infer" or stage not in eager["stages"]:
                continue
            head = block["headline"]
            with_c, without = block["project"][head], eager["stages"][stage]["project"][head]
            b1, b2 = block["baseline"][head], eager["stages"][stage]["baseline"][head]
            result["compile_speedup"][stage] = {
                "metric": head, "project_compile": with_c, "project_no_compile": without,
                "ratio": with_c / without if with_c and without else None,
                "baseline_twice": [b1, b2], "baseline_spread": abs(b1 - b2) / max(b1, b2) if b1 and b2 else None}
    result["status"] = "ok" if compiled and eager else ("partial" if compiled or eager else "error")
    return result


def summary_lines(result: dict) -> list:
    lines = [f"## throughput: {result['status']}"]
    for name, run in result.get("runs", {}).items():
        lines.append(f"- bench {name}: exit {run.get('exit_code')}{' TIMED OUT' if run.get('timed_out') else ''}, {run.get('wall_s')} s")
    for name, variant in result.get("variants", {}).items():
        device = (variant.get("device") or {}).get("name")
        lines += ["", f"### {name} ({device}, size {(variant.get('model') or {}).get('size')})", "",
                  "| stage | metric | Trainer | project | ratio | target |", "|---|---|---|---|---|---|"]
        for stage, block in variant["stages"].items():
            if stage == "infer":
                lines.append(f"| infer | reviews/s | {fmt(block['baseline_reviews_per_s'], 1)} | {fmt(block['project_reviews_per_s'], 1)} "
                             f"| {fmt(block['ratio'], 2)} | |")
                continue
            b, p, r = block["baseline"], block["project"], block["ratio"]
            mark = "" if block["meets_target"] is None else (" PASS" if block["meets_target"] else " MISS")
            for key, digits in (("tokens_per_s", 0), ("samples_per_s", 1)):
                target = f">= {block['target']}x{mark}" if key == block["headline"] else ""
                lines.append(f"| {stage} | {key} | {fmt(b[key], digits)} | {fmt(p[key], digits)} | {fmt(r.get(key), 2)} | {target} |")
            lines.append(f"| {stage} | MFU | {fmt(b['mfu'], 3)} | {fmt(p['mfu'], 3)} | {fmt(r.get('mfu'), 2)} | |")
            lines.append(f"| {stage} | peak memory GiB | {fmt(b['peak_memory_gib'], 2)} | {fmt(p['peak_memory_gib'], 2)} | | |")
    for stage, row in result.get("compile_speedup", {}).items():
        lines.append(f"- compile lever, {stage} ({row['metric']}): {fmt(row['ratio'], 2)}x; Trainer timed twice differs by "
                     f"{fmt(None if row['baseline_spread'] is None else 100 * row['baseline_spread'], 1)} %")
    return lines
