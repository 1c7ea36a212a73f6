"""Preemption: SIGTERM and SIGINT stop a run after its current optimizer step, with a checkpoint.

SLURM, Kubernetes and spot instances send SIGTERM some seconds before they kill; Ctrl-C sends
SIGINT. While a run is guarded (:func:`dapt.core.guard.guarded_run`) the first signal only marks
the run as stopping. At the next optimizer step boundary every process learns it through one
all-reduce of a single number (:func:`agreed_stop`, called by the shared step; the signal may
have reached one process only), writes the checkpoint there and raises :class:`Preempted`; the
command exits with :data:`EXIT_PREEMPTED` and one line saying how to resume. A signal that comes
after the last optimizer step lets the run finish: its final write is what is left to do. A second
signal stops at once (:class:`Interrupted`, exit 128 + the signal; no checkpoint), and a third is
the default action of the signal, for a process stuck where Python cannot run its handler.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

import torch

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "a temporary failure; the user is invited to retry"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after ``step``, with a checkpoint there."""

    def __init__(self, step: int, signum: int, checkpoint: Optional[str] = None):
        super().__init__(step, signum)
        self.step, self.signum, self.checkpoint = step, signum, checkpoint

    def __str__(self) -> str:
        written = f"checkpoint {self.checkpoint} written" if self.checkpoint else "a checkpoint written"
        return (f"stopped by {signal.Signals(self.signum).name} after step {self.step}, {written}: to continue, run the same "
                "command with checkpoint.resume=latest")


class Interrupted(BaseException):
    """A second stop signal: the run stops at once (a BaseException, like KeyboardInterrupt, so that
    no ``except Exception`` holds it up)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped at once by a second {signal.Signals(self.signum).name}: no checkpoint written for the current step"


class StopRequest:
    """The signal handlers of one run: the first signal is recorded, the second raises :class:`Interrupted`."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; the run then stops on signals as before
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        _forget_in_forked_children()

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame) -> None:
        if self.received is None:
            self.received = number
            os.write(2, f"\n{signal.Signals(number).name} received: the run stops after its current optimizer step with a "
                        "checkpoint (once training is over: after its final write); a second signal stops it at once\n".encode())
            return
        self.restore()
        raise Interrupted(number)


_ACTIVE: Optional[StopRequest] = None
_FORK_HOOK = False


def _child_after_fork() -> None:
    """In a process forked while a run holds the handlers (a datasets pool worker, a DataLoader
    worker): the default actions again, at once, so the pool's terminate() ends it."""
    global _ACTIVE
    if _ACTIVE is not None:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_DFL if number == signal.SIGTERM else signal.default_int_handler)
        _ACTIVE = None


def _forget_in_forked_children() -> None:
    global _FORK_HOOK
    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_child_after_fork)
        _FORK_HOOK = True


def install() -> StopRequest:
    """The handlers of the run now starting in this process (one at a time)."""
    global _ACTIVE
    _ACTIVE = StopRequest()
    _ACTIVE.install()
    return _ACTIVE


def uninstall() -> None:
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.restore()
    _ACTIVE = None


def agreed_stop(accelerator) -> int:
    """The stop signal any process of the run received (0: none), the same on every process.
    Outside a guarded run: 0, with no collective. Under several processes: one all-reduce of one
    number per call (the shared step calls it once per optimizer step)."""
    if _ACTIVE is None:
        return 0
    received = _ACTIVE.received or 0
    if accelerator.num_processes == 1:
        return received
    flag = torch.tensor(received, dtype=torch.int32, device=accelerator.device)
    return int(accelerator.reduce(flag, "max").item())
