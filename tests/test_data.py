from collections import Counter

import pytest

from kolm.data import Example, is_label_task, load_examples, load_inputs, split_heldout
from kolm.errors import SpecError

from .conftest import write_jsonl


def test_reads_jsonl_and_csv(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"input": " hi ", "output": "x"}])
    (tmp_path / "a.csv").write_text('input,output\n"hello, there",y\n')
    assert load_examples(tmp_path / "a.jsonl") == [Example("hi", "x")]
    assert load_examples(tmp_path / "a.csv") == [Example("hello, there", "y")]


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"input": "a", "output": "x"}\n'
        "not json\n"
        '{"input": "a", "output": "y"}\n'
        '{"input": "", "output": "x"}\n'
        '{"input": "b"}\n'
        '{"input": 3, "output": "x"}\n'
        "[1, 2]\n"
    )
    with pytest.raises(SpecError) as err:
        load_examples(p)
    problems = err.value.problems
    assert len(problems) == 6
    assert problems[0].startswith("line 2: not valid JSON")
    assert "line 3: duplicate input" in problems[1]
    assert "line 4: empty input" in problems[2]
    assert "line 5: missing field 'output'" in problems[3]
    assert "line 6:" in problems[4] and "must be strings" in problems[4]
    assert "line 7: expected a JSON object" in problems[5]


def test_empty_and_unreadable_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SpecError, match="no examples"):
        load_examples(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_examples(tmp_path / "bin.jsonl")
    with pytest.raises(SpecError, match="not found"):
        load_examples(tmp_path / "absent.jsonl")
    (tmp_path / "noheader.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SpecError, match="header"):
        load_examples(tmp_path / "noheader.csv")


def test_unlabeled_inputs_plain_and_jsonl_are_deduplicated(tmp_path):
    (tmp_path / "u.txt").write_text("one\n\ntwo\none\n")
    write_jsonl(tmp_path / "u.jsonl", [{"input": "x"}, {"input": "y"}])
    assert load_inputs(tmp_path / "u.txt") == ["one", "two"]
    assert load_inputs(tmp_path / "u.jsonl") == ["x", "y"]


def test_split_is_deterministic_stratified_and_disjoint():
    examples = [Example(f"text {i}", f"label{i % 4}") for i in range(40)]
    train, held = split_heldout(examples, 0.25, seed=3)
    again = split_heldout(examples, 0.25, seed=3)
    assert (train, held) == again
    assert not {e.input for e in train} & {e.input for e in held}
    assert len(train) + len(held) == 40
    assert Counter(e.output for e in held) == {f"label{i}": 2 for i in range(4)}
    other = split_heldout(examples, 0.25, seed=4)[1]
    assert {e.input for e in other} != {e.input for e in held}


def test_every_label_keeps_a_training_example():
    examples = [Example("only one", "rare")] + [Example(f"t{i}", f"l{i % 2}") for i in range(20)]
    train, _ = split_heldout(examples, 0.5, seed=0)
    assert "rare" in {e.output for e in train}


def test_label_task_detection():
    assert is_label_task(["a", "b", "a", "b", "a", "b"])
    assert not is_label_task([f"free text {i}" for i in range(10)])


def test_a_csv_row_with_extra_cells_is_refused_with_its_row_number(tmp_path):
    p = tmp_path / "ex.csv"
    p.write_text("input,output\nhello,a\nhello there, friend,b\nbye,c\n")
    with pytest.raises(SpecError) as err:
        load_examples(p)
    assert err.value.problems == [
        "row 3: 3 cells but the header has 2 columns (quote cells that contain commas)"
    ]


def test_a_batch_keeps_every_line_in_order_and_names_the_bad_ones():
    from kolm.data import BatchLine, read_batch

    text = "apples\n\napples\n  pears  \n"
    assert read_batch(text, "text") == [
        BatchLine(1, "apples"),
        BatchLine(2, None, "empty input"),
        BatchLine(3, "apples"),
        BatchLine(4, "pears"),
    ]
    jsonl = '{"input": "a"}\n{oops\n{"text": "b"}\n{"input": "a"}\n'
    got = read_batch(jsonl, "jsonl")
    assert [(b.line, b.input) for b in got] == [(1, "a"), (2, None), (3, None), (4, "a")]
    assert got[1].error.startswith("not valid JSON") and "'input'" in got[2].error
    csv_text = 'input\nfirst\n"x",extra\nfirst\n'
    rows = read_batch(csv_text, "csv")
    assert [(b.line, b.input) for b in rows] == [(2, "first"), (3, None), (4, "first")]
    assert "header has 1 columns" in rows[1].error
