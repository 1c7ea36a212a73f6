"""classify/predict.py: the dapt-predict command line on a tiny stage-2 run directory."""

from __future__ import annotations

import io
import json
import sys
import pytest

from classify import predict
from classify.model import infer_reviews, predict_proba
from tests.test_model import make_run_dir

REVIEWS = ["great movie", "terrible film, a waste of time", "I loved this film!", "boring story and a bad script"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_headless_encoder_dir):
    return make_run_dir(tmp_path_factory.mktemp("predict_run"), tiny_headless_encoder_dir)


def run_cli(argv, stdin_text: str | None = None) -> str:
    out = io.StringIO()
    stdin = io.StringIO(stdin_text) if stdin_text is not None else io.StringIO("")
    assert predict.main(argv, stdin=stdin, stdout=out) == 0
    return out.getvalue()


def test_positional_reviews_human_output(run):
    run_dir, classifier, tokenizer = run
    out = run_cli(["--model", str(run_dir), *REVIEWS])
    lines = out.splitlines()
    assert len(lines) == len(REVIEWS)
    for line, review, (label_class, label, confidence) in zip(lines, REVIEWS,
                                                            infer_reviews(REVIEWS, classifier, tokenizer)):
        assert line.split()[0] == label
        assert f"{confidence:6.1%}".strip() in line
        assert line.endswith(review)
    assert [line.split()[0] for line in lines] == ["Positive", "Negative", "Positive", "Negative"]


def test_jsonl_parses_and_matches_the_model(run):
    run_dir, classifier, tokenizer = run
    out = run_cli(["--model", str(run_dir / "model"), "--jsonl", "--batch-size", "2", *REVIEWS])
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == REVIEWS
    expected = infer_reviews(REVIEWS, classifier, tokenizer)
    probabilities = predict_proba(REVIEWS, classifier, tokenizer)
    for record, (label_class, label, confidence), p in zip(records, expected, probabilities):
        assert set(record) == {"text", "label", "label_class", "confidence", "p_positive"}
        assert (record["label_class"], record["label"]) == (label_class, label)
        assert record["confidence"] == pytest.approx(confidence, abs=1e-6)
        assert record["p_positive"] == pytest.approx(p, abs=1e-5)


def test_file_and_stdin_inputs(run, tmp_path):
    run_dir, _, _ = run
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(REVIEWS[:2]) + "\n\n" + REVIEWS[2] + "\n")  # blank lines are skipped
    from_file = [json.loads(x) for x in run_cli(["--model", str(run_dir), "--jsonl", "--file", str(path)]).splitlines()]
    assert [r["text"] for r in from_file] == REVIEWS[:3]
    from_dash = run_cli(["--model", str(run_dir), "--jsonl", "-"], stdin_text="\n".join(REVIEWS))
    assert [json.loads(x)["text"] for x in from_dash.splitlines()] == REVIEWS
    from_file_dash = run_cli(["--model", str(run_dir), "--jsonl", "--file", "-"], stdin_text=REVIEWS[3])
    assert [json.loads(x)["label"] for x in from_file_dash.splitlines()] == ["Negative"]
    piped = run_cli(["--model", str(run_dir)], stdin_text=REVIEWS[0] + "\n")  # no args: read the pipe
    assert piped.split()[0] == "Positive"
    # A long review is shortened for display, never an error.
    long_out = run_cli(["--model", str(run_dir), "great movie " * 400])
    assert long_out.rstrip().endswith("…") and len(long_out.splitlines()[0]) < 120


def test_errors_are_clear(run, tmp_path):
    run_dir, _, _ = run
    with pytest.raises(SystemExit, match="no reviews given"):
        run_cli(["--model", str(run_dir)], stdin_text="\n  \n")
    with pytest.raises(SystemExit, match="cannot load model"):
        run_cli(["--model", str(tmp_path / "missing-model"), "great"])
    with pytest.raises(SystemExit, match="no such file"):
        run_cli(["--model", str(run_dir), "--file", str(tmp_path / "nope.txt")])
    with pytest.raises(SystemExit):
        run_cli(["great"])  # --model is required (argparse error)


def test_reads_sys_stdin_when_piped(run, monkeypatch):
    run_dir, _, _ = run
    monkeypatch.setattr(sys, "stdin", io.StringIO("great movie\nterrible film\n"))
    out = io.StringIO()
    assert predict.main(["--model", str(run_dir), "--jsonl", "-"], stdout=out) == 0
    assert [json.loads(x)["label"] for x in out.getvalue().splitlines()] == ["Positive", "Negative"]

