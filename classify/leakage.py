"""The leakage guard: stage 2 does not evaluate on text its encoder was pretrained on.

TAPT trains stage 1 on the task's own training texts, DAPT on a domain corpus; either may hold the
texts of an evaluation set (a TAPT config that also lists ``test``, a domain corpus that contains
the benchmark). Metrics on text the encoder was trained on are optimistic, so before training (and
in ``dapt-evaluate``) every configured evaluation set is compared with every source of every phase
recorded in the encoder's ``dapt_summary.json`` (:mod:`dapt.core.lineage` has the matching rules:
resolved files, text folders, Hub id + split, a ``max_documents`` subset counting as the whole
split). An overlap stops the run with one line naming both the evaluation set and the phase's
source, unless ``data.allow_pretraining_overlap`` is true; either way the result goes into
``results.json`` as ``leakage`` and the model card says so.

Stage 2's own validation slice is carved from its training split, which TAPT reads by design (as in
Gururangan et al. 2020): that is not checked, and not an evaluation set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Optional

from classify.data import LabelledSetConfig
from dapt.core.hub import is_repo_id, looks_local
from dapt.core.lineage import (chain_of, describe_record, describe_unit, read_summary, read_units, shared_units,
                               source_reads, split_names)
from dapt.core.runtime import logger
from dapt.core.sources import DataError, detect_kind

OVERRIDE_KEY = "data.allow_pretraining_overlap"


class PretrainingOverlapError(DataError):
    """An evaluation set holds text that stage 1 trained the encoder on."""


def eval_units(config: LabelledSetConfig) -> list[dict]:
    """What an evaluation set reads (as :func:`classify.data.load_labelled` finds it), plus its
    ``name`` as a Hub id and split when the name is one (a local copy of a Hub dataset)."""
    source = config.source()
    try:
        kind = detect_kind(source)
    except DataError:
        kind = None  # missing: load_labelled raises the error that names it
    if kind == "text_dir":  # as load_labelled does: a folder without tables holds {split}.* files
        source.kind = "files"
    units = source_reads(source) if kind is not None else []
    if kind != "hub" and config.name and not looks_local(config.name) and is_repo_id(config.name, owner_required=True):
        units += [{"hub": config.name, "split": name} for name in split_names(config.split)]
    return units


def find_overlaps(eval_sets: Mapping[str, Optional[LabelledSetConfig]], phases: list[dict]) -> list[dict]:
    """One entry per (evaluation set, phase source) that share text."""
    overlaps = []
    for name, config in eval_sets.items():
        if config is None:
            continue
        units = eval_units(config)
        for phase in phases:
            for record in phase.get("sources") or []:
                shared = shared_units(read_units(record), units)
                if shared:
                    overlaps.append({
                        "eval_set": name, "dataset": config.name or config.path, "split": config.split,
                        "eval_source": config.describe(), "phase": phase.get("phase"),
                        "stage1_output": phase.get("output_dir"), "stage1_source": describe_record(record),
                        "shared": [describe_unit(unit) for unit in shared],
                    })
    return overlaps


def check_pretraining_overlap(eval_sets: Mapping[str, Optional[LabelledSetConfig]], summary: Optional[dict], allow: bool,
                              encoder: str, status: Optional[str] = None) -> dict:
    """The ``leakage`` block of results.json; raises :class:`PretrainingOverlapError` on an overlap
    unless ``allow``. ``summary``: the encoder's ``dapt_summary.json`` (None: not a stage-1 output);
    ``status`` says how it was found."""
    phases = chain_of(summary)
    overlaps = find_overlaps(eval_sets, phases)
    if overlaps and not allow:
        first = overlaps[0]
        more = f" ({len(overlaps) - 1} more overlap(s))" if len(overlaps) > 1 else ""
        raise PretrainingOverlapError(
            f"data.eval.{first['eval_set']}: {first['eval_source']} was pretraining text of the encoder {encoder} "
            f"(stage-1 phase {first['phase']}, {first['stage1_output']}: source {first['stage1_source']}, "
            f"shared: {', '.join(first['shared'])}){more}; metrics on text the encoder was trained on are optimistic. "
            f"Evaluate on a split stage 1 did not read, or set {OVERRIDE_KEY}=true to evaluate anyway "
            f"(recorded in results.json and the model card)"
        )
    for overlap in overlaps:
        _warn(f"{OVERRIDE_KEY}=true: evaluating {overlap['eval_set']} ({overlap['eval_source']}) although stage-1 "
              f"phase {overlap['phase']} trained on {overlap['stage1_source']}")
    return {"encoder_summary": status or ("found" if summary is not None else "none"), "phases": len(phases),
            "overlaps": overlaps, "allowed": bool(allow)}


def _warn(message: str) -> None:
    try:
        logger.warning(message)  # accelerate's logger: once, from the main process
    except RuntimeError:  # called outside a run (no accelerate state yet): plain logging
        logging.getLogger(__name__).warning(message)


def encoder_summary(base_model: Optional[str], run_dir: Optional[Path] = None) -> tuple[Optional[dict], str]:
    """``(dapt_summary.json of a classifier's encoder, how it was found)`` for ``dapt-evaluate``:
    the encoder folder recorded in the classifier's config (``found``), else the ``dapt`` block of
    the stage-2 run's ``results.json`` (``results.json``); ``none`` when the encoder is not a stage-1
    output, ``unreachable`` when neither can be read here (a moved folder, a Hub model)."""
    summary = read_summary(base_model)
    if summary is not None:
        return summary, "found"
    if base_model and looks_local(base_model) and not Path(base_model).expanduser().is_dir() and run_dir is not None:
        for folder in (run_dir, run_dir.parent):
            results = folder / "results.json"
            if results.is_file() and (folder / "model").is_dir():
                recorded = json.loads(results.read_text(encoding="utf-8")).get("dapt")
                return recorded, "results.json" if recorded else "none"
    if base_model and looks_local(base_model) and not Path(base_model).expanduser().is_dir():
        return None, "unreachable"
    return None, "none"
