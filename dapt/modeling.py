"""The MLM model and its loss, with the vocabulary projection computed only where it is needed.

:class:`MaskedLMObjective` wraps any ``AutoModelForMaskedLM`` and returns per-token losses of the
masked positions. With ``masked_only`` (the default) it runs the encoder, gathers the hidden
states of the ~15 % masked positions and applies the MLM head to those alone: the 768 x 30,522
projection is a third of DistilBERT's FLOPs, and the full-vocabulary logits of a 128 x 512 batch
would be 8 GB in fp32. The loss is the same as the model's own (a test checks it).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForMaskedLM, AutoTokenizer

from classify.encoder import without_load_report  # moves to dapt/core/loading.py (helper restructure)

logger = logging.getLogger(__name__)


def split_encoder_and_head(model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """``(encoder, head)`` of a masked-LM model: ``encoder(input_ids, attention_mask)`` gives the
    last hidden states, ``head(hidden)`` the vocabulary logits."""
    encoder = model.base_model
    if hasattr(model, "cls"):  # BERT and its relatives
        return encoder, model.cls
    if hasattr(model, "lm_head"):  # RoBERTa, XLM-R, ModernBERT, ...
        return encoder, model.lm_head
    if hasattr(model, "vocab_projector"):  # DistilBERT

        def distilbert_head(hidden: torch.Tensor) -> torch.Tensor:
            hidden = model.vocab_layer_norm(model.activation(model.vocab_transform(hidden)))
            return model.vocab_projector(hidden)

        return encoder, distilbert_head
    raise ValueError(f"don't know the MLM head of {type(model).__name__}; set impl.masked_only_logits=false")


class MaskedLMObjective(nn.Module):
    """``forward(input_ids, attention_mask, labels) -> (token_losses, example_of_token)``, one entry
    per masked position. ``freeze_encoder`` runs the encoder without gradients (head warm-up)."""

    def __init__(self, model: nn.Module, masked_only: bool = True):
        super().__init__()
        self.model = model
        self.masked_only = masked_only
        # a tuple, so that the encoder and head are not registered twice as submodules
        self._parts = split_encoder_and_head(model) if masked_only else None

    def forward(self, input_ids, attention_mask, labels, freeze_encoder: bool = False):
        selected = labels != -100
        example_of_token = selected.nonzero()[:, 0]
        targets = labels[selected]
        if not self.masked_only:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_encoder):
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return F.cross_entropy(logits[selected].float(), targets, reduction="none"), example_of_token
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_encoder):
            encoder, head = self._parts
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = head(hidden[selected])
        return F.cross_entropy(logits.float(), targets, reduction="none"), example_of_token


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the MLM head that are not shared with the encoder (a tied decoder is not)."""
    encoder_ids = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in encoder_ids]


def _some(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def load_masked_lm(name_or_path: str, attn_implementation: str = "sdpa", revision: Optional[str] = None):
    """``(model, tokenizer, had_mlm_head)``. A checkpoint without MLM head weights (a sentence
    encoder such as all-MiniLM-L6-v2) gets a freshly initialised head, which is logged."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    except OSError as error:  # a wrong Hub id or path, no access, or offline without a cached copy
        raise ValueError(f"cannot load model.name_or_path={name_or_path!r}: {error}") from error
    if tokenizer.mask_token is None:
        raise ValueError(f"tokenizer of {name_or_path} has no mask token: it cannot be trained with MLM")
    with without_load_report():
        model, info = AutoModelForMaskedLM.from_pretrained(
            name_or_path, revision=revision, attn_implementation=attn_implementation, output_loading_info=True
        )
    head_prefixes = {n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")}
    missing = [k for k in info.get("missing_keys", []) if any(k.startswith(p.rsplit(".", 1)[0]) for p in head_prefixes)]
    unused = info.get("unexpected_keys", [])
    if unused:  # e.g. a sentence encoder's pooler: the MLM model has no place for it
        logger.info(f"{name_or_path}: {len(unused)} checkpoint tensors not used by the MLM model ({_some(unused)})")
    other_missing = set(info.get("missing_keys", [])) - set(missing)
    if other_missing:
        logger.warning(f"{name_or_path}: {len(other_missing)} encoder tensors missing from the checkpoint and "
                       f"initialised fresh ({_some(other_missing)})")
    had_head = not missing
    if not had_head:
        logger.warning(
            f"{name_or_path} has no MLM head ({len(missing)} head tensors missing, e.g. {sorted(missing)[0]}): "
            "the head is initialised fresh, so perplexity before any training reflects a random head"
        )
    return model, tokenizer, had_head
