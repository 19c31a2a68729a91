"""Batch: answer every line of an input file, in order, one JSON line out per line in.

A line that cannot be answered (empty, too long, not valid JSON in a JSONL file)
gets an error object naming its line number, and the batch goes on. Each answer
is written and flushed as soon as it is made, so an interrupted batch loses at
most the line in flight, and `resume_point` finds where to continue an output
file without answering any line twice. Knows lines and output files; the
answering is a callable's (`runner.Runner` in `kolm run`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kolm.data import BatchLine
from kolm.errors import InputError, KolmError


@dataclass
class BatchSummary:
    """What a batch did: lines answered, lines that got an error object, lines resumed past."""

    lines: int
    resumed: int = 0
    answered: int = 0
    error_lines: list[int] = field(default_factory=list)

    def line(self) -> str:
        done = f"{self.answered} answered, {len(self.error_lines)} errors"
        skipped = f", {self.resumed} already written (resumed)" if self.resumed else ""
        return f"{self.lines} lines: {done}{skipped}"


def error_row(line: BatchLine | int, input: str | None, message: str) -> dict:
    n = line.line if isinstance(line, BatchLine) else line
    return {"line": n, "input": input, "error": message}


def answer_batch(
    lines: Sequence[BatchLine],
    answer: Callable[[str], dict],
    sink: TextIO,
    start: int = 0,
    progress: bool = True,
    earlier_errors: Sequence[int] = (),
) -> BatchSummary:
    """Answer `lines[start:]` in order, writing one JSON line each to `sink` as it is made.

    `answer` returns the row for one input and raises InputError when that input
    cannot be answered; any other error stops the batch (what is written stays).
    `earlier_errors` are the error lines among the `start` already written."""
    import sys

    from tqdm.auto import tqdm

    summary = BatchSummary(len(lines), resumed=start, error_lines=list(earlier_errors))
    bar = tqdm(
        total=len(lines),
        initial=start,
        desc="run",
        unit="line",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        for item in lines[start:]:
            row = _answer_one(item, answer)
            if "error" in row:
                summary.error_lines.append(item.line)
            else:
                summary.answered += 1
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(1)
    finally:
        bar.close()
    return summary


def _answer_one(item: BatchLine, answer: Callable[[str], dict]) -> dict:
    if item.error is not None or item.input is None:
        return error_row(item, item.input, item.error or "empty input")
    try:
        return {"line": item.line, **answer(item.input)}
    except InputError as e:
        return error_row(item, item.input, e.message)


def resume_point(out: Path, lines: Sequence[BatchLine]) -> tuple[int, list[int]]:
    """How many lines `out` already holds, and which of them are errors; drops a partly
    written last line. Raises when `out` was not written for these lines."""
    if not out.exists():
        return 0, []
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with out.open("r+b") as f:  # the line in flight when the last run stopped
            f.truncate(len(complete))
    rows = complete.decode("utf-8", errors="replace").splitlines()
    if len(rows) > len(lines):
        raise _not_this_batch(out, f"it has {len(rows)} lines, the input only {len(lines)}")
    written = [_check_written(out, i + 1, raw, lines[i]) for i, raw in enumerate(rows)]
    return len(rows), [row["line"] for row in written if "error" in row]


def _check_written(out: Path, i: int, raw: str, expected: BatchLine) -> dict:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError:
        raise _not_this_batch(out, f"its line {i} is not JSON") from None
    if not isinstance(row, dict) or row.get("line") != expected.line:
        raise _not_this_batch(out, f"its line {i} does not answer input line {expected.line}")
    if row.get("input") != expected.input:
        raise _not_this_batch(
            out, f"its line {i} answers a different input than line {expected.line}"
        )
    return row


def _not_this_batch(out: Path, why: str) -> KolmError:
    return KolmError(
        f"{out} is not a partial answer file for this input: {why}",
        hint="resume with the same --input, or pick a new --out",
    )
