"""Same-run benchmark: the Hugging Face ``Trainer`` baseline against this project's training steps,
and batched ``infer_reviews`` against a one-review-at-a-time loop.

    python -m benchmarks.bench --device cpu --size tiny --synthetic --json bench.json      # CI smoke, seconds
    python -m benchmarks.bench --device cuda --size distilbert --json bench-h100.json      # the real shape
    python -m benchmarks.bench --device cpu --size minilm --stages infer                   # the 2-thread CPU target

Everything runs in one process, on the same token stream (IMDb text tokenized with the uncased
30,522 WordPiece vocabulary, or ``--synthetic`` token ids with IMDb's length distribution), with
the first ``--warmup`` steps excluded from every timing (compilation, allocator warm-up). Each
figure is a ratio against the baseline measured in the same run; ``--repeats R`` interleaves
baseline and project runs R times and reports medians.

Stages (``--stages mlm,classify,infer``):

* ``mlm`` - baseline: ``transformers.Trainer`` + ``DataCollatorForLanguageModeling`` on 128-token
  blocks, batch 64, fp16 on CUDA (fp32 on CPU), full-vocabulary logits. Project: the stage-1 step of
  ``dapt/pretrain.py`` - :class:`dapt.modeling.MaskedLMObjective` (vocabulary projection only at the
  masked positions), :class:`dapt.masking.MLMCollator`, 512-token packed blocks, bf16 autocast, SDPA
  attention, fused AdamW (:func:`dapt.core.runtime.make_optimizer`), the product's optimizer step
  (:class:`dapt.core.step.OptimizerStep`: clipping, the non-finite check, the schedule), optional
  ``torch.compile``; DataLoader workers and pinned memory on CUDA.
* ``classify`` - baseline: ``Trainer`` + ``DataCollatorWithPadding`` (dynamic padding), random
  order, batch 64, ``AutoModelForSequenceClassification`` of the same encoder shape. Project: the
  stage-2 step of ``classify/train.py`` - :class:`classify.model.DaptClassifier`, separate
  encoder/head learning rates, the same ``OptimizerStep``, :class:`classify.data.LengthBucketBatchSampler` (shuffled,
  length-bucketed batches) and :class:`classify.data.Collator` (padding to a multiple of 8).
* ``infer`` - :func:`classify.model.infer_reviews` against a naive loop (tokenize one review,
  forward, softmax), same cleaned reviews, same classifier, ``--infer-threads`` CPU threads.

FLOPs ("model FLOPs", the same definition for baseline and project, so an MFU ratio is never
flattered by work the project skips)::

    training FLOPs = 6 * N * tokens + 12 * L * H * sum(T_i ** 2)

``tokens`` are the non-pad tokens processed, ``T_i`` each sequence's non-pad length (the second
term is attention: QK^T and AV, forward and backward), ``N`` the matmul parameters one token goes
through: ``L * (4 H^2 + 2 H F)`` for the encoder, plus ``H^2 + H V`` for the MLM head (transform and
vocabulary projection) in the MLM stage. Embedding lookups, norms and the one-token classifier head
are not counted. For the project's masked-only MLM path the FLOPs it actually executes (the MLM head
only at the ~15 % masked tokens) are reported separately as ``executed_tflops``; MFU always uses the
model FLOPs. MFU = model FLOP/s / ``--peak-tflops`` (989 = H100 SXM dense bf16; n/a on CPU unless
given).

The pieces, beside this file in ``scripts/``: ``bench_workload.py`` (shapes, tokenizer, token
stream, models), ``bench_measure.py`` (StepTimer, device and environment), ``bench_training.py``
(the Trainer baseline and the project's loops, stages 1 and 2), ``bench_infer.py`` (the inference
stage), ``bench_report.py`` (medians, ratios, targets, the table).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

from dapt.core.runtime import cpu_has_native_bf16
from benchmarks.bench_infer import run_infer
from benchmarks.bench_measure import device_info, free, thread_sync_latency_ms, versions
from benchmarks.bench_report import compare, markdown_table, summarize
from benchmarks.bench_training import classify_baseline, classify_project, mlm_baseline, mlm_project
from benchmarks.bench_workload import SIZES, build_corpus, encoder_config, flops_params, load_tokenizer, pack, review_ids, shape_of

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imdb"
H100_BF16_DENSE_TFLOPS = 989.0


# --------------------------------------------------------------------------------------------
# Settings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--stages", default="mlm,classify,infer", help="comma-separated: mlm, classify, infer")
    p.add_argument("--steps", type=int, default=None, help="measured steps per run (default 6 on CPU, 50 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="excluded steps per run (default 2 on CPU, 10 on CUDA)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved baseline/project runs; medians reported")
    p.add_argument("--synthetic", action="store_true", help="synthetic token ids with IMDb's length distribution")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder with IMDb train/test/unsupervised .parquet")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the all-MiniLM-L6-v2 stand-in's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    # the project's switches (each also a config key of the product; see docs/benchmarks.md)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="project autocast; auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the project's model (default: on for CUDA, off for CPU)")
    p.add_argument("--fused-adamw", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--masked-only", action=argparse.BooleanOptionalAction, default=True,
                   help="MLM vocabulary projection only at masked positions")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="classifier: shuffled length-bucketed batches")
    p.add_argument("--pad-multiple", type=int, default=8)
    p.add_argument("--workers", type=int, default=None, help="project DataLoader workers (default 2 on CUDA, 0 on CPU)")
    p.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mlm-block", type=int, default=512)
    p.add_argument("--mlm-batch", type=int, default=None)
    p.add_argument("--classify-batch", type=int, default=None, help="both sides (reference: 64)")
    # the baseline's settings (the reference notebook's)
    p.add_argument("--baseline-block", type=int, default=128)
    p.add_argument("--baseline-batch", type=int, default=None, help="MLM baseline batch (reference: 64)")
    p.add_argument("--baseline-precision", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
                   help="auto: fp16 on CUDA (as measured in the issue), fp32 on CPU")
    # inference
    p.add_argument("--infer-reviews", type=int, default=None, help="reviews (default by size: 24 / 200 / 1000)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the CPU training stages (default: torch's)")
    p.add_argument("--infer-threads", type=int, default=2, help="torch threads for CPU inference")
    p.add_argument("--infer-sweep", default="", help="diagnostics: comma-separated infer_reviews token budgets "
                   "(batch_tokens) to time as well (e.g. 1024,2048,8192)")
    p.add_argument("--infer-encoder", default=None, help="pretrained encoder folder for the inference classifier (default: random init)")
    p.add_argument("--peak-tflops", type=float, default=None, help=f"for MFU (default {H100_BF16_DENSE_TFLOPS:g} on CUDA, none on CPU)")
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible")
    cuda = args.device == "cuda"
    shape = SIZES[args.size]
    args.infer_sweep = [int(v) for v in args.infer_sweep.split(",") if v.strip()]
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(args.stages) - {"mlm", "classify", "infer"}
    if unknown:
        p.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    args.steps = args.steps if args.steps is not None else (50 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be >= 1 (the first step is always excluded: it includes set-up)")
    args.compile = cuda if args.compile is None else args.compile
    args.workers = (2 if cuda else 0) if args.workers is None else args.workers
    if args.precision == "auto":
        args.precision = "bf16" if cuda or cpu_has_native_bf16() else "fp32"
    if args.baseline_precision == "auto":
        args.baseline_precision = "fp16" if cuda else "fp32"
    if args.baseline_precision == "fp16" and not cuda:
        p.error("--baseline-precision fp16 needs CUDA")
    args.mlm_batch = args.mlm_batch or shape["mlm_batch"]
    args.baseline_batch = args.baseline_batch or shape["mlm_baseline_batch"]
    args.classify_batch = args.classify_batch or shape["classify_batch"]
    args.infer_reviews = args.infer_reviews or shape["infer_reviews"]
    if args.peak_tflops is None and cuda:
        args.peak_tflops = H100_BF16_DENSE_TFLOPS
    return args


# --------------------------------------------------------------------------------------------
# Orchestration


def run_training_stage(stage: str, args, baseline_fn, project_fn) -> dict:
    started = time.perf_counter()
    baselines, projects = [], []
    for repeat in range(args.repeats):
        for side, fn, bucket in (("baseline", baseline_fn, baselines), ("project", project_fn, projects)):
            free(args.device)  # the previous run's memory, and the peak-memory counter
            print(f"[{stage}] {side} run {repeat + 1}/{args.repeats} ...", flush=True)
            bucket.append(fn())
    keys = ("tokens_per_s", "samples_per_s", "mfu", "model_tflops_per_s")
    return {**compare(stage, summarize(baselines), summarize(projects), keys),
            "wall_time_s": round(time.perf_counter() - started, 1)}


def run(args) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.time()
    cuda = args.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not cuda and args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "benchmark": "dapt benchmarks/bench.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device_info(args.device),
        "versions": versions(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "flops": {
            "definition": "model FLOPs = 6*N*tokens + 12*L*H*sum(T_i^2); N = L*(4H^2+2HF) [+ H^2+H*V for the MLM head]; "
                          "tokens = non-pad tokens; the same definition for baseline and project",
            "executed": "for the project's masked-only MLM: the H^2+H*V head counted only at masked tokens",
            "peak_tflops": args.peak_tflops,
        },
        "stages": {},
    }
    if not cuda:
        report["device"]["thread_sync_latency_ms"] = thread_sync_latency_ms(args.infer_threads)
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = load_tokenizer(args, Path(workdir))
        config = encoder_config(args.size, len(tokenizer))
        shape = shape_of(config)
        steps = args.warmup + args.steps
        tokens_needed = 0
        if "mlm" in args.stages:  # every run sees fresh blocks, none repeated within a run
            tokens_needed = int(1.05 * steps * max(args.baseline_batch * args.baseline_block, args.mlm_batch * args.mlm_block))
        reviews_needed = steps * args.classify_batch if "classify" in args.stages else 0
        corpus = build_corpus(args, tokenizer, tokens_needed, reviews_needed)
        report["data"] = {"source": corpus.source, "documents": len(corpus.docs),
                          "mean_tokens": round(corpus.mean_tokens, 1), "frac_over_512": round(corpus.frac_over_512, 3)}
        report["model"] = {"shape": shape, "size": args.size, "architecture": SIZES[args.size]["arch"]}

        if "mlm" in args.stages:
            params = flops_params(shape, mlm=True)
            small = pack(corpus.texts, tokenizer, args.baseline_block)
            large = pack(corpus.texts, tokenizer, args.mlm_block)
            report["stages"]["mlm"] = run_training_stage(
                "mlm", args, lambda: mlm_baseline(args, tokenizer, config, small, params),
                lambda: mlm_project(args, tokenizer, config, large, params))
            report["stages"]["mlm"]["flops_params"] = params
        if "classify" in args.stages:
            params = flops_params(shape, mlm=False)
            reviews = review_ids(corpus.texts[:reviews_needed], tokenizer, SIZES[args.size]["max_length"])
            labels = corpus.labels[:reviews_needed]
            report["stages"]["classify"] = run_training_stage(
                "classify", args, lambda: classify_baseline(args, tokenizer, config, reviews, labels, params),
                lambda: classify_project(args, tokenizer, config, reviews, labels, params))
            report["stages"]["classify"]["flops_params"] = params
        if "infer" in args.stages:
            print("[infer] naive loop and infer_reviews ...", flush=True)
            started_infer = time.perf_counter()
            result = run_infer(args, tokenizer, config, corpus.infer_texts)
            report["stages"]["infer"] = {**compare("infer", result["baseline"], result["project"],
                                                   ("reviews_per_s", "tokens_per_s")),
                                         "agreement": result["agreement"], "inputs": result["inputs"],
                                         **({"sweep": result["sweep"]} if "sweep" in result else {}),
                                         "wall_time_s": round(time.perf_counter() - started_infer, 1)}
    report["wall_time_s"] = round(time.time() - started, 1)
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print()
    print(markdown_table(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nJSON: {path}")
    return report


if __name__ == "__main__":
    main()
