"""dapt-predict --file IN --output OUT: streamed scoring of a file, bad rows, resume (issue 21, section 2).

In process, with the tiny binary run of tests/test_predict.py; a killed run is simulated by an
interruption after some chunks (the SIGKILL and memory tests are in tests/test_predict_stream_slow.py).
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from classify.release import predict, predict_stream
from classify.model import predict_proba
from tests.helpers import sentences
from tests.test_predict import run  # noqa: F401  (the binary run directory fixture)

TEXTS = sentences(23, seed=5, words=(1, 30)) + ["great movie", "terrible film, a waste of time"]


def write_input(path, texts, ids=None, column="text"):
    """``texts`` as a .txt (a blank line after the third), .jsonl, .csv or .parquet file."""
    kind = path.suffix
    if kind == ".txt":
        path.write_text("\n".join(texts[:3] + [""] + texts[3:]) + "\n", encoding="utf-8")
    elif kind == ".jsonl":
        records = [{column: t, **({"key": k} if ids else {})} for t, k in zip(texts, ids or texts)]
        path.write_text("".join(json.dumps(r) + "\n" for r in records[:3]) + "\n" +
                        "".join(json.dumps(r) + "\n" for r in records[3:]), encoding="utf-8")
    elif kind == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", column] if ids else [column])
            writer.writerows([[k, t] for k, t in zip(ids, texts)] if ids else [[t] for t in texts])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({column: texts, **({"key": ids} if ids else {})}), path, row_group_size=7)
    return path


def read_output(path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def score(argv, stderr=None) -> int:
    return predict.main(argv, stdin=io.StringIO(""), stdout=io.StringIO(), stderr=stderr or io.StringIO())


def expected_ids(kind, n):
    if kind in (".txt", ".jsonl"):  # line numbers, the blank fourth line skipped
        return [1, 2, 3] + list(range(5, n + 2))
    return list(range(n))


@pytest.mark.parametrize(("in_kind", "out_kind"), [(".txt", ".jsonl"), (".jsonl", ".parquet"), (".csv", ".csv"),
                                                  (".parquet", ".jsonl")])  # readers and writers are independent
def test_every_input_format_and_every_output_format(run, tmp_path, in_kind, out_kind):
    run_dir, classifier, tokenizer = run
    source = write_input(tmp_path / f"in{in_kind}", TEXTS)
    out = tmp_path / f"out{out_kind}"
    stderr = io.StringIO()
    assert score(["--model", str(run_dir), "--file", str(source), "--output", str(out), "--chunk-size", "4"],
                 stderr) == 0
    rows = read_output(out)
    probabilities = predict_proba(TEXTS, classifier, tokenizer, all_classes=True)
    assert [str(r["id"]) for r in rows] == [str(i) for i in expected_ids(in_kind, len(TEXTS))]
    for row, probs in zip(rows, probabilities):
        label_class = max(range(2), key=probs.__getitem__)
        assert row["label"] == ["Negative", "Positive"][label_class] and int(row["label_class"]) == label_class
        assert float(row["confidence"]) == pytest.approx(probs[label_class], abs=1e-6)
        assert float(row["p_positive"]) == pytest.approx(probs[1], abs=1e-6)
    assert set(rows[0]) == {"id", "label", "label_class", "confidence", "p_positive"}
    assert f"{len(TEXTS)} rows scored into {out}" in stderr.getvalue()
    assert not (tmp_path / f"out{out_kind}.dapt-resume.json").exists() and not (tmp_path / "out.parquet.parts").exists()


@pytest.mark.parametrize("out_kind", [".jsonl", ".csv", ".parquet"])
def test_probs_columns_and_an_id_column(run, tmp_path, out_kind):
    run_dir, classifier, tokenizer = run
    ids = [1000 + 3 * i for i in range(len(TEXTS))]
    source = write_input(tmp_path / "in.parquet", TEXTS, ids=ids, column="review")
    out = tmp_path / f"out{out_kind}"
    score(["--model", str(run_dir), "--file", str(source), "--text-column", "review", "--id-column", "key",
           "--probs", "--output", str(out)])
    rows = read_output(out)
    assert [str(r["id"]) for r in rows] == [str(i) for i in ids]
    if out_kind == ".parquet":
        assert all(isinstance(r["id"], int) for r in rows)  # the input column's type is kept
    probabilities = predict_proba(TEXTS, classifier, tokenizer, all_classes=True)
    for row, probs in zip(rows, probabilities):
        got = row["probs"] if out_kind == ".jsonl" else {k[5:]: float(row[k]) for k in ("prob_Negative", "prob_Positive")}
        assert list(got) == ["Negative", "Positive"] and list(got.values()) == pytest.approx(probs, abs=1e-6)


def test_bad_rows_fail_naming_the_line_or_are_skipped_with_their_error(run, tmp_path):
    run_dir = run[0]
    source = tmp_path / "in.jsonl"
    lines = [{"text": "great movie"}, {"text": "awful"}, {"text": "  "}, {"text": 7}, {"review": "x"},
             {"text": "\u200b"}, {"text": "fine film"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit, match=r"in\.jsonl line 3: the text is empty \(or only whitespace.*"
                                         r"holds the rows before its chunk.*--resume.*--bad-rows skip"):
        score(["--model", str(run_dir), "--file", str(source), "--output", str(out), "--chunk-size", "2"])
    assert [r["id"] for r in read_output(out)] == [1, 2]  # the chunk before the bad row's, nothing of its own
    out.unlink()
    (tmp_path / "out.jsonl.dapt-resume.json").unlink()
    stderr = io.StringIO()
    score(["--model", str(run_dir), "--file", str(source), "--output", str(out), "--bad-rows", "skip"], stderr)
    rows = read_output(out)
    assert [r["id"] for r in rows] == list(range(1, 9))
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {3, 4, 5, 6, 8} and all("label" not in r for r in rows if "error" in r)
    assert errors[3].startswith("the text is empty (or only whitespace")
    assert errors[4] == "the row has no text ('text' is a number, not a string)"
    assert errors[5].startswith("the row has no 'text' (its keys: review)")
    assert errors[6].startswith("the text is empty after tokenization")
    assert errors[8].startswith("the row is not valid JSON")
    report = stderr.getvalue()
    for line in (3, 4, 5, 6, 8):
        assert f"skipped {source} line {line}: " in report
    assert "5 bad rows written with their error" in report


def test_csv_bad_rows_and_non_utf8_are_named_by_row(run, tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b"text,other\ngreat movie,1\n,2\nbad \xff bytes,3\nawful,4\n")
    out = tmp_path / "out.csv"
    score(["--model", str(run[0]), "--file", str(source), "--output", str(out), "--bad-rows", "skip"])
    rows = read_output(out)
    assert [r["error"] for r in rows] == ["", "the text is empty (or only whitespace/markup): there is nothing "
                                          "to classify", "the row is not UTF-8 text (byte 0xff at character 5)", ""]
    assert rows[1]["label"] == rows[1]["confidence"] == "" and rows[0]["label"] == "Positive"


class Killed(BaseException):
    """What a kill does to a run: it stops where it is, nothing caught, nothing cleaned up."""


def interrupt_after(monkeypatch, chunks: int):
    """Make the run die (as a kill would) while scoring chunk number ``chunks + 1``."""
    real, calls = predict_stream._score_chunk, []

    def stopping(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) > chunks:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_stream, "_score_chunk", stopping)
    return calls


@pytest.mark.parametrize("out_kind", [".jsonl", ".csv", ".parquet"])
def test_resume_continues_a_stopped_run_without_rescoring(run, tmp_path, monkeypatch, out_kind):
    run_dir = run[0]
    source = write_input(tmp_path / "in.csv", TEXTS)
    argv = ["--model", str(run_dir), "--file", str(source), "--chunk-size", "4", "--probs"]
    whole = tmp_path / f"whole{out_kind}"
    score(argv + ["--output", str(whole)])
    out = tmp_path / f"out{out_kind}"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(Killed):
        score(argv + ["--output", str(out)])
    monkeypatch.undo()
    if out_kind != ".parquet":  # a kill in the middle of a write leaves a half row
        with open(out, "ab") as handle:
            handle.write(b'{"id": 12, "label": "Posi' if out_kind == ".jsonl" else b'12,Posi')
    with pytest.raises(SystemExit, match="already exists: pass --resume"):
        score(argv + ["--output", str(out)])
    calls = interrupt_after(monkeypatch, 100)
    stderr = io.StringIO()
    score(argv + ["--output", str(out), "--resume"], stderr)
    assert sum(calls) == len(TEXTS) - 12  # only the rows the stopped run had not written
    assert "after the 12 it held" in stderr.getvalue()
    if out_kind == ".parquet":
        assert read_output(out) == read_output(whole)
    else:
        assert out.read_bytes() == whole.read_bytes()
    with pytest.raises(SystemExit, match="no resume record .*completed run"):
        score(argv + ["--output", str(out), "--resume"])


def test_resume_refuses_another_input_or_other_options(run, tmp_path, monkeypatch):
    run_dir = run[0]
    source = write_input(tmp_path / "in.txt", TEXTS)
    out = tmp_path / "out.jsonl"
    argv = ["--model", str(run_dir), "--file", str(source), "--output", str(out), "--chunk-size", "4"]
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Killed):
        score(argv)
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"was started with --probs False, not True: resume with the options"):
        score(argv + ["--resume", "--probs"])
    with pytest.raises(SystemExit, match=r"was started with --chunk-size 4, not 8"):
        score(argv[:-1] + ["8", "--resume"])
    write_input(source, ["a different first text"] + TEXTS[1:])
    with pytest.raises(SystemExit, match=r"in\.txt changed since .* was started \(its first 8 rows differ\)"):
        score(argv + ["--resume"])
    source.write_text("great movie\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"in\.txt has 1 rows, fewer than the 8"):
        score(argv + ["--resume"])
    write_input(source, TEXTS)
    assert score(argv + ["--resume"]) == 0 and len(read_output(out)) == len(TEXTS)


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--output", "o.jsonl"], r"--output needs --file"),
    (["--file", "{in_csv}"], r"a \.csv file is scored into a file: add --output"),
    (["--file", "{in_csv}", "--resume"], r"--resume is for scoring a file with --output"),
    (["--file", "{in_csv}", "--output", "o.tsv"], r"--output o\.tsv: unknown format '\.tsv'"),
    (["--file", "{in_csv}", "--output", "o.jsonl", "--text-column", "review"], r"has no column 'review' \(its header: text\)"),
    (["--file", "{in_csv}", "--output", "o.jsonl", "--jsonl"], r"--jsonl is for printing"),
    (["--file", "{in_csv}", "--output", "o.jsonl", "great"], r"--output scores --file only"),
    (["--file", "{in_txt}", "--output", "o.jsonl", "--text-column", "t"], r"--text-column is for \.jsonl, \.csv"),
    (["--file", "-", "--output", "o.jsonl", "--resume"], r"--resume cannot reread stdin"),
    (["--file", "{in_csv}", "--output", "o.csv", "--chunk-size", "0"], r"--chunk-size must be at least 1"),
])
def test_flag_errors_are_one_line_before_loading_the_model(tmp_path, argv, pattern, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = {"in_csv": write_input(tmp_path / "in.csv", TEXTS), "in_txt": write_input(tmp_path / "in.txt", TEXTS)}
    argv = [a.format(**paths) for a in argv]
    with pytest.raises(SystemExit, match=pattern):
        score(["--model", str(tmp_path / "no-model-here"), *argv])


def test_parquet_text_column_must_be_text(run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "in.parquet")
    with pytest.raises(SystemExit, match=r"in\.parquet: column 'text' is int64, not text"):
        score(["--model", str(run[0]), "--file", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.csv")])


def test_stdin_streams_into_a_file(run, tmp_path):
    out = tmp_path / "out.jsonl"
    stdin = io.StringIO("great movie\n\nawful film\n")
    assert predict.main(["--model", str(run[0]), "--file", "-", "--output", str(out)], stdin=stdin,
                        stdout=io.StringIO(), stderr=io.StringIO()) == 0
    assert [(r["id"], r["label"]) for r in read_output(out)] == [(1, "Positive"), (3, "Negative")]


def test_settings_the_model_cannot_use_fail_before_anything_is_written(run, tmp_path):
    source = write_input(tmp_path / "in.txt", TEXTS)
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit, match="max_length=2 leaves no room"):
        score(["--model", str(run[0]), "--file", str(source), "--output", str(out), "--max-length", "2"])
    assert list(tmp_path.iterdir()) == [source]


def test_ctrl_c_leaves_a_run_to_resume_and_says_so(run, tmp_path, monkeypatch):
    source = write_input(tmp_path / "in.txt", TEXTS)
    out = tmp_path / "out.jsonl"
    argv = ["--model", str(run[0]), "--file", str(source), "--output", str(out), "--chunk-size", "4"]
    real = predict_stream._score_chunk
    calls = []

    def ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_stream, "_score_chunk", ctrl_c)
    stderr = io.StringIO()
    assert score(argv, stderr) == 130
    assert "stopped; " in stderr.getvalue() and "rerun with --resume" in stderr.getvalue()
    monkeypatch.undo()
    assert score(argv + ["--resume"]) == 0 and len(read_output(out)) == len(TEXTS)


def test_an_output_folder_that_does_not_exist_is_named(run, tmp_path):
    source = write_input(tmp_path / "in.txt", TEXTS)
    with pytest.raises(SystemExit, match=r"--output .*out\.csv: no such folder"):
        score(["--model", str(run[0]), "--file", str(source), "--output", str(tmp_path / "missing" / "out.csv")])


@pytest.mark.parametrize("out_kind", [".csv", ".parquet"])
def test_an_input_without_rows_gives_an_output_without_rows(run, tmp_path, out_kind):
    source = tmp_path / "in.txt"
    source.write_text("\n  \n", encoding="utf-8")
    out = tmp_path / f"out{out_kind}"
    score(["--model", str(run[0]), "--file", str(source), "--output", str(out)])
    assert read_output(out) == []
    if out_kind == ".parquet":
        import pyarrow.parquet as pq

        assert pq.read_schema(out).names == ["id", "label", "label_class", "confidence", "p_positive"]


def test_a_terminal_gets_a_progress_bar_in_texts_per_second(run, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    source = write_input(tmp_path / "in.csv", TEXTS)
    stderr = Terminal()
    score(["--model", str(run[0]), "--file", str(source), "--output", str(tmp_path / "out.jsonl")], stderr)
    bar = stderr.getvalue().split("\r")[-1]
    assert f"{len(TEXTS)}/{len(TEXTS)}" in bar and "texts/s" in bar


def test_resume_refuses_a_model_with_other_labels_in_the_same_folder(run, tmp_path, monkeypatch,
                                                                      tiny_headless_encoder_dir):
    import shutil

    from tests.k_class_fixtures import train_k_classifier

    folder = tmp_path / "model"
    shutil.copytree(run[0] / "model", folder)
    source = write_input(tmp_path / "in.txt", TEXTS)
    argv = ["--model", str(folder), "--file", str(source), "--output", str(tmp_path / "out.csv"), "--chunk-size", "4"]
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Killed):
        score(argv)
    monkeypatch.undo()
    shutil.rmtree(folder)
    classifier, tokenizer = train_k_classifier(tiny_headless_encoder_dir)
    classifier.save_pretrained(folder, tokenizer=tokenizer)
    with pytest.raises(SystemExit, match=r"was started with the model's labels \['Negative', 'Positive'\], not "
                                         r"\['World', 'Sports', 'Business', 'Sci/Tech'\]"):
        score(argv + ["--resume"])
