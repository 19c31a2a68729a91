"""Batches: every line answered in order, errors named by line, resumable output files.

The answering function here is a plain callable; tests/test_cli.py runs the real
`kolm run --input` on a compiled artifact."""

from __future__ import annotations

import io
import json

import pytest

from kolm.batch import answer_batch, resume_point
from kolm.data import read_batch
from kolm.errors import InputError, KolmError


def _answer(text: str) -> dict:
    if len(text) > 10:
        raise InputError("input too long: 99 prompt tokens")
    return {"input": text, "output": text.upper()}


def test_every_line_gets_exactly_one_row_in_order():
    lines = read_batch("a\nb\na\n" + "x" * 20 + "\n\nc\n", "text")
    out = io.StringIO()
    summary = answer_batch(lines, _answer, out, progress=False)
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r.get("output") for r in rows] == ["A", "B", "A", None, None, "C"]
    assert rows[3]["error"].startswith("input too long") and rows[3]["input"] == "x" * 20
    assert rows[4] == {"line": 5, "input": None, "error": "empty input"}
    assert summary.answered == 4 and summary.error_lines == [4, 5]
    assert summary.line() == "6 lines: 4 answered, 2 errors"


def test_other_errors_stop_the_batch_keeping_what_was_written():
    def broken(text: str) -> dict:
        if text == "b":
            raise RuntimeError("disk full")
        return {"output": text}

    out = io.StringIO()
    with pytest.raises(RuntimeError):
        answer_batch(read_batch("a\nb\nc\n", "text"), broken, out, progress=False)
    assert out.getvalue() == '{"line": 1, "output": "a"}\n'


def test_resume_skips_written_lines_and_drops_a_half_written_one(tmp_path):
    lines = read_batch("a\nb\nc\nd\n", "text")
    out = tmp_path / "out.jsonl"
    with out.open("w") as f:
        answer_batch(lines[:2], _answer, f, progress=False)
        f.write('{"line": 3, "inp')  # killed while writing line 3
    assert resume_point(out, lines) == (2, [])
    assert out.read_text().count("\n") == 2 and out.read_text().endswith("}\n")
    seen = []

    def counting(text: str) -> dict:
        seen.append(text)
        return _answer(text)

    with out.open("a") as f:
        s = answer_batch(lines, counting, f, start=2, progress=False)
    assert seen == ["c", "d"] and s.resumed == 2 and s.answered == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert resume_point(out, lines) == (4, [])


def test_resume_refuses_an_output_file_of_another_input(tmp_path):
    out = tmp_path / "out.jsonl"
    with out.open("w") as f:
        answer_batch(read_batch("a\nb\n", "text"), _answer, f, progress=False)
    with pytest.raises(KolmError, match="different input than line 2"):
        resume_point(out, read_batch("a\nz\nc\n", "text"))
    with pytest.raises(KolmError, match="the input only 1"):
        resume_point(out, read_batch("a\n", "text"))
    assert resume_point(tmp_path / "new.jsonl", read_batch("a\n", "text")) == (0, [])


def test_errors_written_before_a_resume_still_count(tmp_path):
    lines = read_batch("a\n\nc\n", "text")
    out = tmp_path / "out.jsonl"
    with out.open("w") as f:
        answer_batch(lines[:2], _answer, f, progress=False)
    start, errors = resume_point(out, lines)
    assert (start, errors) == (2, [2])
    with out.open("a") as f:
        s = answer_batch(lines, _answer, f, start=start, progress=False, earlier_errors=errors)
    assert s.error_lines == [2]
    assert s.line() == "3 lines: 1 answered, 1 errors, 2 already written (resumed)"


# -- the real `kolm run --input` on the compiled toy artifact -------------------------


def _kolm_run(compiled, env, tmp_path, *args, stdin: str | None = None):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from kolm.cli import main; main()", "run", str(compiled["out"])]
    cmd += [*args, "--threads", "1", "--receipts", str(tmp_path / "r.sqlite"), "-q"]
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env={**os.environ, **env}, timeout=600
    )


def test_run_input_answers_every_line_and_exits_nonzero_only_at_the_end(compiled, env, tmp_path):
    from kolm.receipts import ReceiptStore

    long_line = "cello " * 1500
    src = tmp_path / "in.txt"
    src.write_text(f"a ripe mango\nheavy rain\na ripe mango\n{long_line}\n\nheavy rain\n")
    r = _kolm_run(compiled, env, tmp_path, "--input", str(src))
    assert r.returncode == 11, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["line"] for x in rows] == [1, 2, 3, 4, 5, 6]
    assert [x.get("output") for x in rows] == ["alpha", "charlie", "alpha", None, None, "charlie"]
    assert rows[3]["error"].startswith("input too long") and rows[4]["error"] == "empty input"
    assert "6 lines: 4 answered, 2 errors" in r.stderr and "(lines 4, 5)" in r.stderr
    assert "Traceback" not in r.stderr
    assert ReceiptStore(tmp_path / "r.sqlite").count() == 4
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"input": "snow"}\n{"input": \n{"input": "snow"}\n')
    piped = _kolm_run(
        compiled, env, tmp_path, "--input", "-", "--format", "jsonl", stdin=jsonl.read_text()
    )
    rows = [json.loads(x) for x in piped.stdout.splitlines()]
    assert piped.returncode == 11 and [x.get("output") for x in rows] == [
        "charlie",
        None,
        "charlie",
    ]
    assert rows[1]["error"].startswith("not valid JSON")
    text = _kolm_run(compiled, env, tmp_path, "--input", "-", stdin="snow\nthe bus\n")
    assert text.returncode == 0 and "2 lines: 2 answered, 0 errors" in text.stderr
    empty = _kolm_run(compiled, env, tmp_path, "  ")
    assert empty.returncode == 11 and "empty input" in empty.stderr  # as serve answers 400


def test_a_killed_batch_resumes_into_the_same_file_without_answering_twice(compiled, env, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from kolm.receipts import ReceiptStore

    words = ["apples", "the bus", "snow", "a piano", "pears", "a taxi", "fog", "a drum"]
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{w} {i}\n" for i in range(5) for w in words))  # 40 lines
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-c",
        "from kolm.cli import main; main()",
        "run",
        str(compiled["out"]),
        "--input",
        str(src),
        "--out",
        str(out),
        "--threads",
        "1",
        "--receipts",
        str(tmp_path / "r.sqlite"),
        "-q",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = out.read_text().count("\n")
    assert 5 <= written < 40
    again = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently overwritten
    resumed = subprocess.run(
        [*cmd, "--resume"], env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "already written (resumed)" in resumed.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["line"] for x in rows] == list(range(1, 41))
    assert all(
        x["input"] == line for x, line in zip(rows, src.read_text().splitlines(), strict=True)
    )
    receipts = ReceiptStore(tmp_path / "r.sqlite").count()
    assert 40 <= receipts <= 41  # at most the line in flight at the kill was answered twice
