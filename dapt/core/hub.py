"""Is a name a Hugging Face Hub repository id or a local path? One answer for the whole project.

The syntax of a repo id is huggingface_hub's own (:func:`huggingface_hub.utils.validate_repo_id`:
``name`` or ``owner/name``, at most 96 characters of letters, digits, ``-``, ``_``, ``.``, no
``--`` or ``..``). A name is a local path when it exists on this machine (``runs/dapt`` after stage
1 is a folder, not a Hub repo) or when it can only be one (``./x``, ``/x``, ``~/x``, ``a/b/c``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id


def is_repo_id(name: Any, *, owner_required: bool = False) -> bool:
    """``name`` is spelled like a Hub repo id (``owner/name``, or ``name`` unless ``owner_required``)."""
    if not isinstance(name, str):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name or not owner_required


def repo_id_problem(repo_id: Any) -> str | None:
    """Why the Hub would refuse ``repo_id`` as a ``USER/NAME`` to create or push to, or None."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        return f"must look like USER/NAME, got {repo_id!r}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return f"must look like USER/NAME and be a name the Hub accepts: {error}"
    return None


def looks_local(name_or_path: Any) -> bool:
    """True for what can only be a local path: it exists on disk, is absolute, starts with ``.``
    or ``~``, or is not spelled like a repo id."""
    text = str(name_or_path)
    return (
        Path(text).expanduser().exists()
        or os.path.isabs(text)
        or text.startswith((".", "/", "~"))
        or not is_repo_id(text)
    )


def is_hub_id(name: Any, *, owner_required: bool = False) -> bool:
    """A repo id that is not a path on this machine."""
    return isinstance(name, str) and not looks_local(name) and is_repo_id(name, owner_required=owner_required)
