"""Quickstart: turn a task description and a folder of examples into a spec.

`kolm compile "TASK" --examples DIR` and `kolm init DIR` both come here. The folder
may hold JSONL, CSV, TSV and plain-text files of examples, and optionally a
subfolder `unlabeled/` (or `inputs/`) of inputs without answers. Each file's kind
is decided by its content (Magika, through `recall.detect`), never by its name,
and every file is reported — what it was taken for and how it was read — before
any work starts. The examples are gathered into one `examples.jsonl` beside a
commented `kolm.yaml`, so the one-liner and the spec it writes compile the same.
Knows file formats and the spec's keys; knows nothing about compiling.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from kolm.data import json_lines
from kolm.errors import SpecError
from kolm.spec import DEFAULT_BASE

INPUT_NAMES = ("input", "text", "prompt", "question", "query", "message")
OUTPUT_NAMES = ("output", "label", "completion", "answer", "response", "target")
UNLABELED_DIRS = ("unlabeled", "inputs")
ARROW = " => "
"""Separates input from output on a plain-text example line."""


@dataclass(frozen=True)
class FileReport:
    """One file of the folder: what it is and how it was read."""

    path: Path
    detected: str
    """Magika's label and score, e.g. `csv (0.98)`."""
    read_as: str
    """How the file was read, or why it was skipped."""
    examples: int = 0
    inputs: int = 0


@dataclass
class Found:
    """Everything read from an examples folder."""

    folder: Path
    examples: list[dict] = field(default_factory=list)
    """`{"input", "output"}` rows in file order (files sorted by name)."""
    unlabeled: list[str] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report shown before any work starts."""
        out = [f"kolm: read {self.folder}:"]
        for f in self.files:
            counts = f"{f.examples} examples" if f.examples else ""
            counts += f"{', ' if counts else ''}{f.inputs} inputs" if f.inputs else ""
            rel = f.path.relative_to(self.folder) if f.path.is_relative_to(self.folder) else f.path
            out.append(f"  {rel}: {f.detected} → {f.read_as}{f'; {counts}' if counts else ''}")
        out.append(
            f"kolm: {len(self.examples)} labeled examples, {len(self.unlabeled)} unlabeled inputs"
        )
        return out


def scan(folder: Path) -> Found:
    """Read every example file in `folder` (and its unlabeled subfolder); SpecError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecError([f"--examples {folder}: not a folder"], source=str(folder))
    found = Found(folder)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not _hidden(p)):
        _read_file(path, found, labeled=True)
    for sub in UNLABELED_DIRS:
        for path in sorted((folder / sub).glob("*")) if (folder / sub).is_dir() else []:
            if path.is_file() and not _hidden(path):
                _read_file(path, found, labeled=False)
    _dedupe(found)
    if not found.examples:
        raise SpecError(
            [
                f"no labeled examples found in {folder}: give JSONL or CSV/TSV with input and "
                f"output columns, or text lines 'INPUT{ARROW}OUTPUT'",
                *[f"{f.path.name}: {f.read_as}" for f in found.files],
            ],
            source=str(folder),
        )
    return found


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _read_file(path: Path, found: Found, labeled: bool) -> None:
    kind, detected = _kind(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        found.files.append(FileReport(path, detected, "skipped: not UTF-8 text"))
        return
    if kind == "other":
        found.files.append(FileReport(path, detected, "skipped: not an examples format"))
        return
    try:
        rows, how = _rows(kind, text, labeled)
    except SpecError as e:  # name the file the problem is in
        raise SpecError(e.problems, source=f"{path} (read as {kind})") from None
    _take(path, detected, how, rows, found, labeled)


def _rows(kind: str, text: str, labeled: bool) -> tuple[list[tuple[str, str | None]], str]:
    if kind == "jsonl":
        return _json_rows(text)
    if kind in ("csv", "tsv"):
        return _table_rows(text, "\t" if kind == "tsv" else ",")
    return _text_rows(text, labeled)


def _take(path, detected, how, rows, found: Found, labeled: bool) -> None:
    """Split rows into examples (input and output) and unlabeled inputs (input only)."""
    n_ex = n_in = 0
    for inp, out in rows:
        if not inp.strip():
            continue
        if labeled and out is not None and out.strip():
            found.examples.append({"input": inp.strip(), "output": out.strip()})
            n_ex += 1
        else:
            found.unlabeled.append(inp.strip())
            n_in += 1
    found.files.append(FileReport(path, detected, how, n_ex, n_in))


def _kind(path: Path) -> tuple[str, str]:
    """(jsonl|csv|tsv|text|other, what Magika said), by content."""
    from kolm.recall.detect import detect

    d = detect(path)
    detected = f"{d.label} ({d.score:.2f})"
    if d.label in ("jsonl", "json"):
        return "jsonl", detected
    if d.label in ("csv", "tsv"):
        return d.label, detected
    if d.kind in ("text", "markdown", "code") or d.group == "text":
        return _sniff(path), detected  # Magika calls short tables plain text: look closer
    return "other", detected


def _sniff(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()][:20]
    except (UnicodeDecodeError, OSError):
        return "other"
    if lines and all(x.lstrip().startswith("{") for x in lines):
        return "jsonl"
    if lines and all("\t" in x for x in lines):
        return "tsv"
    header = [c.strip().lower() for c in next(csv.reader(lines[:1]), [])]
    if len(header) > 1 and _column(header, INPUT_NAMES) is not None:
        return "csv"
    return "text"


def _json_rows(text: str) -> tuple[list[tuple[str, str | None]], str]:
    rows, fields = [], set()
    for n, row, error in json_lines(text):
        if error:
            raise SpecError([error])
        if isinstance(row, str):
            rows.append((row, None))
            fields.add("a string → input")
            continue
        keys = list(row) if isinstance(row, dict) else []
        lower = [str(k).lower() for k in keys]
        i, o = _column(lower, INPUT_NAMES), _column(lower, OUTPUT_NAMES)
        if i is None:
            raise SpecError([f"line {n}: no input field (one of {', '.join(INPUT_NAMES)})"])
        rows.append((str(row[keys[i]]), None if o is None else _text(row[keys[o]])))
        out = f", {keys[o]!r} → output" if o is not None else " (no output)"
        fields.add(f"field {keys[i]!r} → input{out}")
    return rows, "JSON lines: " + "; ".join(sorted(fields))


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _table_rows(text: str, delimiter: str) -> tuple[list[tuple[str, str | None]], str]:
    table = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if any(r)]
    name = "TSV" if delimiter == "\t" else "CSV"
    header = [c.strip().lower() for c in table[0]] if table else []
    i, o = _column(header, INPUT_NAMES), _column(header, OUTPUT_NAMES)
    if i is not None:
        how = f"{name} with header: column {table[0][i]!r} → input"
        how += f", {table[0][o]!r} → output" if o is not None else " (no output column)"
        body = table[1:]
    elif header and len(header) == 2:
        i, o, body, how = 0, 1, table, f"{name} without header: first column input, second output"
    else:
        raise SpecError(
            [f"{name} needs a header naming the input column ({', '.join(INPUT_NAMES)})"]
        )
    rows = [(r[i], r[o] if o is not None and o < len(r) else None) for r in body if i < len(r)]
    return rows, how


def _text_rows(text: str, labeled: bool) -> tuple[list[tuple[str, str | None]], str]:
    lines = [x for x in text.splitlines() if x.strip()]
    if labeled and lines and all(ARROW in x for x in lines):
        return [tuple(x.split(ARROW, 1)) for x in lines], f"text lines 'INPUT{ARROW}OUTPUT'"
    if labeled:
        return (
            [],
            f"skipped: plain text without 'INPUT{ARROW}OUTPUT' lines (inputs go in unlabeled/)",
        )
    return [(x, None) for x in lines], "text: one unlabeled input per line"


def _column(names: list[str], wanted: tuple[str, ...]) -> int | None:
    for w in wanted:
        if w in names:
            return names.index(w)
    return None


def _dedupe(found: Found) -> None:
    """First example of an input wins; inputs that have an example are not unlabeled."""
    seen: dict[str, dict] = {}
    for row in found.examples:
        seen.setdefault(row["input"], row)
    found.examples = list(seen.values())
    found.unlabeled = [x for x in dict.fromkeys(found.unlabeled) if x not in seen]


def task_name(text: str) -> str:
    """A spec name from a folder name: letters, digits, '-', '_' and '.' only."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.").lower()
    return name[:40] or "task"


def write_spec(
    found: Found,
    description: str,
    out_dir: Path,
    *,
    name: str | None = None,
    base: str | None = None,
    teacher: str | None = None,
    steps: int | None = None,
) -> Path:
    """Write `examples.jsonl` (and `unlabeled.txt`) and a commented `kolm.yaml` into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    from kolm.data import write_jsonl

    write_jsonl(out_dir / "examples.jsonl", found.examples)
    use_unlabeled = bool(found.unlabeled and teacher)
    if use_unlabeled:
        (out_dir / "unlabeled.txt").write_text("".join(x + "\n" for x in found.unlabeled))
    spec = out_dir / "kolm.yaml"
    spec.write_text(
        _yaml(
            found,
            description,
            name or task_name(found.folder.resolve().name),
            base,
            teacher,
            steps,
            use_unlabeled,
        ),
        encoding="utf-8",
    )
    return spec


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _yaml(found, description, name, base, teacher, steps, use_unlabeled) -> str:
    q = json.dumps  # a JSON string is a valid YAML scalar
    lines = [
        f"# kolm.yaml, written by kolm from {found.folder} — compile it with:",
        "#   kolm compile kolm.yaml",
        "# Every key is described in src/kolm/spec.py; the commented lines show defaults.",
        f"name: {q(name)}",
        "# The instruction the model follows (its system prompt).",
        f"description: {q(description)}",
        f"# {len(found.examples)} labeled examples gathered from "
        f"{_files(sum(1 for f in found.files if f.examples))}.",
        "examples: examples.jsonl",
        "# A registered base name, a local .gguf file or a Hugging Face folder.",
        f"base: {q(base or DEFAULT_BASE)}",
    ]
    if teacher:
        lines += ["# Labels the unlabeled inputs: k samples each, the verified majority wins."]
        lines += [f"teacher: {{model: {q(teacher)}}}"]
    if use_unlabeled:
        lines += [f"unlabeled: unlabeled.txt  # {len(found.unlabeled)} inputs"]
    elif found.unlabeled:
        lines += [f"# {len(found.unlabeled)} unlabeled inputs found; they need a teacher:"]
        lines += ["# teacher: {model: provider:model}", "# unlabeled: unlabeled.txt"]
    lines += ["# heldout_fraction: 0.2   # share kept out of training to score the model"]
    if steps is not None:
        lines += [f"train: {{steps: {steps}}}"]
    else:
        lines += [
            "# train: {epochs: 3, batch_size: 8, lora_rank: 8}"
            "   # learning_rate: kolm's default for the base"
        ]
    lines += ["# gate: {min_k: 0.70}   # below this K-score compile ships nothing"]
    return "\n".join(lines) + "\n"
