"""A linear sentiment head on the first-token ([CLS]) state of a Transformer encoder.

This file is self-contained: it is copied verbatim (plus the embedded configuration below) into
the published Hugging Face repository as ``model.py`` and imports only torch, transformers and the
standard library. Everything a user of the repository needs is here:

* :class:`EncoderClassifier` (alias :data:`DistilBERTClassifier`): ``nn.Module`` with ``encoder``,
  ``dropout`` and ``classifier`` (``nn.Linear(hidden, 2)`` on the [CLS] hidden state).
  ``DistilBERTClassifier()`` with no arguments rebuilds the architecture it was trained with,
  offline: from :data:`EMBEDDED_CONFIG` (written in by the publisher), else ``config.json`` beside
  this file, else the DistilBERT-base-uncased shape.
* :func:`encode_reviews` / :func:`clean_text`: the tokenization shared by training and inference
  (``head`` or ``head+tail`` truncation, Sun et al. 2019).
* :func:`infer_reviews` / :func:`predict_proba`: batched, length-sorted inference.
* :func:`load_classifier`: classifier + tokenizer from a local folder or a Hub repository.
* :class:`DaptClassifierConfig` / :class:`DaptForSequenceClassification`: the same weights through
  ``AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)`` and
  ``pipeline("text-classification", model=repo, trust_remote_code=True)``.
"""

from __future__ import annotations

import copy
import inspect
import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers import modeling_utils as _hf_modeling_utils
from transformers.modeling_outputs import SequenceClassifierOutput

logger = logging.getLogger(__name__)

# The full classifier configuration (encoder config + inference settings + labels), as a dict in
# the config.json format below. `dapt-publish` replaces the next line with the real values when it
# copies this file into a repository folder, so `DistilBERTClassifier()` works with only model.py.
EMBEDDED_CONFIG = None

MODEL_TYPE = "dapt-encoder-classifier"
DEFAULT_LABELS = {0: "Negative", 1: "Positive"}
TRUNCATION_STRATEGIES = ("head", "head+tail", "windows")  # evalcal: + windows (minimal interface)
DEFAULT_SETTINGS = {
    "classifier_dropout": 0.1,
    "max_length": 512,
    "truncation": "head",
    "head_tokens": 128,
    # --- evalcal minimal interface (helper "model" owns the redesign): old config.json files
    # without these keys load with these defaults (temperature 1: uncalibrated, as trained)
    "window_stride": 128,  # windows mode: tokens shared by consecutive windows
    "temperature": 1.0,  # forward returns raw logits / temperature (fitted on validation)
}
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
AUTO_MAP = {
    "AutoConfig": "model.DaptClassifierConfig",
    "AutoModelForSequenceClassification": "model.DaptForSequenceClassification",
}
# Keys of an encoder config dict that describe where/how it was saved, not its architecture.
_ENCODER_KEYS_TO_DROP = (
    "transformers_version",
    "_name_or_path",
    "name_or_path",
    "dtype",
    "torch_dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "_attn_implementation_internal",
    "attn_implementation",
    "auto_map",
    "_commit_hash",
    "id2label",  # the classifier's labels live at the top level, not in the encoder's config
    "label2id",
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _labels(id2label: dict | None) -> dict[int, str]:
    if not id2label:
        return dict(DEFAULT_LABELS)
    return {int(key): str(value) for key, value in id2label.items()}


def _clean_encoder_dict(encoder: dict) -> dict:
    """Architecture-only, JSON-normalised copy (what config.json / EMBEDDED_CONFIG hold)."""
    encoder = {k: v for k, v in dict(encoder).items() if k not in _ENCODER_KEYS_TO_DROP}
    encoder = json.loads(json.dumps(encoder, default=str))
    if "model_type" not in encoder:
        raise ValueError("encoder config has no 'model_type'; cannot rebuild the encoder")
    return encoder


def _encoder_dict_of(config: PretrainedConfig) -> dict:
    return _clean_encoder_dict(config.to_dict())


def default_encoder_config() -> dict:
    """The DistilBERT-base-uncased architecture (``DistilBertConfig()`` defaults)."""
    from transformers import DistilBertConfig

    return _encoder_dict_of(DistilBertConfig())


def _normalize_config(config: Any) -> dict:
    """Any accepted description of a classifier -> the canonical classifier config dict.

    Accepts a classifier config dict (has ``encoder_config``), an encoder config dict (has
    ``model_type``), a :class:`DaptClassifierConfig`, any other ``PretrainedConfig`` (taken as the
    encoder's), or a path to a ``config.json`` / a folder holding one.
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / CONFIG_NAME
        config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config, PretrainedConfig):
        if getattr(config, "encoder_config", None) is not None:
            config = {
                "encoder_config": config.encoder_config,
                "id2label": config.id2label,
                **{key: getattr(config, key, value) for key, value in DEFAULT_SETTINGS.items()},
                "base_model": getattr(config, "base_model", None),
            }
        else:
            config = {"encoder_config": _encoder_dict_of(config)}
    if not isinstance(config, dict):
        raise TypeError(f"cannot build a classifier config from {type(config).__name__}")
    if "encoder_config" not in config:
        if "model_type" in config and config["model_type"] != MODEL_TYPE:
            config = {"encoder_config": config}
        else:
            raise ValueError("classifier config has neither 'encoder_config' nor an encoder 'model_type'")
    out = {"encoder_config": _clean_encoder_dict(config["encoder_config"])}
    for key, value in DEFAULT_SETTINGS.items():
        out[key] = value if config.get(key) is None else config[key]
    out["id2label"] = _labels(config.get("id2label"))
    out["base_model"] = config.get("base_model")
    if out["truncation"] not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {out['truncation']!r}")
    return out


def resolve_default_config() -> tuple[dict, str]:
    """The configuration a no-argument ``EncoderClassifier()`` uses, and where it came from."""
    if EMBEDDED_CONFIG is not None:
        return _normalize_config(copy.deepcopy(EMBEDDED_CONFIG)), "embedded"
    beside = Path(__file__).resolve().parent / CONFIG_NAME
    if beside.is_file():
        return _normalize_config(beside), str(beside)
    return _normalize_config({"encoder_config": default_encoder_config()}), "distilbert-default"


def to_config_json(config: dict, *, auto_map: bool = False) -> dict:
    """The canonical config dict -> what goes into config.json (JSON-safe, string label keys)."""
    import transformers

    config = _normalize_config(config)
    out = {
        "model_type": MODEL_TYPE,
        "architectures": ["DaptForSequenceClassification"],
    }
    if auto_map:
        out["auto_map"] = dict(AUTO_MAP)
    out.update(
        {
            "base_model": config["base_model"],
            "classifier_dropout": config["classifier_dropout"],
            "max_length": config["max_length"],
            "truncation": config["truncation"],
            "head_tokens": config["head_tokens"],
            "window_stride": config["window_stride"],  # evalcal minimal interface
            "temperature": float(config["temperature"]),  # evalcal minimal interface
            "id2label": {str(k): v for k, v in config["id2label"].items()},
            "label2id": {v: k for k, v in config["id2label"].items()},
            "problem_type": "single_label_classification",
            "encoder_config": config["encoder_config"],
            "transformers_version": transformers.__version__,
        }
    )
    return out


class DaptClassifierConfig(PretrainedConfig):
    """Hugging Face config for :class:`DaptForSequenceClassification` (config.json of the repo)."""

    model_type = MODEL_TYPE

    encoder_config: dict | None = None
    classifier_dropout: float | int = 0.1
    max_length: int = 512
    truncation: str = "head"
    head_tokens: int = 128
    window_stride: int = 128  # evalcal minimal interface
    temperature: float = 1.0  # evalcal minimal interface
    base_model: str | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None:
            self.id2label = dict(DEFAULT_LABELS)
        if self.label2id is None:
            self.label2id = {v: int(k) for k, v in self.id2label.items()}
        if self.encoder_config is None:
            self.encoder_config = resolve_default_config()[0]["encoder_config"]
        super().__post_init__(**kwargs)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def _accepts_pooling_flag(config: PretrainedConfig) -> bool:
    try:
        model_class = AutoModel._model_mapping[type(config)]
    except (KeyError, ValueError):
        return False
    if isinstance(model_class, (list, tuple)):
        model_class = model_class[0]
    return "add_pooling_layer" in inspect.signature(model_class.__init__).parameters


def _encoder_kwargs(config: PretrainedConfig) -> dict:
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if _accepts_pooling_flag(config):
        kwargs["add_pooling_layer"] = False  # BERT/MiniLM poolers are not used by a [CLS] head
    return kwargs


def build_encoder(encoder_config: dict) -> PreTrainedModel:
    """A randomly initialised encoder of the given architecture (no pooler, SDPA attention)."""
    values = _clean_encoder_dict(encoder_config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    kwargs = _encoder_kwargs(config)
    # The weights are loaded afterwards; build in the ambient default dtype (fp32 unless a caller
    # such as from_pretrained(dtype=...) changed it), never in a dtype recorded in the config.
    kwargs["dtype"] = torch.get_default_dtype()
    try:
        return AutoModel.from_config(config, **kwargs)
    except (ValueError, ImportError) as error:  # no SDPA for this architecture
        logger.info("SDPA attention unavailable (%s); using eager attention", str(error).splitlines()[0][:120])
        kwargs["attn_implementation"] = "eager"  # not a pop: the failed attempt left "sdpa" in the config
        return AutoModel.from_config(config, **kwargs)


@contextlib.contextmanager
def without_load_report() -> Iterator[None]:
    """Silence transformers' table of missing / unexpected keys, for a caller that says what they
    mean itself (here and in stage 1). Load errors (size mismatches, failed conversions) still raise.
    A filter, not a higher level: transformers runs extra checks, and warns, when that level is raised."""

    def drop_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(drop_report)
    try:
        yield
    finally:
        report.removeFilter(drop_report)


def _load_encoder(name_or_path: str, encoder_config, kwargs: dict) -> PreTrainedModel:
    """``AutoModel.from_pretrained``, logging which checkpoint tensors the encoder leaves out (a
    stage-1 output's MLM head, a sentence encoder's pooler: a [CLS] head uses neither)."""
    with without_load_report():
        encoder, info = AutoModel.from_pretrained(
            name_or_path, config=encoder_config, output_loading_info=True, **kwargs
        )
    unused = info.get("unexpected_keys", [])
    if unused:
        modules = ", ".join(sorted({key.split(".")[0] for key in unused}))
        logger.info("%s: encoder loaded without the checkpoint's %s (%d tensors; a [CLS] head does not use them)",
                    name_or_path, modules, len(unused))
    if info.get("missing_keys"):
        logger.warning("%s: %d encoder tensors missing from the checkpoint and initialised fresh (%s)",
                       name_or_path, len(info["missing_keys"]), ", ".join(sorted(info["missing_keys"])[:3]))
    return encoder


def _hidden_size(config: PretrainedConfig) -> int:
    for name in ("hidden_size", "dim", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot find the hidden size of {type(config).__name__}")


def _forward_accepts(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def _cls_logits(module: nn.Module, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None and module._encoder_takes_token_type_ids:
        kwargs["token_type_ids"] = token_type_ids
    hidden = module.encoder(**kwargs)[0]  # last_hidden_state [B, T, H]
    pooled = module.dropout(hidden[:, 0])  # the first ([CLS]) token
    return module.classifier(pooled).float() / float(module.config.temperature)  # evalcal minimal interface


class EncoderClassifier(nn.Module):
    """Encoder + dropout + ``nn.Linear(hidden, num_labels)`` on the first-token hidden state.

    ``config`` may be omitted (see :func:`resolve_default_config`), or be anything accepted by
    :func:`_normalize_config`. Keyword settings override the config's.
    """

    def __init__(
        self,
        config: Any = None,
        *,
        dropout: float | None = None,
        max_length: int | None = None,
        truncation: str | None = None,
        head_tokens: int | None = None,
        encoder: PreTrainedModel | None = None,
    ):
        super().__init__()
        if config is None and encoder is not None:
            config = encoder.config
        if config is None:
            config, source = resolve_default_config()
            logger.debug("classifier config from %s", source)
        config = _normalize_config(config)
        overrides = {
            "classifier_dropout": dropout,
            "max_length": max_length,
            "truncation": truncation,
            "head_tokens": head_tokens,
        }
        config.update({k: v for k, v in overrides.items() if v is not None})
        config = _normalize_config(config)  # re-validate overrides
        self.encoder = encoder if encoder is not None else build_encoder(config["encoder_config"])
        self.dropout = nn.Dropout(config["classifier_dropout"])
        self.classifier = nn.Linear(_hidden_size(self.encoder.config), len(config["id2label"]))
        self._encoder_takes_token_type_ids = _forward_accepts(self.encoder, "token_type_ids")
        self.config_dict = config

    # -- settings ---------------------------------------------------------------------------
    @property
    def settings(self) -> dict:
        """Inference settings: max_length, truncation, head_tokens, window_stride, temperature, id2label."""
        keys = ("max_length", "truncation", "head_tokens", "window_stride", "temperature", "id2label")
        return {k: self.config_dict[k] for k in keys}

    # --- evalcal minimal interface: `model.config.temperature` readable and settable (a view of
    # config_dict, so save_pretrained writes it); helper "model"'s redesign replaces this
    @property
    def config(self) -> "_ConfigView":
        return _ConfigView(self.config_dict)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dropout: float = 0.1,
        max_length: int = 512,
        truncation: str = "head",
        head_tokens: int = 128,
        window_stride: int = 128,  # evalcal minimal interface
        **from_pretrained_kwargs,
    ) -> "EncoderClassifier":
        """Pretrained encoder weights (Hub id or local dir) + a fresh, default-initialised head."""
        name_or_path = str(name_or_path)
        hub_kwargs = {
            k: from_pretrained_kwargs[k]
            for k in ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")
            if k in from_pretrained_kwargs
        }
        encoder_config = from_pretrained_kwargs.pop("config", None) or AutoConfig.from_pretrained(
            name_or_path, **hub_kwargs
        )
        kwargs = _encoder_kwargs(encoder_config)
        kwargs["dtype"] = torch.float32
        kwargs.update(from_pretrained_kwargs)
        try:
            encoder = _load_encoder(name_or_path, encoder_config, kwargs)
        except (ValueError, ImportError) as error:
            if kwargs.get("attn_implementation") != "sdpa":
                raise
            logger.info("SDPA attention unavailable (%s); using eager attention", str(error).splitlines()[0][:120])
            kwargs["attn_implementation"] = "eager"  # not a pop: the failed attempt left "sdpa" in the config
            encoder = _load_encoder(name_or_path, encoder_config, kwargs)
        config = {
            "encoder_config": _encoder_dict_of(encoder.config),
            "classifier_dropout": dropout,
            "max_length": max_length,
            "truncation": truncation,
            "head_tokens": head_tokens,
            "window_stride": window_stride,
            "base_model": name_or_path,
        }
        return cls(config, encoder=encoder)

    @classmethod
    def from_pretrained(cls, name_or_path, revision: str | None = None, device=None) -> "EncoderClassifier":
        """A saved classifier (folder, stage-2 run dir or Hub repo), in eval mode; see load_classifier."""
        return load_classifier(name_or_path, revision=revision, device=device)[0]

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, num_labels]`` (float32) from the hidden state at position 0."""
        return _cls_logits(self, input_ids, attention_mask, token_type_ids)

    # -- persistence ------------------------------------------------------------------------
    def config_json(self, *, auto_map: bool = False) -> dict:
        return to_config_json(self.config_dict, auto_map=auto_map)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> Path:
        """Write ``model.safetensors`` (the state dict) and ``config.json`` (+ tokenizer if given)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        _hf_modeling_utils.safe_save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / CONFIG_NAME).write_text(json.dumps(self.config_json(), indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return directory


class _ConfigView:
    """Attribute access to a classifier's config dict (evalcal minimal interface)."""

    def __init__(self, values: dict):
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        if name not in self._values:
            raise AttributeError(f"classifier config has no {name!r}")
        self._values[name] = value


DistilBERTClassifier = EncoderClassifier
"""The name the published snippet uses; same class (the encoder need not be DistilBERT)."""


class DaptForSequenceClassification(PreTrainedModel):
    """The same network for ``AutoModelForSequenceClassification`` / ``pipeline`` (remote code).

    Submodules ``encoder``/``dropout``/``classifier`` give state-dict keys identical to
    :class:`EncoderClassifier`, so one ``model.safetensors`` loads both ways.
    """

    config_class = DaptClassifierConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: DaptClassifierConfig):
        super().__init__(config)
        normalized = _normalize_config(config)
        self.num_labels = len(normalized["id2label"])
        self.encoder = build_encoder(normalized["encoder_config"])
        self.dropout = nn.Dropout(normalized["classifier_dropout"])
        self.classifier = nn.Linear(_hidden_size(self.encoder.config), self.num_labels)
        self._encoder_takes_token_type_ids = _forward_accepts(self.encoder, "token_type_ids")
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if module is self.classifier:
            std = getattr(self.encoder.config, "initializer_range", 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
        elif module is not self:
            super()._init_weights(module)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        logits = _cls_logits(self, input_ids, attention_mask, token_type_ids)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.to(logits.device).view(-1))
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# --------------------------------------------------------------------------------------------
# Tokenization shared by training and inference
# --------------------------------------------------------------------------------------------

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """IMDb markup ``<br />`` (any case/spacing) -> a space; collapse whitespace; strip."""
    return _WS.sub(" ", _BR.sub(" ", text)).strip()


def _special_layout(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one sequence (e.g. [CLS] / [SEP])."""
    for probe in ("a", "the", "hello", "x"):
        inner = tokenizer(probe, add_special_tokens=False)["input_ids"]
        outer = tokenizer(probe, add_special_tokens=True)["input_ids"]
        if not inner:
            continue
        for start in range(len(outer) - len(inner) + 1):
            if outer[start : start + len(inner)] == inner:
                return list(outer[:start]), list(outer[start + len(inner) :])
    raise ValueError("cannot work out where this tokenizer puts its special tokens")


def _effective_max_length(tokenizer, max_length: int) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return min(int(max_length), limit)
    return int(max_length)


def truncate_ids(ids: list[int], budget: int, truncation: str = "head", head_tokens: int = 128) -> list[int]:
    """Content token ids cut to ``budget``: the head, or the first ``head_tokens`` + the tail."""
    if truncation not in ("head", "head+tail"):
        raise ValueError(f"truncation must be head or head+tail (windows: encode_windows), got {truncation!r}")
    if len(ids) <= budget:
        return list(ids)
    if truncation == "head" or head_tokens >= budget:
        return list(ids[:budget])
    tail = budget - head_tokens
    return list(ids[:head_tokens]) + list(ids[len(ids) - tail :])


def encode_reviews(
    tokenizer,
    texts: Sequence[str],
    max_length: int = 512,
    truncation: str = "head",
    head_tokens: int = 128,
    *,
    clean: bool = True,
) -> list[list[int]]:
    """Token ids with special tokens, at most ``max_length`` long, for each text.

    ``head``: keep the first tokens (standard truncation). ``head+tail``: keep the first
    ``head_tokens`` and the last ``max_length - head_tokens - n_special`` content tokens
    (Sun et al. 2019: 128 + 382 for 512). Texts are passed through :func:`clean_text` first.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = [clean_text(t) if clean else t for t in texts]
    if not texts:
        return []
    prefix, suffix = _special_layout(tokenizer)
    budget = _effective_max_length(tokenizer, max_length) - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room for content tokens")
    content = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [prefix + truncate_ids(ids, budget, truncation, head_tokens) + suffix for ids in content]


# --- evalcal minimal interface (helper "model" owns the real one): sliding windows
def encode_windows(tokenizer, texts: Sequence[str], max_length: int = 512, stride: int = 128, *,
                   clean: bool = True) -> list[list[list[int]]]:
    """Per text, its windows (token ids with special tokens, at most ``max_length`` long): the
    content cut into windows of ``max_length - n_special`` tokens, consecutive windows sharing
    ``stride`` tokens; the last window ends at the text's end. A short text is one window."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [clean_text(t) if clean else t for t in texts]
    if not texts:
        return []
    prefix, suffix = _special_layout(tokenizer)
    budget = _effective_max_length(tokenizer, max_length) - len(prefix) - len(suffix)
    if not 0 <= stride < budget:
        raise ValueError(f"window stride {stride} must be in [0, {budget}) for max_length={max_length}")
    step = budget - stride
    content = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    windows = []
    for ids in content:
        starts = list(range(0, max(1, len(ids) - stride), step)) if len(ids) > budget else [0]
        windows.append([prefix + list(ids[s : s + budget]) + suffix for s in starts])
    return windows


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def _model_settings(model: nn.Module) -> dict:
    if isinstance(getattr(model, "config_dict", None), dict):
        return model.config_dict
    config = getattr(model, "config", None)
    if config is not None:
        return _normalize_config(config)
    return _normalize_config({"encoder_config": default_encoder_config()})


def _check_reviews(reviews) -> tuple[list[str], bool]:
    if isinstance(reviews, str):
        return [reviews], True
    if reviews is None or not isinstance(reviews, Iterable) or isinstance(reviews, (bytes, dict)):
        raise TypeError(f"reviews must be a str or a list of str, got {type(reviews).__name__}")
    reviews = list(reviews)
    for index, item in enumerate(reviews):
        if not isinstance(item, str):
            raise TypeError(f"reviews[{index}] must be a str, got {type(item).__name__}")
    return reviews, False


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int, multiple_of: int = 8):
    """Right-pad id lists to a common length rounded up to ``multiple_of``; -> (ids, mask)."""
    longest = max(len(s) for s in sequences)
    width = int(math.ceil(longest / multiple_of) * multiple_of) if multiple_of else longest
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _probabilities(reviews, classifier, tokenizer, batch_size, max_length, truncation, head_tokens=None):
    texts, single = _check_reviews(reviews)
    settings = _model_settings(classifier)
    max_length = settings["max_length"] if max_length is None else max_length
    truncation = settings["truncation"] if truncation is None else truncation
    head_tokens = settings["head_tokens"] if head_tokens is None else head_tokens
    positions = getattr(getattr(getattr(classifier, "encoder", None), "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        max_length = min(int(max_length), positions)  # never index past the position table
    if not texts:
        return torch.zeros((0, len(settings["id2label"]))), single, settings
    encoded = encode_reviews(tokenizer, texts, max_length, truncation, head_tokens)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(classifier.parameters()).device
    probs = torch.empty((len(encoded), len(settings["id2label"])), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(order), max(1, int(batch_size))):
            chunk = order[start : start + max(1, int(batch_size))]
            ids, mask = pad_batch([encoded[i] for i in chunk], pad_id)
            out = classifier(input_ids=ids.to(device), attention_mask=mask.to(device))
            logits = out.logits if hasattr(out, "logits") else out
            probs[torch.as_tensor(chunk)] = torch.softmax(logits.float(), dim=-1).cpu()
    return probs, single, settings


def infer_reviews(reviews, classifier, tokenizer, batch_size: int = 32, max_length=None, truncation=None):
    """Classify one review (str -> tuple) or many (list -> list of tuples, input order).

    Each tuple is ``(label_class, label, confidence)``: the class index (0/1), its name
    ("Negative"/"Positive") and the softmax probability of that class. ``max_length`` and
    ``truncation`` default to the classifier's stored settings; long reviews are truncated.
    """
    probs, single, settings = _probabilities(reviews, classifier, tokenizer, batch_size, max_length, truncation)
    labels = settings["id2label"]
    results = []
    for row in probs:
        label_class = int(torch.argmax(row))
        results.append((label_class, labels[label_class], float(row[label_class])))
    return results[0] if single else results


def predict_proba(reviews, classifier, tokenizer, batch_size: int = 32, max_length=None, truncation=None):
    """P(positive) (class 1) per review: a float for a str, a list of floats for a list."""
    probs, single, _ = _probabilities(reviews, classifier, tokenizer, batch_size, max_length, truncation)
    values = [float(p) for p in probs[:, 1]] if len(probs) else []
    return values[0] if single else values


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _looks_local(name_or_path: str) -> bool:
    """True for something that can only be a local path (absolute, ./, ~, or not a repo id)."""
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or not _HUB_ID.match(name_or_path)
    )


def _resolve_file(name_or_path: str, filename: str, revision: str | None) -> str:
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise FileNotFoundError(f"{filename} not found in {local}")
        return str(path)
    if _looks_local(name_or_path):
        raise FileNotFoundError(f"model folder not found: {name_or_path}")
    from transformers.utils import cached_file

    return cached_file(name_or_path, filename, revision=revision)


def load_classifier(name_or_path, revision: str | None = None, device=None):
    """(classifier, tokenizer) from a local folder, a stage-2 run dir, or a Hub repository."""
    name_or_path = str(name_or_path)
    local = Path(name_or_path).expanduser()
    if local.is_dir() and not (local / CONFIG_NAME).is_file() and (local / "model" / CONFIG_NAME).is_file():
        local = local / "model"  # a stage-2 output directory
        name_or_path = str(local)
    config = json.loads(Path(_resolve_file(name_or_path, CONFIG_NAME, revision)).read_text(encoding="utf-8"))
    classifier = EncoderClassifier(config)
    state = _hf_modeling_utils.load_state_dict(_resolve_file(name_or_path, WEIGHTS_NAME, revision))
    classifier.load_state_dict(state, strict=True)
    classifier.eval()
    if device is not None:
        classifier.to(device)
    tokenizer = load_tokenizer(name_or_path, revision=revision)
    return classifier, tokenizer


def load_tokenizer(name_or_path, revision: str | None = None, **kwargs):
    """``AutoTokenizer`` for a classifier folder/repo without touching its remote-code config.

    The repo's config.json names ``model.DaptClassifierConfig`` in ``auto_map``; letting
    AutoTokenizer read it would ask about remote code. The tokenizer files say what to build.
    """
    kwargs.setdefault("config", PretrainedConfig())
    return AutoTokenizer.from_pretrained(str(name_or_path), revision=revision, **kwargs)


__all__ = [
    "EMBEDDED_CONFIG",
    "EncoderClassifier",
    "DistilBERTClassifier",
    "DaptClassifierConfig",
    "DaptForSequenceClassification",
    "build_encoder",
    "clean_text",
    "encode_reviews",
    "encode_windows",
    "truncate_ids",
    "pad_batch",
    "infer_reviews",
    "predict_proba",
    "load_classifier",
    "load_tokenizer",
    "resolve_default_config",
    "to_config_json",
]
