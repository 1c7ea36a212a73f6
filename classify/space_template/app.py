"""A Gradio demo of a dapt sentiment classifier (written by `dapt-publish --space`).

It loads the model exactly as its model card tells a user to: ``model.py`` and ``model.safetensors``
from the model repository with ``hf_hub_download``, the tokenizer with ``AutoTokenizer``. It shows the
label, the model's confidence (calibrated when the model stores a temperature) and which part of a
long review the model actually read. ``DAPT_MODEL`` (a repo id or a local model folder) overrides
the repository below, e.g. to try the app against a folder built by ``dapt-publish --dry-run``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import gradio as gr
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file as safe_load_file
from transformers import AutoTokenizer, PretrainedConfig

MODEL_REPO = None  # written by dapt-publish --space
EXAMPLES = [
    "One of the best films I have seen in years. The cast is superb.",
    "Highly recommend to never watch again.",
    "I expected to hate it, but it won me over completely.",
    "Not bad at all, though the ending drags.",
    "A masterpiece of boredom.",
]
READ, NOT_READ = "read", "not read"


def _fetch(model_ref: str, filename: str) -> str:
    folder = Path(model_ref).expanduser()
    if folder.is_dir():
        return str(folder / filename)
    return hf_hub_download(repo_id=model_ref, filename=filename)


def load_model(model_ref: str):
    """(model module, classifier, tokenizer): the model card's snippet."""
    model_py = _fetch(model_ref, "model.py")
    spec = importlib.util.spec_from_file_location("model", model_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    spec.loader.exec_module(module)
    classifier = module.DistilBERTClassifier()
    classifier.load_state_dict(safe_load_file(_fetch(model_ref, "model.safetensors")))
    classifier.eval()
    # config.json names the repo's own classes; an empty config lets AutoTokenizer read only the
    # tokenizer files instead of asking whether to run the repo's code.
    tokenizer = AutoTokenizer.from_pretrained(str(model_ref), config=PretrainedConfig())
    return module, classifier, tokenizer


def settings(classifier) -> dict:
    """The inference settings the model stores (max_length, truncation, head_tokens, id2label, and
    temperature where the model has one), from whichever model.py version the repo was published with."""
    stored = getattr(classifier, "config_dict", None)
    stored = dict(stored) if isinstance(stored, dict) else classifier.config.to_dict()
    stored["id2label"] = {int(k): v for k, v in stored["id2label"].items()}
    return stored


def read_tokens(text: str, module, classifier, tokenizer) -> tuple[list[int], list[int], list[tuple[int, int]], str]:
    """What ``infer_reviews`` feeds the model for ``text``: (all content token ids, the indices of
    the ones kept, their character offsets in the cleaned text, the cleaned text)."""
    stored = settings(classifier)
    cleaned = module.clean_text(text)
    content = tokenizer(cleaned, add_special_tokens=False, return_offsets_mapping=True)
    truncation, head_tokens = stored["truncation"], stored["head_tokens"]
    encoded = module.encode_reviews(tokenizer, [text], _max_length(classifier), truncation, head_tokens)[0]
    kept_count = len(encoded) - tokenizer.num_special_tokens_to_add(pair=False)
    everything = list(range(len(content["input_ids"])))
    if truncation in ("head", "head+tail"):
        kept = module.truncate_ids(everything, kept_count, truncation, head_tokens)
    else:  # sliding windows read the whole review
        kept = everything
    return content["input_ids"], kept, content["offset_mapping"], cleaned


def _max_length(classifier) -> int:
    limits = [settings(classifier)["max_length"], getattr(classifier.encoder.config, "max_position_embeddings", None)]
    return min(limit for limit in limits if isinstance(limit, int) and limit > 0)


def read_spans(text: str, module, classifier, tokenizer) -> list[tuple[str, str | None]]:
    """The cleaned review cut into runs of read / not-read text, for ``gr.HighlightedText``."""
    ids, kept, offsets, cleaned = read_tokens(text, module, classifier, tokenizer)
    if not ids:
        return [(cleaned, READ)] if cleaned else []
    kept, spans, start = set(kept), [], 0
    for index in range(len(ids)):
        state = READ if index in kept else NOT_READ
        end = offsets[index + 1][0] if index + 1 < len(ids) else len(cleaned)
        if spans and spans[-1][1] == state:
            spans[-1] = (spans[-1][0] + cleaned[start:end], state)
        else:
            spans.append((cleaned[start:end], state))
        start = end
    return spans


def confidence_note(classifier) -> str:
    temperature = settings(classifier).get("temperature")
    if temperature and temperature != 1:
        return f"Confidence is calibrated: logits are divided by the temperature {temperature:.3g} fitted on validation data."
    return "This model stores no temperature: its confidence is the raw softmax, not calibrated."


def build_demo(model_ref: str) -> gr.Blocks:
    module, classifier, tokenizer = load_model(model_ref)
    labels = settings(classifier)["id2label"]

    def classify(text: str):
        if not text or not text.strip():
            return {}, [], "Type a review."
        label_class, label, confidence = module.infer_reviews(text, classifier, tokenizer)
        scores = {labels[label_class]: confidence, labels[1 - label_class]: 1.0 - confidence}
        ids, kept, _, _ = read_tokens(text, module, classifier, tokenizer)
        where = "the whole review" if len(kept) == len(ids) else (
            f"{len(kept)} of {len(ids)} tokens ({settings(classifier)['truncation']} truncation)")
        return scores, read_spans(text, module, classifier, tokenizer), f"**{label}** ({confidence:.1%}); read {where}."

    def classify_lines(lines: str):
        reviews = [line.strip() for line in (lines or "").splitlines() if line.strip()]
        if not reviews:
            return []
        results = module.infer_reviews(reviews, classifier, tokenizer)
        rows = []
        for review, (_, label, confidence) in zip(reviews, results):
            ids, kept, _, _ = read_tokens(review, module, classifier, tokenizer)
            rows.append([review, label, round(confidence, 4), f"{len(kept)}/{len(ids)}"])
        return rows

    with gr.Blocks(title="dapt sentiment") as demo:
        gr.Markdown(f"# Movie review sentiment\nModel: `{model_ref}`. {confidence_note(classifier)}")
        with gr.Tab("One review"):
            review = gr.Textbox(label="Review", value=EXAMPLES[1], lines=5)
            button = gr.Button("Classify", variant="primary")
            summary = gr.Markdown()
            scores = gr.Label(label="Prediction", num_top_classes=2)
            spans = gr.HighlightedText(label="What the model read", color_map={READ: "green", NOT_READ: "gray"},
                                       show_legend=True)
            gr.Examples(EXAMPLES, inputs=review)
            button.click(classify, inputs=review, outputs=[scores, spans, summary], api_name="classify")
            demo.load(classify, inputs=review, outputs=[scores, spans, summary], api_name=False)
        with gr.Tab("Many reviews"):
            lines = gr.Textbox(label="One review per line", lines=8, value="\n".join(EXAMPLES))
            batch_button = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(headers=["review", "label", "confidence", "tokens read"], wrap=True)
            batch_button.click(classify_lines, inputs=lines, outputs=table, api_name="classify_batch")
    return demo


if __name__ == "__main__":
    model_ref = os.environ.get("DAPT_MODEL") or MODEL_REPO
    if not model_ref:
        raise SystemExit("no model: set DAPT_MODEL to a model repo id or a local model folder")
    # system fonts only: the page renders the same with no network
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    build_demo(model_ref).launch(theme=theme)
