"""Render the model card (README.md of the Hub repo) from a stage-2 ``results.json``.

Every number in the card, the YAML ``model-index`` included, is read from ``results``; nothing is
typed by hand. The front matter is produced by :class:`huggingface_hub.ModelCardData`, so what the
Hub parses back (``ModelCard(text).data.eval_results``) is what was rendered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from dapt.core import hub

TEMPLATE_DIR = Path(__file__).resolve().parent
TEMPLATE_NAME = "template.md.j2"
LICENSE = "apache-2.0"

#: What a user of the published repository runs (DESIGN.md, section "Use"); ``REPO_ID`` is a
#: variable the card defines on the line above. Kept verbatim: tests compare it with DESIGN.md.
USER_SNIPPET = """\
from transformers import AutoTokenizer
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file as safe_load_file
hf_hub_download(repo_id=REPO_ID, filename="model.py", local_dir=".")
from model import DistilBERTClassifier, infer_reviews
classifier = DistilBERTClassifier()
tokenizer = AutoTokenizer.from_pretrained(REPO_ID)
classifier.load_state_dict(safe_load_file(hf_hub_download(repo_id=REPO_ID, filename="model.safetensors")))
classifier.eval()
label_class, label, conf = infer_reviews("Great movie", classifier, tokenizer)
results = infer_reviews(["I loved this film!", "Terrible."], classifier, tokenizer)  # list of tuples
"""

#: results.json evaluation key -> how it appears in the card and the model-index.
EVAL_SETS = {
    "imdb_test": {"name": "IMDb", "default_dataset": "stanfordnlp/imdb", "default_split": "test"},
    "sst2_validation": {"name": "SST-2", "default_dataset": "stanfordnlp/sst2", "default_split": "validation"},
}
#: metric key in results.json -> (Hub metric type, display name)
METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "f1": ("f1", "F1"),
    "precision": ("precision", "Precision"),
    "recall": ("recall", "Recall"),
    "roc_auc": ("roc_auc", "ROC AUC"),
}

def is_hub_id(name: Any) -> bool:
    """``owner/name`` that is not a local path (``runs/x`` that exists on disk is a path)."""
    return hub.is_hub_id(name, owner_required=True)


def hub_base_model(results: dict) -> str | None:
    """The pretrained Hub model the classifier descends from, if one is known.

    A DAPT'd encoder is a local directory; the model stage 1 started from is the real base.
    """
    candidates = []
    if results.get("dapt"):
        candidates.append(results["dapt"].get("model_name_or_path"))
    candidates.append(results.get("base_model"))
    for candidate in candidates:
        if is_hub_id(candidate):
            return candidate
    return None


def _dataset_id(block: dict, spec: dict) -> str:
    """The Hub dataset id of an evaluation block (a local path falls back to the known Hub id)."""
    dataset = block.get("dataset")
    return dataset if is_hub_id(dataset) else spec["default_dataset"]


def eval_results(results: dict, repo_id: str) -> list[EvalResult]:
    """One :class:`EvalResult` per (evaluation set, metric) present in ``results["evaluation"]``."""
    out = []
    for key, spec in EVAL_SETS.items():
        block = (results.get("evaluation") or {}).get(key)
        if not block:
            continue
        for metric, (metric_type, metric_name) in METRICS.items():
            if block.get(metric) is None:
                continue
            out.append(
                EvalResult(
                    task_type="text-classification",
                    task_name="Sentiment Analysis",
                    dataset_type=_dataset_id(block, spec),
                    dataset_name=spec["name"],
                    dataset_split=block.get("split", spec["default_split"]),
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(block[metric]), 4),
                )
            )
    return out


def card_data(results: dict, repo_id: str) -> ModelCardData:
    datasets = []
    for key, spec in EVAL_SETS.items():
        block = (results.get("evaluation") or {}).get(key)
        if block:
            datasets.append(_dataset_id(block, spec))
    if "stanfordnlp/imdb" not in datasets:
        datasets.insert(0, "stanfordnlp/imdb")  # the training data, evaluated or not
    tags = ["text-classification", "sentiment-analysis", "movie-reviews", "imdb"]
    if results.get("dapt"):
        tags.append("domain-adaptive-pretraining")
    return ModelCardData(
        license=LICENSE,
        language="en",
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=tags,
        datasets=datasets,
        metrics=[m for m, _ in METRICS.values()],
        base_model=hub_base_model(results),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results, repo_id) or None,
    )


def _fmt(value, digits: int = 4) -> str:
    if value is None or isinstance(value, jinja2.Undefined):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"
    return str(value)


def _pct(value) -> str:
    return "–" if value is None or isinstance(value, jinja2.Undefined) else f"{100 * float(value):.2f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.ChainableUndefined,  # a missing results.json field renders as "–"
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["pct"] = _pct
    return env


def render_card(results: dict, repo_id: str, *, plots: list[str] | None = None) -> str:
    """The README.md text: YAML front matter (with ``model-index``) + the card body."""
    data = card_data(results, repo_id)
    evaluation = results.get("evaluation") or {}
    imdb, sst2 = evaluation.get("imdb_test"), evaluation.get("sst2_validation")
    domain_gap = None
    if imdb and sst2 and imdb.get("accuracy") is not None and sst2.get("accuracy") is not None:
        domain_gap = float(imdb["accuracy"]) - float(sst2["accuracy"])
    hyper = results.get("hyperparameters") or {}
    context = {
        "front_matter": data.to_yaml(),
        "repo_id": repo_id,
        "model_name": repo_id.split("/")[-1],
        "r": results,
        "hp": hyper,
        "dapt": results.get("dapt"),
        "training": results.get("training") or {},
        "calibration": (results.get("training") or {}).get("calibration"),  # T fitted on validation
        "eval_sets": [
            {"key": key, "name": spec["name"], **evaluation[key], "dataset": _dataset_id(evaluation[key], spec)}
            for key, spec in EVAL_SETS.items()
            if evaluation.get(key)
        ],
        "metrics": METRICS,
        "imdb": imdb,
        "sst2": sst2,
        "domain_gap": domain_gap,
        "base_model": results.get("base_model"),
        "hub_base_model": data.base_model,
        "snippet": USER_SNIPPET,
        "plots": list(plots or []),
        "license": LICENSE,
    }
    return _environment().get_template(TEMPLATE_NAME).render(**context)


class CardValidationError(ValueError):
    """The rendered card does not parse back to what results.json says."""


def validate_card(text: str, results: dict, repo_id: str) -> ModelCard:
    """Offline checks of a rendered card; returns the parsed :class:`ModelCard`.

    ``ModelCard.validate()`` posts the card to the Hub's ``/api/validate-yaml`` (network), so here
    the card is parsed with ``ModelCard``, its metadata rebuilt through ``ModelCardData`` (which
    validates ``model-index`` structure), and its eval results compared with ``results``.
    """
    card = ModelCard(text)
    meta = card.data.to_dict()
    for key in ("license", "language", "pipeline_tag", "tags", "datasets", "metrics"):
        if not meta.get(key):
            raise CardValidationError(f"card metadata lacks {key!r}")
    if meta["pipeline_tag"] != "text-classification":
        raise CardValidationError(f"pipeline_tag is {meta['pipeline_tag']!r}")
    ModelCardData(**meta)  # raises on a malformed model-index
    expected = {(e.dataset_type, e.dataset_split, e.metric_type): e.metric_value for e in eval_results(results, repo_id)}
    parsed = {
        (e.dataset_type, e.dataset_split, e.metric_type): e.metric_value for e in (card.data.eval_results or [])
    }
    if parsed != expected:
        raise CardValidationError(f"model-index metrics {parsed} differ from results.json {expected}")
    if card.data.base_model is not None and not is_hub_id(card.data.base_model):
        raise CardValidationError(f"base_model {card.data.base_model!r} is not a Hub model id")
    return card
