"""The smoke part of ``tools/gpu/gpu_check.py``: every CUDA path that the CPU tests cannot reach, a few
steps each, on a small random encoder and a slice of the data, through the product's CLIs.

| run | what it proves |
|---|---|
| stage1-bf16-compile | stage 1 under bf16 autocast, ``torch.compile``, fused AdamW, 2 loader workers + pinned memory, a checkpoint |
| stage1-fp16 | stage 1 under fp16 autocast with accelerate's GradScaler (steps taken, scale finite) |
| stage2-bf16-compile | stage 2, the same paths as stage 1's first run, evaluation included |
| stage2-fp16 | stage 2 with fp16 + GradScaler |
| evaluate | ``classify.evaluate`` (the evaluate-only CLI) on the device: the training run's metrics again |
| infer | ``infer_reviews`` on CUDA (``dapt-predict --device cuda``): same labels and P(positive) as on the CPU |

Each check is read from what ``tools/gpu/gpu_observe.py`` saw (the AdamW, GradScaler, autocast,
compile and DataLoader calls) and from the run's own outputs. On a CPU (``--dry-run``) the same
runs go through the CPU's version of each path (bf16 autocast on the CPU, compile, 2 workers);
the CUDA-only ones (fp16 + GradScaler, fused AdamW, pinned memory, predictions on CUDA) are
listed as skipped.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from gpu_common import Context, Deadline, ok, read_json, run_command, stage1_args, stage2_args

SMOKE_STEPS = 6


def _stage_checks(run: dict, cuda: bool, precision: str, compiled: bool, workers: int, finite: bool) -> dict:
    seen = run.get("observed") or {}
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    checks = {"exit 0": ok(run), "outputs finite": finite,
              f"autocast {dtype} on {'cuda' if cuda else 'cpu'}": f"{'cuda' if cuda else 'cpu'}:{dtype}" in seen.get("autocast", [])}
    if compiled:
        checks["torch.compile called"] = seen.get("compile_calls", 0) >= 1
    if workers:
        checks[f"{workers} DataLoader workers"] = any(d["num_workers"] == workers for d in seen.get("dataloaders", []))
    if cuda:
        checks["fused AdamW"] = bool(seen.get("fused_adamw"))
        checks["peak CUDA memory recorded"] = (seen.get("peak_memory_gib") or 0) > 0
        if workers:
            checks["pinned memory"] = any(d["pin_memory"] for d in seen.get("dataloaders", []))
        if precision == "fp16":
            checks["GradScaler stepped"] = seen.get("grad_scaler_step", 0) >= 1
            scale = seen.get("grad_scaler_scale_value")
            checks["GradScaler scale finite"] = scale is not None and math.isfinite(scale) and scale > 0
    return checks


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _write_reviews(data_dir: Path, path: Path, count: int = 16) -> list[str]:
    import pyarrow.parquet as pq

    texts = pq.read_table(data_dir / "imdb" / "test.parquet", columns=["text"]).column("text").to_pylist()[:count]
    texts = [" ".join(t.split()) for t in texts]  # one review per line
    path.write_text("\n".join(texts) + "\n")
    return texts


def _predict(ctx: Context, name: str, model_dir: Path, reviews: Path, device: str, deadline: Deadline) -> tuple[dict, list]:
    out = ctx.work / "smoke" / f"{name}.jsonl"
    run = run_command(ctx, name, [ctx.python, "-m", "classify.release.predict", "--model", str(model_dir), "--file", str(reviews),
                                  "--jsonl", "--device", device], deadline)
    # dapt-predict writes to stdout: the run's log holds the JSON lines (and maybe warnings)
    log = Path(run["log"]).read_text(errors="replace").splitlines() if Path(run["log"]).is_file() else []
    rows = [json.loads(line) for line in log if line.startswith("{\"text\"")]
    out.write_text("\n".join(json.dumps({k: r[k] for k in ("label_class", "p_positive")}) for r in rows) + "\n")
    return run, rows


def run_smoke(ctx: Context, fixtures: dict) -> dict:
    deadline = Deadline(ctx.budget_s)
    cuda = ctx.device == "cuda"
    work = ctx.work / "smoke"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    encoder, data = fixtures["small_encoder"], fixtures["data"]
    if encoder is None:
        return {"status": "error", "error": f"no small encoder to train: {fixtures.get('error', 'not built')}"}
    result: dict = {"status": "incomplete", "device": ctx.device, "runs": {}, "skipped": {}}
    # every variant: (name, stage, precision, compile, workers)
    variants = [("stage1-bf16-compile", 1, "bf16", True, 2), ("stage1-fp16", 1, "fp16", False, 2),
                ("stage2-bf16-compile", 2, "bf16", True, 2), ("stage2-fp16", 2, "fp16", False, 2)]
    if not cuda:  # fp16 autocast and its GradScaler exist on CUDA only; one compile is enough on a CPU
        result["skipped"].update({"stage1-fp16": "CUDA only (fp16 + GradScaler)", "stage2-fp16": "CUDA only (fp16 + GradScaler)"})
        variants = [("stage1-bf16-compile", 1, "bf16", True, 2), ("stage2-bf16", 2, "bf16", False, 2)]
    for name, stage, precision, compiled, workers in variants:
        impl = [f"impl.mixed_precision={precision}", f"impl.compile={str(compiled).lower()}", "impl.fused_adamw=true",
                f"impl.dataloader_workers={workers}", "impl.pin_memory=true"]
        out = work / name
        if stage == 1:
            argv = stage1_args(ctx, encoder, data, out, *impl, f"train.max_steps={SMOKE_STEPS}", "train.head_warmup_steps=2",
                               "data.block_size=128", "train.batch_size=8", "train.eval_batch_size=16", "train.log_every=1",
                               "train.eval_every=3", "checkpoint.every_steps=3", "checkpoint.keep=1")
            run = run_command(ctx, f"smoke-{name}", argv, deadline, observe_module="dapt.pretrain")
            summary = read_json(out / "dapt_summary.json") or {}
            finite = _finite(summary.get("perplexity_before"), summary.get("perplexity_after")) and \
                summary.get("mixed_precision") == precision and (out / "checkpoints").is_dir()
        else:
            argv = stage2_args(ctx, encoder, data, out, *impl, "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=32",
                               "model.max_length=128", "model.head_tokens=32", "train.log_every=1")
            run = run_command(ctx, f"smoke-{name}", argv, deadline, observe_module="classify.train")
            results = read_json(out / "results.json") or {}
            evaluation = results.get("evaluation", {})
            finite = bool(evaluation) and all(_finite(block.get("loss"), block.get("accuracy")) for block in evaluation.values()) \
                and results.get("hyperparameters", {}).get("mixed_precision") == precision
        run["checks"] = _stage_checks(run, cuda, precision, compiled, workers, finite)
        result["runs"][name] = run

    # the evaluate-only CLI on the device, and infer_reviews on CUDA against the CPU, with the bf16 stage-2 classifier
    model_run = work / ("stage2-bf16-compile" if cuda else "stage2-bf16")
    if (model_run / "results.json").is_file():
        evaluated = work / "evaluate"
        argv = ["--model", str(model_run), "--output-dir", str(evaluated),
                *stage2_args(ctx, encoder, data, evaluated, "impl.mixed_precision=bf16", "train.eval_batch_size=32")]
        run = run_command(ctx, "smoke-evaluate", argv, deadline, observe_module="classify.evaluate")
        own = (read_json(model_run / "results.json") or {}).get("evaluation", {})
        again = (read_json(evaluated / "results.json") or {}).get("evaluation", {})
        run["checks"] = {"exit 0": ok(run), "same sets as the training run's evaluation": bool(own) and set(own) == set(again),
                         "accuracy within 0.02 of the training run's": bool(own) and all(
                             abs(own[name]["accuracy"] - again.get(name, {}).get("accuracy", -1)) <= 0.02 for name in own)}
        result["runs"]["evaluate"] = run
        reviews = work / "reviews.txt"
        texts = _write_reviews(data, reviews)
        cpu_run, cpu_rows = _predict(ctx, "smoke-infer-cpu", model_run, reviews, "cpu", deadline)
        checks = {"cpu: exit 0": ok(cpu_run), "cpu: one prediction per review": len(cpu_rows) == len(texts)}
        runs = {"cpu": cpu_run}
        if cuda:
            cuda_run, cuda_rows = _predict(ctx, "smoke-infer-cuda", model_run, reviews, "cuda", deadline)
            runs["cuda"] = cuda_run
            same = len(cuda_rows) == len(cpu_rows) == len(texts)
            diff = max((abs(a["p_positive"] - b["p_positive"]) for a, b in zip(cuda_rows, cpu_rows)), default=None)
            checks.update({"cuda: exit 0": ok(cuda_run), "cuda: same labels as cpu": same and all(
                a["label_class"] == b["label_class"] for a, b in zip(cuda_rows, cpu_rows)),
                "cuda: P(positive) within 2e-3 of cpu": same and diff is not None and diff <= 2e-3})
            runs["max_p_positive_diff"] = diff
        else:
            result["skipped"]["infer on cuda"] = "CUDA only"
        result["runs"]["infer"] = {**runs, "checks": checks, "reviews": len(texts)}
    else:
        result["runs"]["infer"] = {"checks": {"a stage-2 classifier to predict with": False}}

    failed = [f"{name}: {check}" for name, run in result["runs"].items() for check, passed in run["checks"].items() if not passed]
    result["failed_checks"] = failed
    result["status"] = "ok" if not failed else "failed"
    return result


def summary_lines(result: dict) -> list:
    lines = [f"## smoke ({result['device']}): {result['status']}"]
    for name, run in result.get("runs", {}).items():
        passed = sum(bool(v) for v in run["checks"].values())
        wall = run.get("wall_s", "")
        if run.get("skipped"):  # the budget ran out before it started
            lines.append(f"- {name}: not run ({run['skipped']})")
            continue
        lines.append(f"- {name}: {passed}/{len(run['checks'])} checks{f', {wall} s' if wall != '' else ''}"
                     + ("; TIMED OUT" if run.get("timed_out") else "")
                     + "".join(f"; MISS {c}" for c, v in run["checks"].items() if not v))
    for name, why in result.get("skipped", {}).items():
        lines.append(f"- {name}: skipped ({why})")
    return lines
