"""classify.model.iter_predictions: the streaming path of the published model.py (issue 21, section 2).

It must give what infer_reviews gives on the whole list (within float noise), in input order, while
holding one chunk of the stream at a time; bad texts raise naming their position in the stream
before any result of their chunk, or come back with their problem when skipped.
"""

from __future__ import annotations

import itertools

import pytest

from classify.model import (
    DEFAULT_CHUNK_SIZE,
    Prediction,
    ReviewError,
    infer_reviews,
    iter_predictions,
    predict_proba,
)
from tests.helpers import sentences
from tests.k_class_fixtures import TOY_TEXTS, train_k_classifier
from tests.test_model import train_toy_classifier

TEXTS = sentences(37, seed=3, words=(1, 60)) + ["great movie", "terrible film, a waste of time"]


@pytest.fixture(scope="module")
def tiny(tiny_headless_encoder_dir):
    return train_toy_classifier(tiny_headless_encoder_dir, max_length=64)


class CountingStream:
    """An iterator over texts that counts how many were taken from it."""

    def __init__(self, texts):
        self.texts, self.taken = iter(texts), 0

    def __iter__(self):
        return self

    def __next__(self):
        text = next(self.texts)
        self.taken += 1
        return text


@pytest.mark.parametrize("chunk_size", [5, DEFAULT_CHUNK_SIZE])
def test_matches_infer_reviews_on_the_whole_list_in_input_order(tiny, chunk_size):
    classifier, tokenizer = tiny
    expected = infer_reviews(TEXTS, classifier, tokenizer)
    probabilities = predict_proba(TEXTS, classifier, tokenizer, all_classes=True)
    streamed = list(iter_predictions(iter(TEXTS), classifier, tokenizer, chunk_size=chunk_size))
    assert len(streamed) == len(TEXTS) and all(isinstance(p, Prediction) and p.problem is None for p in streamed)
    assert [(p.label_class, p.label) for p in streamed] == [(c, label) for c, label, _ in expected]
    for prediction, (_, _, confidence), probs in zip(streamed, expected, probabilities):
        assert prediction.confidence == pytest.approx(confidence, abs=1e-6)
        assert prediction.probs == pytest.approx(probs, abs=1e-6)
        assert prediction.confidence == max(prediction.probs)


def test_holds_one_chunk_of_the_stream_at_a_time(tiny):
    stream = CountingStream(itertools.chain(TEXTS, TEXTS))
    predictions = iter_predictions(stream, *tiny, chunk_size=8)
    assert stream.taken == 0  # nothing is read before the first result is asked for
    next(predictions)
    assert stream.taken == 8
    for _ in range(7):
        next(predictions)
    assert stream.taken == 8
    next(predictions)
    assert stream.taken == 16


def test_a_bad_text_raises_with_its_stream_position_before_its_chunk_is_yielded(tiny):
    texts = ["great movie"] * 6 + ["fine", "\u200b", "good"]
    predictions = iter_predictions(iter(texts), *tiny, chunk_size=4)
    assert len([next(predictions) for _ in range(4)]) == 4  # the first chunk is whole
    with pytest.raises(ReviewError, match=r"reviews\[7\] is empty after tokenization") as info:
        next(predictions)  # the second chunk (4..7) holds the bad text: none of it is yielded
    assert (info.value.index, "nothing to classify" in info.value.problem) == (7, True)
    with pytest.raises(TypeError, match=r"reviews\[2\] must be a str, got int"):
        list(iter_predictions(["a", "b", 3], *tiny))
    with pytest.raises(ReviewError, match=r"reviews\[1\] is empty \(or only whitespace"):
        list(iter_predictions(["a", " <br /> ", "\u200b"], *tiny))  # the first bad one is named


def test_skip_invalid_yields_the_problem_in_place(tiny):
    texts = ["great movie", "", None, "\x00\x01", "bad \udcff", "awful film"]
    out = list(iter_predictions(texts, *tiny, chunk_size=4, skip_invalid=True))
    assert len(out) == len(texts)
    assert [p.problem is None for p in out] == [True, False, False, False, False, True]
    assert out[1].problem.startswith("is empty (or only whitespace")
    assert out[2].problem == "must be a str, got NoneType"
    assert out[3].problem.startswith("is empty after tokenization")
    assert "lone surrogate" in out[4].problem
    assert all(p[:4] == (None, None, None, None) for p in out[1:5])
    assert [p.label for p in (out[0], out[5])] == [label for _, label, _ in infer_reviews(
        ["great movie", "awful film"], *tiny)]


@pytest.mark.parametrize(("reviews", "error", "pattern"), [
    ("one text", TypeError, r"iterable of str \(one text: infer_reviews\)"),
    ({"a", "b"}, TypeError, r"ordered collection.*no defined order"),
    (None, TypeError, "NoneType"),
])
def test_refuses_what_has_no_order_or_is_one_text(tiny, reviews, error, pattern):
    with pytest.raises(error, match=pattern):
        iter_predictions(reviews, *tiny)


def test_settings_are_checked_when_called_not_when_iterated(tiny):
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        iter_predictions(["a"], *tiny, chunk_size=0)
    with pytest.raises(ValueError, match="truncation must be one of"):
        iter_predictions(["a"], *tiny, truncation="middle")
    with pytest.raises(ValueError, match="batch_tokens must be at least 1"):
        iter_predictions(["a"], *tiny, batch_tokens=0)
    assert list(iter_predictions([], *tiny)) == []


def test_windows_truncation_and_k_classes(tiny_headless_encoder_dir):
    classifier, tokenizer = train_k_classifier(tiny_headless_encoder_dir)
    texts = [text for group in TOY_TEXTS.values() for text in group[:2]] + ["world news " * 60]
    kwargs = {"truncation": "windows", "max_length": 16, "window_stride": 4}
    expected = predict_proba(texts, classifier, tokenizer, **kwargs)
    streamed = list(iter_predictions(texts, classifier, tokenizer, chunk_size=3, **kwargs))
    assert all(len(p.probs) == len(classifier.config.id2label) for p in streamed)
    assert [p.probs for p in streamed] == [pytest.approx(row, abs=1e-6) for row in expected]
