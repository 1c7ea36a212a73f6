"""Masking statistics and determinism (HF's collator, seeded per example)."""

import torch

from dapt.masking import EVAL_EPOCH, MLMCollator


def random_blocks(tokenizer, n=200, length=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    specials = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
    blocks = []
    for index in range(n):
        body = ordinary[torch.randint(len(ordinary), (length - 2,), generator=generator)]
        sep = tokenizer.sep_token_id
        body[length // 2] = sep  # a separator inside the block too
        ids = torch.cat([torch.tensor([tokenizer.cls_token_id]), body, torch.tensor([sep])])
        blocks.append({"input_ids": ids.tolist(), "index": index})
    return blocks


def test_mask_rate_and_80_10_10_split_and_no_specials(tiny_tokenizer):
    blocks = random_blocks(tiny_tokenizer)
    batch = MLMCollator(tiny_tokenizer, seed=1)(blocks)
    original = torch.tensor([b["input_ids"] for b in blocks])
    selected = batch["labels"] != -100
    special = torch.isin(original, torch.tensor(tiny_tokenizer.all_special_ids))
    assert not (selected & special).any()
    assert torch.equal(batch["labels"][selected], original[selected])
    assert torch.equal(batch["input_ids"][~selected], original[~selected])
    rate = selected.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.01
    chosen = batch["input_ids"][selected]
    as_mask = (chosen == tiny_tokenizer.mask_token_id).float().mean()
    unchanged = (chosen == original[selected]).float().mean()
    assert abs(as_mask - 0.8) < 0.03
    assert abs(unchanged - (0.1 + 0.1 / len(tiny_tokenizer))) < 0.03
    assert abs(1 - as_mask - unchanged - 0.1) < 0.03  # random replacements


def test_configurable_rate(tiny_tokenizer):
    batch = MLMCollator(tiny_tokenizer, mlm_probability=0.4, seed=0)(random_blocks(tiny_tokenizer, n=100))
    rate = (batch["labels"] != -100).float().sum() / (100 * 125)
    assert abs(rate - 0.4) < 0.02


def test_masks_depend_on_example_not_on_batching(tiny_tokenizer):
    blocks = random_blocks(tiny_tokenizer, n=12)
    collator = MLMCollator(tiny_tokenizer, seed=5)
    collator.set_epoch(EVAL_EPOCH)
    whole = collator(blocks)
    pieces = [collator(blocks[i : i + 5]) for i in range(0, 12, 5)]
    again = collator(list(reversed(blocks)))
    assert torch.equal(whole["labels"], torch.cat([p["labels"] for p in pieces]))
    assert torch.equal(whole["input_ids"], torch.flip(again["input_ids"], [0]))
    collator.set_epoch(0)
    epoch0 = collator(blocks)
    collator.set_epoch(1)
    epoch1 = collator(blocks)
    assert not torch.equal(epoch0["labels"], epoch1["labels"])  # training masks are redrawn
    assert not torch.equal(epoch0["labels"], whole["labels"])


def test_padding_to_multiple_of_8(tiny_tokenizer):
    blocks = random_blocks(tiny_tokenizer, n=2, length=20)
    blocks[1]["input_ids"] = blocks[1]["input_ids"][:13]
    batch = MLMCollator(tiny_tokenizer)(blocks)
    assert batch["input_ids"].shape == (2, 24)
    assert batch["attention_mask"][1].tolist() == [1] * 13 + [0] * 11
    assert (batch["labels"][:, 20:] == -100).all()


def test_whole_word_masking_masks_all_pieces_of_a_word(tiny_tokenizer, caplog, recwarn):
    import datasets

    from dapt.data import pack_blocks

    text = " ".join(["xylophone quizzical zephyr movie"] * 40)
    blocks = pack_blocks(datasets.Dataset.from_dict({"text": [text] * 4}), tiny_tokenizer, 64, with_word_ids=True)
    collator = MLMCollator(tiny_tokenizer, whole_word_mask=True, mlm_probability=0.3, seed=0)
    # the whole-word collator only ever writes [MASK]: said once in our log, with the values in use
    assert "mask_replace_prob 0.8 -> 1.0" in caplog.text
    assert not [w for w in recwarn if "Random token replacement" in str(w.message)]
    batch = collator([blocks[i] for i in range(len(blocks))])
    tokens = [tiny_tokenizer.convert_ids_to_tokens(row) for row in blocks["input_ids"]]
    masked = batch["labels"] != -100
    assert masked.any()
    for row, pieces in enumerate(tokens):
        for position in range(1, len(pieces)):
            if pieces[position].startswith("##") and pieces[position - 1] != "[CLS]":  # iff its word start is
                assert masked[row, position] == masked[row, position - 1]
    assert (batch["input_ids"][masked] == tiny_tokenizer.mask_token_id).all()
