"""The runtime both stages share: Accelerator setup, optimizer and schedule, checkpoints, metrics.

Everything a training loop needs besides the model and the data lives here once:

* :func:`make_accelerator` - mixed precision, gradient accumulation, seeded sampling, CPU runs;
  :func:`end_run` - its end: trackers finished, the process group released without a hang.
* :func:`parameter_groups` / :func:`make_optimizer` - AdamW with no decay on biases and norms,
  fused when every parameter is on a CUDA device.
* :func:`linear_warmup_decay` - linear warmup to each group's LR (from LR/(W+1)), then linear decay to ``min_lr``;
  it steps once per optimizer step, whatever the number of processes.
* :class:`CheckpointConfig` - the ``checkpoint`` group (the checkpoints themselves:
  :mod:`dapt.core.checkpoint`; the run folder's contract: :mod:`dapt.core.rundir`).
* :class:`MetricsWriter` - ``metrics.jsonl`` on the main process, and TensorBoard when asked.
* :class:`ThroughputMeter` - tokens/s with warm-up steps excluded.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

from dapt.core.trackers import tracker_names

logger = get_logger(__name__)

NO_DECAY_PATTERN = re.compile(r"(^|\.)(bias|LayerNorm\.weight|layer_norm\.weight|layernorm\.weight|norm\.weight)$")


@dataclass
class ImplConfig:
    """How to run: precision, kernels, loaders. Nothing here changes the maths beyond rounding."""

    mixed_precision: str = "bf16"  # no | fp16 | bf16
    compile: bool = False  # torch.compile the model
    fused_adamw: bool = True  # use the fused AdamW kernel when all parameters are on CUDA
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    tf32: bool = True  # TF32 matmuls on Ampere+ GPUs
    dataloader_workers: int = 2  # DataLoader worker processes per training process; 0: load in that process
    pin_memory: bool = True  # page-locked batches for faster host-to-GPU copies (only with CUDA)
    cpu: bool = False  # force the CPU even when a GPU is present
    # how long a process waits for the others at a collective (torch.distributed's timeout) before
    # the run fails; long enough for the main process to read and clean a corpus of many GB
    ddp_timeout_minutes: float = 60.0

    def validate(self, prefix: str = "impl") -> None:
        if self.mixed_precision in ("False", "false", "None", "none", "fp32"):  # YAML reads `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise_config(f"{prefix}.mixed_precision", self.mixed_precision, "one of no, fp16, bf16")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            raise_config(f"{prefix}.attn_implementation", self.attn_implementation, "sdpa, eager or flash_attention_2")
        if self.dataloader_workers < 0:
            raise_config(f"{prefix}.dataloader_workers", self.dataloader_workers, "a count >= 0")
        if not (math.isfinite(self.ddp_timeout_minutes) and self.ddp_timeout_minutes > 0):
            raise_config(f"{prefix}.ddp_timeout_minutes", self.ddp_timeout_minutes, "a number of minutes > 0")


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # optimizer steps between checkpoints; 0: no intermediate checkpoints
    keep: int = 2  # how many step_* folders to keep (>= 1: the newest is always kept)
    resume: Optional[str] = None  # latest | PATH to a step_* folder

    def validate(self, prefix: str = "checkpoint") -> None:
        if self.keep < 1:
            raise_config(f"{prefix}.keep", self.keep, "an integer >= 1 (the checkpoint just written is always kept)")
        if self.every_steps < 0:
            raise_config(f"{prefix}.every_steps", self.every_steps, "an integer >= 0 (0: off)")


def raise_config(key: str, value: Any, expected: str):
    from dapt.core.config import ConfigError

    raise ConfigError(f"config key '{key}': got {value!r}, expected {expected}")


def check_range(key: str, value: float, low: float = 0.0, high: float = math.inf, expected: str = "a finite number >= 0") -> None:
    """``value`` must be a finite number in ``[low, high]`` (NaN and infinities are refused)."""
    if not (math.isfinite(value) and low <= value <= high):
        raise_config(key, value, expected)


def report_weights_format(name_or_path: str) -> None:
    """Say how a local encoder's weights will be read: a folder with only ``pytorch_model.bin`` (a
    pickle) is loaded by transformers with ``torch.load(weights_only=True)``: tensors only, no code."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("pytorch_model*.bin")):
        logging.getLogger(__name__).warning(
            f"{name_or_path} ships its weights only as pytorch_model.bin (a pickle): loading it with "
            "torch.load(weights_only=True), which reads tensors and refuses code; prefer model.safetensors"
        )


# --------------------------------------------------------------------------------------------
# Accelerator, seeding, logging


def make_accelerator(
    impl: ImplConfig, output_dir: str | Path, grad_accum: int = 1, tensorboard: bool = False, report_to=()
) -> Accelerator:
    """An Accelerator for one run. On a machine without CUDA it runs on the CPU, several CPU
    processes (``torchrun`` / ``accelerate launch --multi_gpu``) talk over gloo."""
    cpu = impl.cpu or not torch.cuda.is_available()
    mixed_precision = impl.mixed_precision
    if cpu and mixed_precision == "fp16":
        logging.getLogger(__name__).warning("fp16 autocast is not supported on the CPU; running in fp32 (use bf16 or no)")
        mixed_precision = "no"
    if cpu and mixed_precision == "bf16" and not cpu_has_native_bf16():
        # kept as asked (tests run bf16 code paths on such CPUs), but say what it costs
        logging.getLogger(__name__).warning(
            "this CPU has no native bf16: bf16 autocast is emulated (measured 3-4x slower than fp32 by "
            "benchmarks/bench.py); set impl.mixed_precision=no for speed"
        )
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        log_with=tracker_names(tensorboard, report_to),  # report_to: any tracker Accelerate supports
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "tb")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=impl.ddp_timeout_minutes))],
    )
    if torch.cuda.is_available() and impl.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    setup_logging(accelerator)
    return accelerator


# How long a finished run leaves the GIL to gloo's worker threads before its process group is
# destroyed (see release_process_group); they need microseconds once scheduled, and a loaded
# machine may not schedule them for tens of milliseconds.
GLOO_SETTLE_S = 0.2


def end_run(accelerator: Accelerator) -> None:
    """The last call of a run, on every process: trackers finished, then the process group released
    (:func:`release_process_group`). In place of ``accelerator.end_training()``, which destroys the
    process group right after the run's last collective and so can hang at exit."""
    for tracker in accelerator.trackers:
        tracker.finish()
    if not getattr(accelerator.state, "fork_launched", False):  # a notebook launcher owns its process group
        release_process_group()


def forget_accelerate_state() -> None:
    """Forget accelerate's process-wide state, as a new process would. A stage builds it once per
    process (each command-line run is one); only code that runs several runs in one process - the
    tests, the benchmarks comparing against the Trainer - needs this between them (a shared state
    otherwise refuses an Accelerator with another mixed precision)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def release_process_group(group=None, *, barrier: bool = True) -> None:
    """Destroy ``group`` (default: the default process group) without the gloo exit hang.

    A gloo worker thread frees a finished collective's tensors (a barrier keeps the collectives
    before it alive) only once it holds the GIL, and the process group's destructor joins those
    threads while holding the GIL. So a group destroyed right after a collective - on the next
    line, or when the DDP model holding its last reference is freed - deadlocks now and then
    (torch 2.13; pytorch/pytorch#190489 tracks the GIL-teardown family). CI saw a 2-process
    stage-2 run hang at exit with its results written; a loop of DDP + gather + barrier + destroy
    hung within 1 to 27 rounds in each of 15 tries (tests/test_process_group_exit.py). Hence a
    barrier, then the GIL released for ``GLOO_SETTLE_S``, then the destroy: a pause, not a proof,
    but 0.2 s is some thousand times what the threads need once scheduled. ``barrier=False`` on
    the way out of a failed run: the other processes may never reach a barrier."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    if barrier:
        dist.barrier(group=group)
    time.sleep(GLOO_SETTLE_S)  # sleeping releases the GIL
    dist.destroy_process_group(group)


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 / AMX); elsewhere CPU bf16
    autocast is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def setup_logging(accelerator: Accelerator) -> None:
    level = logging.INFO if accelerator.is_main_process else logging.ERROR
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logging.getLogger().setLevel(level)
    import datasets
    import transformers

    transformers.utils.logging.disable_propagation()  # it has its own handler: no double lines
    if accelerator.is_main_process:
        transformers.utils.logging.set_verbosity_warning()
        datasets.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()


# --------------------------------------------------------------------------------------------
# Optimizer and schedule


def parameter_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float
) -> list[dict]:
    """Two AdamW groups at ``lr``: with weight decay, and without it for biases and norm weights."""
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        (no_decay if NO_DECAY_PATTERN.search(name) or parameter.ndim < 2 else decay).append(parameter)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def make_optimizer(
    groups: list[dict], *, fused: bool = True, betas=(0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW over ``groups``; the fused CUDA kernel when asked for, available and applicable."""
    params = [p for group in groups for p in group["params"]]
    use_fused = (
        fused
        and "fused" in inspect.signature(torch.optim.AdamW).parameters
        and all(p.is_cuda and p.is_floating_point() for p in params)
    )
    return torch.optim.AdamW(groups, betas=betas, eps=eps, **({"fused": True} if use_fused else {}))


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's LR, per optimizer step k (from 0): ``(k + 1) / (W + 1)`` of it while k < W =
    ``warmup_steps`` (a linear rise that starts at LR/(W+1), not at 0: no step is spent at LR 0), the
    full LR at k = W, then linearly down to ``min_lr`` at ``total_steps`` (and held there). Step it
    once per optimizer step."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(base_lr: float):
        floor = min(1.0, min_lr / base_lr) if base_lr > 0 else 0.0

        def at(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / (warmup_steps + 1)
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return max(floor, 1.0 - progress * (1.0 - floor))

        return at

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(group["lr"]) for group in optimizer.param_groups])


def steps_from_budget(batches_per_epoch: int, grad_accum: int, epochs: float, max_steps: int) -> int:
    """Optimizer steps for a run: ``max_steps`` when > 0, else ``epochs`` over the loader."""
    steps_per_epoch = math.ceil(batches_per_epoch / grad_accum)
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(steps_per_epoch * epochs))


# --------------------------------------------------------------------------------------------
# Metrics and files


def write_failure(error: Optional[BaseException]) -> Optional[str]:
    """What a failed file write says to a user: "no space left on device" for a full disk."""
    if error is None:
        return None
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "no space left on device"
    return f"{error.strerror} ({error.filename})" if isinstance(error, OSError) and error.strerror else str(error)


def agreed_failure(failure: Optional[str]) -> Optional[str]:
    """Make one process's failure (a message, or None) known to every process: the first reported,
    or None when all succeeded. A collective that every process must reach, so a write that fails
    on one process stops all of them at once, with its message, instead of leaving the others at
    the next barrier until the process-group timeout."""
    from accelerate.utils import gather_object

    return next((message for message in gather_object([failure]) if message), None)


def write_json(accelerator: Accelerator, path: str | Path, payload: Any) -> None:
    """Main process only; written to a temporary name, then renamed."""
    if not accelerator.is_main_process:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(temporary, path)


def _json_default(value: Any):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class MetricsWriter:
    """One JSON object per line in ``metrics.jsonl``, plus TensorBoard when the Accelerator has it."""

    def __init__(self, accelerator: Accelerator, path: str | Path, append: bool = False):
        self.accelerator = accelerator
        self.path = Path(path)
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                self.path.write_text("")

    def size(self) -> int:
        """Bytes written so far (main process): a checkpoint records it, a resume cuts back to it."""
        return self.path.stat().st_size if self.accelerator.is_main_process and self.path.is_file() else 0

    def log(self, metrics: dict, step: int) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, **metrics}, default=_json_default) + "\n")
        if self.accelerator.log_with:
            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(numeric, step=step)


class ThroughputMeter:
    """Counts tokens; the rate excludes the first ``warmup`` intervals."""

    def __init__(self, warmup: int = 1):
        self.warmup = warmup
        self.intervals = 0
        self.tokens = 0
        self.elapsed = 0.0
        self._start = time.perf_counter()

    def update(self, tokens: int) -> None:
        now = time.perf_counter()
        self.intervals += 1
        if self.intervals > self.warmup:
            self.tokens += tokens
            self.elapsed += now - self._start
        self._start = now

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else float("nan")


def inner_state_dict(accelerator: Accelerator, module: torch.nn.Module, prefix: str = "") -> dict:
    """The state dict of ``module`` (gathered under FSDP) without DDP / ``torch.compile`` wrapper
    prefixes, and with ``prefix`` (a wrapped submodule's attribute name) stripped."""
    state = accelerator.get_state_dict(module)
    clean = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
        clean[key.removeprefix(prefix)] = value
    return clean
