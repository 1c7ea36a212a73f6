"""The encoder architectures the pipeline supports, as tiny random models with offline tokenizers.

One line of :data:`ARCHITECTURES` adds an architecture to every test of tests/test_encoders.py:
its ``model_type``, the transformers tokenizer class its real checkpoints use, and the config values
that differ from the shared tiny shape. Tokenizers are trained at test time (``tokenizers``: a
WordPiece, byte-level BPE or Unigram model, as the real checkpoint's) on a few hundred IMDb reviews
from ../shared/data and wrapped in that class, so its own normalizer, pre-tokenizer and special-token
layout are the ones under test. Nothing is downloaded and no dataset text is stored in the repo.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import SHARED_DATA

VOCAB_SIZE = 600
MAX_POSITIONS = 128  # the tokenizers' model_max_length; RoBERTa-style position tables get +2
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@dataclass(frozen=True)
class Arch:
    name: str  # the test id
    model_type: str  # transformers' model_type
    tokenizer: str  # the transformers tokenizer class of the real checkpoints
    config: dict = field(default_factory=dict)  # what differs from TINY_SHAPE

    @property
    def tokenizer_model(self) -> str:
        return TOKENIZER_MODELS[self.tokenizer]


# model_type, tokenizer class, config overrides: one line per architecture
ARCHITECTURES = [
    Arch("bert", "bert", "BertTokenizer"),
    Arch("distilbert", "distilbert", "DistilBertTokenizer", {"hidden_dim": 64}),
    Arch("roberta", "roberta", "RobertaTokenizer", {"type_vocab_size": 1, "max_position_embeddings": MAX_POSITIONS + 2}),
    Arch("deberta-v2-legacy", "deberta-v2", "DebertaV2Tokenizer", {"legacy": True}),
    Arch("deberta-v3", "deberta-v2", "DebertaV2Tokenizer", {  # microsoft/deberta-v3-base's attention settings
        "legacy": False, "relative_attention": True, "position_buckets": 32, "pos_att_type": ["p2c", "c2p"],
        "norm_rel_ebd": "layer_norm", "share_att_key": True, "position_biased_input": False, "type_vocab_size": 0}),
    Arch("electra", "electra", "BertTokenizer", {"embedding_size": 16}),
    Arch("albert", "albert", "AlbertTokenizer", {"embedding_size": 16, "type_vocab_size": 2}),
    Arch("modernbert", "modernbert", "PreTrainedTokenizerFast", {"global_attn_every_n_layers": 2, "local_attention": 16}),
    Arch("xlm-roberta", "xlm-roberta", "XLMRobertaTokenizer", {"type_vocab_size": 1, "max_position_embeddings": MAX_POSITIONS + 2}),
]
BY_NAME = {arch.name: arch for arch in ARCHITECTURES}

TOKENIZER_MODELS = {
    "BertTokenizer": "wordpiece", "DistilBertTokenizer": "wordpiece",
    "RobertaTokenizer": "bpe", "PreTrainedTokenizerFast": "bpe",
    "XLMRobertaTokenizer": "unigram", "AlbertTokenizer": "unigram", "DebertaV2Tokenizer": "unigram",
}
# ModernBERT-base's tokenizer: byte-level BPE (OLMo's) with BERT's special tokens
MODERNBERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                       "mask_token": "[MASK]"}


def imdb_texts(n: int = 400) -> list[str]:
    """The first ``n`` IMDb unsupervised reviews (read at test time, never stored)."""
    import pyarrow.parquet as pq

    table = pq.read_table(SHARED_DATA / "imdb" / "unsupervised.parquet", columns=["text"])
    return [t.replace("<br />", " ") for t in table.slice(0, n).column("text").to_pylist()]


def _special_tokens(tokenizer_class) -> list[str]:
    """The class's own default special tokens, in its default vocabulary order (so ids such as a
    hard-coded ``unk_id`` agree with the trained vocabulary)."""
    default = tokenizer_class()
    return list(dict.fromkeys(default.convert_ids_to_tokens(list(range(len(default))))))


@functools.lru_cache(maxsize=None)
def _trained_model(kind: str, texts: tuple[str, ...], vocab_size: int) -> dict:
    """A WordPiece / byte-level BPE / Unigram model trained on ``texts`` (the ``model`` section of
    tokenizer.json), trained once per kind: each tokenizer class then puts its own special tokens first."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if kind == "wordpiece":
        model = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        model.normalizer = normalizers.BertNormalizer(lowercase=True)
        model.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"])
    elif kind == "bpe":
        model = Tokenizer(models.BPE())
        model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        model = Tokenizer(models.Unigram())
        model.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>",
                                          n_sub_iterations=1, shrinking_factor=0.5)  # fast enough for a test
    model.train_from_iterator(texts, trainer)
    return json.loads(model.to_str())["model"]


def train_tokenizer(arch: Arch, texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A tokenizer of ``arch.tokenizer``'s class with a vocabulary trained on ``texts``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tokenizer_class = getattr(transformers, arch.tokenizer)
    bare = arch.tokenizer == "PreTrainedTokenizerFast"  # no vocabulary of its own: ModernBERT's specials
    specials = list(MODERNBERT_SPECIALS.values()) if bare else _special_tokens(tokenizer_class)
    kind = arch.tokenizer_model
    trained = _trained_model(kind, tuple(texts), vocab_size - len(specials))
    if kind == "unigram":
        pieces = [(piece, 0.0) for piece in specials]
        pieces += [(piece, float(score)) for piece, score in trained["vocab"] if piece not in ("<unk>", *specials)]
        return _sized(tokenizer_class(vocab=pieces))
    ordered = sorted(trained["vocab"], key=trained["vocab"].get)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(specials + [t for t in ordered if t != "[UNK]"]))}
    if kind == "wordpiece":
        return _sized(tokenizer_class(vocab=vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    if not bare:  # RoBERTa
        return _sized(tokenizer_class(vocab=vocab, merges=merges))
    model = Tokenizer(models.BPE(vocab=vocab, merges=merges))  # ModernBERT: a bare pipeline, [CLS] $A [SEP]
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    model.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return _sized(tokenizer_class(tokenizer_object=model, **MODERNBERT_SPECIALS))


def _sized(tokenizer):
    tokenizer.model_max_length = MAX_POSITIONS
    return tokenizer


def tiny_config(arch: Arch, tokenizer):
    """A tiny random config of ``arch`` whose vocabulary and special ids are the tokenizer's."""
    from transformers import AutoConfig

    values = dict(TINY_SHAPE, vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        if getattr(tokenizer, name, None) is not None:
            values[name] = getattr(tokenizer, name)
    values.setdefault("bos_token_id", values.get("cls_token_id"))  # [CLS] / [SEP] when the tokenizer
    values.setdefault("eos_token_id", values.get("sep_token_id"))  # has no bos / eos (ModernBERT)
    values.update(arch.config)
    return AutoConfig.for_model(arch.model_type, **values)


def build_tiny_mlm(arch: Arch, directory: Path, texts: list[str], seed: int = 0) -> Path:
    """Save a tiny random ``AutoModelForMaskedLM`` of ``arch`` and its trained tokenizer to ``directory``."""
    import torch
    from transformers import AutoModelForMaskedLM

    directory = Path(directory)
    tokenizer = train_tokenizer(arch, texts)
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_config(tiny_config(arch, tokenizer), attn_implementation="eager")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
