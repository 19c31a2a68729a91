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


def test_a_per_base_learning_rate_cannot_be_null(tmp_path):
    """`null` in an entry would train at kolm's default and be recorded as the spec's
    choice; it is refused with what to write instead."""
    (tmp_path / "y.gguf").write_bytes(b"")
    p = _spec(
        tmp_path,
        "name: t\ndescription: d\nexamples: ex.jsonl\nbase: y.gguf\n"
        "train: {learning_rate: 0.004, per_base: {./y.gguf: {learning_rate: null}}}\n",
    )
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert err.value.problems == [
        "train.per_base[./y.gguf].learning_rate must be a number; leave it out to train at "
        "the `train` block's rate (kolm's default for the base when that sets none)"
    ]


def test_a_bad_train_per_base_entry_says_which_base_and_field(tmp_path):
    (tmp_path / "y.gguf").write_bytes(b"")
    p = _spec(
        tmp_path,
        "name: t\ndescription: d\nexamples: ex.jsonl\nbase: y.gguf\n"
        "train: {learning_rate: 2, per_base: {"
        "gema-270m: {learning_rate: 0.1}, gemma3-270m: {learning_rate: 3, batch_size: 0, lr: 1},"
        " smollm2-135m-instruct: {per_base: {}}, SmolLM2-135M-Instruct: {seed: 1},"
        " ./modles/y.gguf: {seed: 2}, ./y.gguf: 0.001}}\n",
    )
    with pytest.raises(SpecError) as err:
        load_spec(p)
    problems = err.value.problems
    text = "\n".join(problems)
    assert "train.per_base[gema-270m] names no base of this spec" in text
    assert "not a registered base (gemma3-270m, smollm2-135m-instruct)" in text
    assert "train.per_base[./modles/y.gguf] names no base of this spec" in text  # a typo'd path
    assert "unknown key train.per_base.gemma3-270m.'lr'" in text
    assert "unknown key train.per_base.smollm2-135m-instruct.'per_base'" in text
    assert "train.per_base[./y.gguf] must be a mapping of train settings" in text
    assert "names one base twice: 'smollm2-135m-instruct' and 'SmolLM2-135M-Instruct'" in text
    # the main block's own problem is reported once, not again under each entry
    assert problems.count("train.learning_rate must be between 0 and 1") == 1
    p.write_text(
        "name: t\ndescription: d\nexamples: ex.jsonl\nladder: [./y.gguf]\n"
        "train: {preference_steps: 0, per_base: {gemma3-270m: {learning_rate: 3, batch_size: 0,"
        " preference_learning_rate: 0.1}, y.gguf: {seed: 1}, ./Y.gguf: {seed: 3}}}\n"
    )
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert sorted(err.value.problems) == sorted(
        [
            "train.preference_steps must be at least 1",  # the main block's, not the entry's
            "train.per_base.gemma3-270m.batch_size must be at least 1",
            "train.per_base.gemma3-270m.learning_rate must be between 0 and 1",
            # paths are case-sensitive: ./Y.gguf is another file, and not this spec's
            "train.per_base[./Y.gguf] names no base of this spec: it is not a registered base "
            "(gemma3-270m, smollm2-135m-instruct), nor the file or folder of `base:` or a "
            "`ladder:` entry; correct it or remove the entry",
        ]
    )


def test_a_folder_base_and_its_per_base_entry_match_however_the_path_is_written(tmp_path):
    (tmp_path / "gdir").mkdir()
    p = _spec(
        tmp_path,
        "name: t\ndescription: d\nexamples: ex.jsonl\nbase: gdir\n"
        "train: {per_base: {./gdir/: {learning_rate: 0.001}}}\n",
    )
    spec = load_spec(p)
    assert spec.on_its_base()[1] == {"learning_rate": 0.001}
    assert dataclasses.replace(spec, base=str(tmp_path / "gdir")).on_its_base()[1]
    assert hash(spec.train) == hash(dataclasses.replace(spec.train, per_base=None))


def test_an_override_of_train_wins_over_every_per_base_entry(tmp_path):
    """`--steps` (kolm.api.load_task) and a job's `steps` option set a field for every
    base: it is taken out of each entry, which keeps its other settings."""
    from kolm.api import load_task

    p = _spec(
        tmp_path,
        "name: t\ndescription: d\nexamples: ex.jsonl\nbase: gemma3-270m\n"
        "train: {steps: 100, per_base: {gemma3-270m: {steps: 400, learning_rate: 0.001},"
        " smollm2-135m-instruct: {steps: 300}}}\n",
    )
    assert load_spec(p).on_its_base()[0].train.steps == 400
    task = load_task(p, steps=5)
    trained, entry = task.on_its_base()
    assert (trained.train.steps, trained.train.learning_rate) == (5, 0.001)
    assert entry == {"learning_rate": 0.001}
    assert task.train.per_base == {"gemma3-270m": {"learning_rate": 0.001}}
