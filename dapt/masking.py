"""MLM masking whose randomness depends on (seed, epoch, example), never on batching.

The masking itself is Hugging Face's :class:`~transformers.DataCollatorForLanguageModeling`
(80 % ``[MASK]``, 10 % random, 10 % unchanged; whole-word masking as an option, where every
selected word becomes ``[MASK]``: the whole-word collator has no random / unchanged replacement);
this module only seeds it per example. So:

* held-out masks are drawn once for all: the same for every evaluation, any batch size, any
  number of processes - perplexity before and after training is comparable;
* training masks change every epoch (``set_epoch``), and a resumed run redraws exactly the masks
  the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging

import torch
from transformers import DataCollatorForLanguageModeling

logger = logging.getLogger(__name__)

EVAL_EPOCH = 1_000_003  # an epoch number training never reaches: the held-out masks


def example_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 2_000_003 + index


class MLMCollator:
    """Collates packed blocks (``input_ids``, ``index`` and, for whole-word masking, ``word_ids``)
    into a padded, masked batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 where unmasked).

    Word boundaries come from the tokenizer's own word ids (:func:`dapt.data.pack_blocks`), not from
    ``##`` continuation marks, so whole-word masking works with WordPiece, byte-level BPE and
    SentencePiece tokenizers alike."""

    def __init__(
        self,
        tokenizer,
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int = 0,
        pad_to_multiple_of: int | None = 8,
    ):
        if whole_word_mask and (mask_replace_prob, random_replace_prob) != (1.0, 0.0):
            # transformers' whole-word masking has no random / unchanged replacement: say so,
            # with the values the run really uses (passing those, its own warning does not fire)
            logger.warning(
                "whole_word_mask: every selected word becomes [MASK] (mask_replace_prob %s -> 1.0, "
                "random_replace_prob %s -> 0.0): transformers' whole-word masking does not replace "
                "words with random tokens or leave them unchanged", mask_replace_prob, random_replace_prob,
            )
            mask_replace_prob, random_replace_prob = 1.0, 0.0
        self.masker = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=mlm_probability,
            whole_word_mask=whole_word_mask,
            mask_replace_prob=mask_replace_prob,
            random_replace_prob=random_replace_prob,
            seed=seed,
        )
        self.masker.generator = torch.Generator()
        self.whole_word_mask = whole_word_mask
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.seed = seed
        self.epoch = 0
        self.pad_to_multiple_of = pad_to_multiple_of

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def mask_one(self, input_ids: torch.Tensor, index: int, word_ids: torch.Tensor | None = None):
        """``(masked_ids, labels)`` for one block, seeded by (seed, epoch, index)."""
        self.masker.generator.manual_seed(example_seed(self.seed, self.epoch, index))
        ids = input_ids.clone()[None]
        special = torch.isin(ids, self.special_ids)
        offsets = None
        if word_ids is not None:
            # transformers finds word starts in character offsets (a token starting where the previous
            # one ended continues its word); the span (w, w) of word number w says exactly that
            offsets = torch.stack([word_ids, word_ids], dim=-1)[None]
        masked, labels = self.masker.torch_mask_tokens(ids, special_tokens_mask=special, offset_mapping=offsets)
        return masked[0], labels[0]

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), -100, dtype=torch.long)
        attention = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
            words = torch.as_tensor(example["word_ids"], dtype=torch.long) if self.whole_word_mask else None
            masked, row_labels = self.mask_one(ids, int(example["index"]), words)
            batch_ids[row, : len(ids)] = masked
            labels[row, : len(ids)] = row_labels
            attention[row, : len(ids)] = 1
        return {"input_ids": batch_ids, "attention_mask": attention, "labels": labels}
