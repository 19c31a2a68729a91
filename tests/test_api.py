"""The Python API: kolm.load / kolm.compile mirror the CLI, and `import kolm` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import kolm
from kolm.errors import InputError


def test_import_kolm_loads_neither_torch_nor_llama_cpp():
    code = (
        "import sys, kolm; kolm.load; kolm.compile; "
        "heavy = [m for m in ('torch', 'llama_cpp', 'transformers', 'fastapi') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_runs_batches_verifies_and_writes_receipts(compiled, env, tmp_path):
    receipts = tmp_path / "receipts.sqlite"
    with kolm.load(compiled["out"], threads=1, receipts=receipts, drift=False) as model:
        assert model.manifest["task"]["name"] == "toy"
        one = model.run("Tell me about the violin")
        assert one.output == "delta" and one.path == "student"
        batch = model.run_batch(["heavy rain", "   ", "a red car"])
        assert [getattr(r, "output", None) for r in batch] == ["charlie", None, "bravo"]
        assert isinstance(batch[1], InputError)
        assert model.receipts.count() == 3 and model.receipts.verify().ok
        assert model.receipts.get(one.receipt).output == "delta"
        checked = model.verify()
        assert checked["id"] == model.id
        assert set(checked["parts"]) == set(model.manifest["parts"])


def test_load_without_receipts_writes_none(compiled, env):
    with kolm.load(compiled["out"], threads=1, receipts=False, drift=False) as model:
        assert model.receipts is None
        assert model.run("a piano").receipt is None


def test_compile_needs_a_spec_file_or_examples(tmp_path):
    from kolm.errors import SpecError

    with pytest.raises(SpecError, match="needs examples"):
        kolm.compile("summarize support tickets", out=tmp_path / "x.kolm")
