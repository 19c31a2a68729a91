import dataclasses
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


def test_train_per_base_overrides_fields_on_its_base_only(tmp_path):
    """`train.per_base` gives one base its own settings: the entry for the compile's
    base is applied over `train`, by registered name in any case or by a path that
    resolves to the same file; another base's entry changes nothing."""
    p = _spec(
        tmp_path,
        "name: t\ndescription: d\nexamples: ex.jsonl\nbase: models/m.gguf\n"
        "train: {batch_size: 4, learning_rate: 0.002, per_base: {"
        "gemma3-270m: {learning_rate: 1.0e-3}, ./models/../models/m.gguf: {batch_size: '8'}}}\n",
    )
    with pytest.raises(SpecError, match=r"batch_size must be int"):
        load_spec(p)  # values are type-checked like train's own
    p.write_text(p.read_text().replace("'8'", "8").replace("1.0e-3", "'1e-3'"))
    spec = load_spec(p)
    assert spec.train.per_base["gemma3-270m"] == {"learning_rate": 0.001}  # coerced
    on_path, entry = spec.on_its_base()
    assert entry == {"batch_size": 8} and on_path.train.batch_size == 8
    assert on_path.train.learning_rate == 0.002 and on_path.train.per_base is None
    gemma, entry = dataclasses.replace(spec, base="Gemma3-270M").on_its_base()
    assert entry == {"learning_rate": 0.001}
    assert (gemma.train.learning_rate, gemma.train.batch_size) == (0.001, 4)
    smol, entry = dataclasses.replace(spec, base="smollm2-135m-instruct").on_its_base()
    assert entry == {} and smol.train.settings() == spec.train.settings()
    assert "per_base" not in spec.train.settings()
    absolute = dataclasses.replace(spec, base=str(tmp_path / "models" / "m.gguf"))
    assert absolute.on_its_base()[1] == {"batch_size": 8}


def test_a_bad_train_per_base_entry_says_which_base_and_field(tmp_path):
    p = _spec(
        tmp_path,
        "name: t\ndescription: d\nexamples: ex.jsonl\ntrain: {learning_rate: 2, per_base: {"
        "gema-270m: {learning_rate: 0.1}, gemma3-270m: {learning_rate: 3, batch_size: 0, lr: 1},"
        " smollm2-135m-instruct: {per_base: {}}, SmolLM2-135M-Instruct: {seed: 1},"
        " x.gguf: 0.001, ./y.gguf: {learning_rate: 0.5}}}\n",
    )
    with pytest.raises(SpecError) as err:
        load_spec(p)
    problems = err.value.problems
    assert any("'gema-270m' is not a base" in x and "gemma3-270m" in x for x in problems)
    assert "unknown key train.per_base.gemma3-270m.'lr'" in "\n".join(problems)
    assert "unknown key train.per_base.smollm2-135m-instruct.'per_base'" in "\n".join(problems)
    assert "train.per_base[x.gguf] must be a mapping of train settings" in "\n".join(problems)
    twice = "names one base twice: 'smollm2-135m-instruct' and 'SmolLM2-135M-Instruct'"
    assert any(twice in x for x in problems)
    # the main block's own problem is reported once, not again under each entry
    assert problems.count("train.learning_rate must be between 0 and 1") == 1
    assert not any("y.gguf" in x for x in problems)  # a good entry is not a problem
    p.write_text(
        "name: t\ndescription: d\nexamples: ex.jsonl\ntrain: {per_base: {"
        "gemma3-270m: {learning_rate: 3, batch_size: 0}, ./y.gguf: {seed: 1}, y.gguf: {seed: 2}}}\n"
    )
    with pytest.raises(SpecError) as err:
        load_spec(p)
    problems = err.value.problems
    assert "train.per_base.gemma3-270m.batch_size must be at least 1" in problems
    assert "train.per_base.gemma3-270m.learning_rate must be between 0 and 1" in problems
    assert any("names one base twice: './y.gguf' and 'y.gguf'" in x for x in problems)
    assert len(problems) == 3
