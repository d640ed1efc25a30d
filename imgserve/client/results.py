"""The results table of client.py: one row per image, CSV or JSON Lines, read back for --resume.

Each row is flushed as it is written, so an interrupted run keeps every finished row; a row
cut off by a hard kill is dropped when the file is resumed. Paths are stored as given and
compared resolved, so `photos/a.jpg` and `./photos/a.jpg` are the same image.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from imgserve.client.files import file_key

FORMATS = (".csv", ".jsonl")
STDOUT = "-"


class ResultsError(Exception):
    """The output cannot be used as asked; the message says what to do."""


@dataclass
class Row:
    path: str
    model: str = ""
    predictions: list[dict[str, Any]] = field(default_factory=list)  # [{"label", "score"}], best first
    error: str = ""


def columns(top_k: int) -> list[str]:
    """path, label_1, score_1, ... label_k, score_k, model, error."""
    ranks = [(f"label_{i}", f"score_{i}") for i in range(1, top_k + 1)]
    return ["path", *(name for pair in ranks for name in pair), "model", "error"]


class Results:
    """The output named by --out (`-`: CSV on stdout). Read when built; written inside `with`."""

    def __init__(self, out: str, top_k: int, resume: bool) -> None:
        self.out, self.top_k = out, top_k
        self.name = "stdout" if out == STDOUT else out
        self.jsonl = out.endswith(".jsonl")
        self.done: set[str] = set()  # resolved paths that already have a row
        self.models: dict[str, int] = {}  # a resumed file's models, each with its rows' number of predictions
        self.exists = False
        self.file: IO[str] | None = None
        self.rows = 0  # written by this run
        if out == STDOUT:
            if resume:
                raise ResultsError("--resume needs --out FILE: there is nothing to resume on stdout")
            return
        if not out.endswith(FORMATS):
            raise ResultsError(f"--out {out}: name a .csv or a .jsonl file")
        path = Path(out)
        self.exists = path.is_file() and path.stat().st_size > 0
        if self.exists and not resume:
            raise ResultsError(f"{out} exists: add --resume to continue it, or remove it to start again")
        if self.exists:
            drop_partial_last_line(path)
            self.done = self._read_done(path)

    def _read_done(self, path: Path) -> set[str]:
        # utf-8-sig: a CSV saved again by Excel ("CSV UTF-8") starts with a byte order mark, not "path".
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            if self.jsonl:
                records = [record(line, number, path) for number, line in enumerate(f, 1) if line.strip()]
                paths = [r["path"] for r in records]
                for r in records:
                    if r.get("model"):
                        self.models.setdefault(r["model"], len(r.get("predictions") or []))
            else:
                reader = csv.reader(f)
                header = next(reader, [])
                if header != columns(self.top_k):
                    found = sum(name.startswith("label_") for name in header)
                    if header != columns(found):  # not --top-k's doing: resuming with another would not help
                        raise ResultsError(
                            f"{path} is not a table client.py wrote: its first line is not "
                            f"'{','.join(columns(self.top_k))}' (resume only a file client.py wrote)"
                        )
                    raise ResultsError(f"{path} holds top-{found} rows: resume it with --top-k {found}")
                rows = [row for row in reader if row]
                paths = [row[0] for row in rows]
                # The top-k is the header's (checked above); a row's predictions are counted for JSONL only.
                at = header.index("model")
                self.models |= {row[at]: self.top_k for row in rows if len(row) == len(header) and row[at]}
        return {file_key(Path(p)) for p in paths}

    def is_done(self, path: Path) -> bool:
        return file_key(path) in self.done

    def __enter__(self) -> Results:
        """Start writing (appending when resumed); the CSV header goes first into a new file."""
        if self.out == STDOUT:
            self.file, new = sys.stdout, True
            if isinstance(sys.stdout, io.TextIOWrapper):  # a name that is not UTF-8 goes out as its bytes,
                sys.stdout.reconfigure(errors="surrogateescape")  # as `ls` shows it, not as a traceback
        else:
            try:  # surrogateescape: file names that are not UTF-8 are written and read back unchanged.
                self.file = Path(self.out).open("a", newline="", encoding="utf-8", errors="surrogateescape")
            except OSError as e:
                raise ResultsError(f"cannot write {self.out}: {e.strerror or e}") from None
            new = not self.exists
        self._csv = None if self.jsonl else csv.writer(self.file)
        if self._csv and new:
            try:
                self._csv.writerow(columns(self.top_k))
                self.file.flush()
            except OSError as e:
                self.__exit__()  # not called by `with` when __enter__ fails: the file is closed, and removed
                raise self.cannot_write(e) from None
        return self

    def check_same_run(self, row: Row) -> None:
        """A resumed file is one table: an answer of another model, or (JSONL, which has no header) with
        another number of predictions than its rows, is refused before it is written, not mixed in."""
        if not row.model or not self.models:
            return
        if row.model not in self.models:
            held = ", ".join(sorted(self.models))
            raise ResultsError(
                f"{self.out} holds answers of {held}, this run's are of {row.model}: resume it with "
                f"--model {sorted(self.models)[0]} (if the server still serves it), or write to another --out"
            )
        if self.jsonl and (found := self.models[row.model]) != len(row.predictions):
            raise ResultsError(f"{self.out} holds top-{found} rows: resume it with --top-k {found}")

    def write(self, row: Row) -> None:
        assert self.file is not None, "write inside `with results:`"
        self.check_same_run(row)
        try:
            if self._csv is None:
                record = {"path": row.path, "model": row.model or None, "predictions": row.predictions}
                self.file.write(json.dumps({**record, "error": row.error or None}) + "\n")
            else:
                ranked = [(p["label"], f"{p['score']:.6f}") for p in row.predictions]
                ranked += [("", "")] * (self.top_k - len(ranked))
                self._csv.writerow([row.path, *(v for pair in ranked for v in pair), row.model, row.error])
            self.file.flush()
        except OSError as e:
            raise self.cannot_write(e) from None
        self.rows += 1

    def cannot_write(self, error: OSError) -> ResultsError:
        """The disk full, or stdout's reader gone (`client.py photos/ | head`): the run stops, saying so."""
        if self.out == STDOUT and isinstance(error, BrokenPipeError):
            # What is still buffered for stdout goes nowhere at exit, not into a second BrokenPipeError.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ResultsError("stdout was closed by the program reading the rows: give --out FILE to keep them all")
        return ResultsError(f"cannot write {self.name}: {error.strerror or error}")

    def __exit__(self, *exc: object) -> None:
        if self.file is not None and self.file is not sys.stdout:
            with contextlib.suppress(OSError):  # what could not be written (a full disk) is said already
                self.file.close()
            if not self.exists and not self.rows:  # a run stopped before its first row (a refused top_k or
                Path(self.out).unlink(missing_ok=True)  # model) leaves no file that would block the next one


def record(line: str, number: int, path: Path) -> dict[str, Any]:
    """One row of a resumed JSON Lines file; a line that is none (edited, or another program's) is refused."""
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    if not (
        isinstance(row, dict) and isinstance(row.get("path"), str) and isinstance(row.get("predictions") or [], list)
    ):
        raise ResultsError(
            f"{path}, line {number}: not a row client.py wrote (a JSON object with its 'path'): "
            "correct or remove that line to resume"
        )
    return row


def drop_partial_last_line(path: Path) -> None:
    """A row cut off by a hard kill would resume as a path that matches nothing: drop it."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
