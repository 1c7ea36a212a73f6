"""The one text-cleaning rule, for stage 1's corpus, stage 2's labelled sets and inference alike.

``dapt-publish`` writes this file's code into the published ``model.py`` in place of its
``from dapt.core.text import ...`` line (the published file imports no dapt module), so it stays
standard-library only and defines nothing else.
"""

from __future__ import annotations

import re

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_BLANK = re.compile(r"(?:\s|<br\s*/?>)*", re.IGNORECASE)  # what clean_text turns into ""


def clean_text(text: str) -> str:
    """IMDb's ``<br />`` line breaks (any case or spacing) become spaces; runs of whitespace collapse
    to one space, none left at either end. (``str.split()`` splits at what ``\\s`` matches,
    ``str.isspace``, and is ~3x faster than a second regex: stage 1 cleans every document.)"""
    return " ".join(_BREAK.sub(" ", text).split())


def is_blank(text: str | None) -> bool:
    """``clean_text(text) == ""`` (``None`` included), without building the cleaned text: only
    whitespace and ``<br />`` tags. Both stages drop such texts before anything else."""
    return text is None or _BLANK.fullmatch(text) is not None
