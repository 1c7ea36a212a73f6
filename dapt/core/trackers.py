"""Which experiment trackers a run reports to: ``report_to`` (any tracker Accelerate supports:
tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, ...) plus the older ``tensorboard: true``.

Accelerate silently drops a requested tracker whose package is missing; a run that was asked to
report somewhere must not train for hours and report nowhere, so that is an error here, raised
before anything is written.
"""

from __future__ import annotations

from typing import Optional, Sequence


def tracker_names(tensorboard: bool = False, report_to: Sequence[str] = ()) -> Optional[list[str]]:
    """The ``log_with`` list for :class:`accelerate.Accelerator` (``None``: no tracker)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    from dapt.core.config import ConfigError

    names = list(dict.fromkeys((["tensorboard"] if tensorboard else []) + [str(n).strip() for n in report_to or ()]))
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"config key 'report_to': unknown tracker {name!r}; Accelerate supports "
                              f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            raise ConfigError(f"config key 'report_to': tracker {name!r} is not installed (pip install {name})")
    return names or None
