"""Preemption: SIGTERM / SIGINT stop a run after its current optimizer step with a checkpoint
(issue 19 item 6).

Injected: SIGTERM or SIGINT after a seeded random optimizer update (in this process: both stages;
as a real two-process launch of stage 1: at a seeded random time, to one of the processes only);
two signals in one step; a two-process launch into a folder another run holds. Checked: the run exits with ``EXIT_PREEMPTED`` and one line saying how to
resume, every process stopped at the same step with a checkpoint there, and the resumed run ends
with exactly the weights and ``metrics.jsonl`` steps of an uninterrupted one; a second signal
stops at once (exit 128 + signal, no checkpoint); the signal handlers are restored afterwards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dapt.core.lock import LOCK_NAME, RunLock
from dapt.core.signals import EXIT_PREEMPTED, Interrupted, Preempted
from tests.helpers import output_text, rank_errors
from tests.test_faults import corpus, labelled, run1, run2, stage1_args, stage2_args, steps_logged  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = {"train.max_steps": 9, "train.grad_accum": 2, "train.warmup_steps": 2, "train.min_lr": 1e-4, "train.eval_every": 4,
          "checkpoint.every_steps": 3, "checkpoint.resume": "latest"}
STAGE2 = {"train.epochs": 2, "train.min_lr": 1e-4, "checkpoint.every_steps": 4, "checkpoint.every_epoch": "true",
          "checkpoint.resume": "latest"}


def signal_after_update(monkeypatch, update: int, signals=(signal.SIGTERM,)) -> None:
    """Right after the ``update``-th optimizer update, this process gets ``signals``."""
    real, calls = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == update:
            for number in signals:
                os.kill(os.getpid(), number)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("stage, number", [("pretrain", signal.SIGTERM), ("classify", signal.SIGINT)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(stage, number, tmp_path, tiny_encoder_dir,
                                                                            tiny_headless_encoder_dir, corpus, labelled, monkeypatch):
    if stage == "pretrain":
        args, run, weights, steps = (lambda out: stage1_args(tiny_encoder_dir, corpus, out, **STAGE1)), run1, "model.safetensors", 9
    else:
        args, run, weights, steps = (lambda out: stage2_args(tiny_headless_encoder_dir, labelled, out, **STAGE2)), run2, "model/model.safetensors", 10
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    reference = tmp_path / "reference"
    run(args(reference))
    update = random.Random(stage).randint(1, steps - 1)
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        signal_after_update(patch, update, (number,))
        with pytest.raises(Preempted, match=rf"step {update}\b.*checkpoint.resume=latest") as caught:
            run(args(out))
    assert caught.value.step == update and (out / "checkpoints" / f"step_{update:08d}").is_dir()
    assert not (out / LOCK_NAME).exists() and (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    run(args(out))
    assert same_weights(reference / weights, out / weights) and steps_logged(out) == steps_logged(reference)


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path, tiny_encoder_dir, corpus, monkeypatch, capsys):
    from dapt.pretrain import main

    signal_after_update(monkeypatch, 2, (signal.SIGTERM, signal.SIGTERM))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as caught:
        main(stage1_args(tiny_encoder_dir, corpus, out, **{"checkpoint.every_steps": 4}))
    assert caught.value.code == 128 + signal.SIGTERM
    assert not (out / "checkpoints").exists() and not (out / LOCK_NAME).exists()
    assert "stopped at once" in capsys.readouterr().err
    with pytest.raises(Interrupted):  # what main() turned into the exit code
        signal_after_update(monkeypatch, 1, (signal.SIGINT, signal.SIGINT))
        run1(stage1_args(tiny_encoder_dir, corpus, tmp_path / "again"))


def test_the_command_exits_with_the_preempted_code_and_says_how_to_resume(tmp_path, tiny_encoder_dir, corpus, monkeypatch, capsys):
    from dapt.pretrain import main

    signal_after_update(monkeypatch, 3)
    with pytest.raises(SystemExit) as caught:
        main(stage1_args(tiny_encoder_dir, corpus, tmp_path / "run"))
    assert caught.value.code == EXIT_PREEMPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert "stopped by SIGTERM after step 3" in err[-1] and "checkpoint.resume=latest" in err[-1], err[-3:]


# --------------------------------------------------------------------------------------------
# real commands: a signal from outside


def torchrun(pids: Path, *args, timeout: int = 180) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tests.test_preemption",
               str(pids), *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: int = 180):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        process.kill()
        pytest.fail(f"torchrun still running after {timeout} s:\n{output_text(hung.stderr)[-6000:]}")
    return process.returncode, err


@pytest.mark.slow  # one two-process launch (~10 s)
def test_a_two_process_launch_into_a_held_folder_fails_on_every_process(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    held = RunLock.acquire(out)
    try:
        code, err = finish(torchrun(tmp_path, *stage1_args(tiny_encoder_dir, corpus, out, **STAGE1)), timeout=120)
    finally:
        held.release()
    assert code != 0 and err.count(f"pid {os.getpid()} on host") >= 2, rank_errors(err)  # both processes say why


@pytest.mark.slow  # three two-process launches (~35 s)
def test_two_processes_signalled_on_one_of_them_stop_together_and_resume_exactly(tmp_path, tiny_encoder_dir, corpus):
    args = lambda out: stage1_args(tiny_encoder_dir, corpus, out, **STAGE1)  # noqa: E731
    reference = tmp_path / "reference"
    code, err = finish(torchrun(tmp_path / "pids-reference", *args(reference)))
    assert code == 0, rank_errors(err)
    out = tmp_path / "interrupted"
    pids = tmp_path / "pids"
    rng = random.Random(6)
    process = torchrun(pids, "slow", *args(out))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.1, 0.8))
    rank = rng.randint(0, 1)
    os.kill(int((pids / f"rank_{rank}").read_text()), signal.SIGTERM)  # one process only
    code, err = finish(process)
    assert code != 0 and err.count("checkpoint.resume=latest") == 2, rank_errors(err)  # both processes stopped
    stopped = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    state = json.loads((out / "checkpoints" / stopped[-1] / "trainer_state.json").read_text())
    assert f"after step {state['step']}" in err and {"rng_0.json", "rng_1.json"} <= set(os.listdir(out / "checkpoints" / stopped[-1]))
    code, err = finish(torchrun(tmp_path / "pids-resumed", *args(out)))
    assert code == 0, rank_errors(err)
    assert same_weights(reference / "model.safetensors", out / "model.safetensors")
    assert steps_logged(out) == steps_logged(reference)
    assert json.loads((out / "dapt_summary.json").read_text())["num_processes"] == 2


if __name__ == "__main__":  # one process of a torchrun launch: tests.test_preemption PIDS [slow] ARGS...
    pid_dir, *arguments = sys.argv[1:]
    Path(pid_dir).mkdir(parents=True, exist_ok=True)
    (Path(pid_dir) / f"rank_{os.environ['RANK']}").write_text(str(os.getpid()))
    if arguments[0] == "slow":  # room for a signal to land mid-training
        arguments = arguments[1:]
        optimizer_step = torch.optim.AdamW.step

        def slow_step(self, *args, **kwargs):
            time.sleep(0.15)
            return optimizer_step(self, *args, **kwargs)

        torch.optim.AdamW.step = slow_step
    from dapt.pretrain import main

    main(arguments + ["impl.cpu=true"])


def _wait_for_terminate():
    time.sleep(60)  # a pool worker at work; terminate() sends SIGTERM


def test_a_forked_worker_still_dies_of_sigterm_while_the_run_holds_its_handler():
    """datasets' reading / map pools and DataLoader workers are forked from the run's process and inherit
    its handler; a worker that only recorded the signal would never exit, and the pool's terminate()
    would wait forever (a two-process stage 1 hung at its read pool). The worker dies of the signal."""
    import multiprocessing

    from dapt.core import signals

    signals.install()
    try:
        worker = multiprocessing.get_context("fork").Process(target=_wait_for_terminate)
        worker.start()
        time.sleep(0.5)
        worker.terminate()  # SIGTERM
        worker.join(timeout=20)
        assert worker.exitcode == -signal.SIGTERM
        assert signals._ACTIVE.received is None  # the run itself was not asked to stop
    finally:
        if worker.is_alive():
            worker.kill()
        signals.uninstall()
