"""The end of a run under several processes: the final artifacts are switched into the output
folder only after every process has finished writing its part of them, however slow it is.

CI caught stage 1 failing one run in a few under load: the main process moved ``.staging`` into
place while process 1 was still inside ``save_pretrained`` on it (``No such file or directory:
'.../.staging'``). Here process 1 is made slow on purpose, so the race happens every time."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import rank_errors
from tests.test_pretrain import tiny_overrides, write_corpus

REPO = Path(__file__).resolve().parents[1]

SLOW_RANK_ONE = textwrap.dedent("""
    import os, runpy, time
    import transformers

    save = transformers.PreTrainedModel.save_pretrained

    def late_save(self, *args, **kwargs):  # process 1 reaches the final save well after process 0
        if os.environ.get("RANK") == "1":
            time.sleep(4)
        return save(self, *args, **kwargs)

    transformers.PreTrainedModel.save_pretrained = late_save
    runpy.run_module("dapt.pretrain", run_name="__main__", alter_sys=True)
""")


@pytest.mark.slow  # one launch of two processes (~15-30 s)
def test_a_slow_process_finishes_writing_before_the_artifacts_are_switched_in(tmp_path, tiny_encoder_dir):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    (tmp_path / "slow_rank_one.py").write_text(SLOW_RANK_ONE)
    output = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
               "--main_process_port", "0", str(tmp_path / "slow_rank_one.py"),
               *tiny_overrides(tiny_encoder_dir, corpus, output, **{"train.max_steps": 1})]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, rank_errors(result.stderr)
    summary = json.loads((output / "dapt_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 1
    assert (output / "model.safetensors").is_file() and (output / "config.json").is_file()
    assert not (output / ".staging").exists(), sorted(p.name for p in output.iterdir())
