"""Issue 19 item 8: a text the tokenizer reduces to nothing the model can read gets no label.

The rule is the tokenizer's, not a list of characters: after cleaning, a text needs at least one
*content token* - one that is not a special token of the tokenizer ([CLS], [SEP], [PAD], [MASK] and
its unknown token [UNK] / <unk>) and does not decode to whitespace alone (a SentencePiece word
boundary '▁'). WordPiece drops zero-width, control and lone combining characters; Unigram
(SentencePiece) reads them as '▁' + <unk>; byte-level BPE (RoBERTa, ModernBERT) reads their UTF-8
bytes, which ARE tokens the model has embeddings for, so there they are content and get a label.
Checked with several tokenizers: the tiny WordPiece, the stand-in MiniLM, and byte-level BPE and
Unigram ones trained offline (tests/encoder_matrix.py). Also: unordered collections are refused.
"""

from __future__ import annotations

import io

import pytest
import torch

from classify.release import predict
from classify.model import DaptClassifierConfig, DistilBERTClassifier, infer_reviews, predict_proba
from tests.encoder_matrix import BY_NAME, imdb_texts, tiny_config, train_tokenizer
from tests.test_model import train_toy_classifier
from tests.test_predict import run  # noqa: F401  (the binary run directory fixture)

# zero-width space, byte-order mark, control characters, a lone combining accent, specials typed as text
NOTHING_LEFT = ["\u200b", "\ufeff", "\x00\x01", "\u0301", "\u200b\ufeff \u0301"]
EMPTY_AFTER_TOKENIZATION = r"is empty after tokenization \(.*\): there is nothing to classify"


def random_classifier(arch_name: str, tokenizer) -> DistilBERTClassifier:
    torch.manual_seed(0)
    config = DaptClassifierConfig(encoder_config=tiny_config(BY_NAME[arch_name], tokenizer).to_dict(), max_length=64)
    return DistilBERTClassifier(config).eval()


@pytest.fixture(scope="module")
def tiny(tiny_headless_encoder_dir):
    return train_toy_classifier(tiny_headless_encoder_dir, max_length=64)


@pytest.fixture(scope="module")
def minilm(standin_encoder_dir):
    from transformers import AutoTokenizer

    from classify.encoder import from_encoder

    torch.manual_seed(0)
    return from_encoder(standin_encoder_dir, max_length=64).eval(), AutoTokenizer.from_pretrained(standin_encoder_dir)


@pytest.fixture(scope="module")
def trained(shared_data):
    """Byte-level BPE (RoBERTa) and Unigram (XLM-R, ALBERT) tokenizers, each with a tiny random classifier."""
    texts = imdb_texts(300)
    out = {}
    for name in ("roberta", "xlm-roberta", "albert"):
        tokenizer = train_tokenizer(BY_NAME[name], texts)
        out[name] = random_classifier(name, tokenizer), tokenizer
    return out


def assert_refused(classifier, tokenizer, text):
    with pytest.raises(ValueError, match=r"reviews\[1\] " + EMPTY_AFTER_TOKENIZATION) as info:
        infer_reviews(["a fine text", text], classifier, tokenizer)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"reviews\[0\] " + EMPTY_AFTER_TOKENIZATION):
        predict_proba(text, classifier, tokenizer)
    with pytest.raises(ValueError, match=r"reviews\[0\] " + EMPTY_AFTER_TOKENIZATION):
        predict_proba([text], classifier, tokenizer, all_classes=True)


@pytest.mark.parametrize("text", NOTHING_LEFT + ["\U0001f600", "[SEP]", "[UNK] [CLS]"])
def test_wordpiece_refuses_texts_with_no_content_token(tiny, text):
    """The tiny WordPiece drops the characters, or reads an emoji / typed specials as [UNK] / [SEP]."""
    assert_refused(*tiny, text)


def test_minilm_refuses_texts_with_no_content_token(minilm):
    for text in NOTHING_LEFT + ["\U0001f600"]:
        assert_refused(*minilm, text)


@pytest.mark.parametrize("name", ["xlm-roberta", "albert"])
@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\x00\x01", "\U0001f600"])
def test_unigram_reads_boundary_and_unknown_only_and_refuses(trained, name, text):
    """SentencePiece-style: '▁' + <unk> - a blank token and the unknown token, nothing to read."""
    classifier, tokenizer = trained[name]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids and set(ids) - set(tokenizer.all_special_ids)  # not a plain list of special ids: '▁' is a real token
    assert_refused(classifier, tokenizer, text)


@pytest.mark.parametrize("text", ["\u200b", "\x00\x01", "\u0301", "\U0001f600"])
def test_byte_level_bpe_reads_the_bytes_as_content(trained, text):
    """Byte-level BPE has no unknown token: the UTF-8 bytes are tokens with embeddings of their own,
    which the model reads, so the text is classified (documented rule, README)."""
    classifier, tokenizer = trained["roberta"]
    label_class, label, confidence = infer_reviews(text, classifier, tokenizer)
    assert label_class in (0, 1) and 0.5 <= confidence <= 1.0


@pytest.mark.parametrize("fixture", ["tiny", "minilm"])
def test_a_content_token_among_the_invisible_ones_is_enough(request, fixture):
    classifier, tokenizer = request.getfixturevalue(fixture)
    label_class, _, _ = infer_reviews("\u200b\ufeff great \u0301 \U0001f600", classifier, tokenizer)
    assert label_class in (0, 1)


def test_dapt_predict_names_the_argument_and_the_line(run, tmp_path):
    run_dir = run[0]
    out = io.StringIO()
    with pytest.raises(SystemExit, match=r"argument 2: the text " + EMPTY_AFTER_TOKENIZATION):
        predict.main(["--model", str(run_dir), "great movie", "\u200b"], stdin=io.StringIO(""), stdout=out)
    path = tmp_path / "texts.txt"
    path.write_text("great movie\n\ufeff\x01\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"texts\.txt line 2: the text " + EMPTY_AFTER_TOKENIZATION):
        predict.main(["--model", str(run_dir), "--file", str(path)], stdin=io.StringIO(""), stdout=out)
    assert out.getvalue() == ""  # nothing labelled before the refusal


@pytest.mark.parametrize("unordered", [{"great movie", "awful film"}, frozenset({"great movie"}),
                                       {"great movie": 1}.keys()], ids=["set", "frozenset", "dict_keys"])
def test_unordered_collections_are_refused(tiny, unordered):
    with pytest.raises(TypeError, match=r"reviews must be an ordered collection.*no defined order"):
        infer_reviews(unordered, *tiny)
    with pytest.raises(TypeError, match=r"reviews must be an ordered collection"):
        predict_proba(unordered, *tiny)


def test_ordered_collections_and_generators_are_accepted(tiny):
    texts = ["great movie", "awful film"]
    expected = infer_reviews(texts, *tiny)
    assert infer_reviews(tuple(texts), *tiny) == expected
    assert infer_reviews((t for t in texts), *tiny) == expected
