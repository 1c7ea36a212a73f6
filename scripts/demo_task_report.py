"""Check and summarise `scripts/demo_task.sh` (AG News: TAPT -> 4-class classifier, and the plain
encoder's classifier for comparison).

    python scripts/demo_task_report.py runs/ag_news --expected scripts/demo_headlines.tsv --times tapt=200 ...

Exits 1, listing what is missing, when a promised artifact is absent: the adapted encoder and its
``dapt_summary.json``, both runs' ``results.json`` with macro-F1, per-class figures and calibration
for every evaluation set, the confusion matrices, the publishable folder (``model.py``, weights, a
card ``ModelCard`` parses) and a prediction (with every class's probability) per headline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from demo_report import finish, read_expected  # beside this file: run as `python scripts/demo_task_report.py`

KEYS = ("accuracy", "macro_f1", "micro_f1", "roc_auc", "loss", "n")


def read_json(path: Path, problems: list[str], what: str):
    if not path.is_file():
        problems.append(f"missing {what}: {path}")
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def check(out: Path, expected: dict[str, str]) -> tuple[list[str], dict]:
    problems: list[str] = []
    found = {"tapt": read_json(out / "tapt" / "dapt_summary.json", problems, "stage-1 summary")}
    for name in ("classify", "classify-plain"):
        results = found[name] = read_json(out / name / "results.json", problems, "stage-2 results")
        if results is None:
            continue
        if results["task"]["num_labels"] < 3:
            problems.append(f"{out / name}: {results['task']['num_labels']} classes, expected the 4 AG News topics")
        for dataset, block in results["evaluation"].items():
            absent = [k for k in KEYS if block.get(k) is None] + [k for k in ("per_class", "confusion_matrix", "calibration")
                                                                if not block.get(k)]
            if absent:
                problems.append(f"{out / name / 'results.json'}: {dataset} lacks {', '.join(absent)}")
            if not (out / name / "plots" / f"confusion_{dataset}.png").is_file():
                problems.append(f"missing confusion matrix: {out / name / 'plots' / f'confusion_{dataset}.png'}")
    for file in ("model.py", "model.safetensors", "config.json", "README.md"):
        if not (out / "hub" / file).is_file():
            problems.append(f"missing Hub folder file: {out / 'hub' / file}")
    if (out / "hub" / "README.md").is_file():
        from huggingface_hub import ModelCard

        if not ModelCard((out / "hub" / "README.md").read_text()).data.eval_results:
            problems.append("model card has no model-index metrics")
    predictions = out / "predictions.jsonl"
    found["predictions"] = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()] \
        if predictions.is_file() else []
    if len(found["predictions"]) != len(expected) or not all("probs" in p for p in found["predictions"]):
        problems.append(f"{predictions}: expected one prediction with probabilities per headline ({len(expected)})")
    for p in found["predictions"]:
        p["expected"] = expected.get(p.get("text"))
    return problems, found


def report(out: Path, found: dict, times: dict[str, str]) -> str:
    lines = ["", "=" * 72, "dapt second-domain demo: AG News topics (4 classes), TAPT then a classifier", "=" * 72]
    tapt, adapted, plain = found.get("tapt"), found.get("classify"), found.get("classify-plain")
    if tapt:
        lines.append(f"TAPT     held-out perplexity {tapt['perplexity_before']:,.1f} -> {tapt['perplexity_after']:,.1f} "
                     f"({tapt['baseline']} baseline), {tapt['steps']} steps, {tapt['tokens_seen']:,} tokens of "
                     f"{tapt['corpus']['documents']:,} training texts")
    for dataset in (adapted or {}).get("evaluation", {}):
        block = adapted["evaluation"][dataset]
        subset = f" of {block['subset_of']:,}" if block.get("subset_of") else ""
        lines.append(f"stage 2  {dataset} (n={block['n']:,}{subset}): macro-F1 {block['macro_f1']:.4f}, accuracy "
                     f"{block['accuracy']:.4f}, ROC AUC {block['roc_auc'] if block['roc_auc'] is None else round(block['roc_auc'], 4)}, "
                     f"ECE {block['calibration']['before']['ece']:.3f} -> {block['calibration']['after']['ece']:.3f}")
        lines.append("         per class (recall = accuracy on the class): " + ", ".join(
            f"{name} {c['recall']:.3f}" for name, c in block["per_class"].items()))
        other = (plain or {}).get("evaluation", {}).get(dataset)
        if other:
            lines.append(f"plain    the same classifier on the encoder without TAPT: macro-F1 {other['macro_f1']:.4f}, accuracy "
                         f"{other['accuracy']:.4f} -> TAPT changed macro-F1 by {100 * (block['macro_f1'] - other['macro_f1']):+.2f} pt "
                         "(one seed: see configs/ablate/ag_news.yaml for an interval over seeds)")
    if times:
        lines.append("time     " + ", ".join(f"{k} {int(v) // 60}m{int(v) % 60:02d}s" for k, v in times.items()))
    predictions = found.get("predictions", [])
    for p in predictions:
        verdict = "" if p.get("expected") is None else f"expected {p['expected']:<9} {'right' if p['label'] == p['expected'] else 'WRONG':<5}  "
        lines.append(f"predict  {p['label']:<9} {p['confidence']:.3f}  {verdict}{p['text'][:60]}")
    judged = [p for p in predictions if p.get("expected") is not None]
    if judged:
        lines.append(f"predict  {sum(p['label'] == p['expected'] for p in judged)} of {len(judged)} hand-written headlines right")
    lines += [f"encoder  {out / 'tapt'}", f"results  {out / 'classify' / 'results.json'} (plain: {out / 'classify-plain'})",
              f"hub      {out / 'hub'} (push: dapt-publish {out / 'classify'} --repo-id USER/NAME)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the demo's output folder (runs/ag_news)")
    parser.add_argument("--times", nargs="*", default=[], help="name=seconds pairs")
    parser.add_argument("--expected", type=Path, required=True, help="TSV (expected<TAB>text) of the headlines' topics")
    args = parser.parse_args(argv)
    problems, found = check(args.out, read_expected(args.expected, text_column="text"))
    times = dict(item.split("=", 1) for item in args.times)
    return finish(lambda: report(args.out, found, times), problems)


if __name__ == "__main__":
    sys.exit(main())
