"""Where a training loop is: a typed state saved as JSON in every checkpoint, and the running loss."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class TrainState:
    """What both loops track; each stage adds its own fields in a subclass. Every field is a JSON
    value: the checkpoint's ``trainer_state.json`` holds :meth:`to_json`."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already trained: a resumed run skips them
    nonfinite: int = 0  # updates skipped for a non-finite gradient
    nonfinite_streak: int = 0  # of them, the latest in a row (0: the last update was finite)
    wall_time_s: float = 0.0  # training time over all sessions
    pending_loss: float = 0.0  # all-process sum of the losses since the last log line
    pending_batches: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0


class RunningLoss:
    """The mean training loss since the last log line, over all processes, with no host sync per
    batch; :meth:`save_into` keeps it in the state, so a resumed run logs the same numbers."""

    def __init__(self, accelerator, state: TrainState):
        self.accelerator = accelerator
        self.total = torch.tensor(state.pending_loss / accelerator.num_processes, device=accelerator.device)
        self.batches = state.pending_batches

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach().float()
        self.batches += 1

    def pop_mean(self) -> float:
        mean = self.accelerator.reduce(self.total / max(1, self.batches), "mean").item()
        self.total.zero_()
        self.batches = 0
        return mean

    def save_into(self, state: TrainState) -> None:
        state.pending_loss = self.accelerator.reduce(self.total.clone(), "sum").item()
        state.pending_batches = self.batches
