"""A Gradio demo of a dapt text classifier (written by `dapt-publish --space`).

It loads the model exactly as its model card tells a user to: ``model.py`` and ``model.safetensors``
from the model repository with ``hf_hub_download``, the tokenizer with ``AutoTokenizer``. It shows
every label's probability (calibrated when the model stores a temperature), the label and which
part of a long text the model actually read. Its examples are ``examples.json`` beside this file
(texts the training run picked, with their true labels; the page opens on the first one the model
gets right), or, for a Negative / Positive model without one, a few movie reviews. ``DAPT_MODEL``
(a repo id or a local model folder) overrides the repository below, e.g. to try the app against a
folder built by ``dapt-publish --dry-run``. Repositories published by earlier versions of dapt
(whose ``model.py`` predates ``predict_proba(..., all_classes=True)``) work too.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

import gradio as gr
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file as safe_load_file
from transformers import AutoTokenizer, PretrainedConfig

MODEL_REPO = None  # written by dapt-publish --space
TASK = None  # written by dapt-publish --space: the page's title and what one input is called
#: (text, true class: 1 positive, 0 negative): the examples of a Negative / Positive model
#: published without examples.json, plain ones first
MOVIE_EXAMPLES = [
    ("One of the best films I have seen in years. The cast is superb.", 1),
    ("Highly recommend to never watch again.", 0),
    ("I expected to hate it, but it won me over completely.", 1),
    ("Not bad at all, though the ending drags.", 1),
    ("A masterpiece of boredom.", 0),
]
EXAMPLES_FILE = Path(__file__).resolve().parent / "examples.json"
READ, NOT_READ = "read", "not read"
#: The longest text /classify takes (and the most characters /classify_batch takes at once): 3.5x the
#: longest IMDb review (14,282); time stays linear and short below it (README, "A demo Space").
MAX_CHARS = 50_000
MAX_LINES = 1_000  # the most texts /classify_batch takes at once
#: A not-read stretch longer than LONG_SKIP characters (more than most whole reviews) is shown as
#: its first and last EXCERPT_CHARS: the answer stays small whatever the text's length.
LONG_SKIP, EXCERPT_CHARS = 5_000, 1_000


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
    classifier = module.DistilBERTClassifier()  # the name every model.py has had (now an alias of DaptClassifier)
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


def is_sentiment(labels: dict) -> bool:
    """Two classes, negative then positive (``Negative`` / ``Positive``, or ``neg`` / ``pos``)."""
    names = [str(labels[k]).strip().lower() for k in sorted(labels)]
    return len(names) == 2 and names[0] in ("negative", "neg") and names[1] in ("positive", "pos")


def task(labels: dict) -> dict:
    """``TASK`` as written at build time; else what the labels say (this app began as a movie-review demo)."""
    if TASK:
        return TASK
    if is_sentiment(labels):
        return {"title": "Movie review sentiment", "item": "review"}
    return {"title": "Text classification: " + ", ".join(labels[k] for k in sorted(labels)), "item": "text"}


def load_examples(labels: dict) -> list[tuple[str, str | int | None]]:
    """(text, true label: its name, or class index) pairs: examples.json beside this file, else the
    movie reviews for a Negative / Positive model, else none."""
    if EXAMPLES_FILE.is_file():
        entries = json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))["examples"]
        return [(entry["text"], entry.get("label")) for entry in entries]
    return list(MOVIE_EXAMPLES) if is_sentiment(labels) else []


def class_probabilities(texts: list[str], module, classifier, tokenizer) -> list[list[float]]:
    """Every class's probability per text, in class-index order (one forward pass for all texts)."""
    predict_proba = module.predict_proba
    if "all_classes" in inspect.signature(predict_proba).parameters:
        return predict_proba(texts, classifier, tokenizer, all_classes=True)
    # a model.py published before all_classes existed: two classes, predict_proba gives P(class 1)
    return [[1.0 - p, p] for p in predict_proba(texts, classifier, tokenizer)]


def top_class(probabilities: list[float]) -> int:
    """The predicted class: the first largest probability (torch.argmax's choice, as in infer_reviews)."""
    return max(range(len(probabilities)), key=probabilities.__getitem__)


def opening_example(examples, module, classifier, tokenizer) -> str:
    """The text the page opens on: the first example the model classifies correctly (else the first)."""
    if not examples:
        return ""
    labels = settings(classifier)["id2label"]
    predicted = [top_class(p) for p in class_probabilities([t for t, _ in examples], module, classifier, tokenizer)]
    right = (text for (text, label), guess in zip(examples, predicted) if label in (guess, labels[guess]))
    return next(right, examples[0][0])


def read_tokens(text: str, module, classifier, tokenizer, stored: dict | None = None):
    """What ``infer_reviews`` feeds the model for ``text``: (all content token ids, the indices of
    the ones kept, their character offsets in the cleaned text, the cleaned text). ``stored``: the
    model's :func:`settings`, when already read."""
    return read_many([text], module, classifier, tokenizer, stored)[0]


def read_many(texts: list[str], module, classifier, tokenizer, stored: dict | None = None, *, offsets: bool = True):
    """:func:`read_tokens` for many texts, each tokenizer pass batched (offsets=False: no offsets)."""
    stored = settings(classifier) if stored is None else stored
    cleaned = [module.clean_text(text) for text in texts]
    content = tokenizer(cleaned, add_special_tokens=False, return_offsets_mapping=offsets, verbose=False)
    truncation, head_tokens = stored["truncation"], stored["head_tokens"]
    encoded = module.encode_reviews(tokenizer, texts, _max_length(classifier, stored), truncation, head_tokens)
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    read = []
    for index, ids in enumerate(content["input_ids"]):
        everything = list(range(len(ids)))
        if truncation in ("head", "head+tail"):
            kept = module.truncate_ids(everything, len(encoded[index]) - specials, truncation, head_tokens)
        else:  # sliding windows read the whole review
            kept = everything
        read.append((ids, kept, content["offset_mapping"][index] if offsets else None, cleaned[index]))
    return read


def _max_length(classifier, stored: dict | None = None) -> int:
    stored = settings(classifier) if stored is None else stored
    limits = [stored["max_length"], getattr(classifier.encoder.config, "max_position_embeddings", None)]
    return min(limit for limit in limits if isinstance(limit, int) and limit > 0)


def read_spans(text: str, module, classifier, tokenizer) -> list[tuple[str, str | None]]:
    """The cleaned review cut into runs of read / not-read text, for ``gr.HighlightedText``."""
    return spans_of(*read_tokens(text, module, classifier, tokenizer))


def spans_of(ids: list[int], kept: list[int], offsets: list[tuple[int, int]], cleaned: str) -> list[tuple[str, str | None]]:
    """:func:`read_spans` from :func:`read_tokens`' answer, in time linear in the text: a run of
    tokens starts where its first token starts (the text's start for the first), and ends where
    the next run starts. What was read is shown whole, a long stretch that was not as an excerpt
    (:func:`excerpt`)."""
    if not ids:
        return [(cleaned, READ)] if cleaned else []
    starts: list[tuple[int, str]] = []  # (first token of a run, its state); kept is in text order
    after = 0  # the token after the last kept one so far
    for index in kept:
        if index > after or not starts:
            if index > after:
                starts.append((after, NOT_READ))
            starts.append((index, READ))
        elif index != after:
            raise ValueError(f"kept token indices must increase, got {index} after {after - 1}")
        after = index + 1
    if after < len(ids):
        starts.append((after, NOT_READ))
    bounds = [0 if first == 0 else offsets[first][0] for first, _ in starts] + [len(cleaned)]
    return [(cleaned[begin:end] if state == READ else excerpt(cleaned[begin:end]), state)
            for (_, state), begin, end in zip(starts, bounds, bounds[1:])]


def excerpt(skipped: str) -> str:
    """A stretch the model did not read, as shown: whole up to :data:`LONG_SKIP` characters, else
    its first and last :data:`EXCERPT_CHARS` or so (cut at spaces) around how much is left out."""
    if len(skipped) <= LONG_SKIP:
        return skipped
    before, after = skipped[:EXCERPT_CHARS], skipped[-EXCERPT_CHARS:]
    cut = before.rfind(" ")
    before = before[: cut + 1] if cut > 0 else before
    cut = after.find(" ")
    after = after[cut:] if 0 <= cut < len(after) - 1 else after
    return f"{before}[… {len(skipped) - len(before) - len(after):,} more characters not read …]{after}"


def confidence_note(classifier) -> str:
    temperature = settings(classifier).get("temperature")
    if temperature and temperature != 1:
        return f"Confidence is calibrated: logits are divided by the temperature {temperature:.3g} fitted on validation data."
    return "This model stores no temperature: its confidence is the raw softmax, not calibrated."


class Demo:
    """What the page does, apart from the page: ``/classify`` and ``/classify_batch`` for one model.
    Texts over :data:`MAX_CHARS` (and boxes of more than :data:`MAX_LINES` texts) are refused before
    anything else is done with them; below that, the time is linear in the text's length."""

    def __init__(self, module, classifier, tokenizer, item: str = "text"):
        self.module, self.classifier, self.tokenizer, self.item = module, classifier, tokenizer, item
        self.stored = settings(classifier)  # read once: the model does not change while the app runs
        self.names = [self.stored["id2label"][k] for k in sorted(self.stored["id2label"])]

    def _probabilities(self, texts: list[str]) -> list[list[float]]:
        try:
            return class_probabilities(texts, self.module, self.classifier, self.tokenizer)
        except ValueError as error:  # the model's own input check (e.g. nothing left to classify)
            raise gr.Error(str(error), print_exception=False) from None

    def classify(self, text: str):
        """(every label's probability, the read / not-read spans, the summary line) of one text."""
        item, names = self.item, self.names
        if not text or not text.strip():
            return {}, [], f"Type a {item}."
        if len(text) > MAX_CHARS:
            raise gr.Error(f"This {item} is {len(text):,} characters long; the demo takes at most {MAX_CHARS:,}. "
                           f"Paste a shorter one, or run the model yourself (its model card shows how).",
                           print_exception=False)
        probabilities = self._probabilities([text])[0]
        label_class = top_class(probabilities)
        label, confidence = names[label_class], probabilities[label_class]
        tokens = read_tokens(text, self.module, self.classifier, self.tokenizer, self.stored)
        ids, kept = tokens[0], tokens[1]
        where = f"the whole {item}" if len(kept) == len(ids) else (
            f"{len(kept)} of {len(ids)} tokens ({self.stored['truncation']} truncation)")
        scores = dict(zip(names, probabilities))
        return scores, spans_of(*tokens), f"**{label}** ({confidence:.1%}); read {where}."

    def classify_lines(self, lines: str):
        """One table row per non-blank line: [text, label, confidence, tokens read]."""
        if len(lines or "") > MAX_CHARS:
            raise gr.Error(f"The box holds {len(lines):,} characters; the demo takes at most {MAX_CHARS:,} at a time.",
                           print_exception=False)
        texts = [line.strip() for line in (lines or "").splitlines() if line.strip()]
        if not texts:
            return []
        if len(texts) > MAX_LINES:
            raise gr.Error(f"The box holds {len(texts):,} lines; the demo classifies at most {MAX_LINES:,} at a time.",
                           print_exception=False)
        read = read_many(texts, self.module, self.classifier, self.tokenizer, self.stored, offsets=False)
        rows = []
        for text, probabilities, (ids, kept, _, _) in zip(texts, self._probabilities(texts), read):
            label_class = top_class(probabilities)
            rows.append([text, self.names[label_class], round(probabilities[label_class], 4), f"{len(kept)}/{len(ids)}"])
        return rows


def build_demo(model_ref: str) -> gr.Blocks:
    module, classifier, tokenizer = load_model(model_ref)
    labels = settings(classifier)["id2label"]
    title, item = task(labels)["title"], task(labels)["item"]
    examples = load_examples(labels)
    handlers = Demo(module, classifier, tokenizer, item)
    classify, classify_lines, names = handlers.classify, handlers.classify_lines, handlers.names

    with gr.Blocks(title=f"dapt: {title}") as demo:
        gr.Markdown(f"# {title}\nModel: `{model_ref}`. {confidence_note(classifier)}")
        with gr.Tab(f"One {item}"):
            text_box = gr.Textbox(label=item.capitalize(), value=opening_example(examples, module, classifier, tokenizer),
                                  lines=5, info=f"Up to {MAX_CHARS:,} characters.")
            button = gr.Button("Classify", variant="primary")
            summary = gr.Markdown(label="Summary")  # labels name the API's outputs (else value_5, ...)
            scores = gr.Label(label="Prediction", num_top_classes=len(names))
            spans = gr.HighlightedText(label="What the model read", color_map={READ: "green", NOT_READ: "gray"},
                                       show_legend=True)
            if examples:
                gr.Examples([[text] for text, _ in examples], inputs=text_box)
            button.click(classify, inputs=text_box, outputs=[scores, spans, summary], api_name="classify")
            demo.load(classify, inputs=text_box, outputs=[scores, spans, summary], api_name=False)
        with gr.Tab(f"Many {item}s"):
            lines = gr.Textbox(label=f"One {item} per line", lines=8, info=f"Up to {MAX_LINES:,} lines, {MAX_CHARS:,} characters in all.",
                               value="\n".join(" ".join(text.split()) for text, _ in examples))
            batch_button = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(label="Predictions", headers=[item, "label", "confidence", "tokens read"], wrap=True)
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
