"""A linear classification head on the first-token ([CLS]) state of a Transformer encoder: network
(:class:`DaptClassifier`, whose logits are divided by ``config.temperature`` unless asked raw),
tokenization shared by training, evaluation and inference, and length-sorted inference in
token-budget batches. Published verbatim as ``model.py`` (the run's config written into
``EMBEDDED_CONFIG``); imports only torch, transformers and the standard library.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from pathlib import Path
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import NamedTuple

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import SequenceClassifierOutput

from dapt.core.text import clean_text  # dapt-publish writes that module's code here: the published file imports no dapt

logger = logging.getLogger(__name__)

# The classifier's config.json content; `dapt-publish` replaces the next line with the run's values.
EMBEDDED_CONFIG = None

MODEL_TYPE = "dapt-encoder-classifier"
TRUNCATION_STRATEGIES = ("head", "head+tail", "windows")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
AUTO_MAP = {"AutoConfig": "model.DaptClassifierConfig",
            "AutoModelForSequenceClassification": "model.DaptClassifier"}
# Padded tokens per inference batch (benchmarks/bench_infer.py measures the choice; docs/benchmarks.md).
DEFAULT_BATCH_TOKENS = 1024
# Keys of an encoder config that say where/how it was saved, not what it is; labels live one level up.
_NOT_ARCHITECTURE = ("transformers_version", "_name_or_path", "name_or_path", "dtype", "torch_dtype",
                     "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal",
                     "attn_implementation", "auto_map", "_commit_hash", "id2label", "label2id", "architectures")


def encoder_architecture(config: PretrainedConfig | dict) -> dict:
    """An encoder config (object or dict) -> the JSON dict that rebuilds its architecture."""
    values = config.to_dict() if isinstance(config, PretrainedConfig) else dict(config)
    if "model_type" not in values:
        raise ValueError("encoder_config has no 'model_type'; cannot rebuild the encoder")
    return {k: v for k, v in values.items() if k not in _NOT_ARCHITECTURE}


def default_span(max_length: int) -> int:
    """The default ``head_tokens`` and ``window_stride``: a quarter of the window, at most 128 - valid
    (below the window's content tokens) for every ``max_length``, and 128 for the usual 512."""
    return min(128, max_length // 4)


class DaptClassifierConfig(PretrainedConfig):
    """config.json of a classifier: the encoder's architecture, the head, and inference settings
    (``truncation``: see :func:`encode_reviews`; ``temperature`` divides the logits, 1.0 = none)."""

    model_type = MODEL_TYPE

    encoder_config: dict | None = None
    classifier_dropout: float | int = 0.1
    max_length: int = 512
    truncation: str = "head"
    head_tokens: int | None = None  # None: default_span(max_length)
    window_stride: int | None = None  # None: default_span(max_length)
    temperature: float | int = 1.0
    base_model: str | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None:
            self.id2label = {0: "Negative", 1: "Positive"}
        if self.label2id is None:
            self.label2id = {v: int(k) for k, v in self.id2label.items()}
        if self.encoder_config is None:
            from transformers import DistilBertConfig

            self.encoder_config = DistilBertConfig().to_dict()
        self.encoder_config = encoder_architecture(self.encoder_config)
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {self.truncation!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        for key in ("head_tokens", "window_stride"):  # absent from folders written before they existed
            if getattr(self, key) is None and isinstance(self.max_length, int):
                setattr(self, key, default_span(self.max_length))
        for key in ("max_length", "head_tokens", "window_stride"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {getattr(self, key)!r}")
        super().__post_init__(**kwargs)


def default_config() -> DaptClassifierConfig:
    """What ``DaptClassifier()`` builds: the embedded config > config.json beside this file >
    the DistilBERT-base-uncased shape."""
    if EMBEDDED_CONFIG is not None:
        return DaptClassifierConfig.from_dict(EMBEDDED_CONFIG)
    beside = Path(__file__).resolve().parent / CONFIG_NAME
    if beside.is_file():
        return DaptClassifierConfig.from_json_file(str(beside))
    return DaptClassifierConfig()


def encoder_kwargs(config: PretrainedConfig) -> dict:
    """SDPA attention, and no pooler where the architecture has one (a [CLS] head does not use it)."""
    model_class = AutoModel._model_mapping.get(type(config), None)
    pooler = model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    return {"attn_implementation": "sdpa", **({"add_pooling_layer": False} if pooler else {})}


def build_encoder(architecture: dict) -> PreTrainedModel:
    """A randomly initialised encoder (no pooler, SDPA attention where the architecture has it)."""
    values = dict(architecture)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    # The weights are loaded afterwards: build in the ambient dtype, never a dtype recorded in a config.
    kwargs = {**encoder_kwargs(config), "dtype": torch.get_default_dtype()}
    try:
        return AutoModel.from_config(config, **kwargs)
    except (ValueError, ImportError) as error:
        logger.info("SDPA attention unavailable (%s); using eager attention", str(error).splitlines()[0][:120])
        return AutoModel.from_config(config, **{**kwargs, "attn_implementation": "eager"})  # not a pop: the failed attempt left "sdpa" in the config


class DaptClassifier(PreTrainedModel):
    """Encoder (``config.encoder_config``, or an already loaded ``encoder``: DistilBERT, BERT,
    RoBERTa, DeBERTa, ModernBERT, ...) + dropout + ``nn.Linear(hidden, num_labels)`` on the
    first-token hidden state. ``DistilBERTClassifier`` is the same class under the name the first
    published cards import (kept for them and for every repository published before)."""

    config_class = DaptClassifierConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: DaptClassifierConfig | None = None, encoder: PreTrainedModel | None = None):
        super().__init__(default_config() if config is None else config)
        self.encoder = build_encoder(self.config.encoder_config) if encoder is None else encoder
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, len(self.config.id2label))
        self._takes_token_type_ids = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if module is self.classifier:  # the encoder initialises (or loads) itself
            nn.init.normal_(module.weight, std=getattr(self.encoder.config, "initializer_range", 0.02))
            nn.init.zeros_(module.bias)

    @property
    def settings(self) -> dict:
        """The tokenization settings inference and evaluation use, and the labels."""
        keys = ("max_length", "truncation", "head_tokens", "window_stride", "id2label")
        return {key: getattr(self.config, key) for key in keys}

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                return_dict=None, raw_logits: bool = False, **kwargs) -> SequenceClassifierOutput | tuple:
        """``logits`` ``[B, num_labels]`` (float32) = head(hidden state at position 0) / temperature.

        ``raw_logits=True`` returns them before the temperature: what evaluation and the
        temperature fit read (they apply a temperature themselves, once). The temperature is set in
        one place, :func:`classify.calibration.set_temperature` (``config.temperature``)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_type_ids:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs)[0]
        logits = self.classifier(self.dropout(hidden[:, 0])).float()
        if not raw_logits:
            logits = logits / float(self.config.temperature)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels.to(logits.device).view(-1))
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, save_directory, tokenizer=None, **kwargs):
        """``PreTrainedModel.save_pretrained`` (model.safetensors + config.json), and the tokenizer if given."""
        super().save_pretrained(save_directory, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory)
        return Path(save_directory)


# --- Tokenization shared by training, evaluation and inference ----------------------------------

def _special_layout(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one sequence (e.g. [CLS] / [SEP])."""
    for probe in ("a", "the", "hello", "x"):
        inner = tokenizer(probe, add_special_tokens=False)["input_ids"]
        outer = tokenizer(probe, add_special_tokens=True)["input_ids"]
        for start in range(len(outer) - len(inner) + 1) if inner else ():
            if outer[start : start + len(inner)] == inner:
                return list(outer[:start]), list(outer[start + len(inner) :])
    raise ValueError("cannot work out where this tokenizer puts its special tokens")


def _content(tokenizer, texts, max_length: int, clean: bool):
    """(prefix, suffix, content-token budget per sequence, content ids per text)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    prefix, suffix = _special_layout(tokenizer)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        max_length = min(int(max_length), limit)
    budget = int(max_length) - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room for content tokens "
                         f"(the tokenizer adds {len(prefix) + len(suffix)} special tokens)")
    texts = [clean_text(t) if clean else t for t in texts]
    content = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"] if texts else []  # the ids alone: a third faster
    return prefix, suffix, budget, content


def truncate_ids(ids: list[int], budget: int, truncation: str = "head", head_tokens: int = 128) -> list[int]:
    """Content ids cut to ``budget``: the head (also ``windows``' first window) or head + tail."""
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
    if len(ids) <= budget or truncation != "head+tail" or head_tokens >= budget:
        return list(ids[:budget])
    return list(ids[:head_tokens]) + list(ids[len(ids) - (budget - head_tokens) :])


def encode_reviews(tokenizer, texts: Sequence[str], max_length: int = 512, truncation: str = "head",
                   head_tokens: int = 128, *, clean: bool = True, with_lengths: bool = False):
    """One sequence of token ids (with special tokens, at most ``max_length``) per cleaned text:
    ``head``, the first tokens; ``head+tail``, the first ``head_tokens`` and the last ones (Sun et
    al. 2019: 128 + 382 for 512); ``windows``, the first window (see :func:`encode_windows`).
    ``with_lengths``: also each whole text's token count (special tokens included, nothing cut)."""
    prefix, suffix, budget, content = _content(tokenizer, texts, max_length, clean)
    sequences = [prefix + truncate_ids(ids, budget, truncation, head_tokens) + suffix for ids in content]
    return (sequences, [len(prefix) + len(ids) + len(suffix) for ids in content]) if with_lengths else sequences


def _check_stride(stride: int, budget: int) -> None:
    if not 0 <= stride < budget:
        raise ValueError(f"window_stride={stride} must be >= 0 and below the {budget} content tokens of a window")


def _windows(ids: Sequence[int], prefix: list[int], suffix: list[int], budget: int, stride: int) -> list[list[int]]:
    step = budget - stride
    return [prefix + list(ids[start : start + budget]) + suffix for start in range(0, max(len(ids) - stride, 1), step)]


def encode_windows(tokenizer, texts: Sequence[str], max_length: int, stride: int, *,
                   clean: bool = True, with_lengths: bool = False):
    """Per text, its windows' token ids (each with special tokens, at most ``max_length``), sharing
    ``stride`` content tokens with the next (as in Hugging Face tokenizers); the last may be shorter.
    A review's logits are the mean of its windows' logits. ``with_lengths``: as :func:`encode_reviews`."""
    prefix, suffix, budget, content = _content(tokenizer, texts, max_length, clean)
    _check_stride(stride, budget)
    windows = [_windows(ids, prefix, suffix, budget, stride) for ids in content]
    return (windows, [len(prefix) + len(ids) + len(suffix) for ids in content]) if with_lengths else windows


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int, multiple_of: int = 8):
    """Right-pad id lists to a common length rounded up to ``multiple_of``; -> (ids, mask)."""
    lengths = [len(s) for s in sequences]
    longest = max(lengths)
    width = int(math.ceil(longest / multiple_of) * multiple_of) if multiple_of else longest
    flat: list[int] = []
    for seq, length in zip(sequences, lengths):  # one tensor from one list: no tensor per row
        flat.extend(seq)
        flat.extend([pad_token_id] * (width - length))
    ids = torch.tensor(flat, dtype=torch.long).view(len(sequences), width)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return ids, mask


def token_budget_batches(lengths: Sequence[int], batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
                         batch_size: int | None = None, multiple_of: int = 8) -> list[list[int]]:
    """Indices grouped longest first; a batch grows while its padded size (rows x width rounded up to
    ``multiple_of``) stays within ``batch_tokens`` and its rows within ``batch_size`` (None: no cap)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for index in order:
        if batches:
            width = math.ceil(lengths[batches[-1][0]] / multiple_of) * multiple_of
            rows = len(batches[-1]) + 1
            if (batch_tokens is None or rows * width <= batch_tokens) and (batch_size is None or rows <= batch_size):
                batches[-1].append(index)
                continue
        batches.append([index])
    return batches


# --- Inference ------------------------------------------------------------------------------------

#: Texts :func:`iter_predictions` holds, sorts by length and scores together (one window of a stream).
DEFAULT_CHUNK_SIZE = 4096
_NOTHING = "there is nothing to classify"


class ReviewError(ValueError):
    """A review that cannot be classified: ``index``, its position in the input, and ``problem``, why."""

    def __init__(self, index: int, problem: str):
        super().__init__(f"reviews[{index}] {problem}")
        self.index, self.problem = index, problem

    def __reduce__(self):
        return type(self), (self.index, self.problem)


class Prediction(NamedTuple):
    """One text's result from :func:`iter_predictions`: :func:`infer_reviews`'s ``(label_class, label,
    confidence)``, then every class's probability in class-index order. With ``skip_invalid=True``, a
    text that cannot be classified gets ``problem`` (why, as in the error) and None for the rest."""

    label_class: int | None
    label: str | None
    confidence: float | None
    probs: list[float] | None
    problem: str | None = None


class _ContentTokens:
    """Which token ids are content: not a special token of the tokenizer (its unknown token included)
    and not blank (decoding to whitespace alone, as a SentencePiece word boundary '▁'). The rule is the
    tokenizer's, not a list of characters: WordPiece drops zero-width and control characters, Unigram
    reads them as '▁' + <unk>, and byte-level BPE reads their UTF-8 bytes - tokens with embeddings of
    their own, which the model reads, so there they are content."""

    def __init__(self, tokenizer):
        self.tokenizer, self.special, self.blank = tokenizer, set(tokenizer.all_special_ids), {}

    def problem(self, ids: Sequence[int]) -> str | None:
        """Why a cleaned text with these content-token ids (no special tokens added) cannot be classified."""
        if not ids:
            return f"is empty after tokenization (the tokenizer drops every character of it): {_NOTHING}"
        for token in ids:
            if token in self.special:
                continue
            if token not in self.blank:
                self.blank[token] = not self.tokenizer.decode([token]).strip()
            if not self.blank[token]:
                return None
        read = ", ".join(repr(t) for t in dict.fromkeys(self.tokenizer.convert_ids_to_tokens(list(ids)[:64])))
        return f"is empty after tokenization (the tokenizer reads only {read}: no content token): {_NOTHING}"


def review_problem(text: str, tokenizer=None) -> str | None:
    """Why ``text`` cannot be classified, or None: not valid text (a lone surrogate), empty after
    :func:`clean_text`, or - given the ``tokenizer`` - empty after tokenization: no content token (one
    that is neither special, such as [UNK], nor blank). Inference applies all three."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"is not valid text: {error.object[error.start]!r} at character {error.start} is a lone surrogate"
    if not clean_text(text):
        return f"is empty (or only whitespace/markup): {_NOTHING}"
    if tokenizer is None:
        return None
    ids = tokenizer(clean_text(text), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return _ContentTokens(tokenizer).problem(ids)


def _unordered(reviews) -> str | None:
    if isinstance(reviews, (AbstractSet, Mapping)):
        return (f"reviews must be an ordered collection (a list or tuple of str), got {type(reviews).__name__}: "
                "it has no defined order, so results could not be matched to texts; pass a list, e.g. sorted(...)")
    return None


def _as_list(reviews) -> tuple[list, bool]:
    if isinstance(reviews, str):
        return [reviews], True
    if problem := _unordered(reviews):
        raise TypeError(problem)
    if reviews is None or not isinstance(reviews, Iterable) or isinstance(reviews, bytes):
        raise TypeError(f"reviews must be a str or a list of str, got {type(reviews).__name__}")
    return list(reviews), False


def _settings(classifier, batch_size, max_length, truncation, window_stride, batch_tokens) -> dict:
    """The tokenization and batching settings of a call: the arguments, else the classifier's config."""
    config = classifier.config
    max_length = config.max_length if max_length is None else max_length
    truncation = config.truncation if truncation is None else truncation
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
    for name, value in (("batch_size", batch_size), ("batch_tokens", batch_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 (or None: no cap), got {value}")
    positions = getattr(classifier.encoder.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        max_length = min(int(max_length), positions)  # never index past the position table
    stride = config.window_stride if window_stride is None else window_stride
    return {"max_length": max_length, "truncation": truncation, "stride": stride, "head_tokens": config.head_tokens,
            "batch_size": batch_size, "batch_tokens": batch_tokens}


def _item_problem(item) -> tuple[type, str] | None:
    if not isinstance(item, str):
        return TypeError, f"must be a str, got {type(item).__name__}"
    problem = review_problem(item)
    return None if problem is None else (ReviewError, problem)


def _raise_first(problems: list, offset: int = 0) -> None:
    for index, problem in enumerate(problems):
        if problem is not None:
            kind, text = problem
            raise ReviewError(offset + index, text) if kind is ReviewError else kind(f"reviews[{offset + index}] {text}")


def _classify(items: list, classifier, tokenizer, settings: dict) -> tuple[torch.Tensor, list]:
    """(class probabilities [n, K] of the items that can be classified, in order; per item, None or
    (error type, problem)). One tokenizer call encodes every text and tells which have content."""
    problems = [_item_problem(item) for item in items]
    readable = [index for index, problem in enumerate(problems) if problem is None]
    if not readable:
        return torch.zeros((0, len(classifier.config.id2label))), problems
    prefix, suffix, budget, content = _content(tokenizer, [items[i] for i in readable], settings["max_length"], True)
    tokens, kept = _ContentTokens(tokenizer), []
    for index, ids in zip(readable, content):
        if problem := tokens.problem(ids):
            problems[index] = (ReviewError, problem)
        else:
            kept.append(ids)
    if settings["truncation"] == "windows":
        _check_stride(settings["stride"], budget)
        windows = [_windows(ids, prefix, suffix, budget, settings["stride"]) for ids in kept]
    else:
        truncation, head = settings["truncation"], settings["head_tokens"]
        windows = [[prefix + truncate_ids(ids, budget, truncation, head) + suffix] for ids in kept]
    return _forward(windows, classifier, tokenizer, settings), problems


def _forward(windows: list[list[list[int]]], classifier, tokenizer, settings: dict) -> torch.Tensor:
    """Softmax of each review's logits, the mean over its windows (one unless truncation is "windows")."""
    classes = len(classifier.config.id2label)
    if not windows:
        return torch.zeros((0, classes))
    sequences = [ids for review in windows for ids in review]
    owner = torch.as_tensor([i for i, review in enumerate(windows) for _ in review])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(classifier.parameters()).device
    logits = torch.empty((len(sequences), classes), dtype=torch.float32)
    with torch.inference_mode():
        for batch in token_budget_batches([len(s) for s in sequences], settings["batch_tokens"], settings["batch_size"]):
            ids, mask = pad_batch([sequences[i] for i in batch], pad_id)
            out = classifier(input_ids=ids.to(device), attention_mask=mask.to(device))
            logits[torch.as_tensor(batch)] = out.logits.float().cpu()
    summed = torch.zeros((len(windows), classes)).index_add_(0, owner, logits)
    return torch.softmax(summed / torch.bincount(owner, minlength=len(windows)).unsqueeze(1), dim=-1)


def _probabilities(reviews, classifier, tokenizer, batch_size: int | None = None, max_length=None, truncation=None,
                   *, window_stride=None, batch_tokens: int | None = DEFAULT_BATCH_TOKENS):
    items, single = _as_list(reviews)
    settings = _settings(classifier, batch_size, max_length, truncation, window_stride, batch_tokens)
    probs, problems = _classify(items, classifier, tokenizer, settings)
    _raise_first(problems)
    return probs, single


def infer_reviews(reviews, classifier, tokenizer, batch_size: int | None = None, max_length=None, truncation=None,
                  *, window_stride=None, batch_tokens: int | None = DEFAULT_BATCH_TOKENS):
    """Classify one review (str -> tuple) or many (list -> list of tuples, input order): each tuple is
    ``(label_class, label, confidence)``, confidence the (temperature-scaled) softmax probability.
    ``max_length``, ``truncation`` and ``window_stride`` default to the classifier's config. Batches
    hold reviews of similar length, at most ``batch_tokens`` padded tokens and ``batch_size`` reviews
    (None: no cap). A review that cannot be classified (:func:`review_problem`: empty, not valid text,
    or no content token after tokenization) is a :class:`ReviewError` naming its index; a set (no
    order) and a non-str item are a TypeError. For a stream or a large file: :func:`iter_predictions`."""
    probs, single = _probabilities(reviews, classifier, tokenizer, batch_size, max_length, truncation,
                                   window_stride=window_stride, batch_tokens=batch_tokens)
    labels = {int(k): v for k, v in classifier.config.id2label.items()}
    results = [(int(row.argmax()), labels[int(row.argmax())], float(row.max())) for row in probs]
    return results[0] if single else results


def predict_proba(reviews, classifier, tokenizer, *args, all_classes: bool = False, **kwargs):
    """Class probabilities (temperature-scaled softmax); arguments as :func:`infer_reviews`.

    A two-class model returns P(class 1), e.g. P(positive): a float for a str, a list of floats for a
    list. ``all_classes=True`` - and always for a model of more than two classes - returns every
    class's probability instead, in class-index order (``classifier.config.id2label``): a list of
    floats for a str, a list of such lists for a list."""
    probs, single = _probabilities(reviews, classifier, tokenizer, *args, **kwargs)
    if all_classes or probs.shape[1] != 2:
        values = probs.tolist()
    else:
        values = [float(p) for p in probs[:, 1]]
    return values[0] if single else values


def iter_predictions(reviews: Iterable[str], classifier, tokenizer, batch_size: int | None = None, max_length=None,
                     truncation=None, *, window_stride=None, batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
                     chunk_size: int = DEFAULT_CHUNK_SIZE, skip_invalid: bool = False) -> Iterator[Prediction]:
    """Classify a stream of texts (any ordered iterable of str: a file's lines, a generator) lazily,
    one :class:`Prediction` per text, in input order, holding at most ``chunk_size`` texts at a time.
    Each chunk is sorted by length and scored in token-budget batches as :func:`infer_reviews` scores
    a whole list (the same results within float noise). A text that cannot be classified raises
    :class:`ReviewError` (a non-str, TypeError) naming its position in the stream before any result
    of its chunk is yielded; ``skip_invalid=True`` yields a Prediction with its ``problem`` instead.
    Other arguments as :func:`infer_reviews`; they are checked when this is called."""
    if isinstance(reviews, (str, bytes)) or reviews is None or not isinstance(reviews, Iterable):
        raise TypeError(f"reviews must be an iterable of str (one text: infer_reviews), got {type(reviews).__name__}")
    if problem := _unordered(reviews):
        raise TypeError(problem)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    settings = _settings(classifier, batch_size, max_length, truncation, window_stride, batch_tokens)
    return _predictions(iter(reviews), classifier, tokenizer, settings, chunk_size, skip_invalid)


def _predictions(items: Iterator, classifier, tokenizer, settings: dict, chunk_size: int,
                 skip_invalid: bool) -> Iterator[Prediction]:
    labels = {int(k): v for k, v in classifier.config.id2label.items()}
    offset = 0
    while chunk := list(itertools.islice(items, chunk_size)):
        probs, problems = _classify(chunk, classifier, tokenizer, settings)
        if not skip_invalid:
            _raise_first(problems, offset)
        rows = iter(probs.tolist())
        for problem in problems:
            if problem is not None:
                yield Prediction(None, None, None, None, problem[1])
                continue
            row = next(rows)
            label_class = max(range(len(row)), key=row.__getitem__)  # the first maximum, as argmax
            yield Prediction(label_class, labels[label_class], row[label_class], row)
        offset += len(chunk)


# --- Loading --------------------------------------------------------------------------------------


def to_config_json(config: DaptClassifierConfig | dict, *, auto_map: bool = False) -> dict:
    """A classifier config (object or config.json dict) -> config.json content (``auto_map`` for remote code)."""
    if not isinstance(config, DaptClassifierConfig):
        config = DaptClassifierConfig.from_dict({k: v for k, v in config.items() if k != "auto_map"})
    out = {k: v for k, v in config.to_dict().items() if k != "auto_map"}
    out["architectures"] = [DaptClassifier.__name__]
    return {**out, "auto_map": dict(AUTO_MAP)} if auto_map else out


def load_classifier(name_or_path, revision: str | None = None, device=None):
    """(classifier in eval mode, tokenizer) from a model folder, a stage-2 run folder (its ``model/``)
    or a Hub repository, through ``DaptClassifier.from_pretrained``; every tensor must match."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / "model" / CONFIG_NAME).is_file():
        path = path / "model"  # a stage-2 run folder
    source = str(path) if path.is_dir() else str(name_or_path)
    try:
        classifier, info = DaptClassifier.from_pretrained(
            source, revision=revision, output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as error:  # safetensors' own error type is neither an OSError nor a ValueError
        if type(error).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{source}: {WEIGHTS_NAME} is truncated or corrupt ({error})") from None
    head = classifier.classifier.weight.shape[0]
    rows = [shape for key, shape, _ in info["mismatched_keys"] if key == "classifier.weight"]
    if rows and rows[0][0] != head:  # (key, checkpoint shape, model shape)
        raise ValueError(f"{source}: config.json names {head} labels (id2label {dict(classifier.config.id2label)}) "
                         f"but {WEIGHTS_NAME} holds a head for {rows[0][0]} classes (classifier.weight {tuple(rows[0])})")
    problems = {"missing": info["missing_keys"], "unexpected": info["unexpected_keys"],
                "other shape": [key for key, *_ in info["mismatched_keys"]]}
    if any(problems.values()):
        found = "; ".join(f"{kind}: {', '.join(sorted(keys)[:3])}" for kind, keys in problems.items() if keys)
        raise ValueError(f"{source}: config.json does not match {WEIGHTS_NAME} (tensors {found})")
    classifier.eval()
    if device is not None:
        classifier.to(device)
    return classifier, load_tokenizer(source, revision=revision)


def load_tokenizer(name_or_path, revision: str | None = None, **kwargs):
    """``AutoTokenizer`` for a classifier folder/repo, without reading its remote-code config.json
    (AutoTokenizer would ask about remote code; the tokenizer files say what to build)."""
    kwargs.setdefault("config", PretrainedConfig())
    return AutoTokenizer.from_pretrained(str(name_or_path), revision=revision, **kwargs)


# Known to the Auto classes once this file is imported (the card's snippet imports it before
# AutoTokenizer.from_pretrained): loading the repo's config or tokenizer then never asks whether to run
# its code, and pipeline("text-classification") takes the class as one of its own.
AutoConfig.register(MODEL_TYPE, DaptClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(DaptClassifierConfig, DaptClassifier, exist_ok=True)

#: The name the first cards' snippet imports (``from model import DistilBERTClassifier, infer_reviews``)
#: and earlier repositories' config.json name: the same class, whatever the encoder.
DistilBERTClassifier = DaptClassifier

__all__ = ["EMBEDDED_CONFIG", "DaptClassifierConfig", "DaptClassifier", "DistilBERTClassifier", "clean_text",
           "encode_reviews", "encode_windows", "review_problem", "truncate_ids", "pad_batch", "token_budget_batches", "infer_reviews",
           "predict_proba", "iter_predictions", "Prediction", "ReviewError", "load_classifier", "load_tokenizer",
           "to_config_json", "default_config"]
