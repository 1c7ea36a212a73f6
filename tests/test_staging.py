"""``.staging/`` never outlives the run that made it (issue 19 item 5).

Injected during the final write of a folder that holds a finished run: an error that is not an
``OSError`` (a plot that fails, a tokenizer that cannot be saved), one SIGTERM, two SIGTERMs; and a
``.staging/`` left by a killed run. Checked: no ``.staging/`` afterwards, the previous results
byte for byte (or, after one SIGTERM, the new ones: the write is what is left of the run and it
finishes), no lock left.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from dapt.core.lock import LOCK_NAME
from dapt.core.signals import Interrupted
from tests.test_faults import _files, corpus, labelled, poison_weights_at, run1, run2, stage1_args, stage2_args  # noqa: F401


@pytest.fixture()
def finished(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 1}))
    return out, _files(out)


def save_pretrained_then(monkeypatch, action):
    import transformers

    real = transformers.PreTrainedModel.save_pretrained

    def save(self, *args, **kwargs):
        real(self, *args, **kwargs)
        action()

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save)


def test_an_error_other_than_oserror_in_the_final_write_leaves_no_staging(tmp_path, tiny_encoder_dir, corpus, finished, monkeypatch):
    out, kept = finished

    def fails():
        raise ValueError("a tokenizer that cannot be saved")

    save_pretrained_then(monkeypatch, fails)
    with pytest.raises(ValueError, match="cannot be saved"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 2, "overwrite": "true"}))
    assert not (out / ".staging").exists() and _files(out) == kept and not (out / LOCK_NAME).exists()


def test_a_failing_plot_in_stage2_leaves_no_staging(tmp_path, tiny_headless_encoder_dir, labelled, monkeypatch):
    import classify.train

    out = tmp_path / "run"
    run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"train.epochs": 1}))
    kept = _files(out)

    def broken_plot(*args, **kwargs):
        raise RuntimeError("a plot that fails")

    monkeypatch.setattr(classify.train, "training_curves_png", broken_plot)  # the name stage 2 calls
    with pytest.raises(RuntimeError, match="a plot that fails"):
        run2(stage2_args(tiny_headless_encoder_dir, labelled, out, **{"overwrite": "true"}))
    assert not (out / ".staging").exists() and _files(out) == kept and not (out / LOCK_NAME).exists()


def test_one_sigterm_during_the_final_write_lets_it_finish(tmp_path, tiny_encoder_dir, corpus, finished, monkeypatch, caplog):
    out, _ = finished
    save_pretrained_then(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    summary = run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 2, "overwrite": "true"}))
    assert summary["steps"] == 2 and json.loads((out / "dapt_summary.json").read_text())["steps"] == 2
    assert "SIGTERM" in caplog.text and "after training" in caplog.text
    assert not (out / ".staging").exists() and not (out / LOCK_NAME).exists()


def test_two_sigterms_during_the_final_write_stop_at_once_and_leave_no_staging(tmp_path, tiny_encoder_dir, corpus, finished, monkeypatch):
    out, kept = finished
    before = signal.getsignal(signal.SIGTERM)

    def two_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    save_pretrained_then(monkeypatch, two_signals)
    with pytest.raises(Interrupted):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 2, "overwrite": "true"}))
    assert not (out / ".staging").exists() and _files(out) == kept and not (out / LOCK_NAME).exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the run's handler is gone with it


def test_a_staging_folder_left_by_a_killed_run_is_removed_at_the_next_start(tmp_path, tiny_encoder_dir, corpus, finished, monkeypatch):
    out, _ = finished
    (out / ".staging").mkdir()
    (out / ".staging" / "model.safetensors").write_bytes(b"half of a model")
    poison_weights_at(monkeypatch, 1)  # this run fails before its own final write
    with pytest.raises(FloatingPointError):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 2, "overwrite": "true"}))
    assert not (out / ".staging").exists()
