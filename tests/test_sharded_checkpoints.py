"""Checkpoints hold whole, unsharded states: under FSDP or DeepSpeed a run that would write or read
one is refused at start-up (a ConfigError naming the keys), before its data is read or its folder
written, instead of failing at its first checkpoint after training up to it."""

from __future__ import annotations

import pytest
from accelerate import Accelerator
from accelerate.utils import DistributedType

from dapt.core.checkpoint import refuse_sharded
from dapt.core.config import ConfigError
from tests.test_faults import run1, run2, stage1_args, stage2_args, write_labelled
from tests.test_pretrain import write_corpus


def test_checkpoints_under_fsdp_are_refused_before_anything_is_read_or_written(tmp_path, tiny_encoder_dir, tiny_headless_encoder_dir,
                                                                              monkeypatch):
    corpus, labelled = write_corpus(tmp_path / "corpus.jsonl", 40), write_labelled(tmp_path / "labelled")
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType.FSDP))
    read = []
    monkeypatch.setattr("classify.train.load_labelled", lambda *a, **k: read.append(a) or pytest.fail("data read"))
    with pytest.raises(ConfigError, match=r"checkpoint\.every_steps=2: checkpoints under .*FSDP.* set checkpoint\.every_steps=0"):
        run1(stage1_args(tiny_encoder_dir, corpus, tmp_path / "one", **{"checkpoint.every_steps": 2}))
    with pytest.raises(ConfigError, match=r"checkpoint\.every_epoch=True: .* set checkpoint\.every_epoch=false"):
        run2(stage2_args(tiny_headless_encoder_dir, labelled, tmp_path / "two", **{"checkpoint.every_epoch": "true"}))
    assert not (tmp_path / "one").exists() and not (tmp_path / "two").exists() and not read
    # without checkpoints nothing is refused; on one process or under DDP nothing ever is
    refuse_sharded(Accelerator(cpu=True), type("Checkpoint", (), {"every_steps": 0, "every_epoch": False, "resume": None})())
    monkeypatch.undo()
    refuse_sharded(Accelerator(cpu=True), type("Checkpoint", (), {"every_steps": 5, "resume": "latest"})())
