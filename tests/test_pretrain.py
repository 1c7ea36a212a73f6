"""Stage 1 end to end: loss equivalence, head detection, resume, several processes, real text."""

import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dapt.core.config import ConfigError, load_config
from dapt.modeling import MaskedLMObjective, load_masked_lm
from dapt.pretrain import PretrainConfig, pretrain
from tests.helpers import _WORDS, rank_errors

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 40)))
            handle.write(json.dumps({"text": text + "<br /><br />" + "the end."}) + "\n")
    return path


def tiny_overrides(encoder_dir, corpus, output_dir, **extra):
    values = {
        "output_dir": output_dir,
        "model.name_or_path": encoder_dir,
        "data.sources": f"[{{path: {corpus}}}]",
        "data.heldout": 10,
        "data.block_size": 32,
        "train.batch_size": 4,
        "train.eval_batch_size": 3,
        "train.lr": 1e-3,
        "train.log_every": 1,
        "train.eval_every": 0,
        "impl.mixed_precision": "no",
        "impl.dataloader_workers": 0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run(overrides) -> dict:
    return pretrain(load_config(PretrainConfig, None, overrides))


@pytest.mark.parametrize("architecture", ["bert", "distilbert"])
def test_masked_only_logits_give_the_models_own_loss(tiny_encoder_dir, architecture):
    from transformers import BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    if architecture == "bert":
        model = BertForMaskedLM.from_pretrained(tiny_encoder_dir)
    else:
        model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=300, dim=32, n_layers=2, n_heads=2, hidden_dim=64))
    model.eval()
    input_ids = torch.randint(5, 250, (3, 24))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 17:] = 0
    labels = torch.full_like(input_ids, -100)
    labels[:, ::4] = input_ids[:, ::4]
    labels[2, 17:] = -100
    reference = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    fast, example = MaskedLMObjective(model, masked_only=True)(input_ids, attention_mask, labels)
    slow, _ = MaskedLMObjective(model, masked_only=False)(input_ids, attention_mask, labels)
    assert torch.allclose(fast.mean(), reference, atol=1e-5) and torch.allclose(slow.mean(), reference, atol=1e-5)
    assert example.tolist() == sorted(example.tolist()) and len(fast) == int((labels != -100).sum())


def test_checkpoint_without_mlm_head_is_detected(tmp_path, tiny_encoder_dir, tiny_headless_encoder_dir, caplog, capfd):
    from transformers import AutoConfig, AutoTokenizer, BertModel

    assert load_masked_lm(str(tiny_encoder_dir))[2] is True
    # a sentence encoder like the stand-in: no MLM head, and a pooler the MLM model has no place for
    BertModel(AutoConfig.from_pretrained(tiny_headless_encoder_dir)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_headless_encoder_dir).save_pretrained(tmp_path)
    capfd.readouterr()
    seen: list[str] = []  # what transformers logs, whatever the verbosity of this process

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    transformers_log, collect = logging.getLogger("transformers.modeling_utils"), Collect(level=logging.DEBUG)
    transformers_log.addHandler(collect)
    level, transformers_log.level = transformers_log.level, logging.WARNING
    try:
        with caplog.at_level(logging.INFO, logger="dapt.modeling"):
            assert load_masked_lm(str(tmp_path))[2] is False
    finally:
        transformers_log.removeHandler(collect)
        transformers_log.level = level
    assert not [m for m in seen if "seem corrupted" in m or "LOAD REPORT" in m], seen
    # our own lines say what the missing head and the unused pooler mean; no transformers key table
    assert "has no MLM head" in caplog.text and "not used by the MLM model (pooler.dense" in caplog.text
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "not sharded" not in err and "seem corrupted" not in err


def test_run_outputs_and_head_warmup(tmp_path, tiny_headless_encoder_dir):
    corpus = write_corpus(tmp_path / "c.jsonl", 60)
    out = tmp_path / "run"
    summary = run(tiny_overrides(tiny_headless_encoder_dir, corpus, out, **{
        "train.max_steps": 6, "train.head_warmup_steps": 8, "train.eval_every": 3,
    }))
    assert summary["had_mlm_head"] is False and summary["baseline"] == "head_warmup"
    assert summary["perplexity_before_random_head"] > summary["perplexity_before"]
    assert summary["steps"] == 6 and summary["tokens_seen"] > 0
    on_disk = json.loads((out / "dapt_summary.json").read_text())
    assert on_disk["perplexity_after"] == pytest.approx(summary["perplexity_after"])
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "metrics.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "tokens_per_s"} <= set(records[-2])  # the rate skips only the first interval
    assert [r["event"] for r in records if "event" in r] == ["baseline", "eval", "final"]
    from transformers import AutoModel

    adapted = AutoModel.from_pretrained(out)  # loads as a plain encoder for stage 2
    assert adapted.config.hidden_size == 32


def test_resume_mid_epoch_gives_identical_weights(tmp_path, tiny_encoder_dir):
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    common = {"train.max_steps": 7, "train.grad_accum": 2, "train.warmup_steps": 2, "checkpoint.every_steps": 3, "checkpoint.keep": 3}
    full = tmp_path / "full"
    summary = run(tiny_overrides(tiny_encoder_dir, corpus, full, **common))
    assert summary["epochs"] > 1  # the run crosses an epoch boundary after the checkpoint
    state = json.loads((full / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["epoch"] == 0 and state["batch_in_epoch"] == 6  # mid-epoch
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    (resumed / "checkpoints" / ".tmp-step_00000006").mkdir()  # a half-written checkpoint is ignored
    again = run(tiny_overrides(tiny_encoder_dir, corpus, resumed, **common, **{"checkpoint.resume": "latest"}))
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert again["perplexity_after"] == summary["perplexity_after"]
    assert again["perplexity_before"] == summary["perplexity_before"]


def test_resume_from_an_incomplete_checkpoint_is_an_error(tmp_path, tiny_encoder_dir):
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        run(tiny_overrides(tiny_encoder_dir, corpus, tmp_path / "o", **{"checkpoint.resume": str(broken), "train.max_steps": 1}))


def test_two_processes_match_one(tmp_path, tiny_encoder_dir):
    """torch.distributed over gloo via `accelerate launch --multi_gpu` (see configs/accelerate)."""
    corpus = write_corpus(tmp_path / "c.jsonl", 40)
    args = tiny_overrides(tiny_encoder_dir, corpus, tmp_path / "two", **{"train.max_steps": 2, "data.heldout": 11})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
               "--main_process_port", "0", str(REPO / "dapt/pretrain.py"), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, rank_errors(result.stderr)
    two = json.loads((tmp_path / "two" / "dapt_summary.json").read_text())
    assert two["num_processes"] == 2
    one = run(tiny_overrides(tiny_encoder_dir, corpus, tmp_path / "one", **{"train.max_steps": 2, "data.heldout": 11}))
    assert one["num_processes"] == 1
    # the same weights (step 0) and the same fixed masks: the same held-out perplexity
    assert two["heldout_masked_tokens"] == one["heldout_masked_tokens"]
    assert two["perplexity_before"] == pytest.approx(one["perplexity_before"], rel=1e-5)
    # one writer: every metrics line once, one log of the summary
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) and sum('"final"' in line for line in lines) == 1
    assert result.stderr.count("encoder saved to") == 1


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(PretrainConfig, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(PretrainConfig, None, ["train.batch_size=many"])
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(PretrainConfig, yaml)
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    config = load_config(PretrainConfig, REPO / "configs/demo/pretrain.yaml", ["output_dir=/tmp/elsewhere", "train.lr=2e-4"])
    assert config.output_dir == "/tmp/elsewhere" and config.train.lr == 2e-4


def test_cli_reports_bad_data_without_traceback(tmp_path, tiny_encoder_dir):
    command = [sys.executable, "-m", "dapt.pretrain",
               *tiny_overrides(tiny_encoder_dir, tmp_path / "missing.parquet", tmp_path / "o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode != 0
    assert "not found: " in result.stderr and "missing.parquet" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_recipe_lowers_heldout_perplexity_on_imdb(tmp_path, shared_data, standin_encoder_dir):
    """The stand-in encoder on real IMDb text, a smaller budget of configs/demo/pretrain.yaml."""
    overrides = [
        f"output_dir={tmp_path / 'demo'}", f"data.sources.0.path={shared_data / 'imdb'}",
        "data.sources.0.max_documents=400", "data.heldout=40", "data.block_size=64",
        "train.head_warmup_steps=30", "train.max_steps=12", "train.eval_every=0", "train.batch_size=16",
    ]
    summary = pretrain(load_config(PretrainConfig, REPO / "configs/demo/pretrain.yaml", overrides))
    assert summary["had_mlm_head"] is False
    assert summary["perplexity_before_random_head"] > 10_000  # a random head over 30k tokens
    assert summary["perplexity_after"] < summary["perplexity_before"]
    assert math.isfinite(summary["perplexity_after"])


def test_saved_keys_have_no_wrapper_prefixes(tiny_encoder_dir):
    """torch.compile (impl.compile=true) and the objective wrapper must not leak into the saved keys."""
    from accelerate import Accelerator
    from transformers import AutoModelForMaskedLM

    from dapt.core.runtime import inner_state_dict

    model = AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir)
    accelerator = Accelerator(cpu=True)
    wrapped = accelerator.prepare(torch.compile(MaskedLMObjective(model)))
    keys = set(inner_state_dict(accelerator, wrapped, "model."))
    assert keys == set(model.state_dict())
