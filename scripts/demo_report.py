"""Check that a demo run produced every promised artifact, and print its summary.

    python scripts/demo_report.py runs/demo --expected scripts/demo_reviews.tsv --times stage1=120 stage2=300 ...

Exits 1, listing what is missing or malformed, when an artifact is absent: the adapted encoder,
``dapt_summary.json``, ``results.json`` with every metric for both datasets (calibration before
and after the fitted temperature and accuracy per review length included), the plots as valid PNG
files (a reliability diagram per dataset among them), the publishable folder (``model.py``,
weights, a card that ``ModelCard`` parses) and the predictions for the sample reviews, each
compared with its expected label (``--expected``: a TSV of ``expected<TAB>review``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n")
CALIBRATION_METRICS = ("ece", "brier", "nll")
LENGTH_BUCKETS = ("<=128", "129-512", ">512")
DATASETS = ("imdb_test", "sst2_validation")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What the GPU recipe reaches, as measured and documented in docs/recipes.md ("The learning rates"):
# configs/classify-minilm.yaml's settings in a reference loop on one H100.
GPU_REFERENCE = ("IMDb test accuracy 0.926 (plain stand-in) / 0.931 (after DAPT), a reference loop on one H100 "
                 "(full IMDb train, 512 tokens, 3 epochs)")


def calibration_problems(where: str, block) -> list[str]:
    """What a ``calibration`` block (temperature, before / after ECE, Brier, NLL) lacks."""
    if not isinstance(block, dict) or not isinstance(block.get("temperature"), (int, float)):
        return [f"{where}: no calibration (temperature)"]
    return [f"{where}: calibration lacks {side} {m}" for side in ("before", "after") for m in CALIBRATION_METRICS
            if not isinstance((block.get(side) or {}).get(m), (int, float))]


def read_expected(path: Path, text_column: str = "review") -> dict[str, str]:
    """text -> expected label, from a TSV with the header ``expected<TAB>review`` (or another text column)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {row[text_column]: row["expected"] for row in csv.DictReader(handle, delimiter="\t")}


def finish(summary, problems: list[str]) -> int:
    """Print the summary (``summary()``; a malformed artifact leaves it incomplete, the problems say
    which), then the problems; the exit code of a demo's report."""
    try:
        print(summary())
    except (KeyError, TypeError) as error:
        print(f"(summary incomplete: {error!r})")
    if problems:
        print("\nDEMO INCOMPLETE:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("all promised artifacts present")
    return 0


def check(out: Path, expected: dict[str, str] | None = None) -> tuple[list[str], dict]:
    problems: list[str] = []
    found: dict = {}

    def need(path: Path, what: str) -> bool:
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"missing {what}: {path}")
            return False
        return True

    dapt_dir, run_dir, hub_dir = out / "dapt", out / "classify", out / "hub"
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        need(dapt_dir / name, "adapted encoder file")
    if need(dapt_dir / "dapt_summary.json", "stage-1 summary"):
        found["dapt"] = json.loads((dapt_dir / "dapt_summary.json").read_text())
        for key in ("perplexity_before", "perplexity_after"):
            if not isinstance(found["dapt"].get(key), (int, float)):
                problems.append(f"dapt_summary.json has no number for {key}")

    if need(run_dir / "results.json", "stage-2 results"):
        results = found["results"] = json.loads((run_dir / "results.json").read_text())
        for dataset in DATASETS:
            block = results.get("evaluation", {}).get(dataset)
            if block is None:
                problems.append(f"results.json: no evaluation for {dataset}")
                continue
            absent = [m for m in METRICS if not isinstance(block.get(m), (int, float))]
            if absent:
                problems.append(f"results.json: {dataset} lacks {', '.join(absent)}")
            problems += calibration_problems(f"results.json: {dataset}", block.get("calibration"))
            by_length = block.get("by_length") or {}
            if [b for b in LENGTH_BUCKETS if not isinstance((by_length.get(b) or {}).get("n"), int)]:
                problems.append(f"results.json: {dataset} lacks accuracy per length bucket ({', '.join(LENGTH_BUCKETS)})")
            if not (run_dir / "plots" / f"reliability_{dataset}.png").is_file():
                problems.append(f"missing reliability diagram: {run_dir / 'plots' / f'reliability_{dataset}.png'}")
        problems += calibration_problems("results.json: training", (results.get("training") or {}).get("calibration"))
    if (run_dir / "config.yaml").is_file():  # the training budget, for the CPU-vs-GPU line
        import yaml

        train_set = ((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("data") or {}).get("train") or {}
        found["train_reviews"] = f"{train_set['max_samples']:,}" if train_set.get("max_samples") else "all"
    pngs = sorted((run_dir / "plots").glob("*.png"))
    found["plots"] = pngs
    if len(pngs) < 7:  # a confusion matrix, a ROC curve and a reliability diagram per dataset, training curves
        problems.append(f"expected at least 7 plots in {run_dir / 'plots'}, found {len(pngs)}")
    for png in pngs:
        if png.read_bytes()[:8] != PNG_SIGNATURE:
            problems.append(f"not a PNG file: {png}")

    for name in ("model.py", "model.safetensors", "config.json", "tokenizer_config.json"):
        need(hub_dir / name, "Hub folder file")
    if need(hub_dir / "README.md", "model card"):
        from huggingface_hub import ModelCard

        card = ModelCard((hub_dir / "README.md").read_text())
        if not card.data.eval_results:
            problems.append("model card has no model-index metrics")
        found["card_results"] = len(card.data.eval_results or [])

    predictions_file = out / "predictions.jsonl"
    if need(predictions_file, "predictions"):
        found["predictions"] = [json.loads(line) for line in predictions_file.read_text().splitlines() if line.strip()]
        if not found["predictions"] or not all("label" in p and "confidence" in p for p in found["predictions"]):
            problems.append(f"{predictions_file}: no label/confidence per review")
        elif expected is not None:
            for p in found["predictions"]:
                p["expected"] = expected.get(p.get("text"))
                if p["expected"] is None:
                    problems.append(f"{predictions_file}: no expected label for review {p.get('text')!r}")
    return problems, found


def report(out: Path, found: dict, times: dict[str, str]) -> str:
    lines = ["", "=" * 72, "dapt demo summary", "=" * 72]
    dapt = found.get("dapt")
    if dapt:
        random_head = dapt.get("perplexity_before_random_head")
        lines.append(
            f"stage 1  held-out perplexity {dapt['perplexity_before']:.1f} -> {dapt['perplexity_after']:.1f}"
            f"  ({dapt['baseline']} baseline" + (f"; random head: {random_head:,.0f})" if random_head else ")")
        )
        lines.append(f"         {dapt['steps']} steps, {dapt['tokens_seen']:,} tokens, {dapt['corpus']['documents']:,} documents")
    results = found.get("results")
    if results:
        for dataset in DATASETS:
            m = results["evaluation"][dataset]
            subset = f" (subset of {m['subset_of']:,})" if m.get("subset_of") else ""
            lines.append(
                f"stage 2  {dataset:<16} acc {m['accuracy']:.4f}  F1 {m['f1']:.4f}  ROC AUC {m['roc_auc']:.4f}"
                f"  n={m['n']:,}{subset}"
            )
        fitted = results["training"]["calibration"]
        lines.append(
            f"calibr.  T = {fitted['temperature']:.3f} (fitted on {fitted['n']:,} validation reviews); ECE before -> after: "
            + ", ".join(f"{d} {results['evaluation'][d]['calibration']['before']['ece']:.3f} -> "
                        f"{results['evaluation'][d]['calibration']['after']['ece']:.3f}" for d in DATASETS)
        )
        hp = results["hyperparameters"]
        lines.append(
            f"budget   this CPU run: {found.get('train_reviews') or '?'} training reviews, {hp['max_length']} tokens, "
            f"{hp['epochs']} epoch(s) -> IMDb accuracy {results['evaluation']['imdb_test']['accuracy']:.3f}\n"
            f"         the GPU recipe: {GPU_REFERENCE} (docs/recipes.md: 'The learning rates')"
        )
    if times:
        lines.append("time     " + ", ".join(f"{k} {int(v) // 60}m{int(v) % 60:02d}s" for k, v in times.items()))
    predictions = found.get("predictions", [])
    for p in predictions:
        verdict = "" if p.get("expected") is None else f"expected {p['expected']:<8} {'right' if p['label'] == p['expected'] else 'WRONG':<5}  "
        lines.append(f"predict  {p['label']:<8} {p['confidence']:.3f}  {verdict}{p['text'][:60]}")
    judged = [p for p in predictions if p.get("expected") is not None]
    if judged:
        right = sum(p["label"] == p["expected"] for p in judged)
        lines.append(f"predict  {right} of {len(judged)} sample reviews right, {len(judged) - right} wrong "
                     "(tricky on purpose: sarcasm, negation, a turn-around)")
    lines += [
        f"encoder  {out / 'dapt'}",
        f"results  {out / 'classify' / 'results.json'}",
        f"plots    {out / 'classify' / 'plots'} ({len(found.get('plots', []))} PNG)",
        f"hub      {out / 'hub'} (push: dapt-publish {out / 'classify'} --repo-id USER/NAME)",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the demo's output folder (runs/demo)")
    parser.add_argument("--times", nargs="*", default=[], help="name=seconds pairs")
    parser.add_argument("--expected", type=Path, help="TSV (expected<TAB>review) of the sample reviews' expected labels")
    args = parser.parse_args(argv)
    problems, found = check(args.out, read_expected(args.expected) if args.expected else None)
    times = dict(item.split("=", 1) for item in args.times)
    return finish(lambda: report(args.out, found, times), problems)


if __name__ == "__main__":
    sys.exit(main())
