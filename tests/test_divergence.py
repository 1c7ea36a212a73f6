"""A diverged run never ends with exit 0 (issue 19 item 2).

Injected: learning rates that blow the model up (``train.lr=1e30``: NaN losses from step 2;
``train.lr=1e3``: finite but exploding losses, a held-out loss of ~1e9 nats), a head warm-up
that diverges, stage 2 at ``1e30``, and the shared step fed a non-finite loss at chosen steps.
Checked: the run fails with one message naming the step, the last good (verified) checkpoint and
the learning rate, and nothing of the diverged model is saved.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from dapt.core.step import Diverged
from tests.test_faults import corpus, labelled, run1, run2, shared_step, stage1_args, stage2_args  # noqa: F401 - fixtures


def _nothing_saved(out):
    return not (out / "model.safetensors").exists() and not (out / "dapt_summary.json").exists() and not (out / ".staging").exists()


def test_stage1_at_lr_1e30_fails_naming_step_checkpoint_and_learning_rate(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    with pytest.raises(Diverged) as caught:  # NaN losses from step 2 to the end (step 6), max_nonfinite=20
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.lr": 1e30, "checkpoint.every_steps": 1, "checkpoint.keep": 10}))
    message = str(caught.value)
    assert "step 2" in message and "train.lr=1e+30" in message, message
    assert f"last good checkpoint is {out / 'checkpoints' / 'step_00000001'}" in message, message
    assert "\n" not in message and _nothing_saved(out)


def test_a_held_out_loss_too_large_for_a_perplexity_is_divergence(tmp_path, tiny_encoder_dir, corpus):
    """lr=1e3: every training loss finite (1e7..1e10), held-out loss ~1e9 nats; before, the summary
    showed perplexity exp(min(loss, 700)) = 1e304 and rc 0."""
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"held-out .*step 6.*train.lr=1000") as caught:
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.lr": 1e3}))
    assert "perplexity inf" in str(caught.value) and _nothing_saved(out)
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["event"] == "final" and final["perplexity"] == math.inf  # logged honestly, not capped at 1e304


def test_a_periodic_evaluation_that_is_not_finite_stops_the_run_there(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"held-out loss nan \(perplexity nan\) at step 2") as caught:
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.lr": 1e30, "train.eval_every": 2, "train.max_steps": 12}))
    assert "last good checkpoint is none" in str(caught.value)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in logged) == 2  # stopped at the evaluation, not 10 steps later


def test_a_head_warmup_that_diverges_is_named(tmp_path, tiny_headless_encoder_dir, corpus):
    with pytest.raises(Diverged, match=r"the head warm-up diverged.*train.head_warmup_lr=1e\+30"):
        run1(stage1_args(tiny_headless_encoder_dir, corpus, tmp_path / "run", **{"train.head_warmup_steps": 3,
                                                                                "train.head_warmup_lr": 1e30}))


def test_stage2_at_lr_1e30_says_what_diverged(tmp_path, tiny_headless_encoder_dir, labelled):
    out = tmp_path / "run"
    with pytest.raises(Diverged) as caught:
        run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"train.encoder_lr": 1e30, "train.head_lr": 1e30}))
    message = str(caught.value)
    assert "Input contains NaN" not in message and "step" in message, message
    assert "train.encoder_lr=1e+30" in message and "train.head_lr=1e+30" in message, message
    assert not (out / "model").exists() and not (out / "results.json").exists()


def test_the_shared_step_counts_a_streak_and_a_run_must_not_end_in_one():
    """``max_nonfinite`` bounds consecutive skipped updates; a run whose last updates were all
    skipped has not recovered, however short it is."""
    accelerator, model, step, state = shared_step(max_nonfinite=2)

    def one(scale):
        with accelerator.accumulate(model):
            return step(model(torch.ones(1, 4)).sum() * scale)

    for scale in (1.0, float("nan"), float("nan"), 1.0, float("nan"), float("nan"), 1.0):  # streaks of 2: allowed
        one(scale)
    assert (state.step, state.nonfinite, state.nonfinite_streak) == (7, 4, 0)
    step.check_recovered()  # the last update was finite
    one(float("nan"))
    with pytest.raises(Diverged, match=r"step 8"):
        step.check_recovered()
    one(float("inf"))
    with pytest.raises(Diverged, match=r"3 non-finite updates in a row \(steps 8-10\)"):
        one(float("nan"))


def test_a_nan_during_the_head_warm_up_stops_the_run_like_one_during_training(tmp_path, tiny_headless_encoder_dir, corpus,
                                                                              monkeypatch):
    """Issue 20: the head warm-up went through a loop of its own (no clipping, no guard): a NaN loss
    there trained on. Now it is the shared step's: skipped, counted, and a streak stops the run."""
    from dapt.modeling import MaskedLMObjective

    forward = MaskedLMObjective.forward

    def poisoned(self, *args, freeze_encoder=False, **kwargs):
        losses, example = forward(self, *args, freeze_encoder=freeze_encoder, **kwargs)
        return (losses * float("nan") if freeze_encoder else losses), example

    monkeypatch.setattr(MaskedLMObjective, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"non-finite updates in a row .*the head warm-up diverged at step 1"):
        run1(stage1_args(tiny_headless_encoder_dir, corpus, out, **{"train.head_warmup_steps": 5, "train.max_nonfinite": 2}))
    assert not (out / "dapt_summary.json").exists() and not (out / "model.safetensors").exists()
