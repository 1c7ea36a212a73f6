"""A finished multi-process run releases its process group without hanging.

CI saw a two-process stage-2 run hang at exit with its results written: gloo's worker thread was
freeing the tensors of the last collectives (it needs the GIL for that) while the main thread,
holding the GIL, joined it in the process group's destructor, run when the DDP model holding the
last reference was freed. Destroying the group right after a collective hangs like that within a
few dozen rounds (measured on 2 cores: the loop below with ``dist.destroy_process_group`` in place
of :func:`dapt.core.runtime.release_process_group` hung after 1 to 27 rounds in each of 15 tries,
and this test with the release's pause taken out failed); the release must survive every round.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import output_text

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 60


@pytest.mark.slow  # ~20 s: 60 rounds of a 0.2 s release
def test_a_group_released_right_after_its_collectives_never_hangs():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.test_process_group_exit", str(ROUNDS)]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"hung releasing a process group; stacks:\n{output_text(hung.stderr)[-8000:]}")
    assert done.returncode == 0, done.stderr[-5000:]
    assert done.stdout.count("released") == ROUNDS, done.stdout[-2000:]


def _rounds(rounds: int) -> None:
    import faulthandler

    import torch
    import torch.distributed as dist

    from dapt.core.runtime import release_process_group

    faulthandler.dump_traceback_later(60, exit=True)  # a hang prints where it is, before the test's timeout
    dist.init_process_group("gloo")
    for number in range(rounds):
        group = dist.new_group(backend="gloo")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2), process_group=group)
        model(torch.randn(3, 4)).sum().backward()  # the reducer's all-reduce
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, {"round": number}, group=group)  # tensors made in Python
        release_process_group(group)
        del group, model  # the reducer holds the last reference: the group's destructor runs in it, as in a run
        if dist.get_rank() == 0:
            print(f"round {number} released", flush=True)
    release_process_group()


if __name__ == "__main__":
    _rounds(int(sys.argv[1]))
