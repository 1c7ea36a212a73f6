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
        return "LOAD REPORT" not in str(record.msg)

    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(drop_report)
    try:
        yield
    finally:
        report.removeFilter(drop_report)
