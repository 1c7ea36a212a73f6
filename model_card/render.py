"""Render the model card (README.md of the Hub repo) from a stage-2 ``results.json``.

Every number in the card, the YAML ``model-index`` included, is read from ``results``; nothing is
typed by hand. The front matter is produced by :class:`huggingface_hub.ModelCardData`, so what the
Hub parses back (``ModelCard(text).data.eval_results``) is what was rendered.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from model_card.task import EVAL_SETS, Task, describe, is_hub_id  # noqa: F401 - EVAL_SETS, is_hub_id: this module's interface

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

#: two classes: metric key in results.json -> (Hub metric type, display name); F1, precision and
#: recall are those of class 1 (e.g. Positive)
METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "f1": ("f1", "F1"),
    "precision": ("precision", "Precision"),
    "recall": ("recall", "Recall"),
    "roc_auc": ("roc_auc", "ROC AUC"),
}
#: more than two classes: metric key in results.json -> (Hub metric type, display name, metric config,
#: metric args). Types are the Hub's metric ids; config and args are those of the `evaluate` metric
#: (``f1.compute(average="macro")``, ``load("roc_auc", "multiclass").compute(multi_class="ovr")``),
#: so two F1 entries of one set differ by name and ``args``.
MULTICLASS_METRICS = {
    "accuracy": ("accuracy", "Accuracy", None, None),
    "macro_f1": ("f1", "Macro F1", None, {"average": "macro"}),
    "micro_f1": ("f1", "Micro F1", None, {"average": "micro"}),
    "macro_precision": ("precision", "Macro Precision", None, {"average": "macro"}),
    "macro_recall": ("recall", "Macro Recall", None, {"average": "macro"}),
    "roc_auc": ("roc_auc", "ROC AUC (one-vs-rest, macro)", "multiclass", {"average": "macro", "multi_class": "ovr"}),
}


def metric_specs(task: Task) -> dict[str, tuple[str, str, str | None, dict | None]]:
    """results.json metric key -> (Hub type, display name, config, args) for this task."""
    if task.binary:
        return {key: (metric_type, name, None, None) for key, (metric_type, name) in METRICS.items()}
    return MULTICLASS_METRICS


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


def eval_results(results: dict, repo_id: str, config: dict | None = None) -> list[EvalResult]:
    """One :class:`EvalResult` per (evaluation set, metric) present in ``results["evaluation"]``, for
    the sets read from a Hub dataset (a local file has no dataset id the Hub could link to)."""
    task = describe(results, config)
    task_name = "Sentiment Analysis" if task.sentiment else "Text Classification"
    out = []
    for e in task.eval_sets:
        if e.hub_id is None:
            continue
        for metric, (metric_type, metric_name, metric_config, metric_args) in metric_specs(task).items():
            if e.block.get(metric) is None:
                continue
            out.append(
                EvalResult(
                    task_type="text-classification",
                    task_name=task_name,
                    dataset_type=e.hub_id,
                    dataset_name=e.name,
                    dataset_split=e.split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_config=metric_config,
                    metric_args=metric_args,
                    metric_value=round(float(e.block[metric]), 4),
                )
            )
    return out


def card_tags(task: Task, results: dict) -> list[str]:
    if task.imdb:
        tags = ["text-classification", "sentiment-analysis", "movie-reviews", "imdb"]
    else:
        tags = ["text-classification"] + (["sentiment-analysis"] if task.sentiment else [])
        tags += [] if task.binary else ["multi-class-classification"]
    return tags + (["domain-adaptive-pretraining"] if results.get("dapt") else [])


def card_data(results: dict, repo_id: str, config: dict | None = None) -> ModelCardData:
    task = describe(results, config)
    return ModelCardData(
        license=LICENSE,
        language="en",
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=card_tags(task, results),
        datasets=task.datasets or None,
        metrics=list(dict.fromkeys(spec[0] for spec in metric_specs(task).values())),
        base_model=hub_base_model(results),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results, repo_id, config) or None,
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


def render_card(results: dict, repo_id: str, *, plots: list[str] | None = None, config: dict | None = None) -> str:
    """The README.md text: YAML front matter (with ``model-index``) + the card body. ``config``: the
    classifier's config.json, for the labels of a results.json that does not record them."""
    task = describe(results, config)
    data = card_data(results, repo_id, config)
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
        "task": task,
        "labels": task.labels,
        # what the card calls one input: a review for a sentiment model, a text otherwise
        "item": "review" if task.sentiment else "text",
        "eval_sets": [e.context() for e in task.eval_sets],
        "in_domain": [e.context() for e in task.in_domain],
        "out_of_domain": [e.context() for e in task.out_of_domain],
        "metrics": metric_specs(task),
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


def _metric_key(e: EvalResult) -> tuple:
    args = json.dumps(e.metric_args, sort_keys=True) if e.metric_args else None
    return e.dataset_type, e.dataset_split, e.metric_type, e.metric_name, e.metric_config, args


def validate_card(text: str, results: dict, repo_id: str, config: dict | None = None) -> ModelCard:
    """Offline checks of a rendered card; returns the parsed :class:`ModelCard`.

    ``ModelCard.validate()`` posts the card to the Hub's ``/api/validate-yaml`` (network), so here
    the card is parsed with ``ModelCard``, its metadata rebuilt through ``ModelCardData`` (which
    validates ``model-index`` structure), and its eval results compared with ``results`` (a metric
    is its set, split, type, name, config and args: a macro and a micro F1 are two metrics).
    """
    card = ModelCard(text)
    meta = card.data.to_dict()
    for key in ("license", "language", "pipeline_tag", "tags", "metrics"):
        if not meta.get(key):
            raise CardValidationError(f"card metadata lacks {key!r}")
    expected_datasets = describe(results, config).datasets
    if (meta.get("datasets") or []) != expected_datasets:
        raise CardValidationError(f"card datasets {meta.get('datasets')} differ from the data results.json names {expected_datasets}")
    if meta["pipeline_tag"] != "text-classification":
        raise CardValidationError(f"pipeline_tag is {meta['pipeline_tag']!r}")
    ModelCardData(**meta)  # raises on a malformed model-index
    expected = {_metric_key(e): e.metric_value for e in eval_results(results, repo_id, config)}
    parsed = {_metric_key(e): e.metric_value for e in (card.data.eval_results or [])}
    if parsed != expected:
        raise CardValidationError(f"model-index metrics {parsed} differ from results.json {expected}")
    if card.data.base_model is not None and not is_hub_id(card.data.base_model):
        raise CardValidationError(f"base_model {card.data.base_model!r} is not a Hub model id")
    return card
