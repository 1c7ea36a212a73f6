"""Classify reviews from the command line with a trained or published classifier.

    dapt-predict --model REPO_OR_DIR "review one" "review two"
    dapt-predict --model runs/demo --file reviews.txt --jsonl      # one review per line
    cat reviews.txt | dapt-predict --model user/name -             # stdin

``--model`` is a Hub repository, a folder written by ``DistilBERTClassifier.save_pretrained`` or
``dapt-publish``, or a stage-2 run directory (its ``model/`` is used).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _read_lines(stream) -> list[str]:
    return [line.strip() for line in stream if line.strip()]


def collect_reviews(args, stdin=None) -> list[str]:
    """Positional reviews (``-`` = stdin), then ``--file`` lines (``-`` = stdin), in order."""
    stdin = sys.stdin if stdin is None else stdin
    reviews: list[str] = []
    used_stdin = False
    for item in args.reviews:
        if item == "-":
            reviews.extend(_read_lines(stdin))
            used_stdin = True
        else:
            reviews.append(item)
    if args.file:
        if args.file == "-":
            if not used_stdin:
                reviews.extend(_read_lines(stdin))
        else:
            path = Path(args.file)
            if not path.is_file():
                raise SystemExit(f"dapt-predict: error: no such file: {path}")
            with path.open(encoding="utf-8") as handle:
                reviews.extend(_read_lines(handle))
    elif not args.reviews and not stdin.isatty():
        reviews.extend(_read_lines(stdin))
    return reviews


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapt-predict", description="Sentiment of movie reviews (Negative/Positive).")
    parser.add_argument("reviews", nargs="*", help="review texts; '-' reads one review per line from stdin")
    parser.add_argument("--model", required=True, help="Hub repo id, model folder, or stage-2 run directory")
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--file", help="file with one review per line ('-' for stdin)")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per review")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-length", type=int, help="override the model's max_length")
    parser.add_argument("--truncation", choices=("head", "head+tail"), help="override the model's truncation")
    return parser


def main(argv=None, stdin=None, stdout=None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout if stdout is None else stdout
    if args.batch_size < 1:
        raise SystemExit("dapt-predict: error: --batch-size must be at least 1")
    reviews = collect_reviews(args, stdin)
    if not reviews:
        raise SystemExit("dapt-predict: error: no reviews given (pass texts, --file PATH, or pipe them on stdin)")

    from classify.model import infer_reviews, load_classifier

    try:
        classifier, tokenizer = load_classifier(args.model, revision=args.revision, device=_device(args.device))
    except (OSError, ValueError) as error:
        raise SystemExit(f"dapt-predict: error: cannot load model {args.model!r}: {error}") from None
    results = infer_reviews(
        reviews,
        classifier,
        tokenizer,
        batch_size=args.batch_size,
        max_length=args.max_length,
        truncation=args.truncation,
    )
    for text, (label_class, label, confidence) in zip(reviews, results):
        p_positive = confidence if label_class == 1 else 1.0 - confidence
        if args.jsonl:
            record = {
                "text": text,
                "label": label,
                "label_class": label_class,
                "confidence": confidence,
                "p_positive": p_positive,
            }
            stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            stdout.write(f"{label:<8}  {confidence:6.1%}  {shorten(text)}\n")
    stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
