"""The optimizer step both loops share, and the guard against non-finite weights.

Modelled on the end of nanoGPT's training loop and cramming's ``model_engine.step``: the loop
computes a loss inside ``accelerator.accumulate(model)`` and calls :class:`OptimizerStep`, which
does the rest - backward every micro-batch; at an accumulation boundary clip, check, step,
schedule, zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)


@dataclass
class StepResult:
    grad_norm: torch.Tensor  # before clipping
    lrs: list[float]  # the learning rates this update used, one per parameter group
    skipped: bool  # no update: a non-finite gradient, or an fp16 overflow the scaler skipped


class OptimizerStep:
    """``step(loss)``: backward; at an accumulation boundary clip to ``max_grad_norm`` (0: no
    clipping), skip a non-finite update (counted in ``state.nonfinite``; more than
    ``max_nonfinite`` stops the run), step the optimizer and the schedule, zero the gradients and
    count ``state.step``. Under fp16 the gradient scaler skips an overflowing step and lowers its
    scale: that is its normal working, not counted. Returns ``None`` between boundaries."""

    def __init__(self, accelerator, model, optimizer, scheduler, state, *, max_grad_norm: float, max_nonfinite: int):
        self.accelerator, self.model, self.optimizer, self.scheduler, self.state = accelerator, model, optimizer, scheduler, state
        self.max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        self.max_nonfinite = max_nonfinite

    def __call__(self, loss: torch.Tensor) -> Optional[StepResult]:
        accelerator, state = self.accelerator, self.state
        accelerator.backward(loss)
        if not accelerator.sync_gradients:
            return None
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.max_norm)
        if accelerator.scaler is not None:  # fp16: the scaler checks the gradients itself
            self.optimizer.step()
            skipped = accelerator.optimizer_step_was_skipped
        elif not torch.isfinite(grad_norm):
            state.nonfinite += 1
            logger.warning(f"step {state.step + 1}: non-finite gradient norm, update skipped ({state.nonfinite})")
            if state.nonfinite > self.max_nonfinite:
                raise FloatingPointError(f"{state.nonfinite} non-finite updates: stopping (lower the learning rate?)")
            skipped = True
        else:
            self.optimizer.step()
            skipped = False
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        state.step += 1
        return StepResult(grad_norm, lrs, skipped)


@torch.no_grad()
def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (one device sync)."""
    named = [(name, p) for name, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def check_finite(module: torch.nn.Module, when: str, last_good: str) -> None:
    """FloatingPointError naming ``when`` and the last good checkpoint when ``module`` has non-finite weights."""
    bad = nonfinite_parameters(module)
    if bad:
        raise FloatingPointError(f"non-finite weights {when} in {len(bad)} tensors (e.g. {bad[0]}): not saving them; "
                                 f"the last good checkpoint is {last_good} (lower the learning rate?)")
