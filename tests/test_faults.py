"""Runs that are killed, resumed, re-run, diverge or hit a full disk, for both stages (issue 12).

Tiny random models and a synthetic corpus: the point is the bookkeeping, not the learning. The
kill/resume scenarios start real processes and SIGKILL them at seeded random points (a random
time, or inside a checkpoint write) and compare with an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from classify.config import ClassifyConfig
from classify.data import DataError
from classify.train import train_classifier
from dapt.core.config import ConfigError, load_config
from dapt.core.checkpoint import CheckpointError
from dapt.pretrain import PretrainConfig, pretrain
from tests.helpers import _WORDS
from tests.test_pretrain import tiny_overrides, write_corpus

REPO = Path(__file__).resolve().parents[1]
POSITIVE = "good great best excellent wonderful amazing loved brilliant fun beautiful".split()
NEGATIVE = "bad worst worse terrible awful boring hate hated poor waste".split()


def write_labelled(directory: Path, rows: int = 48, seed: int = 0, text=None) -> Path:
    """``train.jsonl`` / ``test.jsonl`` with a text and a 0/1 label that the words give away."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("test", 16)):
        with (directory / f"{split}.jsonl").open("w") as handle:
            for i in range(n):
                label = i % 2
                words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 20))] + [rng.choice(POSITIVE if label else NEGATIVE)] * 3
                rng.shuffle(words)
                handle.write(json.dumps({"text": " ".join(words) if text is None else text, "label": label}) + "\n")
    return directory


def stage1_args(encoder, corpus, out, **extra) -> list[str]:
    return tiny_overrides(encoder, corpus, out, **{"train.max_steps": 6, **extra})


def stage2_args(encoder, data, out, **extra) -> list[str]:
    values = {
        "output_dir": out, "model.encoder": encoder, "model.max_length": 32, "data.train.path": data,
        "data.validation_size": 8, "data.eval.imdb_test.path": data, "data.eval.imdb_test.split": "test",
        "data.eval.sst2_validation": "null", "data.bucket_batches": 2, "train.epochs": 2, "train.batch_size": 8,
        "train.eval_batch_size": 16, "train.encoder_lr": 1e-3, "train.head_lr": 5e-3, "train.log_every": 1,
        "impl.mixed_precision": "no", "impl.dataloader_workers": 0, "checkpoint.every_epoch": "false",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run1(args) -> dict:
    return pretrain(load_config(PretrainConfig, None, args))


def run2(args) -> dict:
    return train_classifier(load_config(ClassifyConfig, None, args))


def steps_logged(out: Path) -> list:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("event"), r.get("loss")) for r in lines]


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.jsonl", 40)


@pytest.fixture()
def labelled(tmp_path):
    return write_labelled(tmp_path / "labelled")


# --------------------------------------------------------------------------------------------
# 1. checkpoints of another run


def test_stage1_checkpoints_of_another_run_are_neither_resumed_nor_pruning_ours(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    run1(stage1_args(tiny_encoder_dir, corpus, out, **{"checkpoint.every_steps": 2}))  # run A: step_4, step_6
    b = {"train.lr": 5e-4, "train.max_steps": 3, "checkpoint.every_steps": 1}
    with pytest.raises(ConfigError, match="holds a previous run"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **b))
    with pytest.raises(CheckpointError, match=r"other settings \(train.lr: 0.001 -> 0.0005; train.max_steps: 6 -> 3"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **b, **{"checkpoint.resume": "latest"}))
    summary = run1(stage1_args(tiny_encoder_dir, corpus, out, **b, **{"checkpoint.resume": "latest", "overwrite": "true"}))
    assert summary["steps"] == 3 and summary["config"]["train"]["lr"] == 5e-4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]  # B's own
    # an explicit older checkpoint of this run with keep=1: the checkpoint just written survives
    again = run1(stage1_args(tiny_encoder_dir, corpus, out, **b, **{"checkpoint.resume": str(out / "checkpoints/step_00000002"),
                                                                     "checkpoint.keep": 1}))
    assert again["steps"] == 3 and [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000003"]


def test_stage2_checkpoints_of_another_run_are_refused(tmp_path, tiny_headless_encoder_dir, labelled):
    out = tmp_path / "run"
    run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"checkpoint.every_steps": 2}))
    state = json.loads((out / "checkpoints/step_00000010/trainer_state.json").read_text())
    assert state["step"] == 10 and state["fingerprint"]["train.head_lr"] == 5e-3  # not step 0
    with pytest.raises(CheckpointError, match=r"train.head_lr: 0.005 -> 0.001"):
        run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"train.head_lr": 1e-3, "checkpoint.resume": "latest"}))


# --------------------------------------------------------------------------------------------
# 2. kill and resume, several times, at random points: the same result as an uninterrupted run

def poison_weights_at(monkeypatch, step: int) -> None:
    """The ``step``-th optimizer update leaves a NaN in the first weight (what an overflowing
    update does; ``train.lr=nan`` did it before LRs were validated). Gradients stay finite until
    the next forward pass, so the per-step gradient check alone does not catch it."""
    real, calls = torch.optim.AdamW.step, []

    def step_then_poison(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_poison)


def test_nonfinite_weights_are_never_saved(tmp_path, tiny_encoder_dir, tiny_headless_encoder_dir, corpus, labelled, monkeypatch):
    out = tmp_path / "s1"
    poison_weights_at(monkeypatch, 2)
    with pytest.raises(FloatingPointError, match="non-finite weights at step 2 .* last good checkpoint is .*step_00000001"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"checkpoint.every_steps": 1}))
    assert not (out / "model.safetensors").exists() and not (out / "dapt_summary.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]
    good = load_file(str(out / "checkpoints/step_00000001/model.safetensors"))
    assert all(torch.isfinite(t).all() for t in good.values())
    poison_weights_at(monkeypatch, 3)
    with pytest.raises(FloatingPointError, match="non-finite weights after epoch 1"):
        run2(stage2_args(tiny_headless_encoder_dir, labelled, tmp_path / "s2"))
    assert not (tmp_path / "s2" / "model").exists() and not (tmp_path / "s2" / "checkpoints" / "best").exists()


def shared_step(scaler=None, grad_accum: int = 1, max_nonfinite: int = 0):
    from accelerate import Accelerator

    from dapt.core.state import TrainState
    from dapt.core.step import OptimizerStep
    from dapt.core.runtime import linear_warmup_decay
    from dapt.core.runtime import forget_accelerate_state

    forget_accelerate_state()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=grad_accum)
    accelerator.scaler = scaler  # what accelerate builds for fp16 on a GPU; the CPU gets none
    torch.manual_seed(0)
    model = accelerator.prepare(torch.nn.Linear(4, 1))
    optimizer = accelerator.prepare(torch.optim.AdamW(model.parameters(), lr=1e-2))
    state = TrainState()
    step = OptimizerStep(accelerator, model, optimizer, linear_warmup_decay(optimizer.optimizer, 0, 10), state,
                         max_grad_norm=1.0, max_nonfinite=max_nonfinite)
    return accelerator, model, step, state


def test_the_shared_step_skips_an_fp16_overflow_without_counting_it():
    """fp16 + GradScaler: an overflowing step is skipped by the scaler (its scale drops), which is
    not a failure even with max_nonfinite=0; the weights stay as they were, the schedule moves on."""
    from dapt.core.step import nonfinite_parameters

    accelerator, model, step, state = shared_step(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    before = [p.detach().clone() for p in model.parameters()]
    with accelerator.accumulate(model):
        result = step(model(torch.full((1, 4), 1e36)).sum())
    assert result.skipped and (state.step, state.nonfinite) == (1, 0) and accelerator.scaler.get_scale() == 2.0**15
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and nonfinite_parameters(model) == []
    with accelerator.accumulate(model):
        result = step(model(torch.ones(1, 4)).sum())
    assert not result.skipped and state.step == 2 and not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_shared_step_counts_nonfinite_updates_and_stops_past_the_limit():
    accelerator, model, step, state = shared_step(grad_accum=2, max_nonfinite=1)
    with accelerator.accumulate(model):
        assert step(model(torch.ones(1, 4)).sum()) is None  # accumulating: no update yet
    with accelerator.accumulate(model):
        result = step(model(torch.ones(1, 4)).sum() * float("nan"))
    assert result.skipped and (state.step, state.nonfinite) == (1, 1)
    with pytest.raises(FloatingPointError, match="2 non-finite updates"):
        for _ in range(2):
            with accelerator.accumulate(model):
                step(model(torch.ones(1, 4)).sum() * float("inf"))
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    from dapt.core.step import nonfinite_parameters

    assert nonfinite_parameters(model) == ["weight"]


# --------------------------------------------------------------------------------------------
# 4. re-running into a finished run's folder


def test_rerun_into_a_finished_folder_is_refused_and_a_failed_rerun_keeps_the_results(tmp_path, tiny_headless_encoder_dir, labelled,
                                                                                        monkeypatch):
    out = tmp_path / "run"
    run2(stage2_args(tiny_headless_encoder_dir, labelled, out))
    finished = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
    with pytest.raises(ConfigError, match="holds a previous run .*results.json.*overwrite=true"):
        run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"train.head_lr": 1e-2}))
    with pytest.raises(ConfigError, match="finished run and no checkpoint"):
        run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"checkpoint.resume": "latest"}))
    poison_weights_at(monkeypatch, 3)
    with pytest.raises(FloatingPointError):  # replacing it, but the new run diverges
        run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"overwrite": "true"}))
    monkeypatch.undo()
    for name in ("results.json", "model/model.safetensors", "plots/roc_imdb_test.png", "predictions/imdb_test.npz"):
        assert (out / name).read_bytes() == finished[Path(name)], name
    replaced = run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"overwrite": "true", "train.head_lr": 1e-2}))
    assert json.loads((out / "results.json").read_text())["hyperparameters"]["head_lr"] == 1e-2 == replaced["hyperparameters"]["head_lr"]
    assert not (out / ".staging").exists()


# --------------------------------------------------------------------------------------------
# 5. stage 2 without enough rows


def test_stage2_without_usable_rows_or_classes_is_a_data_error(tmp_path, tiny_headless_encoder_dir):
    empty = write_labelled(tmp_path / "empty", text="<br /> ")
    with pytest.raises(DataError, match="0 usable training rows"):
        run2(stage2_args(tiny_headless_encoder_dir, empty, tmp_path / "o1"))
    assert not (tmp_path / "o1").exists()
    one_class = write_labelled(tmp_path / "one")
    rows = [json.loads(line) for line in (one_class / "train.jsonl").read_text().splitlines()]
    (one_class / "train.jsonl").write_text("".join(json.dumps({**r, "label": 1}) + "\n" for r in rows))
    with pytest.raises(DataError, match="no training example of class 'Negative'"):
        run2(stage2_args(tiny_headless_encoder_dir, one_class, tmp_path / "o2", **{"data.validation_size": 0.2}))
    few = write_labelled(tmp_path / "few", rows=4)
    with pytest.raises(DataError, match="need at least 2 on each side"):
        run2(stage2_args(tiny_headless_encoder_dir, few, tmp_path / "o3"))


# --------------------------------------------------------------------------------------------
# 6. no pickle


def test_checkpoints_hold_no_pickle_and_pickles_are_refused(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 2, "checkpoint.every_steps": 2}))
    checkpoint = out / "checkpoints" / "step_00000002"
    assert {p.suffix for p in checkpoint.iterdir()} == {".safetensors", ".json"}
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl: refusing to load pickle"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 2, "checkpoint.every_steps": 2,
                                                           "checkpoint.resume": str(checkpoint)}))


def test_an_encoder_shipped_as_pytorch_model_bin_loads_tensors_only_and_says_so(tmp_path, tiny_encoder_dir, corpus, caplog):
    import shutil

    encoder = tmp_path / "bin_encoder"
    shutil.copytree(tiny_encoder_dir, encoder)
    torch.save(load_file(str(encoder / "model.safetensors")), encoder / "pytorch_model.bin")
    (encoder / "model.safetensors").unlink()
    summary = run1(stage1_args(encoder, corpus, tmp_path / "o", **{"train.max_steps": 1}))
    assert summary["steps"] == 1 and "only as pytorch_model.bin" in caplog.text and "weights_only=True" in caplog.text


# --------------------------------------------------------------------------------------------
# 9. configuration errors before anything is written


@pytest.mark.parametrize("override, key", [
    ("train.lr=-1e-4", "train.lr"), ("train.lr=nan", "train.lr"), ("train.min_lr=inf", "train.min_lr"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio"), ("checkpoint.keep=0", "checkpoint.keep"),
    ("train.max_grad_norm=-1", "train.max_grad_norm"), ("train.head_warmup_lr=-1", "train.head_warmup_lr"),
])
def test_stage1_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(PretrainConfig, None, [override])


@pytest.mark.parametrize("override, key", [
    ("train.encoder_lr=-1", "train.encoder_lr"), ("train.head_lr=nan", "train.head_lr"), ("train.min_lr=-inf", "train.min_lr"),
    ("train.warmup_ratio=-0.1", "train.warmup_ratio"), ("checkpoint.keep=0", "checkpoint.keep"),
    ("train.max_grad_norm=-0.5", "train.max_grad_norm"),
])
def test_stage2_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(ClassifyConfig, None, [override])


def test_output_and_model_limits_are_checked_before_the_folder_is_touched(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "previous"
    out.mkdir()
    (out / "config.yaml").write_text("previous: run\n")
    with pytest.raises(ConfigError, match="data.block_size.*at most 512"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"data.block_size": 1024, "overwrite": "true"}))
    assert (out / "config.yaml").read_text() == "previous: run\n" and not (out / "metrics.jsonl").exists()
    result = subprocess.run([sys.executable, "-m", "dapt.pretrain", *stage1_args(tiny_encoder_dir, corpus, out, **{"train.lr": "nan"})],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "'train.lr': got nan" in result.stderr and "Traceback" not in result.stderr
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for output_dir, message in ((a_file, "is a file"), (a_file / "below", "is a file"), (Path("/proc/dapt-run"), "not writable")):
        with pytest.raises(ConfigError, match=message):
            run1(stage1_args(tiny_encoder_dir, corpus, output_dir))


# --------------------------------------------------------------------------------------------
# 12. a full disk during a checkpoint write


def test_a_full_disk_during_a_checkpoint_write_is_a_clear_error_and_leaves_no_temporary(tmp_path, tiny_encoder_dir, corpus, monkeypatch):
    import dapt.core.checkpoint as checkpoint

    real, calls = checkpoint.save_file, []

    def fills_the_disk(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if "step_00000002" in filename and "optimizer" in filename:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fills_the_disk)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*step_00000002: no space left on device.*step_00000001"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 3, "checkpoint.every_steps": 1}))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]


def _disk_full_at(monkeypatch, owner, name: str):
    """``owner.name`` raises ENOSPC, as a disk that fills up while the final artifacts are written."""
    def fills_the_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    monkeypatch.setattr(owner, name, fills_the_disk)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "checkpoints" not in p.parts and p.name not in ("config.yaml", "metrics.jsonl")}


def test_a_full_disk_while_the_final_artifacts_are_written_keeps_the_previous_results(tmp_path, tiny_encoder_dir,
                                                                                      tiny_headless_encoder_dir, corpus, labelled,
                                                                                      monkeypatch):
    """Both stages: a clear error naming the folder and the last checkpoint, the previous run's
    results byte for byte, no staging folder left behind."""
    import transformers

    from dapt.core.rundir import OutputError

    first = tmp_path / "stage1"
    run1(stage1_args(tiny_encoder_dir, corpus, first, **{"train.max_steps": 2}))
    kept = _files(first)
    with monkeypatch.context() as patch:
        _disk_full_at(patch, transformers.PreTrainedModel, "save_pretrained")
        with pytest.raises(OutputError, match=r"cannot write the final artifacts into .*stage1: no space left on device.*"
                                              r"previous results are untouched.*last checkpoint is .*step_00000003"):
            run1(stage1_args(tiny_encoder_dir, corpus, first, **{"train.max_steps": 3, "checkpoint.every_steps": 3, "overwrite": "true"}))
    assert _files(first) == kept and not (first / ".staging").exists()

    second = tmp_path / "stage2"
    run2(stage2_args(tiny_headless_encoder_dir, labelled, second, **{"train.epochs": 1}))
    kept = _files(second)
    import matplotlib.figure

    with monkeypatch.context() as patch:
        _disk_full_at(patch, matplotlib.figure.Figure, "savefig")
        with pytest.raises(OutputError, match=r"cannot write the final artifacts into .*stage2: no space left on device"):
            run2(stage2_args(tiny_headless_encoder_dir, labelled, second, **{"overwrite": "true"}))
    assert _files(second) == kept and not (second / ".staging").exists()
    assert json.loads((second / "results.json").read_text())["hyperparameters"]["epochs"] == 1
