"""Stage 2's starting point: a pretrained encoder (Hub id or folder, e.g. a stage-1 output) under a
fresh [CLS] head. Training-side only; the published model.py holds the network and inference."""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel

from classify.model import DaptClassifierConfig, DaptClassifier, encoder_architecture, encoder_kwargs
from dapt.core.loading import without_load_report

logger = logging.getLogger(__name__)


def load_encoder(name_or_path: str, **from_pretrained_kwargs) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` in fp32 without a pooler, SDPA attention where available, logging
    which checkpoint tensors the encoder leaves out (a stage-1 MLM head, a sentence encoder's pooler)."""
    hub = {k: from_pretrained_kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only",
                                                   "trust_remote_code") if k in from_pretrained_kwargs}
    config = from_pretrained_kwargs.pop("config", None) or AutoConfig.from_pretrained(name_or_path, **hub)
    kwargs = {**encoder_kwargs(config), "dtype": torch.float32, **from_pretrained_kwargs}
    try:
        with without_load_report():
            encoder, info = AutoModel.from_pretrained(name_or_path, config=config, output_loading_info=True, **kwargs)
    except (ValueError, ImportError) as error:
        if kwargs.get("attn_implementation") != "sdpa":
            raise
        logger.info("SDPA attention unavailable (%s); using eager attention", str(error).splitlines()[0][:120])
        kwargs["attn_implementation"] = "eager"  # not a pop: the failed attempt left "sdpa" in the config
        with without_load_report():
            encoder, info = AutoModel.from_pretrained(name_or_path, config=config, output_loading_info=True, **kwargs)
    unused = info.get("unexpected_keys", [])
    if unused:
        modules = ", ".join(sorted({key.split(".")[0] for key in unused}))
        logger.info("%s: encoder loaded without the checkpoint's %s (%d tensors; a [CLS] head does not use them)",
                    name_or_path, modules, len(unused))
    if info.get("missing_keys"):
        logger.warning("%s: %d encoder tensors missing from the checkpoint and initialised fresh (%s)",
                       name_or_path, len(info["missing_keys"]), ", ".join(sorted(info["missing_keys"])[:3]))
    return encoder


def from_encoder(name_or_path: str | os.PathLike, *, dropout: float = 0.1, max_length: int = 512,
                 truncation: str = "head", head_tokens: int = 128, window_stride: int = 128,
                 id2label: dict[int, str] | None = None, **from_pretrained_kwargs) -> DaptClassifier:
    """Pretrained encoder weights (Hub id or local folder) + a fresh, default-initialised head with
    one output per class of ``id2label`` (default: 0 = Negative, 1 = Positive)."""
    encoder = load_encoder(str(name_or_path), **from_pretrained_kwargs)
    labels = {} if id2label is None else {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}
    config = DaptClassifierConfig(
        encoder_config=encoder_architecture(encoder.config), classifier_dropout=dropout, max_length=max_length,
        truncation=truncation, head_tokens=head_tokens, window_stride=window_stride, base_model=str(name_or_path), **labels,
    )
    return DaptClassifier(config, encoder=encoder)
