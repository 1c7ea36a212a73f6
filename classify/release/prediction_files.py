"""The file ``dapt-predict --output`` writes, one row per input row, a chunk at a time, resumable.

Columns (by extension: ``.jsonl``, ``.csv``, ``.parquet``): ``id``, ``label``, ``label_class``,
``confidence``, ``p_positive`` (P(class 1), two-class models only), with ``--probs`` every class's
probability (jsonl: ``"probs": {label: P}``; csv and parquet: a ``prob_<label>`` column per class, in
class-index order), and with ``--bad-rows skip`` an ``error`` column: why that row got no label (its
label fields are empty; jsonl writes ``{"id", "error"}``).

Each chunk is written with one write and flushed to disk (fsync), so a killed run loses at most the
chunk it was scoring. ``.jsonl`` and ``.csv`` grow in place; ``.parquet`` cannot be appended to, so
its chunks go to part files in ``OUT.parts/`` that are joined into ``OUT`` at the end. Beside the
output, ``OUT.dapt-resume.json`` (removed when the run completes) records the run's options and,
after each chunk, how many input rows the output holds and a SHA-256 of those input rows:
``--resume`` checks both, keeps every complete row already written (a half-written last line is cut
off) and scores the rest.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from classify.model import Prediction


class OutputError(ValueError):
    """An output that cannot be written or resumed: one line naming the file and the problem."""


def resume_record_path(output: str | Path) -> Path:
    return Path(f"{output}.dapt-resume.json")


class ResumeRecord:
    """``OUT.dapt-resume.json``: the options of the run writing OUT and its last checkpoint."""

    def __init__(self, output: str | Path):
        self.path = resume_record_path(output)

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            assert record["format"] == "dapt-predict resume record" and isinstance(record["rows"], int)
            return record
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise OutputError(f"{self.path} is not a dapt-predict resume record (damaged?); remove it and the "
                              f"output to start again") from None

    def write(self, options: dict, rows: int, sha256: str) -> None:
        """Replace the record atomically (a kill leaves the old one or the new one, never half of one)."""
        record = {"format": "dapt-predict resume record", "options": options, "rows": rows, "input_sha256": sha256}
        partial = self.path.with_name(self.path.name + ".tmp")
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Columns:
    """The output's fields for a model's labels and the run's options."""

    def __init__(self, labels: list[str], probs: bool, errors: bool):
        self.labels, self.probs, self.errors = labels, probs, errors

    def names(self) -> list[str]:
        names = ["id", "label", "label_class", "confidence"] + (["p_positive"] if len(self.labels) == 2 else [])
        names += [f"prob_{label}" for label in self.labels] if self.probs else []
        return names + (["error"] if self.errors else [])

    def record(self, row_id: Any, prediction: Prediction | None, error: str | None) -> dict:
        if prediction is None:
            return {"id": row_id, "error": error}
        out = {"id": row_id, "label": prediction.label, "label_class": prediction.label_class,
               "confidence": prediction.confidence}
        if len(self.labels) == 2:
            out["p_positive"] = prediction.probs[1]
        if self.probs:
            out["probs"] = dict(zip(self.labels, prediction.probs))
        return out

    def cells(self, row_id: Any, prediction: Prediction | None, error: str | None) -> list:
        names = self.names()
        if prediction is None:
            return [row_id] + [None] * (len(names) - 2) + [error]
        cells = [row_id, prediction.label, prediction.label_class, prediction.confidence]
        cells += [prediction.probs[1]] if len(self.labels) == 2 else []
        cells += list(prediction.probs) if self.probs else []
        return cells + ([None] if self.errors else [])


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


class _TextOutput:
    """Shared by .jsonl and .csv: the file grows by whole chunks; a resumed run cuts a half-written
    last row and appends."""

    def __init__(self, path: Path, columns: Columns):
        self.path, self.columns, self.handle = path, columns, None

    def exists(self) -> bool:
        return self.path.exists()

    started = exists

    def start(self) -> None:
        self.handle = open(self.path, "xb")
        header = self.header()
        if header:
            self.handle.write(header)
            _sync(self.handle)

    def resume(self) -> tuple[int, Any]:
        """(complete rows already written, the last one's id), after cutting a half-written row."""
        rows, last_id, end = self.scan()
        if end < self.path.stat().st_size:
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
        self.handle = open(self.path, "ab")
        return rows, last_id

    def append(self, rows: list[tuple[Any, Prediction | None, str | None]]) -> None:
        self.handle.write(self.encode(rows))
        _sync(self.handle)

    def finish(self) -> None:
        self.close()

    def clean_up(self) -> None:
        pass

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def header(self) -> bytes:
        return b""


class JsonlOutput(_TextOutput):
    def encode(self, rows) -> bytes:
        return "".join(json.dumps(self.columns.record(*row), ensure_ascii=False) + "\n" for row in rows).encode("utf-8")

    def scan(self) -> tuple[int, Any, int]:
        rows, last_id, end = 0, None, 0
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.endswith(b"\n"):
                    break  # the half-written last row of a killed run
                try:
                    record = json.loads(line)
                    assert isinstance(record, dict) and "id" in record and ("label" in record or "error" in record)
                except (ValueError, AssertionError):
                    raise OutputError(f"{self.path} line {number} is not a row dapt-predict writes: the file is "
                                      f"not this run's output, or damaged") from None
                rows, last_id, end = rows + 1, record["id"], end + len(line)
        return rows, last_id, end


class CsvOutput(_TextOutput):
    def header(self) -> bytes:
        return self._csv([self.columns.names()])

    @staticmethod
    def _csv(rows: list[list]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode("utf-8")

    def encode(self, rows) -> bytes:
        return self._csv([self.columns.cells(*row) for row in rows])

    def scan(self) -> tuple[int, Any, int]:
        names, consumed = self.columns.names(), 0
        rows, last_id, end = 0, None, 0

        def complete_lines(handle):
            nonlocal consumed
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return  # the half-written last row of a killed run
                consumed += len(raw)
                yield raw.decode("utf-8", "surrogateescape")

        with open(self.path, "rb") as handle:
            reader = csv.reader(complete_lines(handle))
            try:
                header = next(reader, None)
                if header != names:
                    raise OutputError(f"{self.path}: its header ({', '.join(header or [])}) is not this run's "
                                      f"columns ({', '.join(names)}): not this run's output")
                end = consumed
                for cells in reader:  # the reader has consumed exactly this record's lines
                    if len(cells) != len(names):
                        raise OutputError(f"{self.path} row {rows} has {len(cells)} cells, not {len(names)}: damaged")
                    rows, last_id, end = rows + 1, cells[0], consumed
            except csv.Error:
                pass  # a quoted field left open by the kill: half written
        return rows, last_id, end


class ParquetOutput:
    """Chunks as part files in ``OUT.parts/`` (each written to a temporary name, then renamed), joined
    into ``OUT`` by :meth:`finish`, one row group per chunk."""

    def __init__(self, path: Path, columns: Columns, id_type=None):
        self.path, self.columns, self.id_type = path, columns, id_type
        self.parts = Path(f"{path}.parts")

    def exists(self) -> bool:
        return self.path.exists() or self.parts.exists()

    def started(self) -> bool:
        return self.parts.is_dir()

    def start(self) -> None:
        self.parts.mkdir()

    def close(self) -> None:
        pass

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def resume(self) -> tuple[int, Any]:
        import pyarrow.parquet as pq

        if not self.parts.is_dir():
            raise OutputError(f"{self.path} has no {self.parts.name}/ of a stopped run: nothing to resume")
        for partial in self.parts.glob("*.tmp"):
            partial.unlink()
        rows, last_id = 0, None
        for part in self._part_files():
            table = pq.read_table(part)
            if table.schema.names != self.columns.names():
                raise OutputError(f"{part}: its columns are not this run's ({', '.join(self.columns.names())})")
            if self.id_type is None:
                self.id_type = table.schema.field("id").type
            rows, last_id = rows + table.num_rows, (table.column("id")[-1].as_py() if table.num_rows else last_id)
        return rows, last_id

    def schema(self):
        import pyarrow as pa

        types = {"id": self.id_type or pa.int64(), "label": pa.string(), "label_class": pa.int64(), "error": pa.string()}
        return pa.schema([(name, types.get(name, pa.float64())) for name in self.columns.names()])

    def append(self, rows) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = self.columns.names()
        values = list(zip(*(self.columns.cells(*row) for row in rows)))
        if self.id_type is None:  # ids from a JSON key: the first chunk's type
            self.id_type = pa.array(list(values[0])).type
        try:
            table = pa.table({name: pa.array(list(column), type=self.schema().field(name).type)
                              for name, column in zip(names, values)}, schema=self.schema())
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise OutputError(f"{self.path}: the ids of this chunk do not fit the column's type "
                              f"{self.id_type} ({error})") from None
        index = len(self._part_files())
        partial = self.parts / f"part-{index:06d}.parquet.tmp"
        pq.write_table(table, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, self.parts / f"part-{index:06d}.parquet")

    def finish(self) -> None:
        """Join the parts into ``OUT`` (one part in memory at a time; written aside, then renamed)."""
        import pyarrow.parquet as pq

        partial = Path(f"{self.path}.tmp")
        with pq.ParquetWriter(partial, self.schema()) as writer:
            for part in self._part_files():
                writer.write_table(pq.read_table(part, schema=self.schema()))
        os.replace(partial, self.path)

    def clean_up(self) -> None:
        """After the resume record is gone: a kill before this leaves parts that a --resume joins again."""
        shutil.rmtree(self.parts)


def open_output(path: str, columns: Columns, id_type=None):
    kind = Path(path).suffix.lower()
    if kind == ".jsonl":
        return JsonlOutput(Path(path), columns)
    if kind == ".csv":
        return CsvOutput(Path(path), columns)
    if kind == ".parquet":
        return ParquetOutput(Path(path), columns, id_type)
    raise OutputError(f"--output {path}: unknown format {kind or '(no extension)'!r}; use .jsonl, .csv or .parquet")
