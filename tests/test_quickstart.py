"""The one-command form: an examples folder read by content, `kolm init`, the same artifact."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest

from kolm.errors import SpecError
from kolm.quickstart import scan
from kolm.spec import load_spec

from .conftest import run_cli, write_jsonl
from .toy import INSTRUCTION, toy_examples


def write_mixed_folder(folder: Path) -> list[dict]:
    """The toy examples spread over JSONL, CSV, TSV and text files with misleading names."""
    rows = toy_examples()
    folder.mkdir(parents=True)
    quarter = len(rows) // 4
    parts = [rows[:quarter], rows[quarter : 2 * quarter], rows[2 * quarter : 3 * quarter]]
    parts.append(rows[3 * quarter :])
    write_jsonl(
        folder / "a-examples.data", [{"text": r["input"], "label": r["output"]} for r in parts[0]]
    )
    with (folder / "b.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["input", "output"])
        w.writerows([r["input"], r["output"]] for r in parts[1])
    (folder / "c.txt").write_text("".join(f"{r['input']}\t{r['output']}\n" for r in parts[2]))
    (folder / "d.txt").write_text("".join(f"{r['input']} => {r['output']}\n" for r in parts[3]))
    (folder / "unlabeled").mkdir()
    (folder / "unlabeled" / "more.txt").write_text("a kazoo\nsleet\n")
    return rows


def test_scan_reads_each_file_by_content_and_reports_it(tmp_path):
    rows = write_mixed_folder(tmp_path / "ex")
    found = scan(tmp_path / "ex")
    assert found.examples == rows  # every format, in file order, nothing lost
    assert found.unlabeled == ["a kazoo", "sleet"]
    report = "\n".join(found.lines())
    assert "a-examples.data: jsonl" in report and "field 'text' → input, 'label' → output" in report
    assert "c.txt: " in report and "TSV without header" in report
    assert "INPUT => OUTPUT" in report and "one unlabeled input per line; 2 inputs" in report
    assert f"{len(rows)} labeled examples, 2 unlabeled inputs" in report


def test_a_folder_without_examples_is_a_spec_error_naming_each_file(tmp_path):
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "notes.txt").write_text("just some inputs\nwith no answers\n")
    with pytest.raises(SpecError) as e:
        scan(tmp_path / "ex")
    assert "no labeled examples" in e.value.message and "notes.txt" in e.value.message
    r = run_cli("compile", "do things", "--examples", str(tmp_path / "ex"))
    assert r.returncode == 2 and "no labeled examples" in r.stderr and "Traceback" not in r.stderr


def test_init_writes_a_commented_spec_that_loads(tmp_path):
    write_mixed_folder(tmp_path / "ex")
    out = tmp_path / "spec"
    r = run_cli("init", str(tmp_path / "ex"), "--task", INSTRUCTION, "--spec-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert "a-examples.data: jsonl" in r.stdout and "kolm compile" in r.stdout
    text = (out / "kolm.yaml").read_text()
    assert text.startswith("# kolm.yaml") and "unlabeled inputs found; they need a teacher" in text
    spec = load_spec(out / "kolm.yaml")
    assert spec.name == "ex" and spec.description == INSTRUCTION and spec.unlabeled is None
    again = run_cli("init", str(tmp_path / "ex"), "--spec-dir", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


def test_a_description_without_examples_is_a_usage_error(tmp_path):
    r = run_cli("compile", "summarize tickets", cwd=tmp_path)
    assert r.returncode == 2 and "--examples DIR" in r.stderr


def _manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("manifest.json"))


def _diff(a: object, b: object, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{where}.{k}")]
    return [] if a == b else [where]


@pytest.mark.slow
def test_the_one_liner_and_the_spec_it_writes_compile_the_same_artifact(tmp_path, kolm_home):
    write_mixed_folder(tmp_path / "ex")
    one = run_cli(
        "compile", INSTRUCTION, "--examples", "ex", "--steps", "2", "--force", "-q",
        "--out", "one.kolm", cwd=tmp_path,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    read_at = one.stderr.index("kolm: read")
    assert read_at < one.stderr.index("labeled examples") and "kolm: " not in one.stderr[:read_at]
    init = run_cli("init", "ex", "--task", INSTRUCTION, "--spec-dir", "spec", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    two = run_cli(
        "compile", "spec/kolm.yaml", "--steps", "2", "--force", "-q", "--out", "two.kolm",
        cwd=tmp_path,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    a, b = _manifest(tmp_path / "one.kolm"), _manifest(tmp_path / "two.kolm")
    assert {n: p["sha256"] for n, p in a["parts"].items()} == {
        n: p["sha256"] for n, p in b["parts"].items()
    }
    differs = _diff(a, b)
    print("manifest fields that differ:", differs)
    assert differs and all(_measured(d) for d in differs), differs


MEASURED = ("created_at", "latency", "seconds", "per_second", "timings")
"""Manifest fields that are clock readings; they differ between two compiles of the same
inputs. So do K and its latency component (computed from the measured latency) and, below
the gate, the gate's reasons (their text quotes K)."""
FROM_LATENCY = (".kscore.K", ".kscore.components.L", ".gate.reasons")


def _measured(path: str) -> bool:
    return any(m in path for m in MEASURED) or path in FROM_LATENCY
