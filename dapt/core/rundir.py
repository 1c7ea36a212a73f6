"""A run's folder: what may be reused, what is refused, and how final results replace old ones.

The contract (README, "Re-running, resuming, diverging"):

* A folder holding a previous run (``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` or the
  stage's finished marker) is refused unless ``overwrite=true`` (start afresh) or
  ``checkpoint.resume`` is set (continue it). So is a folder that is, holds or lies inside one of
  the run's inputs (the model, a data path), and the current directory when it holds anything but
  a previous run. Nothing is written before this check; one run at a time holds the folder
  (:mod:`dapt.core.lock`, taken by :func:`dapt.core.guard.guarded_run`).
* Final artifacts are written into ``.staging/`` and moved into place when complete; the finished
  marker (``dapt_summary.json`` / ``results.json``) is removed first and written last, so a folder
  with a marker is always one consistent run, and a run that fails leaves the previous results and
  no ``.staging/`` (whatever the failure; a killed run's is removed by the next run's start).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from accelerate import Accelerator
from accelerate.logging import get_logger

from dapt.core.checkpoint import CheckpointManager, fingerprint, read_state
from dapt.core.lock import LOCK_NAME
from dapt.core.runtime import agreed_failure, write_failure

logger = get_logger(__name__)

RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")
STAGING = ".staging"


# the checkpoints of the run this process has open (one run per process): the guard names them in
# its failure messages (dapt.core.guard.guarded_run), and forgets them when the run ends
_opened: dict = {}


def opened_checkpoints(forget: bool = False) -> Optional[CheckpointManager]:
    return _opened.pop("checkpoints", None) if forget else _opened.get("checkpoints")


class OutputError(RuntimeError):
    """The final artifacts could not be written (a full disk, a folder gone); the previous ones stay."""


MODEL_KEYS = ("name_or_path", "encoder")
RUN_ONLY_KEYS = ("break_lock",)  # settings of this start only: never part of a checkpoint's fingerprint


def check_output_dir(output_dir: Path, *, marker: str, overwrite: bool, resume: Optional[str], inputs=()) -> None:
    """Raise a ConfigError naming ``output_dir`` when the run must not start there (``inputs``:
    ``(key, path)`` of what the run reads). Writes nothing."""
    from dapt.core.config import ConfigError

    resolved = output_dir.expanduser().resolve()
    for key, path in inputs:
        source = Path(path).expanduser().resolve()
        relation = "is" if source == resolved else "is inside" if source in resolved.parents else "contains" if resolved in source.parents else ""
        if relation:
            what = "the model being read" if key.rsplit(".", 1)[-1] in MODEL_KEYS else "an input"
            raise ConfigError(f"output_dir {output_dir} {relation} {what} ({key}={path}): a run must not write where it reads; "
                              "choose another output_dir")
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir}: is a file, not a folder")
    ancestor = output_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"output_dir {output_dir}: {ancestor} is a file, not a folder")
    if not _writable(ancestor):
        raise ConfigError(f"output_dir {output_dir}: {ancestor} is not writable")
    previous = [name for name in (*RUN_FILES, marker) if (output_dir / name).exists()]
    if resolved == Path.cwd().resolve() and not previous:
        others = sorted(p.name for p in output_dir.iterdir() if p.name != LOCK_NAME)
        if others:
            listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise ConfigError(f"output_dir {output_dir} is the current directory, which holds other files ({listed}): "
                              "give the run a folder of its own, e.g. output_dir=runs/NAME")
    if previous and not overwrite and not resume:
        raise ConfigError(
            f"output_dir {output_dir} holds a previous run ({', '.join(previous)}): set overwrite=true to replace it "
            "(its results stay until the new run finishes) or checkpoint.resume=latest to continue it"
        )


def _writable(directory: Path) -> bool:
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:  # root passes os.access everywhere; a read-only file system does not pass this
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def open_run_dir(accelerator: Accelerator, output_dir: Path, config, checkpoints: CheckpointManager, *,
                 resume: Optional[str], overwrite: bool, marker: str):
    """Resolve the checkpoint to resume from (``None``: a fresh start), then write ``config.yaml``
    and open ``metrics.jsonl`` (cut back to where the checkpoint was taken, so no step appears
    twice). A fresh start removes checkpoints left by an earlier attempt. Returns
    ``(resume_from, metrics)``."""
    from dapt.core.config import ConfigError, to_yaml
    from dapt.core.runtime import MetricsWriter

    resume_from = checkpoints.resolve(resume, overwrite=overwrite)
    if resume and resume_from is None and (output_dir / marker).is_file() and not overwrite:
        raise ConfigError(f"checkpoint.resume={resume}: {output_dir} holds a finished run and no checkpoint to continue "
                          "from; set overwrite=true to replace it")
    metrics_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            shutil.rmtree(checkpoints.directory, ignore_errors=True)
        (output_dir / "config.yaml.tmp").write_text(to_yaml(config))
        os.replace(output_dir / "config.yaml.tmp", output_dir / "config.yaml")
        if resume_from is not None and metrics_path.is_file():
            with metrics_path.open("r+b") as handle:  # lines logged after the checkpoint will be logged again
                handle.truncate(min(read_state(resume_from).get("metrics_bytes", 0), metrics_path.stat().st_size))
    accelerator.wait_for_everyone()
    metrics = MetricsWriter(accelerator, metrics_path, append=resume_from is not None)
    return resume_from, metrics


def staging_dir(accelerator: Accelerator, output_dir: Path) -> Path:
    """An empty folder for the final artifacts (every process gets the same path)."""
    staging = output_dir / STAGING
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    return staging


@contextmanager
def final_artifacts(accelerator: Accelerator, output_dir: Path, marker: str, checkpoints: CheckpointManager) -> Iterator[Path]:
    """Write a run's final artifacts into the staging folder this yields; they replace the previous
    ones (:func:`switch_in`) only when the block ends without error on every process. A
    file-system error inside (a full disk above all), on any process, becomes one
    :class:`OutputError` on all of them that says what is left: the previous results untouched, no
    half-written staging folder, and the run's last checkpoint. (Every process must run the
    block's collective operations before anything in it can fail.) Any other error, on any
    process, also stops every process and leaves no staging folder; the process where it happened
    raises it as it is."""
    staging, error = staging_dir(accelerator, output_dir), None
    try:
        yield staging
    except Exception as caught:
        error = caught
    except BaseException:  # a second stop signal: at once, no collective
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    failure = agreed_failure(write_failure(error) or (error and type(error).__name__))  # every process gets here, failed or not
    if failure is not None:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        if error is not None and not isinstance(error, OSError):
            raise error
        kept = f"; the run's last checkpoint is {checkpoints.latest_name()}" if checkpoints.all() else ""
        raise OutputError(f"cannot write the final artifacts into {output_dir}: {failure}; nothing of them was kept and "
                          f"the folder's previous results are untouched{kept}") from error
    # the agreement above is also the barrier: every process has finished writing into staging
    if accelerator.is_main_process:
        switch_in(staging, output_dir, marker)
    accelerator.wait_for_everyone()


def switch_in(staging: Path, output_dir: Path, marker: str) -> None:
    """Move the finished artifacts from ``staging`` into ``output_dir`` (main process, once every
    process has finished writing into ``staging``). Each file and folder is replaced by a rename;
    the marker goes first and comes back last."""
    (output_dir / marker).unlink(missing_ok=True)
    for item in sorted(staging.iterdir()):
        if item.name == marker:
            continue
        target = output_dir / item.name
        if item.is_dir():
            old = output_dir / f".old-{item.name}"
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                os.replace(target, old)
            os.replace(item, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(item, target)
    if (staging / marker).is_file():
        os.replace(staging / marker, output_dir / marker)
    shutil.rmtree(staging, ignore_errors=True)


def open_run(accelerator: Accelerator, config, *, model, optimizer, scheduler, resumable_keys, marker: str):
    """What both stages set up once their model, optimizer and schedule exist: the run's checkpoints
    (fingerprinted with the settings outside ``resumable_keys``), the checkpoint to resume from
    (:func:`open_run_dir`), ``metrics.jsonl`` and the trackers. Returns
    ``(checkpoints, resume_from, metrics)``."""
    output_dir = Path(config.output_dir)
    checkpoints = CheckpointManager(accelerator, output_dir, keep=config.checkpoint.keep, model=model, optimizer=optimizer,
                                    scheduler=scheduler, fingerprint=fingerprint(config, (*resumable_keys, *RUN_ONLY_KEYS)))
    _opened["checkpoints"] = checkpoints
    resume_from, metrics = open_run_dir(accelerator, output_dir, config, checkpoints, resume=config.checkpoint.resume,
                                        overwrite=config.overwrite, marker=marker)
    if accelerator.log_with:
        accelerator.init_trackers(config.run_name)
    return checkpoints, resume_from, metrics
