"""Classify texts from the command line with a trained or published classifier (any number of classes).

    dapt-predict --model REPO_OR_DIR "text one" "text two"
    dapt-predict --model runs/demo --file texts.txt --jsonl        # one text per line
    cat texts.txt | dapt-predict --model user/name --probs -       # stdin, every class's probability
    dapt-predict --model runs/demo --file big.parquet --text-column review --output scored.parquet

``--model`` is a Hub repository, a folder written by ``DaptClassifier.save_pretrained`` or
``dapt-publish``, or a stage-2 run directory (its ``model/`` is used). Each text gets the model's
label name and its confidence; ``--probs`` adds every class's probability (in class-index order),
and ``--jsonl`` writes one object per text: ``text``, ``label``, ``label_class``, ``confidence``,
``p_positive`` (P(class 1), two-class models only) and, with ``--probs``, ``probs`` ({label: P}).
Label, confidence and probabilities come from one forward pass. Blank lines of a file are skipped;
a text that cannot be classified (empty, only markup, or with no content token after tokenization)
is an error naming its argument or line, as in :func:`classify.model.infer_reviews`. Every error is
one line naming the file, line or argument.

With ``--output`` a file of any size (.txt, .jsonl, .csv, .parquet) is scored as a stream into a
.jsonl, .csv or .parquet file, resumable with ``--resume``: :mod:`classify.release.predict_stream`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from classify.model import (DEFAULT_BATCH_TOKENS, DEFAULT_CHUNK_SIZE, ReviewError, load_classifier, predict_proba,
                            review_problem)
from classify.release.prediction_files import OutputError
from classify.release.predict_stream import StreamError, StreamJob, check_output, score_file
from classify.release.text_rows import RowsError, TextRows


def shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _fail(message: str):
    raise SystemExit(f"dapt-predict: error: {message}")


def _read_lines(stream, name: str) -> list[tuple[str, str]]:
    """(where, review) for each non-blank line; bytes are decoded as UTF-8, naming a bad line."""
    binary = getattr(stream, "buffer", None)
    reviews = []
    for number, line in enumerate(binary if binary is not None else stream, 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as error:
                _fail(f"{name} line {number}: not UTF-8 text (byte 0x{line[error.start]:02x} at column {error.start + 1})")
        if line.strip():
            reviews.append((f"{name} line {number}", line.strip()))
    return reviews


def collect_reviews(args, stdin=None) -> list[tuple[str, str]]:
    """(where, review): positional reviews (``-`` = stdin), then ``--file`` lines (``-`` = stdin)."""
    stdin = sys.stdin if stdin is None else stdin
    reviews: list[tuple[str, str]] = []
    used_stdin = False
    for number, item in enumerate(args.reviews, 1):
        if item == "-":
            reviews.extend(_read_lines(stdin, "<stdin>"))
            used_stdin = True
        else:
            reviews.append((f"argument {number}", item))
    if args.file:
        if args.file == "-":
            if not used_stdin:
                reviews.extend(_read_lines(stdin, "<stdin>"))
        else:
            path = Path(args.file)
            if not path.is_file():
                _fail(f"no such file: {path}")
            with path.open("rb") as handle:
                reviews.extend(_read_lines(handle, str(path)))
    elif not args.reviews and not stdin.isatty():
        reviews.extend(_read_lines(stdin, "<stdin>"))
    return reviews


def _device(name: str):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(1, device=device)  # raises for a device this machine lacks
    except (RuntimeError, AssertionError) as error:
        _fail(f"--device {name!r} is not available ({str(error).splitlines()[0]})")
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapt-predict", description="Classify texts with a dapt classifier: "
                                     "each text's label (the model's label names) and confidence.")
    parser.add_argument("reviews", nargs="*", metavar="texts", help="texts to classify; '-' reads one text per line from stdin")
    parser.add_argument("--model", required=True, help="Hub repo id, model folder, or stage-2 run directory")
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--file", help="file with one text per line ('-' for stdin); with --output also a .jsonl, "
                        ".csv or .parquet file")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per text")
    streaming = parser.add_argument_group("large files (streamed, resumable)")
    streaming.add_argument("--output", help="write one row per input row of --file to this .jsonl, .csv or .parquet "
                           "file, a chunk at a time: id, label, label_class, confidence (+ probabilities)")
    streaming.add_argument("--text-column", help="the text's column (csv, parquet) or key (jsonl); default: text")
    streaming.add_argument("--id-column", help="a column or key identifying each row in the output; default: the "
                           "line number (txt, jsonl; from 1) or the row index (csv, parquet; from 0)")
    streaming.add_argument("--resume", action="store_true", help="continue a stopped --output run where it ended "
                           "(same input and options)")
    streaming.add_argument("--bad-rows", choices=("fail", "skip"), default="fail", help="a row that cannot be "
                           "classified: stop naming its line (fail, the default), or report it and write it with an "
                           "'error' instead of a label (skip)")
    streaming.add_argument("--chunk-size", type=int, help="rows read, sorted by length and scored together (default 4096)")
    parser.add_argument("--probs", action="store_true",
                        help="also every class's probability, in class-index order (JSONL: a 'probs' object)")
    parser.add_argument("--batch-size", type=int, help="at most this many texts per batch (default: no cap)")
    parser.add_argument("--batch-tokens", type=int, help="at most this many padded tokens per batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-length", type=int, help="override the model's max_length")
    parser.add_argument("--truncation", choices=("head", "head+tail", "windows"), help="override the model's truncation")
    parser.add_argument("--window-stride", type=int, help="tokens shared by consecutive windows (--truncation windows)")
    return parser


def _load(args, device):
    try:
        return load_classifier(args.model, revision=args.revision, device=device)
    except (OSError, ValueError) as error:
        _fail(f"cannot load model {args.model!r}: {error}")


def _inference_settings(args) -> dict:
    return {"batch_size": args.batch_size, "max_length": args.max_length, "truncation": args.truncation,
            "window_stride": args.window_stride, "batch_tokens": args.batch_tokens or DEFAULT_BATCH_TOKENS}


def _check_streaming_flags(args) -> None:
    if args.output is None:
        for flag in ("resume", "text_column", "id_column"):
            if getattr(args, flag):
                _fail(f"--{flag.replace('_', '-')} is for scoring a file with --output")
        if args.bad_rows != "fail" or args.chunk_size is not None:
            _fail(f"--{'bad-rows' if args.bad_rows != 'fail' else 'chunk-size'} is for scoring a file with --output")
        if args.file and args.file != "-" and Path(args.file).suffix.lower() in (".jsonl", ".csv", ".parquet"):
            _fail(f"--file {args.file}: a {Path(args.file).suffix.lower()} file is scored into a file: add "
                  f"--output OUT.jsonl (or .csv, .parquet)")
        return
    if not args.file:
        _fail("--output needs --file IN (.txt, .jsonl, .csv or .parquet)")
    if args.reviews:
        _fail("--output scores --file only; texts given as arguments are printed without it")
    if args.jsonl:
        _fail("--jsonl is for printing; the --output file's format is its extension (.jsonl, .csv, .parquet)")
    if args.resume and args.file == "-":
        _fail("--resume cannot reread stdin: pass the input as --file PATH")


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout if stdout is None else stdout
    for flag in ("batch_size", "batch_tokens", "max_length", "chunk_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            _fail(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    _check_streaming_flags(args)
    if args.output:
        return score_to_file(args, stdin, sys.stderr if stderr is None else stderr)
    reviews = collect_reviews(args, stdin)
    if not reviews:
        _fail("no texts given (pass texts, --file PATH, or pipe them on stdin)")

    for where, text in reviews:  # what can be told without the tokenizer, before loading the model
        if problem := review_problem(text):
            _fail(f"{where}: the text {problem}")
    classifier, tokenizer = _load(args, _device(args.device))
    texts = [text for _, text in reviews]
    try:  # every class's probability; the label is their argmax, as in infer_reviews (one forward pass)
        rows = predict_proba(texts, classifier, tokenizer, all_classes=True, **_inference_settings(args))
    except ReviewError as error:  # no content token after tokenization: named by argument or line
        _fail(f"{reviews[error.index][0]}: the text {error.problem}")
    except ValueError as error:  # settings that cannot work with this model, e.g. --max-length 2
        _fail(str(error))
    names = [classifier.config.id2label[index] for index in range(len(classifier.config.id2label))]
    width = max(8, *(len(name) for name in names))
    for text, probabilities in zip(texts, rows):
        label_class = max(range(len(probabilities)), key=probabilities.__getitem__)  # the first maximum, as argmax
        label, confidence = names[label_class], probabilities[label_class]
        if args.jsonl:
            record = {"text": text, "label": label, "label_class": label_class, "confidence": confidence}
            if len(names) == 2:  # P(class 1), e.g. P(positive): what scripts of two-class models read
                record["p_positive"] = probabilities[1]
            if args.probs:
                record["probs"] = dict(zip(names, probabilities))
            stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            every = "  " + " | ".join(f"{name} {p:.1%}" for name, p in zip(names, probabilities)) if args.probs else ""
            stdout.write(f"{label:<{width}}  {confidence:6.1%}{every}  {shorten(text)}\n")
    stdout.flush()
    return 0


def score_to_file(args, stdin, stderr) -> int:
    """``--file IN --output OUT``: :func:`classify.release.predict_stream.score_file`, errors as one line."""
    settings = _inference_settings(args)
    try:
        rows = TextRows(args.file, args.text_column, args.id_column, stdin=stdin)
        model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model  # one name per folder
        options = {"model": model, "revision": args.revision, "probs": args.probs, "bad_rows": args.bad_rows,
                   "text_column": args.text_column, "id_column": args.id_column,
                   "chunk_size": args.chunk_size or DEFAULT_CHUNK_SIZE,
                   **{key: settings[key] for key in ("max_length", "truncation", "window_stride")}}
        job = StreamJob(rows, args.output, options, options["chunk_size"], args.bad_rows == "skip", args.resume,
                        settings)
        check_output(job)
    except (RowsError, StreamError, OutputError) as error:
        _fail(str(error))
    classifier, tokenizer = _load(args, _device(args.device))
    gc.freeze()  # the loaded libraries and model are long-lived: collections need not scan them (a quarter faster)
    try:
        summary = score_file(job, classifier, tokenizer, stderr=stderr)
    except (RowsError, StreamError, OutputError, ValueError) as error:
        _fail(str(error))
    except OSError as error:  # a full disk, a file that cannot be written or read
        _fail(f"{error.filename or args.output}: {error.strerror or error}")
    except KeyboardInterrupt:
        stderr.write(f"dapt-predict: stopped; {args.output} keeps the chunks written so far: rerun with --resume "
                     f"to continue\n")
        return 130
    finally:
        gc.unfreeze()
    resumed = f", after the {summary.resumed_from} it held" if summary.resumed_from else ""
    skipped = (f"; {summary.bad_rows} bad row{'s' if summary.bad_rows > 1 else ''} written with "
               f"{'their' if summary.bad_rows > 1 else 'its'} error") if summary.bad_rows else ""
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    stderr.write(f"dapt-predict: {summary.written} rows scored into {args.output}{resumed} "
                 f"({rate:,.0f} texts/s){skipped}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
