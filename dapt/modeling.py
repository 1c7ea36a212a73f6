"""The MLM model and its loss, with the vocabulary projection computed only where it is needed.

:class:`MaskedLMObjective` wraps any ``AutoModelForMaskedLM`` and returns per-token losses of the
masked positions. With ``masked_only`` (the default) the vocabulary projection runs on the ~15 %
masked positions alone: the 768 x 30,522 projection is a third of DistilBERT's FLOPs, and the
full-vocabulary logits of a 128 x 512 batch would be 8 GB in fp32.

How the head is reached is found structurally, never by attribute name (heads are spread over
several modules - DistilBERT's ``vocab_transform`` ... ``vocab_projector``, ELECTRA's
``generator_predictions`` + ``generator_lm_head`` - or take extra inputs - DeBERTa-v3's head reads
the word embeddings), in this order:

* ``native``: the model selects masked positions itself (ModernBERT's ``sparse_prediction``);
* ``gather``: a forward hook on ``model.base_model`` (the encoder) keeps only the masked rows of its
  last hidden state, and the model's own forward applies its own head to them;
* ``full``: full-vocabulary logits, then the masked rows (one log line says why).

A strategy is used only after a probe - one tiny forward in eval mode - shows that it gives the
model's own logits at the masked positions; so a new architecture either works or falls back, it
never trains on a wrong loss. The loss equals the model's own (tests/test_encoders.py, per
architecture).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForMaskedLM, AutoTokenizer

from dapt.core.loading import without_load_report

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _native_sparse_prediction(model: nn.Module) -> bool:
    """True for models that compute the head only where ``labels != -100`` when asked to."""
    return isinstance(getattr(model, "sparse_prediction", None), bool) and getattr(
        model.config, "sparse_pred_ignore_index", None
    ) == IGNORE_INDEX


class MaskedLMObjective(nn.Module):
    """``forward(input_ids, attention_mask, labels) -> (token_losses, example_of_token)``, one entry
    per masked position. ``freeze_encoder`` runs the encoder without gradients (head warm-up).
    ``strategy`` says how the masked logits are computed: native, gather or full."""

    def __init__(self, model: nn.Module, masked_only: bool = True):
        super().__init__()
        self.model = model
        self._selected: Optional[torch.Tensor] = None  # rows the gather hook keeps, during a forward
        self._hook = None
        self.strategy = "full"
        if masked_only:
            self.strategy = self._choose_strategy()
        self.masked_only = self.strategy != "full"

    # -- strategies ----------------------------------------------------------------------------
    def _choose_strategy(self) -> str:
        name = type(self.model).__name__
        candidates = ["native", "gather"] if _native_sparse_prediction(self.model) else ["gather"]
        for strategy in candidates:
            if strategy == "native":
                self.model.sparse_prediction = True  # the instance flag; the saved config keeps its value
            else:
                self._hook = self.model.base_model.register_forward_hook(self._keep_selected_rows)
            self.strategy = strategy
            try:
                if self._probe():
                    return strategy
                reason = "its head does not act position by position on the encoder's output"
            except Exception as error:  # any failure of an unknown architecture means: do not split
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            self._undo(strategy)
        logger.warning(f"{name}: masked-only MLM logits unavailable ({reason}); computing full-vocabulary logits")
        return "full"

    def _undo(self, strategy: str) -> None:
        if strategy == "native":
            self.model.sparse_prediction = False
        elif self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _keep_selected_rows(self, module, args, output):
        if self._selected is None:
            return output
        kept = output[0][self._selected][None]  # [1, masked, hidden]: heads are applied per position
        if isinstance(output, tuple):
            return (kept,) + tuple(output[1:])
        output.last_hidden_state = kept  # a ModelOutput: item 0 is the last hidden state
        return output

    @torch.no_grad()
    def _probe(self) -> bool:
        """The strategy's logits equal the model's full logits at the masked positions (eval mode)."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            vocab = int(model.config.vocab_size)
            # fixed ids, no RNG draw: the probe must not shift the seeded random stream of a run
            input_ids = ((torch.arange(2 * 12).reshape(2, 12) * 7 + 5) % vocab).to(device)
            attention_mask = torch.ones_like(input_ids)
            labels = torch.full_like(input_ids, IGNORE_INDEX)
            labels[:, 1::3] = input_ids[:, 1::3]
            selected = labels != IGNORE_INDEX
            full = model(input_ids=input_ids, attention_mask=attention_mask).logits[selected]
            part = self._masked_logits(input_ids, attention_mask, labels, selected)
        finally:
            model.train(was_training)
        return part.shape == full.shape and torch.allclose(part.float(), full.float(), atol=1e-4, rtol=1e-3)

    def _masked_logits(self, input_ids, attention_mask, labels, selected) -> torch.Tensor:
        if self.strategy == "native":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
        if self.strategy == "gather":
            self._selected = selected
            try:
                return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[0]
            finally:
                self._selected = None
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[selected]

    # -- the loss ------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, labels, freeze_encoder: bool = False):
        selected = labels != IGNORE_INDEX
        example_of_token = selected.nonzero()[:, 0]
        targets = labels[selected]
        with frozen(self.model.base_model) if freeze_encoder else contextlib.nullcontext():
            logits = self._masked_logits(input_ids, attention_mask, labels, selected)
        return F.cross_entropy(logits.float(), targets, reduction="none"), example_of_token


@contextlib.contextmanager
def frozen(module: nn.Module):
    """No gradients for ``module``'s parameters inside the block: autograd records none of its
    operations (a tied decoder weight, part of the encoder's embeddings, is frozen with it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the MLM head that are not shared with the encoder (a tied decoder is not)."""
    encoder_ids = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in encoder_ids]


def _some(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def _attention_fallbacks(requested: str) -> list[str]:
    """The implementations to try, best first: the requested one, then SDPA, then eager."""
    return [requested] + [name for name in ("sdpa", "eager") if name != requested]


def _from_pretrained_with_attention(name_or_path: str, revision: Optional[str], attn_implementation: str):
    """``AutoModelForMaskedLM.from_pretrained`` with the best attention the architecture supports
    (DeBERTa-v2/v3 have no SDPA, flash-attn may be missing): one log line when it is not the requested one."""
    refused = []
    for candidate in _attention_fallbacks(attn_implementation):
        try:
            with without_load_report():
                model, info = AutoModelForMaskedLM.from_pretrained(
                    name_or_path, revision=revision, attn_implementation=candidate, output_loading_info=True
                )
        except (ValueError, ImportError) as error:
            if "attention" not in str(error).lower() or candidate == "eager":
                raise
            refused.append(f"{candidate}: {str(error).splitlines()[0][:120]}")
            continue
        if refused:
            logger.warning(f"{name_or_path}: attn_implementation={attn_implementation} is not supported "
                           f"({'; '.join(refused)}); using {candidate}")
        return model, info
    raise AssertionError("unreachable: eager attention either loads or raises")


def load_masked_lm(name_or_path: str, attn_implementation: str = "sdpa", revision: Optional[str] = None):
    """``(model, tokenizer, had_mlm_head)``. A checkpoint without MLM head weights (a sentence
    encoder such as all-MiniLM-L6-v2) gets a freshly initialised head, which is logged."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    except OSError as error:  # a wrong Hub id or path, no access, or offline without a cached copy
        raise ValueError(f"cannot load model.name_or_path={name_or_path!r}: {error}") from error
    if tokenizer.mask_token is None:
        raise ValueError(f"tokenizer of {name_or_path} has no mask token: it cannot be trained with MLM")
    model, info = _from_pretrained_with_attention(name_or_path, revision, attn_implementation)
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
