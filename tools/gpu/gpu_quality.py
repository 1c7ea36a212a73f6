"""The quality part of ``tools/gpu/gpu_check.py``: the stand-in recipe end to end, from local files.

1. Stage 2 (``configs/classify-minilm.yaml``, full IMDb train) on the **plain** encoder: it does not
   need stage 1, so it runs first and its wall time sizes the DAPT arm's.
2. A stage-1 probe (``configs/pretrain-minilm.yaml``, a few logged steps): tokens/s after
   compilation, and the fixed costs (start, tokenization - cached for the real run -, compile).
3. Stage 1 itself: the recipe as is (3 epochs) when the probe says it fits the part's budget with
   stage 2 still to come, else the same recipe with ``train.max_steps`` fitted to the time left
   (a complete warmup-decay schedule, unlike a run cut off by a clock); ``stage1.fit`` says which
   and why.
4. Stage 2 on the **DAPT** encoder with the same seed.
5. Per dataset (full IMDb test, SST-2 validation): every metric of both arms, DAPT - plain with the
   ablation's paired bootstrap over test examples, and the quality bar.
"""

from __future__ import annotations

import importlib
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from gpu_common import REPO, Context, Deadline, fmt, ok, read_json, read_jsonl, run_command, stage1_args, stage2_args

BAR = {"imdb_test": {"accuracy": 0.934, "roc_auc": 0.982}, "sst2_validation": {"accuracy": 0.86}}
METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc")
PROBE_STEPS, PROBE_LOG_EVERY = 40, 10  # the meter drops the first logged interval (compilation)
STATS_RESERVE_S = 30


def ablation_stats():
    """The ablation's statistics (paired bootstrap), imported when the quality part needs them."""
    return importlib.import_module("experiments.ablation.stats")


def fit_stage1(*, tokens_per_s: float, tokens_per_step: int, steps_per_epoch: int, epochs: float, head_warmup_steps: int,
               overhead_s: float, available_s: float, safety: float = 1.15, cap: int | None = None) -> dict:
    """The recipe's step count when its estimated time fits ``available_s``, else the most steps
    that do. A head warm-up step runs the encoder forward only: about a third of a training step."""
    step_s = tokens_per_step / tokens_per_s
    recipe_steps = math.ceil(steps_per_epoch * epochs)
    estimate = overhead_s + safety * step_s * (recipe_steps + head_warmup_steps / 3)
    fit = {"tokens_per_s": round(tokens_per_s, 1), "step_s": round(step_s, 5), "recipe_steps": recipe_steps,
           "recipe_estimate_s": round(estimate, 1), "available_s": round(available_s, 1), "overhead_s": round(overhead_s, 1),
           "safety": safety}
    if estimate <= available_s and (cap is None or recipe_steps <= cap):
        return {**fit, "mode": "recipe", "steps": recipe_steps, "estimate_s": round(estimate, 1)}
    steps = math.floor((available_s - overhead_s) / (safety * step_s) - head_warmup_steps / 3)
    if cap is not None:
        steps = min(steps, cap)
    if steps < 1:
        return {**fit, "mode": "none", "steps": 0, "reason": "no time left for stage 1 after the plain arm"}
    fitted = overhead_s + safety * step_s * (steps + head_warmup_steps / 3)
    return {**fit, "mode": "fitted", "steps": steps, "epochs": round(steps / steps_per_epoch, 3), "estimate_s": round(fitted, 1)}


def _recipe_train_settings() -> dict:
    import yaml

    recipe = yaml.safe_load((REPO / "configs" / "pretrain-minilm.yaml").read_text())
    return recipe["train"]


def _probe_rates(run_dir: Path) -> dict:
    summary = read_json(run_dir / "dapt_summary.json") or {}
    rates = [r["tokens_per_s"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("tokens_per_s")]
    return {"tokens_per_s": rates[-1] if rates else None, "corpus": summary.get("corpus", {}),
            "config": summary.get("config", {}), "steps": summary.get("steps")}


def _load_predictions(run_dir: Path, name: str):
    path = run_dir / "predictions" / f"{name}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return SimpleNamespace(label=data["label"], pred=data["pred"], prob=data["prob"])


def compare_arms(plain_dir: Path, dapt_dir: Path, samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """DAPT - plain per dataset and metric: the difference on the full set and the ablation's
    paired bootstrap interval (the same resampled rows for both arms)."""
    stats = ablation_stats()
    plain, dapt = read_json(plain_dir / "results.json"), read_json(dapt_dir / "results.json")
    rng = np.random.default_rng(seed)
    comparison = {}
    for name in plain["evaluation"]:
        base, arm = _load_predictions(plain_dir, name), _load_predictions(dapt_dir, name)
        if base is None or arm is None:
            continue
        index = [stats.bootstrap_indices(len(base.label), samples, rng)]
        comparison[name] = {}
        for metric in METRICS:
            interval = stats.paired_bootstrap([(base, arm)], metric, index, confidence)
            comparison[name][metric] = {"plain": plain["evaluation"][name].get(metric), "dapt": dapt["evaluation"][name].get(metric),
                                        "difference": interval["mean"], "low": interval["low"], "high": interval["high"],
                                        "excludes_zero": stats.excludes_zero(interval), "p_not_positive": interval["p_not_positive"]}
    return comparison


def quality_bar(dapt_results: dict, comparison: dict) -> dict:
    checks = {}
    for name, thresholds in BAR.items():
        block = (dapt_results or {}).get("evaluation", {}).get(name, {})
        for metric, threshold in thresholds.items():
            value = block.get(metric)
            checks[f"{name}.{metric} >= {threshold}"] = {"value": value, "pass": value is not None and value >= threshold}
    gain = comparison.get("imdb_test", {}).get("accuracy", {})
    checks["imdb_test accuracy gain interval excludes zero"] = {
        "value": [gain.get("low"), gain.get("high")], "pass": bool(gain.get("excludes_zero")) and (gain.get("low") or 0) > 0}
    return checks


def run_quality(ctx: Context, fixtures: dict) -> dict:
    deadline = Deadline(ctx.budget_s)
    work = ctx.work / "quality"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    encoder = fixtures.get("encoder") if ctx.dry_run else ctx.encoder_dir
    data = fixtures.get("data") if ctx.dry_run else ctx.data_dir
    if encoder is None or not (Path(encoder) / "model.safetensors").is_file():
        return {"status": "error", "error": f"--encoder-dir {encoder}: no weights (model.safetensors) there"}
    s1_extra, s2_extra, cap = [], [], None
    if ctx.dry_run:  # the same commands on a tiny encoder and data slice, fp32, no compile (the smoke part has those)
        common = ["impl.mixed_precision=no", "impl.compile=false", "impl.dataloader_workers=0"]
        s1_extra = [*common, "data.block_size=64", "train.batch_size=8", "train.eval_batch_size=16", "train.head_warmup_steps=2"]
        s2_extra = [*common, "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=32", "model.max_length=64",
                    "model.head_tokens=16", "train.log_every=2"]
        cap = 4
    result: dict = {"status": "incomplete", "encoder": str(encoder), "data_dir": str(data), "stages": {}}
    stages = result["stages"]

    plain_dir, dapt_dir = work / "classify-plain", work / "classify-dapt"
    stages["stage2_plain"] = run_command(ctx, "quality-stage2-plain", stage2_args(ctx, encoder, data, plain_dir, *s2_extra),
                                         deadline, observe_module="classify.train")
    plain_s = stages["stage2_plain"]["wall_s"] if ok(stages["stage2_plain"]) else None

    probe_dir = work / "dapt-probe"
    probe_steps = 3 if ctx.dry_run else PROBE_STEPS
    stages["stage1_probe"] = run_command(ctx, "quality-stage1-probe", stage1_args(
        ctx, encoder, data, probe_dir, *s1_extra, f"train.max_steps={probe_steps}", "train.head_warmup_steps=0",
        "train.eval_every=0", f"train.log_every={1 if ctx.dry_run else PROBE_LOG_EVERY}", "checkpoint.every_steps=0"),
        deadline, observe_module="dapt.pretrain")
    probe = _probe_rates(probe_dir)
    if not ok(stages["stage1_probe"]) or not probe["tokens_per_s"]:
        result["error"] = "the stage-1 probe failed or logged no tokens/s"
        return result
    recipe = _recipe_train_settings()
    train_cfg, data_cfg = probe["config"]["train"], probe["config"]["data"]
    steps_per_epoch = math.ceil(probe["corpus"]["train_blocks"] / train_cfg["batch_size"])
    tokens_per_step = train_cfg["batch_size"] * data_cfg["block_size"]
    probe_train_s = probe_steps * tokens_per_step / probe["tokens_per_s"]
    head_warmup = 2 if ctx.dry_run else recipe.get("head_warmup_steps", 0)
    fit = fit_stage1(tokens_per_s=probe["tokens_per_s"], tokens_per_step=tokens_per_step, steps_per_epoch=steps_per_epoch,
                     epochs=recipe["epochs"], head_warmup_steps=head_warmup,
                     overhead_s=max(0.0, stages["stage1_probe"]["wall_s"] - probe_train_s),
                     available_s=deadline.left() - (plain_s if plain_s is not None else 0.35 * ctx.budget_s) - STATS_RESERVE_S, cap=cap)
    fit["train_blocks"], fit["steps_per_epoch"], fit["tokens_per_step"] = probe["corpus"]["train_blocks"], steps_per_epoch, tokens_per_step
    result["stage1_fit"] = fit
    if fit["mode"] == "none":
        result["error"] = fit["reason"]
        return result

    stage1_dir = work / "dapt"
    steps_override = [] if fit["mode"] == "recipe" else [f"train.max_steps={fit['steps']}"]
    stages["stage1"] = run_command(ctx, "quality-stage1", stage1_args(
        ctx, encoder, data, stage1_dir, *s1_extra, *steps_override, "checkpoint.every_steps=0"), deadline, observe_module="dapt.pretrain")
    summary = read_json(stage1_dir / "dapt_summary.json")
    if not ok(stages["stage1"]) or summary is None:
        result["error"] = "stage 1 failed"
        return result
    result["stage1"] = {k: summary.get(k) for k in (
        "perplexity_before_random_head", "perplexity_before", "perplexity_after", "baseline", "heldout_loss_before",
        "heldout_loss_after", "heldout_masked_tokens", "tokens_seen", "steps", "total_steps", "epochs", "wall_time_s",
        "process_wall_time_s", "mixed_precision", "global_batch_size", "corpus")}

    stages["stage2_dapt"] = run_command(ctx, "quality-stage2-dapt", stage2_args(ctx, stage1_dir, data, dapt_dir, *s2_extra),
                                        deadline, observe_module="classify.train")
    plain_results, dapt_results = read_json(plain_dir / "results.json"), read_json(dapt_dir / "results.json")
    result["plain"] = _arm_summary(plain_results)
    result["dapt"] = _arm_summary(dapt_results)
    if not (ok(stages["stage2_plain"]) and ok(stages["stage2_dapt"]) and plain_results and dapt_results):
        result["error"] = "a stage-2 run failed"
        return result
    result["comparison"] = compare_arms(plain_dir, dapt_dir)
    result["bar"] = quality_bar(dapt_results, result["comparison"])
    result["status"] = "ok"
    return result


def _arm_summary(results: dict | None) -> dict | None:
    if results is None:
        return None
    training = results["training"]
    return {"evaluation": results["evaluation"], "best_epoch": training["best_epoch"], "epochs": training["epochs"],
            "wall_time_s": training["wall_time_s"], "train_samples_per_s": training.get("train_samples_per_s"),
            "hyperparameters": results["hyperparameters"]}


def summary_lines(result: dict) -> list:
    lines = [f"## quality: {result['status']}" + (f" ({result['error']})" if result.get("error") else "")]
    for name, stage in result.get("stages", {}).items():
        peak = (stage.get("observed") or {}).get("peak_memory_gib")
        lines.append(f"- {name}: exit {stage.get('exit_code')}{' TIMED OUT' if stage.get('timed_out') else ''}, "
                     f"{stage.get('wall_s')} s, peak GPU memory {fmt(peak, 2)} GiB")
    fit = result.get("stage1_fit")
    if fit:
        lines.append(f"- stage 1 fit: {fit['mode']}, {fit['steps']} steps of {fit['recipe_steps']} in the recipe "
                     f"(probe {fit['tokens_per_s']:.0f} tokens/s; recipe estimate {fit['recipe_estimate_s']} s, available {fit['available_s']} s)")
    s1 = result.get("stage1")
    if s1:
        lines.append(f"- perplexity: random head {fmt(s1['perplexity_before_random_head'], 1)} -> before {fmt(s1['perplexity_before'], 2)}"
                     f" -> after {fmt(s1['perplexity_after'], 2)} ({s1['steps']} steps, {s1['epochs']} epochs, {s1['tokens_seen']} tokens)")
    comparison = result.get("comparison", {})
    if comparison:
        lines += ["", "| dataset | metric | plain | DAPT | DAPT - plain [95% paired bootstrap] |", "|---|---|---|---|---|"]
        for name, block in comparison.items():
            for metric, row in block.items():
                lines.append(f"| {name} | {metric} | {fmt(row['plain'])} | {fmt(row['dapt'])} | "
                             f"{row['difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] |")
    for check, row in result.get("bar", {}).items():
        lines.append(f"- bar: {check}: {'PASS' if row['pass'] else 'MISS'} ({row['value']})")
    return lines
