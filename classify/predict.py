"""Classify texts from the command line with a trained or published classifier (any number of classes).

    dapt-predict --model REPO_OR_DIR "text one" "text two"
    dapt-predict --model runs/demo --file texts.txt --jsonl        # one text per line
    cat texts.txt | dapt-predict --model user/name --probs -       # stdin, every class's probability

``--model`` is a Hub repository, a folder written by ``DistilBERTClassifier.save_pretrained`` or
``dapt-publish``, or a stage-2 run directory (its ``model/`` is used). Each text gets the model's
label name and its confidence; ``--probs`` adds every class's probability (in class-index order),
and ``--jsonl`` writes one object per text: ``text``, ``label``, ``label_class``, ``confidence``,
``p_positive`` (P(class 1), two-class models only) and, with ``--probs``, ``probs`` ({label: P}).
Label, confidence and probabilities come from one forward pass. Blank lines of a file are skipped;
a text that cannot be classified (empty, only markup, or with no content token after tokenization)
is an error naming its argument or line, as in :func:`classify.model.infer_reviews`. Every error is
one line naming the file, line or argument.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    import torch

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
    parser.add_argument("--file", help="file with one text per line ('-' for stdin)")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per text")
    parser.add_argument("--probs", action="store_true",
                        help="also every class's probability, in class-index order (JSONL: a 'probs' object)")
    parser.add_argument("--batch-size", type=int, help="at most this many texts per batch (default: no cap)")
    parser.add_argument("--batch-tokens", type=int, help="at most this many padded tokens per batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-length", type=int, help="override the model's max_length")
    parser.add_argument("--truncation", choices=("head", "head+tail", "windows"), help="override the model's truncation")
    parser.add_argument("--window-stride", type=int, help="tokens shared by consecutive windows (--truncation windows)")
    return parser


def main(argv=None, stdin=None, stdout=None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout if stdout is None else stdout
    for flag in ("batch_size", "batch_tokens", "max_length"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            _fail(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    reviews = collect_reviews(args, stdin)
    if not reviews:
        _fail("no texts given (pass texts, --file PATH, or pipe them on stdin)")

    from classify.model import DEFAULT_BATCH_TOKENS, ReviewError, load_classifier, predict_proba, review_problem

    for where, text in reviews:  # what can be told without the tokenizer, before loading the model
        if problem := review_problem(text):
            _fail(f"{where}: the text {problem}")
    device = _device(args.device)
    try:
        classifier, tokenizer = load_classifier(args.model, revision=args.revision, device=device)
    except (OSError, ValueError) as error:
        _fail(f"cannot load model {args.model!r}: {error}")
    texts = [text for _, text in reviews]
    try:  # every class's probability; the label is their argmax, as in infer_reviews (one forward pass)
        rows = predict_proba(texts, classifier, tokenizer, batch_size=args.batch_size, max_length=args.max_length,
                             truncation=args.truncation, window_stride=args.window_stride,
                             batch_tokens=args.batch_tokens or DEFAULT_BATCH_TOKENS, all_classes=True)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
