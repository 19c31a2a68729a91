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


def test_stream_pieces_add_up_to_the_run_answer_and_end_with_its_receipt(compiled, env, tmp_path):
    receipts = tmp_path / "receipts.sqlite"
    with kolm.load(compiled["out"], threads=1, receipts=receipts, drift=False) as model:
        for text in ["Tell me about the violin", "heavy rain", "a red car"]:
            stream = model.stream(text)
            pieces = list(stream)
            assert pieces and all(pieces)
            plain = model.run(text)
            assert "".join(pieces) == stream.result.output == plain.output
            assert stream.result.receipt != plain.receipt
            streamed = model.receipts.get(stream.result.receipt)
            assert streamed.output == plain.output and streamed.incomplete is None
        assert model.receipts.count() == 6 and model.receipts.verify().ok


def test_stream_result_alone_waits_for_the_answer(compiled, env):
    with kolm.load(compiled["out"], threads=1, drift=False, receipts=False) as model:
        stream = model.stream("heavy rain")
        assert stream.result.output == "charlie" and stream.result.path == "student"
        assert list(stream) == []  # read through result: nothing left to iterate


def test_a_stream_left_unread_is_closed_by_the_next_call_and_marked_incomplete(
    compiled, env, tmp_path
):
    receipts = tmp_path / "receipts.sqlite"
    with kolm.load(compiled["out"], threads=1, receipts=receipts, drift=False) as model:
        left = model.stream("a red car")
        assert model.run("heavy rain").output == "charlie"  # closes `left` first
        assert left.result.output == "bravo"
        assert model.receipts.get(left.result.receipt).incomplete is True
        assert model.receipts.count() == 2 and model.receipts.verify().ok


def test_stream_of_an_unanswerable_input_raises_its_input_error(compiled, env):
    with kolm.load(compiled["out"], threads=1, drift=False, receipts=False) as model:
        stream = model.stream("   ")
        with pytest.raises(InputError, match="empty input"):
            next(stream)
        with pytest.raises(InputError, match="empty input"):
            _ = stream.result
        assert "".join(model.stream("a red car")) == "bravo"


def test_compile_needs_a_spec_file_or_examples(tmp_path):
    from kolm.errors import SpecError

    with pytest.raises(SpecError, match="needs examples"):
        kolm.compile("summarize support tickets", out=tmp_path / "x.kolm")
