"""benchmarks/bench.py and its benchmarks/bench_*.py modules: the CPU smoke run and its JSON, and the
equivalences behind every speed lever (masked-only MLM logits under bf16 autocast, length-bucketed
padded batches, batched inference)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.bench_infer import naive_infer
from benchmarks.bench_measure import StepTimer
from benchmarks.bench_report import TARGETS
from benchmarks.bench_workload import (
    FIRST_WORD_ID,
    build_mlm_model,
    encoder_config,
    flops_params,
    imdb_lengths,
    pack,
    review_ids,
    shape_of,
    synthetic_text,
    synthetic_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return synthetic_tokenizer(512, tmp_path_factory.mktemp("bench_tok"))


@pytest.fixture(autouse=True)
def one_thread():
    """Small CPU models run faster on one thread, and much faster on a loaded machine, where every
    two-thread op waits for a descheduled thread; the setting is restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# --------------------------------------------------------------------------------------------
# The benchmark itself


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """The tiny CPU benchmark, all three stages, in a fresh process (the Trainer's Accelerator
    state and the thread settings stay out of the test process)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--device", "cpu", "--size", "tiny", "--synthetic",
               "--steps", "2", "--warmup", "1", "--threads", "1", "--infer-threads", "1", "--json", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| stage | metric |" in done.stdout  # the printed markdown table
    return json.loads(out.read_text())


def test_smoke_json_structure(smoke_report):
    report = smoke_report
    for key in ("device", "versions", "settings", "flops", "data", "model", "stages", "wall_time_s"):
        assert key in report, key
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert {"torch", "transformers", "accelerate"} <= set(report["versions"])
    assert report["settings"]["steps"] == 2 and report["settings"]["warmup"] == 1
    assert "6*N*tokens" in report["flops"]["definition"]
    assert set(report["stages"]) == {"mlm", "classify", "infer"}


@pytest.mark.parametrize("stage", ["mlm", "classify"])
def test_training_stage_ratios_come_from_the_measured_numbers(smoke_report, stage):
    block = smoke_report["stages"][stage]
    baseline, project = block["baseline"], block["project"]
    for side in (baseline, project):
        assert side["steps"] == 2 and side["warmup_steps"] == 1
        for key in ("tokens_per_s", "samples_per_s", "model_tflops_per_s", "seconds", "tokens", "samples"):
            assert positive(side[key]), (key, side[key])
        assert side["tokens_per_s"] == pytest.approx(side["tokens"] / side["seconds"], rel=1e-3)
        assert side["samples_per_s"] == pytest.approx(side["samples"] / side["seconds"], rel=1e-3)
        assert side["mfu"] is None and side["peak_memory_gib"] is None  # CPU: no peak FLOP/s, no CUDA memory
    for key in ("tokens_per_s", "samples_per_s", "model_tflops_per_s"):
        assert block["ratio"][key] == pytest.approx(project[key] / baseline[key])
        assert positive(block["ratio"][key])
    assert block["ratio"]["mfu"] is None
    assert isinstance(block["meets_target"], bool) and block["target"] == TARGETS[stage]


def test_mlm_stage_settings_and_flops(smoke_report):
    mlm = smoke_report["stages"]["mlm"]
    baseline, project = mlm["baseline"], mlm["project"]
    assert baseline["block"] == 128 and project["block"] == 512
    assert baseline["padding_fraction"] == 0 and project["padding_fraction"] == 0  # packed blocks
    assert baseline["tokens"] == 2 * 8 * 128 and project["tokens"] == 2 * 4 * 512
    assert project["logits"] == "masked positions only" and baseline["logits"] == "full vocabulary"
    # ~15 % masked; the project executes fewer FLOPs than the model-FLOPs count it is credited with
    assert 0.05 < project["masked_tokens"] / project["tokens"] < 0.3
    assert project["executed_tflops_per_s"] < project["model_tflops_per_s"]
    assert baseline["executed_tflops_per_s"] == baseline["model_tflops_per_s"]


def test_classify_stage_pads_less(smoke_report):
    classify = smoke_report["stages"]["classify"]
    assert classify["project"]["batching"].startswith("shuffled length buckets")
    assert classify["baseline"]["samples"] == classify["project"]["samples"] == 2 * 8
    assert classify["project"]["padding_fraction"] < classify["baseline"]["padding_fraction"]


def test_infer_stage(smoke_report):
    infer = smoke_report["stages"]["infer"]
    for side in ("baseline", "project"):
        assert positive(infer[side]["reviews_per_s"]) and infer[side]["reviews"] == 24
    assert infer["ratio"]["reviews_per_s"] == pytest.approx(infer["project"]["reviews_per_s"] / infer["baseline"]["reviews_per_s"])
    assert infer["agreement"]["same_label"] == 1.0 and infer["agreement"]["max_confidence_diff"] < 1e-4


def test_timer_arithmetic():
    """Rates cover the steps after warm-up, from the end of the last warm-up step; model FLOPs
    follow the documented formula; executed FLOPs drop the head at unmasked tokens."""
    timer = StepTimer("cpu", warmup=1, total=3)
    mask = torch.ones(2, 4, dtype=torch.long)
    labels = torch.full((2, 4), -100)
    labels[0, 1] = 7
    for end in (10.0, 11.0, 13.0):  # 3 steps; warm-up 1 -> 2 measured steps over 3 s
        timer.count(mask, labels, mlm=True)
        timer.ends.append(end)
    params = {"encoder": 100, "head": 50, "total": 150, "layers": 2, "hidden": 8}
    result = timer.result(1, params, peak_tflops=1e-9, masked_only=True)
    assert result["seconds"] == 3.0 and result["tokens"] == 16 and result["samples"] == 4
    assert result["tokens_per_s"] == pytest.approx(16 / 3)
    model_flops = 6 * 150 * 16 + 12 * 2 * 8 * (4 * 4**2)
    assert result["model_tflops_per_s"] == pytest.approx(model_flops / 3 / 1e12)
    assert result["executed_tflops_per_s"] == pytest.approx((model_flops - 6 * 50 * (16 - 2)) / 3 / 1e12)
    assert result["mfu"] == pytest.approx(result["model_tflops_per_s"] / 1e-9)


def test_flops_parameters_of_the_distilbert_shape():
    params = flops_params(shape_of(encoder_config("distilbert", 30522)), mlm=True)
    assert params["encoder"] == 6 * (4 * 768**2 + 2 * 768 * 3072)  # 42.5 M
    assert params["head"] == 768**2 + 768 * 30522  # 24.0 M, a third of the total
    assert flops_params(shape_of(encoder_config("distilbert", 30522)), mlm=False)["head"] == 0


def test_synthetic_stream_has_imdb_lengths(tokenizer):
    import numpy as np

    lengths = imdb_lengths(20000, np.random.default_rng(0))
    assert 285 < lengths.mean() < 315 and 0.11 < (lengths > 512).mean() < 0.15
    blocks = pack([synthetic_text([200, 201, 202])] * 10, tokenizer, 8)
    assert all(len(b) == 8 and b[0] == tokenizer.cls_token_id and b[-1] == tokenizer.sep_token_id for b in blocks)
    assert [t for b in blocks for t in b[1:-1]] == ([200, 201, 202, tokenizer.sep_token_id] * 10)[: 6 * len(blocks)]
    assert tokenizer("w104 w105")["input_ids"] == [101, 104, 105, 102]  # synthetic ids round-trip as text
    ids = [FIRST_WORD_ID + i % 400 for i in range(600)]  # longer than 512 tokens
    assert review_ids([synthetic_text(ids)], tokenizer, 512) == [[101, *ids[:510], 102]]  # head truncation


# --------------------------------------------------------------------------------------------
# Equivalence of the levers (CPU)


def tiny_mlm_config(arch: str, vocab: int):
    from transformers import BertConfig, DistilBertConfig

    if arch == "distilbert":
        return DistilBertConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=2, hidden_dim=128, pad_token_id=0)
    return BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, pad_token_id=0)


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_masked_only_loss_equals_full_logits_loss_fp32_and_bf16(tokenizer, arch):
    """The project's stage-1 loss (SDPA, logits at masked positions only) on a batch from its own
    collator equals the plain Hugging Face model's loss (full logits, ``labels=``): to fp32 rounding
    in fp32, and within bf16 tolerance under CPU bf16 autocast."""
    import numpy as np

    from dapt.masking import MLMCollator
    from dapt.modeling import MaskedLMObjective

    rng = np.random.default_rng(0)
    docs = [synthetic_text(rng.integers(FIRST_WORD_ID, len(tokenizer), int(n))) for n in imdb_lengths(12, rng)]
    blocks = pack(docs, tokenizer, 128)[:6]
    batch = MLMCollator(tokenizer, seed=3)([{"input_ids": b, "index": i} for i, b in enumerate(blocks)])
    batch["attention_mask"][-1, 100:] = 0  # one short row: padding must not count
    batch["labels"][-1, 100:] = -100
    assert int((batch["labels"] != -100).sum()) > 50

    model = build_mlm_model(tiny_mlm_config(arch, len(tokenizer)), seed=0, attn_implementation="sdpa").eval()
    plain = build_mlm_model(tiny_mlm_config(arch, len(tokenizer)), seed=0, attn_implementation="eager").eval()
    plain.load_state_dict(model.state_dict())
    objective = MaskedLMObjective(model, masked_only=True)
    with torch.no_grad():
        reference = plain(**batch).loss
        losses, example = objective(batch["input_ids"], batch["attention_mask"], batch["labels"])
        assert losses.mean() == pytest.approx(reference.item(), abs=1e-5)
        assert len(losses) == int((batch["labels"] != -100).sum()) and int(example.max()) == len(blocks) - 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference_bf16 = plain(**batch).loss.float()
            fast_bf16 = objective(batch["input_ids"], batch["attention_mask"], batch["labels"])[0].mean()
    assert fast_bf16.dtype == torch.float32  # the loss itself is computed in fp32
    tolerance = 2e-2 * reference.item()  # bf16 has 8 mantissa bits: ~0.4 % per op, a few ops deep
    assert abs(fast_bf16.item() - reference_bf16.item()) < tolerance
    assert abs(fast_bf16.item() - reference.item()) < tolerance


def test_masked_only_gradients_equal_full_logits_gradients(tokenizer):
    """Same loss, same gradients: the optimized step trains the same model (fp32)."""
    from dapt.masking import MLMCollator
    from dapt.modeling import MaskedLMObjective

    blocks = [[tokenizer.cls_token_id] + list(range(150 + i, 150 + i + 30)) + [tokenizer.sep_token_id] for i in range(4)]
    batch = MLMCollator(tokenizer, seed=1)([{"input_ids": b, "index": i} for i, b in enumerate(blocks)])
    model = build_mlm_model(tiny_mlm_config("distilbert", len(tokenizer)), seed=0, attn_implementation="sdpa").eval()
    model(**batch).loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    MaskedLMObjective(model, masked_only=True)(batch["input_ids"], batch["attention_mask"], batch["labels"])[0].mean().backward()
    for name, parameter in model.named_parameters():
        if name in full:
            torch.testing.assert_close(parameter.grad, full[name], atol=1e-6, rtol=1e-4, msg=name)


def test_bucketed_padded_batches_give_single_example_logits(tokenizer):
    """Length-bucketed shuffled batches padded to a multiple of 8 (the project's sampler and
    collator) give every review the logits of its own unpadded forward pass."""
    import numpy as np

    from classify.data import Collator, LengthBucketBatchSampler
    from classify.model import DaptClassifierConfig, DistilBERTClassifier

    rng = np.random.default_rng(1)
    reviews = [[101] + rng.integers(FIRST_WORD_ID, len(tokenizer), int(n)).tolist() + [102]
               for n in rng.integers(3, 120, 24)]
    torch.manual_seed(0)
    model = DistilBERTClassifier(DaptClassifierConfig(encoder_config=encoder_config("tiny", len(tokenizer)).to_dict())).eval()
    sampler = LengthBucketBatchSampler([len(r) for r in reviews], 8, shuffle=True, seed=0, bucket_batches=2)
    collate = Collator(tokenizer.pad_token_id, multiple_of=8)
    seen, padded = set(), 0
    with torch.no_grad():
        for indices in sampler:
            batch = collate([{"input_ids": reviews[i], "label": 0, "index": i} for i in indices])
            assert batch["input_ids"].shape[1] % 8 == 0
            padded += int((batch["attention_mask"] == 0).sum())
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for row, i in enumerate(batch["index"].tolist()):
                single = model(input_ids=torch.tensor([reviews[i]])).logits
                torch.testing.assert_close(logits[row], single[0], atol=1e-5, rtol=1e-4)
                seen.add(i)
    assert seen == set(range(len(reviews))) and padded > 0


def test_infer_reviews_equals_the_naive_loop(tokenizer):
    """Batched, length-sorted inference returns, in input order, what one-at-a-time inference does."""
    import numpy as np

    from classify.model import DaptClassifierConfig, DistilBERTClassifier, infer_reviews

    rng = np.random.default_rng(2)
    texts = [" ".join(f"w{i}" for i in rng.integers(FIRST_WORD_ID, len(tokenizer), int(n)))
             for n in list(rng.integers(1, 80, 11)) + [700]]  # one review longer than 512 tokens
    torch.manual_seed(0)
    model = DistilBERTClassifier(DaptClassifierConfig(encoder_config=encoder_config("tiny", len(tokenizer)).to_dict())).eval()
    naive = naive_infer(texts, model, tokenizer, "cpu")
    batched = infer_reviews(texts, model, tokenizer, batch_size=4)
    assert [label for label, _ in naive] == [label for label, _, _ in batched]
    for (_, p_naive), (_, _, p_batched) in zip(naive, batched):
        assert p_batched == pytest.approx(p_naive, abs=1e-5)
