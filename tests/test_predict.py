"""classify/release/predict.py: the dapt-predict command line on a tiny stage-2 run directory."""

from __future__ import annotations

import io
import json
import sys
import pytest

from classify.release import predict
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
    with pytest.raises(SystemExit, match="no texts given"):
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


# --------------------------------------------------------------------------------------------
# Bad input and broken model folders: one clear error line, no traceback (issue 12, items 10-11)
# --------------------------------------------------------------------------------------------


def _broken_copy(run_dir, tmp_path, name, mutate):
    import shutil

    folder = tmp_path / name
    shutil.copytree(run_dir / "model", folder)
    mutate(folder)
    return folder


def _config_edit(**encoder_changes):
    def mutate(folder):
        config = json.loads((folder / "config.json").read_text())
        for key, change in encoder_changes.items():
            config["encoder_config"][key] = change(config["encoder_config"][key])
        (folder / "config.json").write_text(json.dumps(config))

    return mutate


@pytest.mark.parametrize(("name", "mutate", "pattern"), [
    ("empty", lambda f: (f / "model.safetensors").write_bytes(b""), r"model\.safetensors is truncated or corrupt"),
    ("truncated", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-64]),
     r"model\.safetensors is truncated or corrupt"),
    ("corrupt", lambda f: (f / "model.safetensors").write_bytes(b"\x07" * 4096), r"model\.safetensors is truncated or corrupt"),
    ("wider", _config_edit(hidden_size=lambda v: 2 * v, intermediate_size=lambda v: 2 * v),
     r"config\.json does not match model\.safetensors.*shape"),
    ("deeper", _config_edit(num_hidden_layers=lambda v: v + 1), r"config\.json does not match model\.safetensors.*missing"),
    ("shallower", _config_edit(num_hidden_layers=lambda v: v - 1), r"config\.json does not match model\.safetensors.*unexpected"),
])
def test_broken_model_folder_is_a_clear_error(run, tmp_path, name, mutate, pattern):
    from classify.model import load_classifier

    folder = _broken_copy(run[0], tmp_path, name, mutate)
    with pytest.raises(ValueError, match=pattern) as info:
        load_classifier(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SystemExit, match=f"cannot load model.*{pattern}"):
        run_cli(["--model", str(folder), "great movie"])


def test_non_utf8_file_names_file_and_line(run, tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_bytes(b"great movie\nterrible film\nbad \xff\xfe bytes\n")
    with pytest.raises(SystemExit, match=r"reviews\.txt line 3: not UTF-8 text \(byte 0xff at column 5\)"):
        run_cli(["--model", str(run[0]), "--file", str(path)])


def test_stdin_non_utf8_names_the_line(run):
    class Stdin(io.TextIOWrapper):
        def isatty(self):
            return False

    stdin = Stdin(io.BytesIO(b"fine\n\xc3\x28 broken\n"), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"<stdin> line 2: not UTF-8 text"):
        predict.main(["--model", str(run[0]), "-"], stdin=stdin, stdout=io.StringIO())


@pytest.mark.parametrize("value", ["0", "-3", "2"])
def test_max_length_without_room_is_a_clear_error(run, value):
    with pytest.raises(SystemExit, match=f"max_length={value} leaves no room|--max-length must be"):
        run_cli(["--model", str(run[0]), "--max-length", value, "great movie"])


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "nonsense", "mps"])
def test_unavailable_device_is_a_clear_error(run, device):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has the device")
    with pytest.raises(SystemExit, match=f"--device {device!r} is not available"):
        run_cli(["--model", str(run[0]), "--device", device, "great movie"])


def test_lone_surrogate_names_the_item(run, tmp_path):
    with pytest.raises(SystemExit, match=r"argument 2: .*lone surrogate"):
        run_cli(["--model", str(run[0]), "fine", "bad \udcff bytes"])


def test_empty_review_is_an_error_naming_it(run, tmp_path):
    """The contract (README): an empty or whitespace-only review is an error naming it, in
    infer_reviews and dapt-predict alike; blank lines of a --file are not reviews and are skipped."""
    run_dir, classifier, tokenizer = run
    for bad in ("", "   \t ", "<br /><br />"):
        with pytest.raises(ValueError, match=r"reviews\[1\] is empty"):
            infer_reviews(["great movie", bad], classifier, tokenizer)
        with pytest.raises(ValueError, match=r"reviews\[0\] is empty"):
            predict_proba(bad, classifier, tokenizer)
    with pytest.raises(SystemExit, match=r"argument 2: .*is empty"):
        run_cli(["--model", str(run_dir), "great movie", "  "])
    path = tmp_path / "reviews.txt"
    path.write_text("great movie\n\n<br />\n")
    with pytest.raises(SystemExit, match=r"reviews\.txt line 3: .*is empty"):
        run_cli(["--model", str(run_dir), "--file", str(path)])
