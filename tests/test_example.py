"""The shipped example: its spec and data are valid (fast), and it compiles well (slow)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kolm.compiler import prepare
from kolm.spec import load_spec

from .conftest import REPO, run_cli

SPEC = REPO / "examples/support-tickets/kolm.yaml"


def test_shipped_example_is_valid_and_balanced():
    spec = load_spec(SPEC)
    p = prepare(spec)
    counts = Counter(e.output for e in p.train + p.heldout)
    assert sum(counts.values()) >= 300 and len(counts) == 8
    assert min(counts.values()) >= 30
    assert p.output_kind == "label" and p.verifier.labels == tuple(sorted(counts))
    assert all(label in spec.description for label in counts)
    assert SPEC.read_text().startswith(
        "# Compile:  kolm compile examples/support-tickets/kolm.yaml"
    )
    assert (SPEC.parent / "LICENSE.txt").exists()


@pytest.mark.slow
def test_shipped_example_compiles_and_routes_tickets(tmp_path, kolm_home):
    out = tmp_path / "tickets.kolm"
    r = run_cli("compile", str(SPEC), "--out", str(out), "--work-dir", str(tmp_path / "work"), "-q")
    assert r.returncode == 0, r.stderr
    m = json.loads(run_cli("inspect", str(out), "--json").stdout)
    student, base = m["metrics"]["student"]["accuracy"], m["metrics"]["base"]["accuracy"]
    assert student >= 0.65 and student >= base + 0.4, (student, base)
    ans = run_cli("run", str(out), "customer cant log in since the last update")
    assert ans.returncode == 0 and ans.stdout.strip() == "login_access"
