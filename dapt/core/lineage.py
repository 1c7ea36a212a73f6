"""The chain of adaptation phases behind an encoder, and which text each phase read.

Stage 1 writes ``adaptation`` into ``dapt_summary.json``: one record per phase, oldest first - the
phases of the model it started from (read from that model's own ``dapt_summary.json``) and then its
own. DAPT then TAPT is two phases; TAPT alone is one. A phase records where it started, where it
wrote, and every source it trained on, each with what it read on this machine:

* ``path`` / ``splits`` / ``kind`` / ``text_column`` / ``max_documents``: the source as configured
  (its display form: a relative path stays relative);
* ``resolved``: the absolute path with symlinks resolved (None for a Hub dataset);
* ``reads``: what the loader opened - ``{"file": ABS}`` for a table file (a directory source with
  splits resolves to its ``{split}.*`` files), ``{"tree": ABS, "suffix": ".txt"}`` for a folder of
  text files (``text_dir``, an ``aclImdb`` split's folders), ``{"hub": ID, "split": SPLIT}``.

:func:`read_units` / :func:`shared_units` compare what two sources read (stage 2's leakage guard,
:mod:`classify.leakage`, compares its evaluation sets with every phase). The rules:

* a file is the same file after symlinks and relative paths are resolved;
* a folder of ``.txt`` files holds every ``.txt`` file (and folder) below it;
* a Hub dataset is its id (case-insensitive) and split; a split expression counts as the splits it
  names (``train[:10%]`` is ``train``, ``train+test`` is both);
* a ``max_documents`` subset counts as the whole split (any shared document is an overlap).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from dapt.core.hub import looks_local
from dapt.core.sources import ACLIMDB_SPLITS, DataError, SourceConfig, _table_files, detect_kind

logger = logging.getLogger(__name__)

SUMMARY_NAME = "dapt_summary.json"  # stage 1's summary; its presence marks a finished stage-1 output
_SLICE = re.compile(r"\[[^\]]*\]")


def resolved(path: str | os.PathLike) -> str:
    """``path`` absolute, ``~`` expanded, symlinks resolved."""
    return os.path.realpath(os.path.expanduser(str(path)))


def read_summary(model: Optional[str]) -> Optional[dict]:
    """The ``dapt_summary.json`` of a local stage-1 output folder, or None (a Hub id, a plain encoder)."""
    if not model or not looks_local(str(model)):
        return None
    path = Path(str(model)).expanduser() / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable stage-1 summary ({error})") from error


def split_names(split: str) -> list[str]:
    """The splits a ``datasets`` split expression reads: ``train[:10%]+test`` -> train, test."""
    return [part.strip() for part in _SLICE.sub("", split).split("+") if part.strip()]


# --------------------------------------------------------------------------------------------
# What a source reads


def source_reads(source: SourceConfig) -> list[dict]:
    """What ``source`` reads on this machine (see the module docstring), found as the loaders find it."""
    try:
        kind = detect_kind(source)
    except DataError:
        return []  # a missing local path: its loader raises the error that names it
    if kind == "hub":
        return [{"hub": source.path, "split": name} for split in source.splits for name in split_names(split)]
    if kind == "files":
        try:
            groups = _table_files(source)
        except DataError:
            return []
        return [{"file": resolved(file)} for group in groups for file in group]
    if kind == "aclimdb":
        folders = [sub for split in source.splits for sub in ACLIMDB_SPLITS.get(split, [])]
        return [{"tree": resolved(Path(source.path) / sub), "suffix": ".txt"} for sub in folders]
    if kind == "text_dir":
        return [{"tree": resolved(source.path), "suffix": ".txt"}]
    # a kind added later: the whole path, conservatively
    return [{"tree": resolved(source.path), "suffix": ""}] if Path(source.path).exists() else []


def source_record(source: SourceConfig) -> dict:
    """The record of one stage-1 source in ``adaptation[].sources``."""
    try:
        kind = detect_kind(source)
    except DataError:
        kind = source.kind
    local = kind != "hub"
    return {
        "path": source.path, "kind": kind, "splits": list(source.splits), "text_column": source.text_column,
        "max_documents": source.max_documents, "resolved": resolved(source.path) if local else None,
        "reads": source_reads(source),
    }


def describe_record(record: dict) -> str:
    return f"{record.get('path')} [{', '.join(record.get('splits') or [])}]"


def read_units(record: dict) -> list[dict]:
    """A source record's ``reads``; for a record without them (a summary written before they were
    recorded) they are found now, with relative paths taken from the working directory."""
    if record.get("reads") is not None:
        return list(record["reads"])
    source = SourceConfig(path=str(record.get("path", "")), kind=str(record.get("kind") or "auto"),
                          splits=list(record.get("splits") or ["train"]))
    return source_reads(source)


def _contains(tree: dict, path: str, suffix: str) -> bool:
    """A folder of ``tree['suffix']`` files holds ``path`` (a file of that suffix, or a folder) below it."""
    root = tree["tree"]
    inside = path == root or path.startswith(root.rstrip(os.sep) + os.sep)
    return inside and (not tree.get("suffix") or suffix in ("", tree["suffix"]))


def _overlap(a: dict, b: dict) -> bool:
    if "hub" in a or "hub" in b:
        return ("hub" in a and "hub" in b and a["hub"].lower() == b["hub"].lower()
                and a.get("split") == b.get("split"))
    if "file" in a and "file" in b:
        return a["file"] == b["file"]
    if "tree" in a and "file" in b:
        return _contains(a, b["file"], Path(b["file"]).suffix)
    if "file" in a and "tree" in b:
        return _contains(b, a["file"], Path(a["file"]).suffix)
    # two folders: one below (or equal to) the other, reading the same kind of file
    same_files = not a.get("suffix") or not b.get("suffix") or a["suffix"] == b["suffix"]
    return same_files and (_contains(a, b["tree"], "") or _contains(b, a["tree"], ""))


def shared_units(first: Iterable[dict], second: Iterable[dict]) -> list[dict]:
    """The units of ``second`` that something of ``first`` also reads."""
    first = list(first)
    return [unit for unit in second if any(_overlap(mine, unit) for mine in first)]


def describe_unit(unit: dict) -> str:
    if "hub" in unit:
        return f"{unit['hub']} split {unit['split']}"
    if "file" in unit:
        return unit["file"]
    return f"{unit['tree']}/**/*{unit.get('suffix', '')}"


# --------------------------------------------------------------------------------------------
# The chain


def display_and_resolved(path: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """``(as given, absolute)`` for a local path; ``(id, None)`` for a Hub id."""
    if path is None or not looks_local(str(path)):
        return path, None
    return str(path), resolved(path)


def chain_of(summary: Optional[dict], _seen: Optional[set] = None) -> list[dict]:
    """Every phase behind a stage-1 output, oldest first, from its ``dapt_summary.json``. A summary
    written before phases were recorded becomes one phase (its sources from its config), after the
    phases of its own starting model when that is a stage-1 output reachable from here."""
    if not summary:
        return []
    if isinstance(summary.get("adaptation"), list):
        return [dict(phase) for phase in summary["adaptation"]]
    seen = set() if _seen is None else _seen
    start = summary.get("model_name_or_path")
    earlier: list[dict] = []
    if start and looks_local(str(start)) and resolved(start) not in seen:
        seen.add(resolved(start))
        try:
            earlier = chain_of(read_summary(start), seen)
        except DataError:
            earlier = []
    config_sources = (((summary.get("config") or {}).get("data") or {}).get("sources")) or []
    sources = [{**{k: s.get(k) for k in ("path", "kind", "splits", "text_column", "max_documents")},
                "resolved": None, "reads": None} for s in config_sources]
    model, model_resolved = display_and_resolved(start)
    phase = {"phase": len(earlier) + 1, "model_name_or_path": model, "model_resolved": model_resolved,
             "output_dir": (summary.get("config") or {}).get("output_dir"), "output_resolved": None,
             "run_name": summary.get("run_name"), "sources": sources, "recorded": "reconstructed from an older summary",
             **{k: summary.get(k) for k in ("baseline", "steps", "tokens_seen", "perplexity_before", "perplexity_after")}}
    return earlier + [phase]


def new_phase(parent: Optional[dict], *, model: str, revision: Optional[str], output_dir: str, run_name: str,
              sources: list[dict], **facts) -> list[dict]:
    """The chain of a stage-1 run: ``parent``'s phases (the summary of the model it started from,
    or None) and then this run's own, numbered after them."""
    earlier = chain_of(parent)
    model_display, model_resolved = display_and_resolved(model)
    phase = {"phase": len(earlier) + 1, "model_name_or_path": model_display, "model_resolved": model_resolved,
             "revision": revision, "output_dir": output_dir, "output_resolved": resolved(output_dir),
             "run_name": run_name, "sources": sources, **facts}
    return earlier + [phase]


def describe_phase(phase: dict) -> str:
    where = phase.get("output_dir") or phase.get("run_name") or "?"
    return f"phase {phase.get('phase')} ({where}: {', '.join(describe_record(s) for s in phase.get('sources') or [])})"
