"""The rows of a file of texts to classify, read as a stream (bounded memory, whatever the size).

Formats, by extension: ``.txt`` (one text per line; blank lines are not rows), ``.jsonl`` (one JSON
object per line; blank lines are not rows), ``.csv`` (a header row) and ``.parquet``. A row's id is
its line number (txt, jsonl; from 1), its row index (csv, parquet; from 0, as pandas counts), or the
value of an id column the user names. A row that cannot be read (not UTF-8, not a JSON object, no
text or a text that is not a string) comes with its ``problem`` instead of a text, so the caller can
report it by line and skip it or stop; nothing is labelled silently.

A column the user names that the file lacks is an error before anything is read past the header
(csv, parquet) or the first record (jsonl).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
#: Rows read from parquet per record batch.
PARQUET_BATCH = 4096


class RowsError(ValueError):
    """A file that cannot be read as rows of text: one line naming the file and what is wrong."""


@dataclass(frozen=True)
class Row:
    id: Any  # the output's id: line number, row index, or the id column's value
    where: str  # "reviews.csv row 17", for messages
    text: str | None  # None when the row has a problem
    problem: str | None = None  # why the row cannot be read, phrased after "the text"/"the row"


def file_format(path: str, option: str = "--file") -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise RowsError(f"{option} {path}: unknown format {suffix or '(no extension)'!r}; "
                        f"use one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def _not_utf8(raw: bytes, error: UnicodeDecodeError) -> str:
    return f"is not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})"


def _surrogate_problem(value: str) -> str | None:
    """csv text is decoded with ``surrogateescape``: a byte that is not UTF-8 shows up as a surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(value[error.start])
        if 0xDC80 <= code <= 0xDCFF:
            return f"is not UTF-8 text (byte 0x{code - 0xDC00:02x} at character {error.start + 1})"
    return None


def _lines(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line end) of each non-blank line; a UTF-8 byte-order mark
    at the start of the file is not part of the first line."""
    for number, raw in enumerate(handle, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw.strip():
            yield number, raw.rstrip(b"\r\n")


def _missing(column: str, record: dict) -> str:
    return f"has no {column!r} (its keys: {', '.join(map(str, list(record)[:8]))})"


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


class TextRows:
    """The rows of ``path`` (``-``: stdin, read as .txt); iterate for :class:`Row` objects."""

    def __init__(self, path: str, text_column: str | None = None, id_column: str | None = None, stdin=None):
        self.path, self.id_column = path, id_column
        self.format = "txt" if path == "-" else file_format(path)
        self.name = "<stdin>" if path == "-" else str(path)
        self.stdin = stdin
        if self.format == "txt" and (text_column or id_column):
            flag = "--text-column" if text_column else "--id-column"
            raise RowsError(f"{flag} is for .jsonl, .csv and .parquet files; {self.name} has one text per line")
        self.text_column = text_column or "text"
        if path != "-" and not Path(path).is_file():
            raise RowsError(f"no such file: {path}")
        self.id_type = None  # the id column's Arrow type (parquet), for the output's schema
        self._check_columns()

    # --- the columns, checked before any row is scored ---------------------------------------------

    def _check_columns(self) -> None:
        wanted = [c for c in (self.text_column, self.id_column) if c]
        if self.format == "csv":
            with open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
                header = next(csv.reader(handle), None)
            missing = [c for c in wanted if header is None or c not in header]
            if missing:
                raise RowsError(f"{self.name} has no column {missing[0]!r} (its header: {', '.join(header or [])}); "
                                f"name the text column with --text-column, the id column with --id-column")
        elif self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                schema = pq.ParquetFile(self.path).schema_arrow
            except (OSError, pa.ArrowException) as error:
                raise RowsError(f"{self.name} is not a readable parquet file ({error})") from None
            missing = [c for c in wanted if c not in schema.names]
            if missing:
                raise RowsError(f"{self.name} has no column {missing[0]!r} (its columns: {', '.join(schema.names)}); "
                                f"name the text column with --text-column, the id column with --id-column")
            kind = schema.field(self.text_column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise RowsError(f"{self.name}: column {self.text_column!r} is {kind}, not text; name the text "
                                f"column with --text-column")
            self.id_type = schema.field(self.id_column).type if self.id_column else None
        elif self.format == "jsonl":
            first = next(iter(self), None)
            if first is not None and first.problem and first.problem.startswith(tuple(f"has no {c!r}" for c in wanted)):
                raise RowsError(f"{first.where} {first.problem}; name the text's key with --text-column, "
                                f"the id's with --id-column")

    # --- reading ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Row]:
        if self.format == "parquet":
            return self._parquet()
        if self.format == "csv":
            return self._csv()
        return self._text_lines()

    def _text_lines(self) -> Iterator[Row]:
        if self.path == "-":
            stream = self.stdin if self.stdin is not None else sys.stdin
            yield from self._read_lines(getattr(stream, "buffer", None) or _encoded(stream))
            return
        with open(self.path, "rb") as handle:
            yield from self._read_lines(handle)

    def _read_lines(self, handle: BinaryIO) -> Iterator[Row]:
        for number, raw in _lines(handle):
            where = f"{self.name} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield Row(number, where, None, _not_utf8(raw, error))
                continue
            if self.format == "txt":
                yield Row(number, where, line.strip())
            else:
                yield self._record(number, where, line)

    def _record(self, number: int, where: str, line: str) -> Row:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return Row(number, where, None, f"is not valid JSON ({error.msg} at column {error.colno})")
        if not isinstance(record, dict):
            return Row(number, where, None, f"is not a JSON object but {_kind(record)}")
        return self._cells(number, where, record)

    def _cells(self, position: int, where: str, record: dict) -> Row:
        """A row from its cells: the text column's value and the id column's (if one is named)."""
        row_id = position
        if self.id_column:
            if self.id_column not in record:
                return Row(None, where, None, _missing(self.id_column, record))
            row_id = record[self.id_column]
            if row_id is None or row_id == "":
                return Row(None, where, None, f"has an empty id ({self.id_column!r} is {row_id!r})")
            where = f"{where} (id {row_id!r})"
        if self.text_column not in record:
            return Row(row_id, where, None, _missing(self.text_column, record))
        text = record[self.text_column]
        if text is None:
            return Row(row_id, where, None, f"has no text ({self.text_column!r} is null)")
        if not isinstance(text, str):
            return Row(row_id, where, None, f"has no text ({self.text_column!r} is {_kind(text)}, not a string)")
        problem = _surrogate_problem(text) if self.format == "csv" else None
        return Row(row_id, where, None if problem else text, problem)

    def _csv(self) -> Iterator[Row]:
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a long text is a text, not an error
        with open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            for index, cells in enumerate(reader):
                if len(cells) != len(header):
                    where = f"{self.name} row {index} (line {reader.line_num})"
                    yield Row(index, where, None, f"has {len(cells)} cells, the header {len(header)}")
                    continue
                yield self._cells(index, f"{self.name} row {index}", dict(zip(header, cells)))

    def _parquet(self) -> Iterator[Row]:
        import pyarrow.parquet as pq

        columns = list(dict.fromkeys(c for c in (self.text_column, self.id_column) if c))
        index = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH, columns=columns):
            values = batch.to_pydict()
            for cells in zip(*(values[c] for c in columns)):
                yield self._cells(index, f"{self.name} row {index}", dict(zip(columns, cells)))
                index += 1

    # --- size and identity --------------------------------------------------------------------------

    def count(self) -> int | None:
        """How many rows (for a progress bar): parquet's metadata, else one quick pass; None for stdin."""
        if self.path == "-":
            return None
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        if self.format == "csv":
            csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
            with open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
                try:
                    return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
                except csv.Error:
                    return None
        with open(self.path, "rb") as handle:
            return sum(1 for _ in _lines(handle))


class RowHash:
    """A running SHA-256 over rows (id and text), to tell whether an input's first rows changed."""

    def __init__(self):
        self._hash = hashlib.sha256()

    def update(self, row: Row) -> None:
        self._hash.update(repr((row.id, row.text, row.problem)).encode("utf-8") + b"\n")  # repr escapes surrogates

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _encoded(stream) -> Iterator[bytes]:
    """A text stream without a binary buffer (a test's StringIO) as UTF-8 byte lines."""
    for line in stream:
        yield line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line
