"""Checkpoints are verified before they are trusted (issue 19 item 3).

Every file of a checkpoint has its content hash (XXH3-128) recorded in ``trainer_state.json`` at save time (and the
state file a checksum of its own). Injected: one flipped bit in the newest checkpoint's weights, a
truncated weights file, an edited number in the state file, a damaged checkpoint as the only one
or named explicitly, and a checkpoint damaged right after it was written in a run that later
diverges. Checked: resume falls back to the previous checkpoint that verifies (logged) and ends
with exactly the weights and metrics of an uninterrupted run; with none left, one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import xxhash
from safetensors.torch import load_file

from dapt.core import integrity
from dapt.core.checkpoint import CheckpointError, CheckpointManager
from dapt.core.step import Diverged
from tests.test_faults import poison_weights_at, run1, stage1_args, steps_logged
from tests.test_pretrain import write_corpus

SIX_STEPS = {"train.max_steps": 6, "checkpoint.every_steps": 2, "checkpoint.keep": 3}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_encoder_dir):
    """One uninterrupted 6-step run with checkpoints at steps 2, 4 and 6."""
    root = tmp_path_factory.mktemp("integrity")
    corpus = write_corpus(root / "corpus.jsonl", 40)
    out = root / "reference"
    run1(stage1_args(tiny_encoder_dir, corpus, out, **SIX_STEPS))
    return corpus, out


def flip_one_bit(path, from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped_bit": lambda c: flip_one_bit(c / "model.safetensors"),
    "truncated": lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:5000]),
    "edited_state": lambda c: (c / "trainer_state.json").write_text((c / "trainer_state.json").read_text().replace('"step": 6', '"step": 5')),
}


def test_every_file_is_hashed_at_save_time(finished, tmp_path):
    checkpoint = tmp_path / "step_00000006"
    shutil.copytree(finished[1] / "checkpoints" / "step_00000006", checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    on_disk = {p.name for p in checkpoint.iterdir()} - {"trainer_state.json"}
    assert set(state["files"]) == on_disk and {"model.safetensors", "optimizer.safetensors", "rng_0.safetensors"} <= on_disk
    for name, digest in state["files"].items():
        assert digest == "xxh3_128:" + xxhash.xxh3_128((checkpoint / name).read_bytes()).hexdigest(), name
    sha256 = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()  # records of either kind verify
    assert integrity.problem_with(checkpoint, "trainer_state.json") is None
    state = integrity.seal({k: v for k, v in state.items() if k not in ("files", "checksum")}, {**state["files"], "model.safetensors": f"sha256:{sha256}"})
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    assert integrity.problem_with(checkpoint, "trainer_state.json") is None
    state["files"]["model.safetensors"] = "sha256:" + "0" * 64
    state = integrity.seal({k: v for k, v in state.items() if k not in ("files", "checksum")}, state["files"])
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    assert "model.safetensors does not match the SHA256 digest" in integrity.problem_with(checkpoint, "trainer_state.json")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(damage, finished, tmp_path, tiny_encoder_dir, caplog):
    corpus, reference = finished
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    DAMAGE[damage](out / "checkpoints" / "step_00000006")
    summary = run1(stage1_args(tiny_encoder_dir, corpus, out, **SIX_STEPS, **{"checkpoint.resume": "latest"}))
    assert "step_00000006" in caplog.text and "does not verify" in caplog.text, caplog.text[-2000:]
    assert "resumed from" in caplog.text and "step_00000004" in caplog.text.split("does not verify")[-1]
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and summary["steps"] == 6
    assert steps_logged(out) == steps_logged(reference)  # steps 5 and 6 trained again, logged once


def test_with_no_checkpoint_that_verifies_resume_fails_in_one_line(tmp_path, tiny_encoder_dir):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    out = tmp_path / "run"
    settings = {"train.max_steps": 2, "checkpoint.every_steps": 2}
    run1(stage1_args(tiny_encoder_dir, corpus, out, **settings))
    checkpoint = out / "checkpoints" / "step_00000002"
    flip_one_bit(checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no checkpoint under .*checkpoints verifies .*step_00000002: model.safetensors") as caught:
        run1(stage1_args(tiny_encoder_dir, corpus, out, **settings, **{"checkpoint.resume": "latest"}))
    assert "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match=r"step_00000002 does not verify: model.safetensors does not match the XXH3-128 digest"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **settings, **{"checkpoint.resume": str(checkpoint)}))


def test_the_last_good_checkpoint_a_divergence_names_is_one_that_verifies(tmp_path, tiny_encoder_dir, monkeypatch):
    """Step 2's checkpoint is damaged on disk right after it is written; the weights turn NaN at
    step 3: the error names step 1, not the newest (unverifiable) step 2."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    out = tmp_path / "run"
    save = CheckpointManager.save

    def save_then_damage(self, step, *args, **kwargs):
        path = save(self, step, *args, **kwargs)
        if step == 2:
            flip_one_bit(path / "model.safetensors")
        return path

    monkeypatch.setattr(CheckpointManager, "save", save_then_damage)
    poison_weights_at(monkeypatch, 3)
    with pytest.raises(Diverged, match=r"non-finite weights at step 3 .*last good checkpoint is \S*step_00000001\b"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"checkpoint.every_steps": 1}))
