"""What surrounds every run of either stage, from its first check to its exit code.

:func:`guarded_run` wraps a stage's run (``with guarded_run(config, marker=...) as accelerator``):

1. the output folder is checked before anything is written (:func:`dapt.core.rundir.check_output_dir`:
   a previous run, a folder that is one of the run's inputs or the current directory, ...);
2. the Accelerator is made, the stop signals handled (:mod:`dapt.core.signals`), and the folder's
   lock taken by the main process, every process learning the outcome through one collective
   (:mod:`dapt.core.lock`); the folder is checked again under the lock, and what a killed run left
   in it (``.staging/``, half-written checkpoints) removed;
3. on the way out, however it goes: ``.staging/`` removed when the run failed, the signal handlers
   restored, the lock released; a :class:`~dapt.core.step.Diverged` error gets the last good
   checkpoint (one that verifies, from before the divergence) and the learning rates; a
   :class:`~dapt.core.signals.Preempted` stop gets the checkpoint it wrote.

:func:`run_command` is a command's ``main``: a refusal or a failure the user can act on is one line
on stderr and exit 1, a preemption :data:`~dapt.core.signals.EXIT_PREEMPTED`, a second signal
128 + the signal; a bug keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from accelerate import Accelerator

from dapt.core import signals
from dapt.core.checkpoint import CheckpointError
from dapt.core.config import ConfigError
from dapt.core.hub import looks_local
from dapt.core.lock import RunLock, RunLocked
from dapt.core.rundir import STAGING, OutputError, check_output_dir, opened_checkpoints
from dapt.core.runtime import agreed_failure, make_accelerator, release_process_group
from dapt.core.sources import DataError
from dapt.core.step import Diverged

logger = logging.getLogger(__name__)

INPUT_KEYS = ("path", "name_or_path", "encoder")  # config keys naming what a run reads
# what a run's command reports in one line (a bug, any other exception, keeps its traceback)
REFUSALS = (ConfigError, RunLocked, CheckpointError, DataError, OutputError, FileNotFoundError, FloatingPointError, ValueError)


def input_paths(config) -> list[tuple[str, str]]:
    """``(key, path)`` of every local path the run reads: keys ending in ``path``, ``name_or_path``
    or ``encoder`` (a glob counts as the folder it searches); Hub ids are left out."""
    found = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)
        elif isinstance(value, str) and value and prefix.rsplit(".", 1)[-1] in INPUT_KEYS and looks_local(value):
            parts = Path(value).parts
            plain = [part for part in parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]]
            found.append((prefix, str(Path(*plain)) if plain else "."))

    walk("", dataclasses.asdict(config))
    return found


@contextmanager
def guarded_run(config, *, marker: str) -> Iterator[Accelerator]:
    """The Accelerator of a run whose folder is checked, locked and cleaned (see the module)."""
    output_dir = Path(config.output_dir)
    checks = dict(marker=marker, overwrite=config.overwrite, resume=config.checkpoint.resume, inputs=input_paths(config))
    check_output_dir(output_dir, **checks)
    accelerator = make_accelerator(config.impl, output_dir, config.train.grad_accum, config.tensorboard, config.report_to)
    opened_checkpoints(forget=True)
    stop, lock = signals.install(), None
    try:
        lock = _take_lock(accelerator, output_dir, force=config.break_lock)
        check_output_dir(output_dir, **checks)  # again under the lock: a run that ended meanwhile counts
        if accelerator.is_main_process:
            _remove_leftovers(output_dir)
        yield accelerator
        if stop.received:
            logger.warning(f"{signal.Signals(stop.received).name} received after training: the run finished its final write")
    except BaseException as error:
        checkpoints = opened_checkpoints()
        if isinstance(error, Diverged):
            error.last_good = checkpoints.last_good(before=error.step or None) if checkpoints else "none"
            error.cause = error.cause or learning_rates(config.train)
        elif isinstance(error, signals.Preempted) and checkpoints is not None:
            error.checkpoint = checkpoints.latest_name()
        if lock is not None:
            shutil.rmtree(output_dir / STAGING, ignore_errors=True)
        raise
    finally:
        signals.uninstall()
        opened_checkpoints(forget=True)
        if lock is not None:
            lock.release()


def _take_lock(accelerator: Accelerator, output_dir: Path, *, force: bool) -> Optional[RunLock]:
    """The main process takes the lock; every process raises the same RunLocked when it cannot."""
    lock, failure = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock.acquire(output_dir, force=force)
        except RunLocked as error:
            failure = str(error)
        except OSError as error:
            failure = f"output_dir {output_dir}: cannot take its lock: {error}"
    failure = agreed_failure(failure)
    if failure is not None:
        if lock is not None:
            lock.release()
        raise RunLocked(failure)
    return lock


def _remove_leftovers(output_dir: Path) -> None:
    """What a killed run of this folder left: its staging folder and half-written checkpoints."""
    shutil.rmtree(output_dir / STAGING, ignore_errors=True)
    for temporary in (output_dir / "checkpoints").glob(".tmp-step_*"):
        shutil.rmtree(temporary, ignore_errors=True)


def learning_rates(train) -> str:
    """The likely cause of a divergence, with the values: ``the learning rate (train.lr=1e+30): lower it``."""
    keys = [f.name for f in dataclasses.fields(train) if (f.name == "lr" or f.name.endswith("_lr")) and f.name != "min_lr"
            and "warmup" not in f.name]
    values = ", ".join(f"train.{key}={getattr(train, key):g}" for key in keys)
    return f"the learning rate ({values}): lower it" if values else "the learning rate: lower it"


def run_command(run: Callable[[Any], Any], config) -> Any:
    """A command's ``main``: ``run(config)``, with its refusals and stops as one line and an exit code
    (the last line on stderr: progress bars the failure left open are closed first)."""
    try:
        return run(config)
    except signals.Preempted as stop:
        code, line = signals.EXIT_PREEMPTED, str(stop)
    except signals.Interrupted as stop:
        code, line = 128 + stop.signum, str(stop)
    except REFUSALS as error:
        code, line = 1, f"error: {error}"
    _close_progress_bars()
    release_process_group(barrier=False)  # the run's collectives are over: exit without the gloo hang
    print(line, file=sys.stderr)
    raise SystemExit(code)


def _close_progress_bars() -> None:
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
