from pathlib import Path

import pytest

from kolm.errors import SpecError
from kolm.spec import TaskSpec, load_spec

from .conftest import write_jsonl


def _spec(tmp_path: Path, text: str) -> Path:
    write_jsonl(tmp_path / "ex.jsonl", [{"input": "a", "output": "x"}])
    p = tmp_path / "kolm.yaml"
    p.write_text(text)
    return p


def test_valid_spec_resolves_paths_relative_to_the_spec(tmp_path):
    p = _spec(tmp_path, "name: t\ndescription: do it\nexamples: ex.jsonl\ntrain: {steps: 5}\n")
    spec = load_spec(p)
    assert isinstance(spec, TaskSpec)
    assert spec.examples == (tmp_path / "ex.jsonl").resolve()
    assert spec.train.steps == 5 and spec.train.batch_size == 8
    assert spec.spec_path == p.resolve()


def test_malformed_yaml_is_a_spec_error(tmp_path):
    p = _spec(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)


def test_every_problem_is_reported_at_once(tmp_path):
    p = _spec(
        tmp_path,
        "name: 'bad name!'\nexamples: missing.jsonl\nheldout_fraction: 1.5\n"
        "colour: blue\ntrain: {batch_size: 0, learning_rate: fast}\n",
    )
    with pytest.raises(SpecError) as err:
        load_spec(p)
    text = str(err.value)
    assert "missing required key 'description'" in text
    assert "unknown key 'colour'" in text
    assert "train.learning_rate must be float" in text
    # The dataclass-level checks need a complete spec; the type errors come first.
    assert len(err.value.problems) >= 3


def test_range_checks_are_all_reported(tmp_path):
    p = _spec(
        tmp_path,
        "name: t\ndescription: d\nexamples: nope.jsonl\nheldout_fraction: 1.5\ngate: 2\n"
        "train: {batch_size: 0, device: tpu}\n",
    )
    with pytest.raises(SpecError) as err:
        load_spec(p)
    problems = "\n".join(err.value.problems)
    for needle in ("file not found", "heldout_fraction", "gate", "batch_size", "train.device"):
        assert needle in problems


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")


def test_spec_must_be_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="mapping"):
        load_spec(_spec(tmp_path, "- a\n- b\n"))
