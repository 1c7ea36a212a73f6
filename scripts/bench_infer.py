"""The inference stage of ``scripts/bench.py``: :func:`classify.model.infer_reviews` against a
naive one-review-at-a-time loop on the same cleaned reviews and classifier, interleaved repeats,
agreement of the two, and the ``--infer-sweep`` diagnostic variants.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Optional

import numpy as np
import torch

from bench_measure import sync, thread_sync_latency_ms


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


def infer_variants(args, classifier, tokenizer, texts: list[str]) -> dict:
    """``--infer-sweep``: diagnostic variants of batched inference, timed interleaved with the two
    main sides. None of them changes the product; they show which change to infer_reviews pays."""
    from classify.model import infer_reviews

    variants = {}
    for size in args.infer_sweep:
        variants[f"infer_reviews bs={size}"] = lambda size=size: infer_reviews(texts, classifier, tokenizer, batch_size=size)
    size = args.infer_batch

    def unsorted():  # batches in input order: each call sorts only within its own batch
        return [r for i in range(0, len(texts), size) for r in infer_reviews(texts[i : i + size], classifier, tokenizer, batch_size=size)]

    variants[f"unsorted batches bs={size}"] = unsorted
    if args.device == "cpu":
        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return infer_reviews(texts, classifier, tokenizer, batch_size=size)

        variants[f"bf16 autocast bs={size}"] = bf16
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(classifier), {torch.nn.Linear}, dtype=torch.qint8)
        variants[f"int8 dynamic quantization bs={size} (not in the product)"] = (
            lambda: infer_reviews(texts, quantized, tokenizer, batch_size=size))
        variants["naive, 1 thread"] = with_threads(1, lambda: naive_infer(texts, classifier, tokenizer, "cpu"))
        variants[f"infer_reviews bs={size}, 1 thread"] = with_threads(
            1, lambda: infer_reviews(texts, classifier, tokenizer, batch_size=size))
    return variants


def run_infer(args, tokenizer, config, texts: list[str]) -> dict:
    from classify.encoder import from_encoder
    from classify.model import DaptClassifierConfig, DistilBERTClassifier, infer_reviews

    device = torch.device(args.device)
    previous_threads = torch.get_num_threads()
    if args.device == "cpu":
        torch.set_num_threads(args.infer_threads)
    torch.manual_seed(args.seed)
    if args.infer_encoder:
        classifier = from_encoder(args.infer_encoder)
    else:
        classifier = DistilBERTClassifier(DaptClassifierConfig(encoder_config=config.to_dict()))
    classifier.eval().to(device)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]

    timed = {
        "baseline": lambda: naive_infer(texts, classifier, tokenizer, device),
        "project": lambda: infer_reviews(texts, classifier, tokenizer, batch_size=args.infer_batch),
    }
    if args.infer_sweep:
        timed.update(infer_variants(args, classifier, tokenizer, texts))
    warm = texts[: max(2, args.infer_batch)]
    naive_infer(warm, classifier, tokenizer, device)
    infer_reviews(warm, classifier, tokenizer, batch_size=args.infer_batch)
    runs: dict[str, list[float]] = {name: [] for name in timed}
    latency: list[float] = []
    outputs = {}
    for _ in range(args.repeats):  # interleaved: each repeat times every variant once
        if args.device == "cpu":
            latency.append(thread_sync_latency_ms(args.infer_threads, 50))
        for name, fn in timed.items():
            sync(args.device)
            start = time.perf_counter()
            outputs[name] = fn()
            sync(args.device)
            runs[name].append(time.perf_counter() - start)
    agree = sum(a[0] == b[0] for a, b in zip(outputs["baseline"], outputs["project"])) / len(texts)
    max_diff = max(abs((a[1] if a[0] == b[0] else 1 - a[1]) - b[2]) for a, b in zip(outputs["baseline"], outputs["project"]))

    def rates(name: str) -> dict:
        seconds = statistics.median(runs[name])
        return {"reviews": len(texts), "seconds": round(seconds, 4), "reviews_per_s": len(texts) / seconds,
                "tokens_per_s": sum(lengths) / seconds, "runs_s": [round(s, 4) for s in runs[name]]}

    result = {"baseline": rates("baseline"), "project": rates("project")}
    result["baseline"]["method"] = "one review at a time: tokenizer(text, truncation=True), no_grad forward, softmax"
    result["project"]["method"] = f"classify.model.infer_reviews(batch_size={args.infer_batch}) (length-sorted batches)"
    result["agreement"] = {"same_label": agree, "max_confidence_diff": max_diff}
    result["inputs"] = {"reviews": len(texts), "mean_tokens": round(float(np.mean(lengths)), 1),
                        "frac_truncated_at_512": round(float(np.mean(np.array(lengths) >= 512)), 3),
                        "threads": args.infer_threads if args.device == "cpu" else None,
                        "encoder": args.infer_encoder or "random init",
                        "thread_sync_latency_ms": latency or None}
    if args.infer_sweep:
        base = result["baseline"]["reviews_per_s"]
        sweep = {}
        for name in timed:
            if name in ("baseline", "project"):
                continue
            entry = rates(name)
            labels = [o[0] for o in outputs[name]]
            entry.update(ratio_vs_naive=entry["reviews_per_s"] / base,
                         same_label_as_naive=sum(l == b[0] for l, b in zip(labels, outputs["baseline"])) / len(texts))
            sweep[name] = entry
        result["sweep"] = sweep
    torch.set_num_threads(previous_threads)
    return result
