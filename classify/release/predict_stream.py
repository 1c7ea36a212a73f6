"""``dapt-predict --file IN --output OUT``: score a file of any size as a stream, resumably.

The input is read a chunk of rows at a time (:mod:`classify.release.text_rows`), each chunk scored by
:func:`classify.model.iter_predictions` (sorted by length, token-budget batches: the same results as
``infer_reviews`` on the whole list, within float noise) and written with one flushed write
(:mod:`classify.release.prediction_files`), so memory stays bounded by the chunk whatever the file's size.
A row that cannot be classified (unreadable, empty, no content token) stops the run naming its line
before anything of its chunk is written, or with ``--bad-rows skip`` is reported on stderr and
written with its ``error`` instead of a label. ``--resume`` continues a stopped run where its output
ends, after checking that the options and the input rows already scored are the same.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from classify.model import iter_predictions
from classify.release.prediction_files import Columns, OutputError, ResumeRecord, open_output
from classify.release.text_rows import Row, RowHash, TextRows

#: Bad rows named one by one on stderr before the rest are only counted.
SHOWN_BAD_ROWS = 10


class StreamError(ValueError):
    """A run that cannot start or go on: one line saying why and what to do."""


@dataclass
class StreamJob:
    rows: TextRows
    output: str
    options: dict  # what the output depends on: model, labels, settings, columns; must match to resume
    chunk_size: int
    skip_bad_rows: bool
    resume: bool
    inference: dict = field(default_factory=dict)  # batch_size, batch_tokens, max_length, ... for iter_predictions


@dataclass
class Summary:
    written: int = 0  # rows written by this run
    resumed_from: int = 0  # rows the output held already
    bad_rows: int = 0
    seconds: float = 0.0


def check_output(job: StreamJob) -> None:
    """Before the model is loaded: the output is new, or ``--resume`` has a stopped run to continue
    with the same options (the model's labels are compared once it is loaded)."""
    target = open_output(job.output, Columns([], False, False))
    if not Path(job.output).resolve().parent.is_dir():
        raise StreamError(f"--output {job.output}: no such folder {str(Path(job.output).parent)!r}")
    record = ResumeRecord(job.output)
    if not job.resume and (target.exists() or record.exists()):
        found = job.output if target.exists() else record.path.name
        raise StreamError(f"{found} already exists: pass --resume to continue a stopped run, or choose "
                          f"another --output")
    if job.resume and target.exists() and not record.exists():
        raise StreamError(f"{job.output} has no resume record ({record.path.name}): it is a completed run or was "
                          f"not written by dapt-predict --output; nothing to resume")
    if job.resume and record.exists():
        _same_options(job, record.read()["options"], ignore=("labels",))


def _same_options(job: StreamJob, started: dict, ignore=()) -> None:
    keys = sorted((set(started) | set(job.options)) - set(ignore))
    changed = [key for key in keys if started.get(key) != job.options.get(key)]
    if changed:
        key = changed[0]
        name = "the model's labels" if key == "labels" else f"--{key.replace('_', '-')}"
        raise StreamError(f"{job.output} was started with {name} {started.get(key)!r}, not "
                          f"{job.options.get(key)!r}: resume with the options it was started with")


def score_file(job: StreamJob, classifier, tokenizer, *, stderr=None, progress: bool | None = None) -> Summary:
    """Score ``job.rows`` into ``job.output`` (see the module doc); returns what was done."""
    stderr = sys.stderr if stderr is None else stderr
    labels = [classifier.config.id2label[index] for index in range(len(classifier.config.id2label))]
    job.options["labels"] = labels
    if job.resume and ResumeRecord(job.output).exists():  # before the probe: the labels decide the columns
        _same_options(job, ResumeRecord(job.output).read()["options"])
    # Settings this model cannot work with (e.g. --max-length 2) fail on a probe, before anything is written.
    list(iter_predictions(["probe"], classifier, tokenizer, skip_invalid=True, **job.inference))
    output = open_output(job.output, Columns(labels, job.options["probs"], job.skip_bad_rows), job.rows.id_type)
    record = ResumeRecord(job.output)
    rows, hasher, summary = iter(job.rows), RowHash(), Summary()
    bar = None
    try:
        if job.resume and record.exists():
            stopped = record.read()
            summary.resumed_from = _skip_written(job, output, stopped, rows, hasher)
        else:
            record.write(job.options, 0, hasher.hexdigest())  # first: a kill from here on leaves a resumable run
            output.start()
        bar = _progress(job, summary.resumed_from, stderr, progress)
        started, done = time.perf_counter(), summary.resumed_from
        first = job.chunk_size - done % job.chunk_size  # realign with the chunks of the stopped run
        for chunk in _chunks(rows, first, job.chunk_size):
            for row in chunk:
                hasher.update(row)
            output.append(_score_chunk(job, chunk, classifier, tokenizer, summary, stderr))
            done += len(chunk)
            record.write(job.options, done, hasher.hexdigest())
            summary.written += len(chunk)
            bar.update(len(chunk))
        output.finish()
        record.remove()
        output.clean_up()
    finally:
        if bar is not None:
            bar.close()
        output.close()
    summary.seconds = time.perf_counter() - started
    if summary.bad_rows > SHOWN_BAD_ROWS:
        stderr.write(f"dapt-predict: {summary.bad_rows - SHOWN_BAD_ROWS} more bad rows skipped (their 'error' "
                     f"field in {job.output} says why)\n")
    return summary


def _skip_written(job: StreamJob, output, record: dict, rows: Iterator[Row], hasher: RowHash) -> int:
    """Open the stopped run's output, check it against the input, and read past the rows it holds."""
    if not output.started():
        output.start()  # the run stopped before it created its output
        return 0
    written, last_id = output.resume()
    if written < record["rows"]:
        raise StreamError(f"{job.output} holds {written} rows but its resume record says {record['rows']} were "
                          f"written: it was changed since; remove it and {ResumeRecord(job.output).path.name}")
    count, last = 0, None
    for count, last in enumerate(itertools.islice(rows, written), 1):
        hasher.update(last)
        if count == record["rows"] and hasher.hexdigest() != record["input_sha256"]:
            raise StreamError(f"{job.rows.name} changed since {job.output} was started (its first {count} rows "
                              f"differ): resume only with the same input")
    if count < written:
        raise StreamError(f"{job.rows.name} has {count} rows, fewer than the {written} {job.output} holds: resume "
                          f"only with the same input")
    if written and str(last.id) != str(last_id):
        raise StreamError(f"{job.output} ends with id {last_id!r} but row {written} of {job.rows.name} has id "
                          f"{last.id!r}: resume only with the same input")
    return written


def _chunks(rows: Iterator[Row], first: int, size: int) -> Iterator[list[Row]]:
    chunk = list(itertools.islice(rows, first))
    while chunk:
        yield chunk
        chunk = list(itertools.islice(rows, size))


def _score_chunk(job: StreamJob, chunk: list[Row], classifier, tokenizer, summary: Summary, stderr) -> list:
    """(id, prediction or None, error or None) per row; a bad row stops the run before anything of
    its chunk is written, unless bad rows are skipped."""
    texts = [row.text if row.problem is None else None for row in chunk]
    predictions = list(iter_predictions(texts, classifier, tokenizer, chunk_size=max(len(texts), 1),
                                        skip_invalid=True, **job.inference))
    out = []
    for row, prediction in zip(chunk, predictions):
        if row.problem is None and prediction.problem is None:
            out.append((row.id, prediction, None))
            continue
        error = f"the row {row.problem}" if row.problem else f"the text {prediction.problem}"
        if not job.skip_bad_rows:
            raise StreamError(f"{row.where}: {error} ({job.output} holds the rows before its chunk: fix it and "
                              f"rerun with --resume, or pass --bad-rows skip)")
        summary.bad_rows += 1
        if summary.bad_rows <= SHOWN_BAD_ROWS:
            stderr.write(f"dapt-predict: skipped {row.where}: {error}\n")
        out.append((row.id, None, error))
    return out


def _progress(job: StreamJob, done: int, stderr, show: bool | None):
    from tqdm.auto import tqdm

    show = stderr.isatty() if show is None else show
    total = job.rows.count() if show else None
    return tqdm(total=total, initial=done, unit=" texts", desc="dapt-predict", file=stderr, disable=not show,
                smoothing=0.1, dynamic_ncols=True)
