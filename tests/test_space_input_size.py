"""The Space's cost is linear in its input, and its input is capped (issue 19 item 9).

``/classify`` on a 1 MB review took 6.4 s, 2 MB 32 s and 4.2 MB 163 s (1.5 GB RSS), and echoed the
whole text back: the read / not-read spans were built by string concatenation, quadratic in the
length of a run. Here, in-process against the built ``app.py`` (tests/test_space.py's tiny model,
head+tail truncation at 64 tokens): span building and ``/classify`` grow linearly (time for twice
the input within 3x, the best of several repeats), a text over the documented cap (50,000
characters) is refused at once with a message naming the cap and its size, and the spans echo what
the model read plus a bounded excerpt of what it did not.
"""

from __future__ import annotations

import time

import pytest
import torch

from classify.model import clean_text
from tests.test_space import _import_app, built  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # imports gradio

CAP = 50_000  # README, "A demo Space": the longest text /classify takes


@pytest.fixture(scope="module")
def app(built):  # noqa: F811
    _, model_folder, folder = built
    module = _import_app(folder)
    return module, module.Demo(*module.load_model(str(model_folder)), "review")


def best_time(run, repeats: int = 5) -> float:
    """The least CPU time of ``repeats`` runs on one thread: this process's own work, the least
    disturbed by other jobs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(repeats):
            started = time.process_time()
            run()
            times.append(time.process_time() - started)
    finally:
        torch.set_num_threads(threads)
    return min(times)


def synthetic_tokens(count: int):
    """(ids, kept, offsets, cleaned) of a ``count``-token text cut head+tail (16 + 46 tokens kept)."""
    cleaned = " ".join(["ab"] * count)
    offsets = [(3 * i, 3 * i + 2) for i in range(count)]
    kept = list(range(16)) + list(range(count - 46, count))
    return [7] * count, kept, offsets, cleaned


def test_span_building_is_linear_in_the_number_of_tokens(app):
    module, _ = app
    small, large = synthetic_tokens(100_000), synthetic_tokens(200_000)
    module.spans_of(*small)  # warm-up
    ratio = best_time(lambda: module.spans_of(*large)) / best_time(lambda: module.spans_of(*small))
    assert ratio < 3, f"twice the tokens took {ratio:.1f}x the time: span building is not linear"


def test_classify_time_is_linear_in_the_length_below_the_cap(app):
    _, demo = app
    unit = "The first scene is great.<br /><br />Then the story goes on and on, and on again. "
    half, full = (unit * (CAP // len(unit)))[: CAP // 2], (unit * (CAP // len(unit) + 1))[:CAP]
    demo.classify(half)  # warm-up
    ratio = best_time(lambda: demo.classify(full)) / best_time(lambda: demo.classify(half))
    assert ratio < 3, f"twice the text took {ratio:.1f}x the time"


def test_a_text_over_the_cap_is_refused_at_once_naming_both_sizes(app):
    module, demo = app
    text = "word " * 200_000  # 1,000,000 characters
    started = time.perf_counter()
    with pytest.raises(module.gr.Error) as caught:
        demo.classify(text)
    assert time.perf_counter() - started < 1.0  # refused before any tokenization
    message = caught.value.message
    assert "1,000,000 characters" in message and f"{CAP:,}" in message and "\n" not in message
    with pytest.raises(module.gr.Error, match=f"{CAP:,}"):
        demo.classify_lines("a short review\n" + text)
    assert demo.classify("word " * (CAP // 5))[2].startswith("**")  # the cap itself is accepted (a text with content)


def test_many_lines_are_capped_too(app):
    module, demo = app
    with pytest.raises(module.gr.Error, match=f"{module.MAX_LINES + 1:,} lines.*{module.MAX_LINES:,}"):
        demo.classify_lines("\n".join(["fine"] * (module.MAX_LINES + 1)))
    rows = demo.classify_lines("\n".join(["fine", "not fine at all"] * 5))
    ids, kept, _, _ = module.read_tokens("not fine at all", demo.module, demo.classifier, demo.tokenizer)
    assert len(rows) == 10 and rows[1][0] == "not fine at all" and rows[1][3] == f"{len(kept)}/{len(ids)}"
    assert [row[1:3] for row in rows[:2]] == [row[1:3] for row in demo.classify_lines("fine\nnot fine at all")]


def test_spans_echo_what_was_read_and_only_an_excerpt_of_the_rest(app):
    module, demo = app
    head, tail = "the opening is great . " * 20, " in the end it was awful !"
    text = head + "the story goes on and on . " * 1_500 + tail  # 40,000 characters the model never reads
    _, spans, summary = demo.classify(text)
    assert [state for _, state in spans] == [module.READ, module.NOT_READ, module.READ]
    cleaned = clean_text(text)
    assert cleaned.startswith(spans[0][0]) and cleaned.endswith(spans[2][0])  # the read parts, whole
    skipped = cleaned[len(spans[0][0]):len(cleaned) - len(spans[2][0])]
    before, rest = spans[1][0].split("[… ")
    omitted, after = rest.split(" more characters not read …]")
    assert skipped.startswith(before) and skipped.endswith(after)  # excerpts of the real text
    assert int(omitted.replace(",", "")) == len(skipped) - len(before) - len(after)
    assert len(before) <= module.EXCERPT_CHARS and len(after) <= module.EXCERPT_CHARS
    # a stretch of up to LONG_SKIP characters is shown whole, as before
    text = head + "the story goes on . " * (module.LONG_SKIP // 40) + tail
    _, spans, _ = demo.classify(text)
    assert "".join(span for span, _ in spans) == clean_text(text) and len(spans) == 3


def test_the_api_names_every_output(built):
    """gradio names an unlabelled output value_N in the Space's API page: every output has a label."""
    _, model_folder, folder = built
    module = _import_app(folder)
    info = module.build_demo(str(model_folder)).get_api_info()
    outputs = {name: [r["label"] for r in endpoint["returns"]] for name, endpoint in info["named_endpoints"].items()}
    assert outputs == {"/classify": ["Prediction", "What the model read", "Summary"], "/classify_batch": ["Predictions"]}
