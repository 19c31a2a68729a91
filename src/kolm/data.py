"""Examples on disk: read JSONL/CSV input → output pairs, check them, split them.

This module knows files of examples and the held-out split. It does not know
prompts, models or teachers.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm.errors import SpecError

MAX_REPORTED = 20


@dataclass(frozen=True)
class Example:
    """One input and its expected output."""

    input: str
    output: str

    def to_dict(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output}


def load_examples(path: Path) -> list[Example]:
    """Read labeled examples; raise SpecError listing every bad row."""
    rows, problems = _read_rows(path)
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for where, row in rows:
        inp, out = row.get("input"), row.get("output")
        bad = _check_pair(inp, out)
        if bad:
            problems.append(f"{where}: {bad}")
            continue
        assert isinstance(inp, str) and isinstance(out, str)
        key = inp.strip()
        if key in seen:
            problems.append(f"{where}: duplicate input (same as example {seen[key]})")
            continue
        seen[key] = len(examples) + 1
        examples.append(Example(key, out.strip()))
    if not examples and not problems:
        problems.append("the file holds no examples")
    _raise_if(problems, path)
    return examples


def load_inputs(path: Path) -> list[str]:
    """Read unlabeled inputs: plain text (one per line) or JSONL with an `input` field."""
    if path.suffix.lower() in (".jsonl", ".json", ".csv"):
        rows, problems = _read_rows(path)
        inputs = []
        for where, row in rows:
            value = row.get("input")
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{where}: needs a non-empty string field 'input'")
            else:
                inputs.append(value.strip())
        _raise_if(problems, path)
    else:
        inputs = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    return list(dict.fromkeys(inputs))


@dataclass(frozen=True)
class BatchLine:
    """One line of a batch to answer, or why it cannot be answered."""

    line: int
    """Line number in the file (for CSV, the record number; the header is 1)."""
    input: str | None
    error: str | None = None


BATCH_FORMATS = ("text", "jsonl", "csv")


def batch_format(path: Path | None) -> str:
    """The batch format a file's name implies: JSONL, CSV, else one input per line."""
    suffix = path.suffix.lower() if path is not None else ""
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(suffix, "text")


def read_batch(text: str, fmt: str) -> list[BatchLine]:
    """Every line of a batch, in order, duplicates kept; a bad line carries its error.

    Blank lines are lines too (answered with an error), so the answers line up
    with the input one to one."""
    if fmt == "csv":
        return _csv_batch(text)
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        value: object = raw
        if fmt == "jsonl" and raw.strip():
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as e:
                lines.append(BatchLine(n, None, f"not valid JSON ({e.msg})"))
                continue
            value = row.get("input") if isinstance(row, dict) else None
            if not isinstance(value, str):
                lines.append(BatchLine(n, None, "needs a JSON object with a string field 'input'"))
                continue
        lines.append(_batch_line(n, value))
    return lines


def _batch_line(n: int, value: object) -> BatchLine:
    if not isinstance(value, str) or not value.strip():
        return BatchLine(n, None, "empty input")
    return BatchLine(n, value.strip())


def _csv_batch(text: str) -> list[BatchLine]:
    rows, problems = _csv_rows(text)
    if problems and not rows:
        return [BatchLine(1, None, problems[0])]
    lines = [BatchLine(_line_number(p), None, p.split(": ", 1)[1]) for p in problems]
    lines += [_batch_line(_line_number(where + ":"), row.get("input")) for where, row in rows]
    return sorted(lines, key=lambda b: b.line)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    rows, problems = _read_rows(path)
    _raise_if(problems, path)
    return [row for _, row in rows]


def is_label_task(outputs: list[str]) -> bool:
    """Outputs form a closed label set when few distinct short values repeat."""
    distinct = set(outputs)
    return (
        len(outputs) >= 4
        and len(distinct) <= max(2, len(outputs) // 3)
        and all(len(o) <= 64 and "\n" not in o for o in distinct)
    )


def split_heldout(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic split; stratified by output when outputs are labels.

    Every label keeps at least one training example.
    """
    rng = random.Random(seed)
    if is_label_task([e.output for e in examples]):
        groups: dict[str, list[Example]] = defaultdict(list)
        for e in examples:
            groups[e.output].append(e)
        train, held = [], []
        for label in sorted(groups):
            group = groups[label][:]
            rng.shuffle(group)
            n_held = min(len(group) - 1, round(len(group) * fraction))
            held += group[:n_held]
            train += group[n_held:]
    else:
        shuffled = examples[:]
        rng.shuffle(shuffled)
        n_held = max(1, round(len(shuffled) * fraction)) if len(shuffled) > 1 else 0
        held, train = shuffled[:n_held], shuffled[n_held:]
    rng.shuffle(train)
    return train, held


def _check_pair(inp: object, out: object) -> str | None:
    missing = [k for k, v in (("input", inp), ("output", out)) if v is None]
    if missing:
        return f"missing field {' and '.join(repr(m) for m in missing)}"
    if not isinstance(inp, str) or not isinstance(out, str):
        return "'input' and 'output' must be strings (quote numbers and JSON as text)"
    if not inp.strip():
        return "empty input"
    if not out.strip():
        return "empty output"
    return None


def _line_number(problem: str) -> int:
    m = re.match(r"(?:line|row) (\d+):", problem)
    return int(m.group(1)) if m else 0


def read_text(path: Path | None) -> str:
    """A UTF-8 text file, or standard input when `path` is None."""
    if path is not None:
        return _read_text(path)
    import sys

    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            [f"not UTF-8 text ({e.reason} at byte {e.start})"], source="stdin"
        ) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"file not found: {path}"], source=str(path)) from None
    except UnicodeDecodeError as e:
        raise SpecError(
            [f"not UTF-8 text ({e.reason} at byte {e.start})"], source=str(path)
        ) from None
    except OSError as e:
        raise SpecError([f"cannot read: {e.strerror}"], source=str(path)) from None


def json_lines(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, None) for each non-blank line of JSON lines text, or
    (line number, None, what is wrong) for a line that is not JSON."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line), None
        except json.JSONDecodeError as e:
            yield n, None, f"line {n}: not valid JSON ({e.msg})"


def _read_rows(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    text = _read_text(path)
    if path.suffix.lower() == ".csv":
        return _csv_rows(text)
    rows, problems = [], []
    for n, row, error in json_lines(text):
        if error:
            problems.append(error)
            continue
        if not isinstance(row, dict):
            problems.append(f"line {n}: expected a JSON object")
            continue
        rows.append((f"line {n}", row))
    return rows, problems


def _csv_rows(text: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """Rows numbered from 2 (the header is row 1); a row with more cells than the header is
    reported, not read (its extra cells would be silently dropped)."""
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "input" not in reader.fieldnames:
        return [], ["CSV needs a header row with columns 'input' and 'output'"]
    rows, problems = [], []
    width = len(reader.fieldnames)
    for n, r in enumerate(reader, 2):
        extra = r.pop(None, None)  # type: ignore[call-overload]
        if extra:
            problems.append(
                f"row {n}: {width + len(extra)} cells but the header has {width} columns "
                "(quote cells that contain commas)"
            )
        else:
            rows.append((f"row {n}", r))
    return rows, problems


def _raise_if(problems: list[str], path: Path) -> None:
    if problems:
        problems = sorted(problems, key=_line_number)
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more")
        raise SpecError(shown, source=str(path))
