"""Checkpoints without pickle, tagged with the settings of the run that wrote them.

``OUTPUT/checkpoints/step_00000100`` is complete or absent: it is written into ``.tmp-step_*``
and renamed once everything is on disk. It holds

* ``model.safetensors`` - the unwrapped model's weights (shared tensors stored once);
* ``optimizer.safetensors`` + ``optimizer.json`` - the optimizer's tensors and its parameter groups;
* ``rng_{process}.safetensors`` + ``rng_{process}.json`` - every process's random generators;
* ``trainer_state.json`` (written last) - the loop's state (step, epoch, batch position, ...), the
  scheduler's and the gradient scaler's state, accelerate's micro-batch counter, the size
  ``metrics.jsonl`` had, the run's *fingerprint* (the settings that change the trajectory), and
  the content hash of every other file plus a checksum of its own (:mod:`dapt.core.integrity`).

Nothing is pickled, and :meth:`CheckpointManager.load` refuses a folder holding ``.pkl`` /
``.bin`` / ``.pt`` files (unpickling runs code). A checkpoint is verified against its hashes
before it is resumed from: ``resume=latest`` falls back to the newest one that verifies (saying
which did not, and why). ``resume=latest`` refuses a checkpoint whose fingerprint differs from the
current settings and names the differing keys; pruning never deletes the checkpoint just written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from dapt.core import integrity
from dapt.core.runtime import agreed_failure, write_failure
from dapt.core.step import check_finite

logger = get_logger(__name__)

STATE_FILE = "trainer_state.json"
WEIGHTS_STATE = "weights.json"  # save_weights: what the weights are, and their content hash
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth")
_RESERVED = ("fingerprint", "metrics_bytes", "scheduler", "grad_scaler", "accelerator_step", integrity.FILES, integrity.CHECKSUM)


SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)  # checkpoints hold whole, unsharded states


def refuse_sharded(accelerator: Accelerator, checkpoint) -> None:
    """Under FSDP or DeepSpeed a run that would write or read a checkpoint stops before it starts
    (a ConfigError naming the keys), not after training up to its first checkpoint."""
    from dapt.core.config import ConfigError

    if accelerator.distributed_type not in SHARDED:
        return
    asked = [(key, getattr(checkpoint, key)) for key in ("every_steps", "every_epoch", "resume") if getattr(checkpoint, key, None)]
    if asked:
        settings = ", ".join(f"checkpoint.{key}={value}" for key, value in asked)
        off = ", ".join(f"checkpoint.{key}={'null' if key == 'resume' else 'false' if key == 'every_epoch' else 0}" for key, _ in asked)
        raise ConfigError(f"{settings}: checkpoints under {accelerator.distributed_type} are not supported "
                          f"(they hold whole, unsharded model and optimizer states); set {off}")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, or must not be loaded."""


# --------------------------------------------------------------------------------------------
# What run a checkpoint belongs to


def fingerprint(config: Any, ignore: Iterable[str] = ()) -> dict:
    """The config as flat ``{"train.lr": 1e-4, ...}`` (JSON values), without the keys in
    ``ignore`` (a key or a group prefix): settings that may change between a run and its resume."""
    ignore = tuple(ignore)
    flat: dict = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif not any(prefix == skip or prefix.startswith(skip + ".") for skip in ignore):
            flat[prefix] = value

    walk("", dataclasses.asdict(config))
    return json.loads(json.dumps(flat, default=str))  # tuples -> lists, as read back from JSON


def differing_keys(saved: dict, current: dict) -> list[str]:
    missing = object()
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k, missing) != current.get(k, missing))


def describe_differences(saved: dict, current: dict, keys: list[str], limit: int = 6) -> str:
    shown = [f"{k}: {saved.get(k, '(absent)')!r} -> {current.get(k, '(absent)')!r}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


# --------------------------------------------------------------------------------------------
# Pickle-free state of the model, optimizer, scheduler, scaler and random generators


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{device}"] = state
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    return tensors, {"numpy": [kind, int(position), int(has_gauss), float(gauss)], "python": [version, list(internal), gauss_next]}


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    for key, state in tensors.items():
        if key.startswith("cuda.") and int(key[5:]) < torch.cuda.device_count():
            torch.cuda.set_rng_state(state, int(key[5:]))
    kind, position, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=1))


# --------------------------------------------------------------------------------------------


class CheckpointManager:
    """Saves and finds the checkpoints of one run; every process calls :meth:`save` and :meth:`load`."""

    def __init__(self, accelerator: Accelerator, output_dir: str | Path, *, keep: int, fingerprint: dict,
                 model: torch.nn.Module, optimizer, scheduler):
        self.accelerator = accelerator
        self.directory = Path(output_dir) / "checkpoints"
        self.keep = keep
        self.fingerprint = fingerprint
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def _modules(self):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model, getattr(self.optimizer, "optimizer", self.optimizer)

    def save(self, step: int, state, metrics_bytes: int = 0) -> Path:
        """``step_{step}``: complete or absent, with ``state`` (a :class:`~dapt.core.state.TrainState`
        or a dict) as JSON; the weights must be finite (else FloatingPointError, and the previous
        checkpoint stays the last good one)."""
        accelerator = self.accelerator
        model, optimizer = self._modules()
        check_finite(model, f"at step {step}", step=step)
        state = state.to_json() if hasattr(state, "to_json") else state
        final = self.directory / f"step_{step:08d}"
        temporary = self.directory / f".tmp-step_{step:08d}"
        rank, main = accelerator.process_index, accelerator.is_main_process

        digests: dict[str, str] = {}  # file name -> content hash, each taken right after the file is written

        def written(name: str) -> Path:
            digests[name] = integrity.file_digest(temporary / name)
            return temporary / name

        def write_rng():
            rng_tensors, rng_meta = _rng_state()
            save_file(rng_tensors, str(temporary / f"rng_{rank}.safetensors"))
            _write_json(temporary / f"rng_{rank}.json", rng_meta)
            written(f"rng_{rank}.safetensors"), written(f"rng_{rank}.json")

        def write_main():
            save_model(model, str(temporary / "model.safetensors"))
            written("model.safetensors")
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(temporary / "optimizer.safetensors"))
            _write_json(temporary / "optimizer.json", meta)
            written("optimizer.safetensors"), written("optimizer.json")
            scheduler = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            reserved = dict(fingerprint=self.fingerprint, metrics_bytes=metrics_bytes, scheduler=scheduler,
                            grad_scaler=scaler, accelerator_step=accelerator.step)
            _write_json(temporary / STATE_FILE, integrity.seal({**state, "step": step, **reserved}, digests))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)

        def fresh_folder():
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)

        # three phases, each ended by every process learning whether any of them failed (in place
        # of a barrier): the folder, every process's generators, then the main process's files
        failure = agreed_failure(_attempt(fresh_folder) if main else None)
        if failure is None:  # every process's generators, and their digests for the main process's record
            failure = agreed_failure(_attempt(write_rng))
            if failure is None and accelerator.num_processes > 1:
                from accelerate.utils import gather_object

                for entries in gather_object([digests]):
                    digests.update(entries)
        if failure is None:
            failure = agreed_failure(_attempt(write_main) if main else None)
        if failure is not None:
            if main:
                shutil.rmtree(temporary, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint {final}: {failure}; nothing of it was kept "
                                  f"(the last complete checkpoint is {self.latest_name()})")
        if accelerator.is_main_process:
            self._prune(step)
            logger.info(f"checkpoint saved: {final}")
        accelerator.wait_for_everyone()
        return final

    def save_weights(self, name: str, info: dict) -> Path:
        """``checkpoints/{name}/``: the model's weights alone (stage 2 keeps its best epoch's there),
        written like a checkpoint - complete or absent, every process learning of a failure - with
        ``info`` and the weights' content hash in ``weights.json``."""
        model, _ = self._modules()
        final, temporary = self.directory / name, self.directory / f".tmp-{name}"

        def write():
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            save_model(model, str(temporary / "model.safetensors"))
            digests = {"model.safetensors": integrity.file_digest(temporary / "model.safetensors")}
            _write_json(temporary / WEIGHTS_STATE, integrity.seal(info, digests))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)

        failure = agreed_failure(_attempt(write) if self.accelerator.is_main_process else None)
        if failure is not None:
            if self.accelerator.is_main_process:
                shutil.rmtree(temporary, ignore_errors=True)
            raise CheckpointError(f"cannot write {final}: {failure}; nothing of it was kept")
        return final

    def load_weights(self, name: str) -> Optional[dict]:
        """The weights :meth:`save_weights` wrote under ``name`` (a state dict on the CPU) once they
        verify, or None with a warning saying what is wrong with them."""
        folder = self.directory / name
        problem = "missing" if not (folder / WEIGHTS_STATE).is_file() else integrity.problem_with(folder, WEIGHTS_STATE)
        if problem is not None:
            logger.warning(f"{folder}: {problem}; its weights are not used")
            return None
        return load_file(str(folder / "model.safetensors"))

    def _prune(self, step: int) -> None:
        """Keep ``step_{step}`` and the ``keep - 1`` newest older ones of this run; delete later
        step numbers (an abandoned future of a resumed run). Never touch another run's."""
        ours = [p for p in self.all() if self._ours(p)]
        older = [p for p in ours if _step_of(p) < step]
        doomed = older[: max(0, len(older) - (self.keep - 1))] + [p for p in ours if _step_of(p) > step]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)

    def _ours(self, path: Path) -> bool:
        try:
            return read_state(path).get("fingerprint") == self.fingerprint
        except (OSError, ValueError, AttributeError):  # unreadable: nobody's to delete
            return False

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and re.fullmatch(r"step_\d{8}", p.name)]
        return sorted(p for p in found if (p / STATE_FILE).is_file())

    def latest_name(self) -> str:
        found = self.all()
        return str(found[-1]) if found else "none"

    def last_good(self, before: Optional[int] = None) -> str:
        """The newest checkpoint of this run (before step ``before``) whose files verify, or "none"."""
        for path in reversed(self.all()):
            if (before is None or _step_of(path) < before) and self._ours(path) and integrity.problem_with(path, STATE_FILE) is None:
                return str(path)
        return "none"

    def resolve(self, resume: Optional[str], overwrite: bool = False) -> Optional[Path]:
        """``None`` -> start fresh; ``latest`` -> the newest complete checkpoint that verifies (fresh
        if there is none; an error if none of them verifies); a path -> that checkpoint, which must
        be complete and verify. A checkpoint of other settings is an error naming the keys, or with
        ``overwrite`` (``latest`` only) ignored. The main process decides; every process gets its answer."""
        return _decided_by_main(self.accelerator, lambda: self._resolve(resume, overwrite))

    def _resolve(self, resume: Optional[str], overwrite: bool) -> Optional[Path]:
        if not resume:
            return None
        if resume == "latest":
            found = self.all()
            if not found:
                logger.info(f"resume=latest: no checkpoint under {self.directory}, starting fresh")
                return None
            damaged = []
            for path in reversed(found):
                problem = integrity.problem_with(path, STATE_FILE)
                if problem is None:
                    break
                damaged.append(f"{path.name}: {problem}")
                logger.warning(f"checkpoint {path} does not verify: {problem}; trying the one before it")
            else:
                raise CheckpointError(f"checkpoint.resume=latest: no checkpoint under {self.directory} verifies ({'; '.join(damaged)}); "
                                      "set overwrite=true to start afresh")
        else:
            path = Path(resume)
            if not (path / STATE_FILE).is_file():
                raise FileNotFoundError(f"checkpoint.resume: {path} is not a complete checkpoint (no {STATE_FILE})")
            problem = integrity.problem_with(path, STATE_FILE)
            if problem is not None:
                raise CheckpointError(f"checkpoint.resume: {path} does not verify: {problem}; resume from another checkpoint "
                                      "(checkpoint.resume=latest takes the newest that verifies)")
        saved = read_state(path).get("fingerprint")
        keys = ["(no record of its settings)"] if saved is None else differing_keys(saved, self.fingerprint)
        if keys:
            if resume == "latest" and overwrite:
                logger.warning(f"{path} belongs to a run with other settings ({', '.join(keys[:6])}); overwrite=true: starting afresh")
                return None
            detail = "written by an older version" if saved is None else describe_differences(saved, self.fingerprint, keys)
            raise CheckpointError(f"checkpoint.resume={resume}: {path} belongs to a run with other settings ({detail}); "
                                  "use the same settings, or overwrite=true to start afresh, or another output_dir")
        return path

    def load(self, path: Path) -> dict:
        """Restore weights, optimizer, schedule, scaler and generators; returns the loop's state."""
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{path} holds {', '.join(pickles)}: refusing to load pickle files from a checkpoint "
                                  "(unpickling can run code); checkpoints hold only safetensors and JSON")
        state = read_state(path)
        if not integrity.is_sealed(state):
            logger.warning(f"{path} has no content hashes (written by an older version): loading it unverified")
        try:
            self._restore(path, state)
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"cannot load checkpoint {path}: {type(error).__name__}: {str(error).splitlines()[0]}") from error
        logger.info(f"resumed from {path} at step {state['step']}")
        return {k: v for k, v in state.items() if k not in _RESERVED}

    def _restore(self, path: Path, state: dict) -> None:
        accelerator = self.accelerator
        model, optimizer = self._modules()
        device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)  # safetensors refuses "cpu:0"
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=device)
        if missing or unexpected:
            raise CheckpointError(f"{path}/model.safetensors does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors"), device=device),
                        json.loads((path / "optimizer.json").read_text()))
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(self.scheduler.lr_lambdas)})
        if accelerator.scaler is not None and state.get("grad_scaler"):
            accelerator.scaler.load_state_dict(state["grad_scaler"])
        accelerator.step = state["accelerator_step"]
        rng = path / f"rng_{accelerator.process_index}"
        if rng.with_suffix(".safetensors").is_file():
            _set_rng_state(load_file(str(rng.with_suffix(".safetensors"))), json.loads(rng.with_suffix(".json").read_text()))
        else:
            logger.warning(f"{path}: no random state for process {accelerator.process_index} (another process count?)")


def _decided_by_main(accelerator: Accelerator, decide):
    """``decide()`` on the main process only; its result, or its exception, on every process."""
    outcome: list = [None]
    if accelerator.is_main_process:
        try:
            outcome = [("result", decide())]
        except Exception as error:  # raised again below, on every process
            outcome = [("error", error)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def _attempt(write) -> Optional[str]:
    """Run ``write``; None when it succeeded, else what went wrong (:func:`write_failure`)."""
    try:
        write()
    except OSError as error:
        return write_failure(error)
    return None


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))
