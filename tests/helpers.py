"""Offline building blocks for tests: a tiny WordPiece tokenizer and tiny random encoders.

Nothing here downloads anything. The vocabulary is generated (special tokens, single characters,
their ``##`` continuations and a few hundred common English words), so every input tokenizes.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_WORDS = """
the a an and or but if of to in on at by for with from as is are was were be been being it its this
that these those i you he she we they me him her us them my your his our their not no yes very so too
movie film films movies story plot actor actors acting actress director scene scenes cast character
characters good great best better bad worst worse terrible awful boring excellent wonderful amazing
loved love hate hated like liked enjoy enjoyed funny fun sad beautiful brilliant poor waste time
watch watched watching see seen saw recommend never ever again really just even still much more most
one two three first last end ending beginning music script work performance performances well also
would could should can will do did does done make made get got go going think thought know people
life world man woman men women young old new long short little big real really br
""".split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = [f"##{c}" for c in string.ascii_lowercase + string.digits]
    words = [w for w in dict.fromkeys(_WORDS) if w not in chars]
    return specials + chars + pieces + words


def build_tiny_tokenizer(directory: Path):
    """A BertTokenizerFast over :func:`tiny_vocab`, saved to ``directory`` and returned."""
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(tiny_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_bert_config(vocab_size: int, **overrides):
    from transformers import BertConfig

    values = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
    )
    values.update(overrides)
    return BertConfig(**values)


def build_tiny_encoder(directory: Path, *, with_mlm_head: bool = True, seed: int = 0, **overrides):
    """Save a tiny random BERT (with or without an MLM head) plus tokenizer to ``directory``."""
    import torch
    from transformers import BertForMaskedLM, BertModel

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(directory)
    config = tiny_bert_config(len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config) if with_mlm_head else BertModel(config, add_pooling_layer=False)
    model.save_pretrained(directory)
    return directory


def sentences(n, seed=0, words=(5, 40)):
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


def rank_errors(stderr: str) -> str:
    """What a failed ``accelerate launch`` says about why a process failed: the lines of our error
    reports and the exceptions, which the launcher's long report of its own would push out of view."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:") or "Error" in line]
    return "\n".join(lines[-20:]) + "\n...\n" + stderr[-1500:]


def output_text(output) -> str:
    """A subprocess's captured output as text: ``TimeoutExpired`` keeps bytes even for ``text=True``."""
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")
