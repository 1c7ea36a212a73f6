"""Helpers for loading pretrained checkpoints that both stages use."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def without_load_report() -> Iterator[None]:
    """Silence transformers' table of missing / unexpected keys, for a caller that says what they
    mean itself. Load errors (size mismatches, failed conversions) still raise.
    A filter, not a higher level: transformers runs extra checks, and warns, when that level is raised."""

    def drop_report(record: logging.LogRecord) -> bool:
        # the missing-keys table, and "This checkpoint seem corrupted ... tie cls.predictions.bias":
        # what transformers says of a checkpoint without the tied head weights (a sentence encoder
        # loaded as a masked LM), which the caller reports as "no MLM head: initialised fresh"
        message = str(record.msg)
        return "LOAD REPORT" not in message and "This checkpoint seem corrupted" not in message

    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(drop_report)
    try:
        yield
    finally:
        report.removeFilter(drop_report)
