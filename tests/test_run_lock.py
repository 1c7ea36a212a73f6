"""One run per output folder (issue 19 item 1).

Injected: a second run started while another holds the folder (in this process, and as two real
commands with ``checkpoint.resume=latest`` and different seeds), lock files left by a killed run
(its pid dead; its pid reused by another process), a lock from another host, an unreadable lock.
Checked: the second run fails at once with one line naming the holder (pid, host, start time) and
leaves the first run's folder alone; a stale lock is taken over with a line naming the old holder;
another host's lock is refused unless ``break_lock=true``; the lock is gone after a run, finished
or failed. (Several processes of one launch share the lock: tests/test_preemption.py.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dapt.core.lock import LOCK_NAME, RunLock, RunLocked, process_start_ticks
from tests.test_faults import REPO, corpus, run1, stage1_args  # noqa: F401 - corpus: a fixture

GATED = r"""
import os, sys, time
import torch
gate, step = sys.argv[1], torch.optim.AdamW.step
def gated_step(self, *args, **kwargs):  # the run holds its folder until the test opens the gate
    while not os.path.exists(gate):
        time.sleep(0.05)
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = gated_step
from dapt.pretrain import main
main(sys.argv[2:])
"""


def write_record(folder, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(), "process_start": process_start_ticks(os.getpid()),
              "started_at": "2026-01-01T00:00:00+00:00", "launch": None, **fields}
    (folder / LOCK_NAME).write_text(json.dumps(record))


def _boot_id() -> str:
    try:
        return open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        return ""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_in_a_held_folder_fails_at_once_naming_the_holder(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    held = RunLock.acquire(out)
    try:
        started = time.time()
        with pytest.raises(RunLocked) as caught:
            run1(stage1_args(tiny_encoder_dir, corpus, out, **{"checkpoint.resume": "latest"}))
        message = str(caught.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}, started at " in message and "\n" not in message, message
        assert time.time() - started < 10
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the second run written
    finally:
        held.release()
    assert not out.exists()  # the folder the lock created is gone with it


def test_the_lock_is_released_after_a_run_and_after_a_failed_one(tmp_path, tiny_encoder_dir, corpus):
    out = tmp_path / "run"
    run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 1}))
    assert not (out / LOCK_NAME).exists()
    with pytest.raises(Exception, match="block_size"):
        run1(stage1_args(tiny_encoder_dir, corpus, tmp_path / "bad", **{"data.block_size": 4096}))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("stale", ["dead_pid", "reused_pid", "rebooted"])
def test_a_stale_lock_on_this_host_is_taken_over_with_a_line_naming_the_old_holder(stale, tmp_path, tiny_encoder_dir, corpus, caplog):
    out = tmp_path / "run"
    if stale == "dead_pid":
        old = _dead_pid()
        write_record(out, pid=old)
    elif stale == "reused_pid":  # the pid is alive, but it is another process than the one that locked
        old = os.getpid()
        write_record(out, pid=old, process_start=process_start_ticks(old) - 1)
    else:
        old = os.getpid()
        write_record(out, boot_id="another-boot")
    run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 1}))
    assert f"taking over the lock of pid {old} on host {socket.gethostname()}, started at 2026-01-01" in caplog.text, caplog.text[-3000:]
    assert (out / "dapt_summary.json").is_file() and not (out / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused_unless_broken(tmp_path, tiny_encoder_dir, corpus, caplog):
    out = tmp_path / "run"
    write_record(out, host="gpu-node-7", pid=4242)
    with pytest.raises(RunLocked, match=r"pid 4242 on host gpu-node-7, started at 2026-01-01.*cannot be checked from .*break_lock=true"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 1}))
    assert (out / LOCK_NAME).is_file() and not (out / "config.yaml").exists()
    run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 1, "break_lock": "true"}))
    assert "break_lock=true: taking over the lock of pid 4242 on host gpu-node-7" in caplog.text
    (out / LOCK_NAME).write_text("{not json")  # a lock file nobody holds, with no record
    with pytest.raises(RunLocked, match="no readable record"):
        run1(stage1_args(tiny_encoder_dir, corpus, out, **{"train.max_steps": 1, "checkpoint.resume": "latest"}))


@pytest.mark.slow  # two real commands (~15 s)
def test_two_commands_into_one_folder_the_second_fails_at_once(tmp_path, tiny_encoder_dir, corpus):
    """The adversarial scenario: two stage-1 runs with ``checkpoint.resume=latest`` and different
    seeds. Before, both exited 0 with their steps interleaved in ``metrics.jsonl``. Also stage 2
    started in the folder stage 1 is writing (one line, no traceback)."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    settings = {"train.max_steps": 8, "checkpoint.every_steps": 4, "checkpoint.resume": "latest"}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", GATED, str(gate), *stage1_args(tiny_encoder_dir, corpus, out, **settings, **{"train.seed": 1})],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "first.log").open("w"))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    started = time.time()
    second = subprocess.run([sys.executable, "-m", "dapt.pretrain", *stage1_args(tiny_encoder_dir, corpus, out, **settings, **{"train.seed": 2})],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    took = time.time() - started
    stage2 = subprocess.run([sys.executable, "-m", "classify.train", f"output_dir={out}", "checkpoint.resume=latest", "model.encoder=x/y"],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    gate.touch()
    assert first.wait(timeout=180) == 0, (tmp_path / "first.log").read_text()[-3000:]
    lines = second.stderr.strip().splitlines()
    assert second.returncode != 0 and len(lines) == 1 and f"pid {first.pid} on host {socket.gethostname()}, started at" in lines[0], second.stderr
    assert took < 60, took  # it read no model and no data: its one line is all it printed
    assert stage2.returncode != 0 and len(stage2.stderr.strip().splitlines()) == 1 and "Traceback" not in stage2.stderr, stage2.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))  # one run's steps, once each
    assert json.loads((out / "dapt_summary.json").read_text())["config"]["train"]["seed"] == 1
    assert not (out / LOCK_NAME).exists()
