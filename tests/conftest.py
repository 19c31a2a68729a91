"""Shared fixtures. Every test gets its own KOLM_HOME (keys, caches) under tmp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kolm.compiler import compile_task
from kolm.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def kolm_home(tmp_path, monkeypatch):
    home = tmp_path / "kolm-home"
    monkeypatch.setenv("KOLM_HOME", str(home))
    monkeypatch.delenv("KOLM_CACHE", raising=False)
    return home


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the real `kolm` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from kolm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=900,
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """One real compile of the toy task on the bundled SmolLM2, shared by the session."""
    import time

    from .toy import write_toy_task

    root = tmp_path_factory.mktemp("pipeline")
    home = root / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("KOLM_HOME", str(home))
    spec = load_spec(write_toy_task(root / "task"))
    out = root / "toy.kolm"
    t0 = time.perf_counter()
    result = compile_task(spec, out, progress=False, log=lambda m: None)
    first = time.perf_counter() - t0
    yield {"root": root, "home": home, "spec": spec, "out": out, "result": result, "seconds": first}
    mp.undo()


@pytest.fixture
def env(compiled, monkeypatch):
    monkeypatch.setenv("KOLM_HOME", str(compiled["home"]))
    return {"KOLM_HOME": str(compiled["home"])}
