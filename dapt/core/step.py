"""The optimizer step both loops share, and the guard against non-finite weights.

Modelled on the end of nanoGPT's training loop and cramming's ``model_engine.step``: the loop
computes a loss inside ``accelerator.accumulate(model)`` and calls :class:`OptimizerStep`, which
does the rest - backward every micro-batch; at an accumulation boundary clip, check, step,
schedule, zero. At every optimizer step boundary the processes also agree whether a stop signal
arrived (:func:`dapt.core.signals.agreed_stop`).

Divergence (:class:`Diverged`) is a run that trained into non-finite numbers: more than
``max_nonfinite`` skipped updates in a row, a run that ends on skipped updates
(:meth:`OptimizerStep.check_recovered`), non-finite weights (:func:`check_finite`), or a
non-finite evaluation loss (:func:`check_loss`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from accelerate.logging import get_logger

from dapt.core.signals import agreed_stop

logger = get_logger(__name__)

# the largest loss whose perplexity exp(loss) is a float (709.78 nats): beyond it the model gives
# the right token a probability below 1e-308, which no model that is learning does
LOG_MAX = math.log(sys.float_info.max)


class Diverged(FloatingPointError):
    """Training diverged. Says what and from which ``step``; the run's guard
    (:func:`dapt.core.guard.guarded_run`) adds the last good checkpoint (one that verifies, from
    before ``step``) and the likely cause (the learning rates, with their values)."""

    def __init__(self, what: str, step: int, *, cause: Optional[str] = None, last_good: Optional[str] = None):
        super().__init__(what)
        self.what, self.step, self.cause, self.last_good = what, step, cause, last_good

    def __str__(self) -> str:
        last_good = f"; the last good checkpoint is {self.last_good}" if self.last_good is not None else ""
        return f"{self.what}{last_good}; likely cause: {self.cause or 'the learning rate: lower it'}"


def perplexity(loss: float) -> float:
    """exp(loss), infinite beyond :data:`LOG_MAX` (never capped: a capped 1e304 hides a diverged model)."""
    return math.inf if loss > LOG_MAX else math.exp(loss)


def check_loss(name: str, loss, when: str, step: int, *, with_perplexity: bool = False, cause: Optional[str] = None) -> None:
    """:class:`Diverged` when an evaluation's mean loss (a number or the per-row losses) is not
    finite, or with ``with_perplexity`` has no finite perplexity."""
    loss = float(np.mean(loss))
    if math.isfinite(loss) and not (with_perplexity and loss > LOG_MAX):
        return
    shown = f"{name} {loss:.4g}" + (f" (perplexity {perplexity(loss):.4g})" if with_perplexity else "")
    raise Diverged(f"{shown} {when}: the model has diverged", step, cause=cause)


@dataclass
class StepResult:
    grad_norm: torch.Tensor  # before clipping
    lrs: list[float]  # the learning rates this update used, one per parameter group
    skipped: bool  # no update: a non-finite gradient, or an fp16 overflow the scaler skipped
    stop_signal: int = 0  # a stop signal some process received (every process agrees): checkpoint and stop


class OptimizerStep:
    """``step(loss)``: backward; at an accumulation boundary clip to ``max_grad_norm`` (0: no
    clipping), skip a non-finite update (counted in ``state.nonfinite``; more than
    ``max_nonfinite`` of them in a row stop the run), step the optimizer and the schedule, zero the
    gradients and count ``state.step``. Under fp16 the gradient scaler skips an overflowing step and
    lowers its scale: that is its normal working, not counted. Returns ``None`` between boundaries."""

    def __init__(self, accelerator, model, optimizer, scheduler, state, *, max_grad_norm: float, max_nonfinite: int,
                 reduce_gradients: Optional[Callable[[], None]] = None, what: str = "training", cause: Optional[str] = None):
        self.accelerator, self.model, self.optimizer, self.scheduler, self.state = accelerator, model, optimizer, scheduler, state
        self.max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        self.max_nonfinite = max_nonfinite
        # for a model outside DDP (stage 1's head warm-up trains the head of the unwrapped model):
        # averages its gradients across processes at each boundary, before clipping
        self.reduce_gradients = reduce_gradients
        self.what = what  # named in the divergence messages: "training", "the head warm-up"
        self.cause = cause  # the likely cause they name (None: the run's guard names the learning rates)

    def __call__(self, loss: torch.Tensor) -> Optional[StepResult]:
        accelerator, state = self.accelerator, self.state
        accelerator.backward(loss)
        if not accelerator.sync_gradients:
            return None
        if self.reduce_gradients is not None:
            self.reduce_gradients()
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.max_norm)
        if accelerator.scaler is not None:  # fp16: the scaler checks the gradients itself
            self.optimizer.step()
            skipped = accelerator.optimizer_step_was_skipped
        elif not torch.isfinite(grad_norm):
            state.nonfinite += 1
            state.nonfinite_streak += 1
            logger.warning(f"step {state.step + 1}: non-finite gradient norm, update skipped ({state.nonfinite_streak} in a row)")
            if state.nonfinite_streak > self.max_nonfinite:
                first = state.step + 2 - state.nonfinite_streak
                raise Diverged(f"{state.nonfinite_streak} non-finite updates in a row (steps {first}-{state.step + 1}): "
                               f"{self.what} diverged at step {first}", first, cause=self.cause)
            skipped = True
        else:
            self.optimizer.step()
            skipped = False
        if not skipped:
            state.nonfinite_streak = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        state.step += 1
        return StepResult(grad_norm, lrs, skipped, agreed_stop(accelerator))

    def check_recovered(self) -> None:
        """At the end of training: :class:`Diverged` when the run's last updates were all skipped
        for non-finite gradients, however short the run (it ended without recovering)."""
        streak, last = self.state.nonfinite_streak, self.state.step
        if streak:
            first = last - streak + 1
            updates = "its last update" if streak == 1 else f"its last {streak} updates (step {first} to step {last})"
            raise Diverged(f"{self.what} diverged at step {first}: {updates} had non-finite gradients and were skipped, "
                           "and it ended without recovering", first, cause=self.cause)


@torch.no_grad()
def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (one device sync)."""
    named = [(name, p) for name, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def check_finite(module: torch.nn.Module, when: str, last_good: Optional[str] = None, step: int = 0) -> None:
    """:class:`Diverged` naming ``when`` when ``module`` has non-finite weights (inside a run, its
    guard names the last good checkpoint from before ``step``; else ``last_good`` is named)."""
    bad = nonfinite_parameters(module)
    if bad:
        raise Diverged(f"non-finite weights {when} in {len(bad)} tensors (e.g. {bad[0]}): not saving them", step, last_good=last_good)
