"""Writes under several processes: what one process does to the shared folders never surprises
the others.

* The final artifacts are switched into the output folder only after every process has finished
  writing its part of them, however slow it is. CI caught stage 1 failing one run in a few under
  load: the main process moved ``.staging`` into place while process 1 was still inside
  ``save_pretrained`` on it (``No such file or directory: '.../.staging'``). Here process 1 is made
  slow on purpose, so the race happens every time.
* A write that fails on one process only (a full disk under the main process's checkpoint or
  final model, or under another process's random-generator file) stops *every* process at once
  with the same clear message, instead of leaving the others waiting at a barrier until the
  process-group timeout (an hour by default)."""

import os
import subprocess
import sys
import json
import textwrap
from pathlib import Path

import pytest

from tests.helpers import rank_errors
from tests.test_pretrain import tiny_overrides, write_corpus

REPO = Path(__file__).resolve().parents[1]

WRAPPER = textwrap.dedent("""
    import errno, os, runpy, sys, time
    import transformers
    import dapt.core.checkpoint as checkpoint

    rank, fault = int(os.environ["RANK"]), sys.argv.pop(1)

    def disk_full(filename):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    if fault == "slow_final_save" and rank == 1:  # process 1 reaches the final save well after process 0
        save = transformers.PreTrainedModel.save_pretrained
        def late_save(self, *args, **kwargs):
            time.sleep(4)
            return save(self, *args, **kwargs)
        transformers.PreTrainedModel.save_pretrained = late_save
    if fault == "final_save_fails_on_main" and rank == 0:
        def failing_save(self, directory, *args, **kwargs):
            disk_full(str(directory))
        transformers.PreTrainedModel.save_pretrained = failing_save
    if fault in ("checkpoint_fails_on_main", "checkpoint_fails_on_process_1"):
        failing_rank = 0 if fault == "checkpoint_fails_on_main" else 1
        real = checkpoint.save_file
        def save_file(tensors, filename, *args, **kwargs):
            if rank == failing_rank and "step_00000002" in filename and ("optimizer" in filename or "rng_1" in filename):
                disk_full(filename)
            return real(tensors, filename, *args, **kwargs)
        checkpoint.save_file = save_file
    runpy.run_module("dapt.pretrain", run_name="__main__", alter_sys=True)
""")


def launch(tmp_path: Path, encoder: Path, fault: str, **settings):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
               "--main_process_port", "0", str(tmp_path / "wrapper.py"), fault,
               *tiny_overrides(encoder, corpus, tmp_path / "two", **settings)]
    # a process left waiting at a barrier would wait for the process-group timeout: far past this one
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)


@pytest.mark.slow  # one launch of two processes (~15-30 s)
def test_a_slow_process_finishes_writing_before_the_artifacts_are_switched_in(tmp_path, tiny_encoder_dir):
    result = launch(tmp_path, tiny_encoder_dir, "slow_final_save", **{"train.max_steps": 1})
    assert result.returncode == 0, rank_errors(result.stderr)
    output = tmp_path / "two"
    summary = json.loads((output / "dapt_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 1
    assert (output / "model.safetensors").is_file() and (output / "config.json").is_file()
    assert not (output / ".staging").exists(), sorted(p.name for p in output.iterdir())


@pytest.mark.slow  # one launch of two processes per case (~15-30 s each)
@pytest.mark.parametrize("fault", ["checkpoint_fails_on_main", "checkpoint_fails_on_process_1"])
def test_a_checkpoint_write_failing_on_one_process_stops_every_process(tmp_path, tiny_encoder_dir, fault):
    result = launch(tmp_path, tiny_encoder_dir, fault, **{"train.max_steps": 4, "checkpoint.every_steps": 1})
    assert result.returncode != 0
    assert "cannot write checkpoint" in result.stderr and "no space left on device" in result.stderr, rank_errors(result.stderr)
    assert "step_00000001" in result.stderr.split("cannot write checkpoint")[1]  # names the last complete one
    checkpoints = tmp_path / "two" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000001"]  # no .tmp-step_00000002 left


@pytest.mark.slow
def test_a_final_write_failing_on_the_main_process_stops_every_process(tmp_path, tiny_encoder_dir):
    result = launch(tmp_path, tiny_encoder_dir, "final_save_fails_on_main", **{"train.max_steps": 2, "checkpoint.every_steps": 2})
    assert result.returncode != 0
    assert "cannot write the final artifacts" in result.stderr and "no space left on device" in result.stderr, rank_errors(result.stderr)
    output = tmp_path / "two"
    assert not (output / ".staging").exists() and not (output / "dapt_summary.json").exists()
    assert (output / "checkpoints" / "step_00000002").is_dir()
