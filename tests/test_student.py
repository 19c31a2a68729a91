"""The student's training: the cheaper loss is the same loss, bucketing, preference stages."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
from click.testing import CliRunner

from kolm.align import preference_steps
from kolm.artifact import open_artifact
from kolm.basemodel import resolve
from kolm.cli import cli
from kolm.compiler import compile_task
from kolm.kscore import KInputs
from kolm.spec import TrainConfig, load_spec
from kolm.train import _batches, _bucketed_batches

from .toy import write_toy_task


def test_bucketed_batches_cover_every_example_once_per_window_and_pad_less():
    lengths = [(i * 37) % 50 + 10 for i in range(200)]
    size = 8
    steps = 50
    bucketed = _bucketed_batches(lengths, size, steps, seed=3)
    assert bucketed == _bucketed_batches(lengths, size, steps, seed=3)  # resume needs this
    assert len(bucketed) == steps and all(len(b) == size for b in bucketed)
    window = bucketed[:8]  # the first window: 64 distinct examples
    assert len({i for b in window for i in b}) == 64

    def padded(batches):
        return sum(size * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    assert padded(bucketed) < padded(_batches(len(lengths), size, steps, 3)) / 3


def test_bucketed_batches_never_repeat_an_example_within_a_batch_on_small_data():
    batches = _bucketed_batches([5, 9, 7, 3, 8, 2, 6, 4, 1, 10], 4, 12, seed=0)
    assert all(len(set(b)) == len(b) for b in batches)


def test_the_cheaper_loss_has_the_same_value_and_gradients_as_the_full_model():
    import torch

    from kolm.basemodel import resolve
    from kolm.data import Example
    from kolm.prompt import format_from_gguf
    from kolm.spec import TrainConfig
    from kolm.train import (
        MIN_SHARED_PREFIX,
        _collate,
        _setup,
        shared_prefix,
    )

    from .toy import INSTRUCTION, toy_examples

    base = resolve("smollm2-135m-instruct")
    rows = [Example(r["input"], r["output"]) for r in toy_examples()[::7]]
    cfg = TrainConfig(threads=1)
    fmt = format_from_gguf(base.gguf)
    (data, _), tok, model, dev = _setup(base.gguf, fmt, INSTRUCTION, rows, cfg, None)
    torch.manual_seed(1)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data.normal_(0, 0.02)  # a non-zero adapter, so the LoRA path matters
    ids, mask, labels = _collate(data, tok.pad_token_id, dev)
    assert mask.sum() < mask.numel()  # the batch really has padding
    assert shared_prefix(ids, labels) >= MIN_SHARED_PREFIX  # the instruction is shared
    _assert_same_loss_and_gradients(model, params, ids, mask, labels)


def test_greedy_answers_with_the_instruction_run_once_equal_whole_prompts(monkeypatch):
    """The llama.cpp/PyTorch agreement check decodes every held-out prompt in PyTorch;
    running the shared instruction once (its cache copied into each batch, each row's
    tokens after its padding) must give exactly the answers whole prompts give."""
    import kolm.train as train
    from kolm.basemodel import resolve
    from kolm.data import Example
    from kolm.prompt import format_from_gguf

    from .toy import INSTRUCTION, toy_examples

    base = resolve("smollm2-135m-instruct")
    rows = [Example(r["input"], r["output"]) for r in toy_examples()[::9]]
    fmt = format_from_gguf(base.gguf)
    (_, _), tok, model, _ = train._setup(
        base.gguf, fmt, INSTRUCTION, rows, TrainConfig(threads=1), None
    )
    model.eval()
    inputs = [r.input for r in rows] + ["hi", "my card was charged twice this month " * 3]
    prompts = train.prompt_ids(tok, fmt, INSTRUCTION, inputs)
    assert len({len(p) for p in prompts}) > 2  # rows of different lengths share a batch
    assert train._common_prefix(prompts) >= train.MIN_SHARED_PREFIX
    shared = train.greedy_outputs(model, tok, prompts, 10, batch=4)
    monkeypatch.setattr(train, "MIN_SHARED_PREFIX", 10**9)  # whole prompts, as before
    whole = train.greedy_outputs(model, tok, prompts, 10, batch=4)
    assert all(shared) and shared == whole


@pytest.mark.parametrize("window", [16, 128])
def test_greedy_answers_of_a_sliding_window_model_equal_whole_prompts(monkeypatch, capsys, window):
    """Gemma 3's sliding-window layers count pads inside the window: the instruction is
    shared either way, but once a sequence outgrows the window each batch holds rows of
    one length only (no pads), and either way the answers are those of whole prompts,
    in the prompts' order."""
    import torch

    import kolm.train as train

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def batch_decode(self, rows, skip_special_tokens=True):
            return [" ".join(str(int(t)) for t in r if int(t) > 1) for r in rows]

    model = _tiny_gemma3_with_lora(window).eval()
    prefix = torch.randint(2, 320, (40,)).tolist()
    lengths = (3, 9, 5, 12, 1, 7, 9, 3, 9)
    prompts = [prefix + torch.randint(2, 320, (n,)).tolist() for n in lengths]
    assert train.greedy_prefix(model, prompts) == 40
    assert train.pads_must_go(model, prompts, 10) == (window == 16)
    if window == 16:  # the three 9-token rows share a batch, the two 3-token rows another
        assert sorted(train.greedy_plan(model, prompts, 10, 4)[1]) == [
            [0, 7], [1, 6, 8], [2], [3], [4], [5]
        ]  # fmt: skip
    shared = train.greedy_outputs(model, Tok(), prompts, 10, batch=4)
    monkeypatch.setattr(train, "MIN_SHARED_PREFIX", 10**9)  # whole prompts
    capsys.readouterr()
    assert train.greedy_outputs(model, Tok(), prompts, 10, batch=4, bar="answers") == shared
    shown = capsys.readouterr().err  # the progress bar, over all 9 prompts
    assert "answers: 100%" in shown and "9/9" in shown


def test_long_rows_are_not_packed():
    """Packing pays where the shared instruction dominates; for long rows one packed
    sequence's attention would cost more than the rows' own, so they stay batched."""
    import torch

    from kolm.train import computed_positions, loss_path

    class Model:
        def get_base_model(self):
            return self

        config = type("C", (), {"model_type": "llama"})()

    def batch(own: int, prefix: int = 62, rows: int = 8):
        ids = torch.cat(
            [torch.arange(prefix).repeat(rows, 1), torch.randint(100, 999, (rows, own))], 1
        )
        labels = ids.clone()
        labels[:, : prefix + own - 4] = -100
        return ids, torch.ones_like(ids), labels

    assert loss_path(Model(), *batch(30)) == ("packed", 62)  # the shipped tickets' shape
    eager = Model()
    eager.config = type("C", (), {"model_type": "llama", "_attn_implementation": "eager"})()
    assert loss_path(eager, *batch(30)) == ("prefix", 62)  # it would add the boolean mask
    assert loss_path(Model(), *batch(12, prefix=673)) == ("packed", 673)  # 150 intents
    ids, mask, labels = batch(240)
    assert loss_path(Model(), ids, mask, labels) == ("prefix", 62)
    assert computed_positions("prefix", 62, mask) == (62 + 8 * 240, 0)
    assert computed_positions("packed", 62, mask) == (62 + 8 * 240, 0)


def test_common_prefix_leaves_every_prompt_a_token_of_its_own():
    from kolm.train import _common_prefix

    assert _common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert _common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert _common_prefix([[7], [7, 8]]) == 0
    assert _common_prefix([]) == 0


def test_a_preference_stage_shows_each_pair_at_most_three_times():
    cfg = TrainConfig(preference_steps=40, batch_size=8)
    assert preference_steps(cfg, 3) == 2  # 3 pairs: 9 rows seen, 2 batches of 8
    assert preference_steps(cfg, 1) == 1
    assert preference_steps(cfg, 500) == 40  # many pairs: the configured steps


def _compile_method(tmp_path, method: str, sft_steps: int = 6, pref_steps: int = 3):
    spec_path = write_toy_task(tmp_path / "task", steps=sft_steps)
    spec = load_spec(spec_path)
    train = dataclasses.replace(
        spec.train,
        method=method,
        preference_steps=pref_steps,
        threads=1,
        preference_learning_rate=1e-4,
    )
    spec = dataclasses.replace(spec, train=train)
    lines: list[str] = []
    out = tmp_path / f"{method}.kolm"
    result = compile_task(
        spec, out, progress=False, log=lines.append, force=True, work_dir=tmp_path / "work"
    )
    return result, lines


def _check_aligned(result, method: str, pref_steps: int = 3) -> None:
    train = result.manifest["metrics"]["train"]
    assert train["method"] == method
    pref = train["preference"]
    assert pref["method"] == method and pref["pairs"] > 0
    cfg = TrainConfig(preference_steps=pref_steps, batch_size=pref["batch_size"])
    assert pref["steps"] == preference_steps(cfg, pref["pairs"]) <= pref_steps
    assert pref["pairs_by_source"]["student"] > 0
    # the toy's pairs are short: a step is one pass, as before
    assert pref["rows_per_pass"] == pref["batch_size"]
    assert "activation_checkpointing" not in pref
    # the shipped adapter is the preference-trained one, and llama.cpp ran it
    art = open_artifact(result.artifact)
    assert art.manifest["metrics"]["llamacpp_torch_agreement"] >= 0.5
    assert result.manifest["metrics"]["student"]["accuracy"] is not None


@pytest.mark.slow  # 4 min; the default suite samples GRPO on the compiled toy
def test_dpo_stage_continues_the_sft_adapter_and_ships_a_gguf_llama_cpp_runs(tmp_path):
    result, lines = _compile_method(tmp_path, "dpo")
    _check_aligned(result, "dpo")
    assert any("dpo:" in line and "preference pairs" in line for line in lines)
    # PyTorch's reference answers, once for the SFT adapter and once for the stage's
    reference = [line for line in lines if line.startswith("kolm: PyTorch reference answers")]
    assert len(reference) == 2, lines
    # fewer pairs than one step holds gets a line saying the stage can do little
    pref = result.manifest["metrics"]["train"]["preference"]
    few = [line for line in lines if "too few to move the student" in line]
    assert bool(few) == (pref["pairs"] < pref["batch_size"]), (pref, few)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["orpo", "kto", "simpo"])
def test_each_preference_method_runs_end_to_end(tmp_path, method):
    result, _ = _compile_method(tmp_path, method)
    _check_aligned(result, method)
    if method == "simpo":
        assert result.manifest["metrics"]["train"]["preference"]["loss_type"] == "simpo"


@pytest.mark.slow
def test_grpo_samples_rewards_with_the_verifier_and_ships_a_gguf_llama_cpp_runs(tmp_path):
    result, lines = _compile_method(tmp_path, "grpo", pref_steps=2)
    train = result.manifest["metrics"]["train"]
    assert train["method"] == "grpo"
    stage = train["preference"]
    assert stage["method"] == "grpo" and stage["steps"] == 2
    assert stage["num_generations"] >= 2 and stage["beta"] == 0.0
    first, last = stage["mean_reward_first_last"]
    assert 0.0 <= first <= 1.0 and 0.0 <= last <= 1.0  # rewards came from the verifier
    assert 0.0 <= stage["groups_with_signal"] <= 1.0
    assert any(line.startswith("kolm: grpo:") for line in lines)
    assert any("of the sampled groups differed in reward" in line for line in lines)
    art = open_artifact(result.artifact)
    assert art.manifest["metrics"]["llamacpp_torch_agreement"] >= 0.5


def test_grpo_samples_real_answers_from_the_trained_student(compiled, tmp_path):
    """The toy student answers its training inputs right, so its sampled answers earn
    the verifier's reward (a sampler that broke after the first token earned 0)."""
    from kolm import align
    from kolm.compiler import prepare
    from kolm.train import load_adapter

    p = prepare(compiled["spec"])
    cfg = dataclasses.replace(p.spec.train, preference_steps=1, threads=1)
    sft = next(p.spec.spec_path.parent.glob(".kolm-work/*/*/adapter.pt"))
    model, tok = load_adapter(p.base.gguf, cfg, sft)
    res = align.grpo(
        model, tok, p.fmt, p.spec.description, p.train[:4], p.verifier.passing, cfg,
        tmp_path / "ckpt", 8, progress=False,
    )  # fmt: skip
    assert res.steps == 1 and res.hyper["num_generations"] == 4
    first, _ = res.hyper["mean_reward_first_last"]
    assert first > 0.5, res.hyper
    assert 0.0 <= res.hyper["groups_with_signal"] <= 1.0, res.hyper


def test_a_preference_stage_with_no_pairs_is_skipped_with_a_clear_line(compiled):
    spec = compiled["spec"]
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, method="orpo"))
    lines: list[str] = []
    out = compiled["root"] / "orpo.kolm"
    result = compile_task(spec, out, progress=False, log=lines.append)
    assert result.cached_training  # the SFT stage's cache key leaves train.method out
    skipped = [line for line in lines if "skipping the preference stage" in line]
    assert skipped, lines
    pref = result.manifest["metrics"]["train"]["preference"]
    assert pref["steps"] == 0 and pref["skipped"] == "no pairs"
    # the wrong answers are kept beside the SFT adapter for the next method to reuse
    kept = list(spec.spec_path.parent.glob(".kolm-work/*/*/student-pairs-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == []
    first = compiled["result"].manifest["metrics"]["student"]
    assert result.manifest["metrics"]["student"]["accuracy"] == first["accuracy"]


def test_the_ladder_climbs_past_a_failing_rung_and_stops_at_the_first_that_passes(tmp_path):
    from kolm.basemodel import resolve
    from kolm.errors import GateError
    from kolm.ladder import compile_ladder, rung_record

    smol = resolve("smollm2-135m-instruct").gguf
    spec = load_spec(write_toy_task(tmp_path / "task", extra=f"ladder: [{smol}, {smol}.copy]\n"))
    spec = dataclasses.replace(spec, base="auto")
    tried: list[str] = []

    def fake_compile(rung, out, log, force, ladder, **kw):  # K rises with the rung's size
        tried.append(rung.base)
        k = 0.5 if rung.base == "smollm2-135m-instruct" else 0.9
        ladder.append(rung_record(rung.base, "apache-2.0", k, k >= 0.7, k))
        if k < 0.7 and not force:
            raise GateError("not shipped: K below the gate")
        return list(ladder)

    lines: list[str] = []
    record = compile_ladder(spec, tmp_path / "x.kolm", lines.append, False, fake_compile)
    # climbed once (to gemma3-270m where installed, else the listed path), stopped at a pass
    assert tried[0] == "smollm2-135m-instruct" and len(tried) == 2 and tried[1] != tried[0]
    assert [r.get("passed") for r in record if "K" in r] == [False, True]
    assert any("climbing" in line for line in lines)
    # the .copy path does not exist, but the climb stopped before it: no record of it
    assert not any(r["base"] == f"{smol}.copy" for r in record)


def test_a_missing_rung_is_recorded_where_the_climb_reaches_it_not_before(tmp_path):
    """A rung not installed here is a `skipped` record at its place in the climb; one the
    climb never needed (an earlier rung passed) is not recorded at all."""
    from kolm.errors import GateError
    from kolm.ladder import compile_ladder, rung_record

    smol = resolve("smollm2-135m-instruct").gguf
    missing = f"{smol}.gone"
    spec = load_spec(write_toy_task(tmp_path / "task", extra=f"ladder: [{missing}]\n"))
    spec = dataclasses.replace(spec, base="auto")
    seen: list[list[dict]] = []

    def fake_compile(rung, out, log, force, ladder, **kw):
        passed = passes
        ladder.append(rung_record(rung.base, "x", 0.9 if passed else 0.5, passed, 0.9))
        seen.append(ladder)
        if not passed and not force:
            raise GateError("not shipped")
        return list(ladder)

    lines: list[str] = []
    passes = True
    record = compile_ladder(spec, tmp_path / "x.kolm", lines.append, False, fake_compile)
    assert [r["base"] for r in record] == ["smollm2-135m-instruct"]
    assert not any("skipping" in line for line in lines)

    passes = False
    with pytest.raises(GateError, match="every rung"):
        compile_ladder(spec, tmp_path / "y.kolm", lines.append, False, fake_compile)
    climbed = seen[-1]
    assert climbed[0]["base"] == "smollm2-135m-instruct" and "K" in climbed[0]
    assert climbed[-1] == {"base": missing, "skipped": climbed[-1]["skipped"]}
    assert [r["base"] for r in climbed] == list(dict.fromkeys(r["base"] for r in climbed))
    assert any(f"skipping {missing}" in line for line in lines)

    # under --force the last installed rung ships whatever its K: the missing rungs
    # after it are named before it compiles, and are not records
    lines.clear()
    record = compile_ladder(spec, tmp_path / "z.kolm", lines.append, True, fake_compile)
    assert record[-1]["base"] == seen[-1][-1]["base"] != missing
    assert not any(r["base"] == missing for r in record)
    assert any(f"not tried under --force: {missing}" in line for line in lines)


def test_base_auto_with_no_installed_rung_says_why_each_was_skipped(tmp_path, monkeypatch):
    import kolm.ladder
    from kolm.errors import BaseModelError
    from kolm.ladder import compile_ladder

    monkeypatch.setattr(kolm.ladder, "RUNGS", ("no-such-base",))
    spec = load_spec(write_toy_task(tmp_path / "task", extra=f"ladder: [{tmp_path}/x.gguf]\n"))
    spec = dataclasses.replace(spec, base="auto")
    lines: list[str] = []
    with pytest.raises(BaseModelError, match="found no installed base"):
        compile_ladder(spec, tmp_path / "x.kolm", lines.append, False, lambda *a, **k: None)
    assert any("skipping no-such-base" in line for line in lines)
    assert any(f"skipping {tmp_path}/x.gguf" in line for line in lines)


def test_when_every_rung_fails_force_ships_the_best_rung_not_the_last(tmp_path):
    """Measured on 60 CLINC150 intents: SmolLM2 79.2% and Gemma 73.3%, both below the
    floor; --force used to ship Gemma, the last rung. It ships the best by K, compiled
    again, and that rung is the last record of the ladder."""
    from kolm.errors import GateError
    from kolm.ladder import compile_ladder, rung_record

    smol = resolve("smollm2-135m-instruct").gguf
    spec = load_spec(write_toy_task(tmp_path / "task", extra=f"ladder: [{smol}]\n"))
    spec = dataclasses.replace(spec, base="auto")
    tried: list[tuple[str, bool]] = []

    def fake_compile(rung, out, log, force, ladder, **kw):  # every rung below the gate
        tried.append((rung.base, force))
        k = 0.6 if rung.base == "smollm2-135m-instruct" else 0.5
        ladder.append(rung_record(rung.base, "x", k, False, k, ["below"]))
        if not force:
            raise GateError("not shipped")
        return list(ladder)

    lines: list[str] = []
    record = compile_ladder(spec, tmp_path / "x.kolm", lines.append, True, fake_compile)
    installed = [base for base, _ in tried[:-1]]
    assert tried[0] == ("smollm2-135m-instruct", False) and tried[-2][1]  # last rung forced
    assert tried[-1] == ("smollm2-135m-instruct", True) and len(installed) >= 2
    compiled = [r for r in record if "K" in r]
    assert record[-1] is compiled[-1]  # the shipped rung is the last record of all
    assert compiled[-1]["base"] == "smollm2-135m-instruct"
    assert [r["base"] for r in compiled].count("smollm2-135m-instruct") == 1
    assert any("shipping the best, smollm2-135m-instruct (K 0.600" in line for line in lines)
    with pytest.raises(GateError, match="every rung of the ladder failed"):
        compile_ladder(spec, tmp_path / "y.kolm", lines.append, False, fake_compile)


def test_force_compiles_a_best_path_rung_again_by_its_path_not_its_record_name(tmp_path):
    """A `.gguf` rung's record names the file's stem, which no base resolves to; when
    every rung fails and that rung scored best, --force compiles it again by its path."""
    from pathlib import Path

    from kolm.errors import GateError
    from kolm.ladder import compile_ladder, rung_record

    gguf, last = tmp_path / "models" / "best.gguf", tmp_path / "models" / "last.gguf"
    gguf.parent.mkdir()
    for rung in (gguf, last):
        rung.symlink_to(resolve("smollm2-135m-instruct").gguf)
    spec = load_spec(write_toy_task(tmp_path / "task", extra=f"ladder: [{gguf}, {last}]\n"))
    spec = dataclasses.replace(spec, base="auto")
    tried: list[str] = []

    def fake_compile(rung, out, log, force, ladder, **kw):  # as compile_task records a rung
        tried.append(rung.base)
        resolved = resolve(rung.base)
        k = 0.6 if rung.base == str(gguf) else 0.5
        ladder.append(rung_record(resolved.name, "x", k, False, k, ["below"]))
        if not force:
            raise GateError("not shipped")
        return list(ladder)

    record = compile_ladder(spec, tmp_path / "x.kolm", lambda m: None, True, fake_compile)
    assert tried[-2:] == [str(last), str(gguf)]  # the last rung forced, then the best again
    assert record[-1]["base"] == "best" and Path(tried[-1]).stem == "best"


def test_base_auto_compiles_on_the_smallest_installed_rung_and_records_it(compiled):
    spec = dataclasses.replace(compiled["spec"], base="auto")
    lines: list[str] = []
    result = compile_task(spec, compiled["root"] / "auto.kolm", progress=False, log=lines.append)
    assert result.cached_training  # the same base and data: the SFT stage is reused
    ladder = result.manifest["ladder"]
    shipped = [r for r in ladder if "K" in r]
    assert shipped == [
        {
            "base": "smollm2-135m-instruct",
            "license": "apache-2.0",
            "K": result.manifest["kscore"]["K"],
            "accuracy": round(result.manifest["metrics"]["student"]["accuracy"], 4),
            "passed": True,
        }
    ]
    for r in ladder:  # a rung not installed here is skipped with a line, never a crash
        if "skipped" in r:
            assert any(f"skipping {r['base']}" in line for line in lines)
    # every rung is in the report and in `kolm inspect`, with its K and accuracy
    report = (compiled["root"] / "auto.report.md").read_text()
    assert "Base ladder" in report
    assert f"K {shipped[0]['K']:.3f}, accuracy {shipped[0]['accuracy']:.1%}, passed" in report
    shown = CliRunner().invoke(cli, ["inspect", str(result.artifact)])
    assert shown.exit_code == 0, shown.output
    assert ladder[-1]["base"] == "smollm2-135m-instruct"  # nothing is recorded past it
    assert f"ladder rung {len(ladder)}: smollm2-135m-instruct" in shown.output


def test_each_rung_trains_with_its_own_train_per_base_entry(compiled):
    """Under `base: auto` a rung trains with `train` plus its `train.per_base` entry.
    The entry is what the adapter's cache key sees (a changed rate is a new adapter,
    the same rate the cached one), and the log, manifest and report name it; an entry
    for another base changes nothing."""
    from kolm.compiler import prepare, training_key
    from kolm.report import ladder_lines

    spec = compiled["spec"]
    own = {"smollm2-135m-instruct": {"learning_rate": spec.train.learning_rate}}
    per_base = {**own, "gemma3-270m": {"learning_rate": spec.train.learning_rate / 2}}
    auto = dataclasses.replace(
        spec, base="auto", train=dataclasses.replace(spec.train, per_base=per_base)
    )
    lines: list[str] = []
    out = compiled["root"] / "per-base.kolm"
    result = compile_task(auto, out, progress=False, log=lines.append)
    assert result.cached_training  # the same settings in effect: the same adapter
    assert result.manifest["metrics"]["train"]["per_base"] == own
    assert result.manifest["ladder"][-1]["per_base"] == own["smollm2-135m-instruct"]
    assert (
        f"passed (train.per_base: learning_rate {spec.train.learning_rate})"
        in dict(ladder_lines(result.manifest))["smollm2-135m-instruct"]
    )
    rate = spec.train.learning_rate
    assert f"kolm: smollm2-135m-instruct trains with learning_rate {rate} (train.per_base)" in lines
    assert result.manifest["metrics"]["train"]["per_base_from"] == "train.per_base"
    report = (compiled["root"] / "per-base.report.md").read_text()
    assert (
        f"| settings for smollm2-135m-instruct (train.per_base) | learning_rate {rate} |" in report
    )
    config = open_artifact(result.artifact).read_json("config.json")
    assert "per_base" not in config["train"] and config["train"]["learning_rate"] == rate
    from kolm.cli.compile import _train_rows  # the compile summary's rows

    summary = _train_rows(result.manifest["metrics"]["train"])
    assert (
        "settings for smollm2-135m-instruct (train.per_base)",
        f"learning_rate {rate}",
    ) in summary
    shown = CliRunner().invoke(cli, ["inspect", str(result.artifact)])
    assert shown.exit_code == 0, shown.output
    assert "settings for smollm2-135m-instruct (train.per_base)" in shown.output

    def key(per_base: dict) -> str:
        with_entry = dataclasses.replace(spec.train, per_base=per_base)
        trained = dataclasses.replace(spec, train=with_entry).on_its_base()[0]
        return training_key(prepare(trained), "a base sha")

    slower = {"smollm2-135m-instruct": {"learning_rate": rate / 2}}
    assert key(slower) != key({}) == key(own) == key({"gemma3-270m": {"learning_rate": rate / 2}})


def test_a_ladder_path_rung_gets_the_per_base_entry_written_for_its_path(tmp_path):
    """The ladder hands each rung the spec with `per_base` intact; a key written as a
    relative path finds the rung listed by its absolute path."""
    from kolm.errors import GateError
    from kolm.ladder import compile_ladder, rung_record

    task = tmp_path / "task"
    (task / "models").mkdir(parents=True)
    gguf = task / "models" / "big.gguf"
    gguf.symlink_to(resolve("smollm2-135m-instruct").gguf)  # a rung of its own name
    root = write_toy_task(task, extra=f"ladder: [{gguf}]\n")
    entry = "per_base: {./models/big.gguf: {learning_rate: 0.0005}}"
    root.write_text(root.read_text().replace("max_seq_len: 96}", f"max_seq_len: 96, {entry}}}"))
    spec = dataclasses.replace(load_spec(root), base="auto")
    rates: dict[str, float] = {}

    def fake_compile(rung, out, log, force, ladder, **kw):  # only the path rung passes
        rates[rung.base] = rung.on_its_base()[0].train.learning_rate
        ok = rung.base == str(gguf)
        ladder.append(rung_record(rung.base, "x", 0.9 if ok else 0.5, ok, 0.5))
        if not ok and not force:
            raise GateError("not shipped")
        return list(ladder)

    compile_ladder(spec, tmp_path / "x.kolm", lambda m: None, False, fake_compile)
    assert rates[str(gguf)] == 0.0005
    assert rates["smollm2-135m-instruct"] == 0.002


def test_the_ladder_trains_gemma_at_half_the_rate_unless_per_base_names_it(tmp_path):
    """The spec's `train` is written for the first rung; climbed to, Gemma 3 270M trains
    at half its learning rate (kolm's default, said in the log), and a `train.per_base`
    entry for Gemma replaces that default whole. The first rung keeps the spec's rate."""
    from kolm.ladder import rung_spec
    from kolm.report import ladder_lines

    spec = dataclasses.replace(load_spec(write_toy_task(tmp_path / "task")), base="auto")
    lines: list[str] = []
    rung, source = rung_spec(spec, "gemma3-270m", lines.append)
    gemma, entry = rung.on_its_base()
    assert source == "kolm's ladder default"
    assert entry == {"learning_rate": spec.train.learning_rate / 2}
    record = {"base": "gemma3-270m", "K": 0.9, "accuracy": 0.9, "passed": True}
    record |= {"per_base": entry, "per_base_from": source}  # as compile_task writes it
    shown = dict(ladder_lines({"ladder": [record]}))["gemma3-270m"]
    assert shown.endswith("passed (kolm's ladder default: learning_rate 0.001)")
    assert gemma.train.learning_rate == spec.train.learning_rate / 2
    assert lines == [
        "kolm: ladder: gemma3-270m trains at 0.5 times the spec's learning rate, 0.001 "
        "(kolm's ladder default; set train.per_base.gemma3-270m to choose)"
    ]
    lines.clear()
    smol = rung_spec(spec, "smollm2-135m-instruct", lines.append)[0].on_its_base()[0]
    assert smol.train == dataclasses.replace(spec.train, per_base=None) and not lines
    own = {"gemma3-270m": {"batch_size": 4}}
    chosen = dataclasses.replace(spec, train=dataclasses.replace(spec.train, per_base=own))
    rung, source = rung_spec(chosen, "gemma3-270m", lines.append)
    gemma, entry = rung.on_its_base()
    assert entry == {"batch_size": 4} and gemma.train.learning_rate == spec.train.learning_rate
    assert source == "train.per_base"
    assert not lines
    # `base: gemma3-270m` named by the user trains with the spec's own rate
    named = dataclasses.replace(spec, base="gemma3-270m").on_its_base()[0]
    assert named.train.learning_rate == spec.train.learning_rate


def test_a_spec_without_a_learning_rate_trains_each_base_at_its_own_default(tmp_path):
    """`train.learning_rate` unset: SmolLM2 and a .gguf path train at 0.002 (the same
    adapter as a spec that writes 0.002), Gemma 3 270M at 0.001, named or as a rung;
    the compile records that rate as kolm's default for the base. A rate the spec or
    its `per_base` entry sets is kept."""
    from kolm.compiler import prepare, training_key
    from kolm.ladder import rung_spec

    root = write_toy_task(tmp_path / "task")
    written = load_spec(root)
    root.write_text(root.read_text().replace("learning_rate: 0.002, ", ""))
    spec = load_spec(root)
    assert spec.train.learning_rate is None and not spec.check()

    def rate(s):
        return s.on_its_base()[0].train.learning_rate

    assert rate(spec) == 0.002 == rate(dataclasses.replace(spec, base=str(tmp_path / "m.gguf")))
    assert training_key(prepare(spec.on_its_base()[0]), "sha") == training_key(
        prepare(written.on_its_base()[0]), "sha"
    )
    assert spec.own_settings() == (spec.on_its_base()[0], {}, "train.per_base")
    gemma = dataclasses.replace(spec, base="gemma3-270m")
    trained, entry, source = gemma.own_settings()
    assert trained.train.learning_rate == 0.001 and entry == {"learning_rate": 0.001}
    assert source == "kolm's default for this base"
    assert dataclasses.replace(written, base="gemma3-270m").own_settings()[1:] == (
        {},
        "train.per_base",
    )
    lines: list[str] = []  # on the ladder: no scaled entry, the base's own default
    rung, source = rung_spec(dataclasses.replace(spec, base="auto"), "gemma3-270m", lines.append)
    assert source == "train.per_base" and not lines
    assert rung.own_settings(source)[1:] == (entry, "kolm's default for this base")

    def with_entry(e):
        return dataclasses.replace(gemma, train=dataclasses.replace(spec.train, per_base=e))

    _, entry, source = with_entry({"gemma3-270m": {"batch_size": 4}}).own_settings()
    assert entry == {"batch_size": 4, "learning_rate": 0.001}
    assert source == "train.per_base; learning_rate: kolm's default for this base"
    trained, entry, source = with_entry({"gemma3-270m": {"learning_rate": 7e-4}}).own_settings()
    assert (trained.train.learning_rate, entry, source) == (
        7e-4,
        {"learning_rate": 7e-4},
        "train.per_base",
    )


def test_a_rung_below_the_tfidf_floor_fails_the_ladder_when_beat_floor_is_set(tmp_path):
    """`gate.beat_floor` is parsed from the spec, and a rung whose only failure is the
    floor makes `base: auto` climb; the log and the record say why."""
    from kolm.errors import GateError
    from kolm.kscore import gate, kscore
    from kolm.ladder import compile_ladder, rung_record

    root = write_toy_task(tmp_path / "task", extra="gate: {min_k: 0.7, beat_floor: true}\n")
    spec = dataclasses.replace(load_spec(root), base="auto")
    assert spec.gate.beat_floor and spec.gate.min_k == 0.7
    accuracy = {"smollm2-135m-instruct": 0.70, "gemma3-270m": 0.80}
    tried: list[str] = []

    def fake_compile(rung, out, log, force, ladder, **kw):  # the real gate, a fixed floor
        tried.append(rung.base)
        score = kscore(KInputs(accuracy.get(rung.base, 0.8), 0.8, 1e8, 0.1, 1.0, 0.0, 1e-3, 1.0))
        verdict = gate(score, spec.gate.min_k, floor=0.75)
        k = score.K
        ladder.append(rung_record(rung.base, "x", k, verdict.passed, 0, verdict.reasons))
        if not verdict.passed and not force:
            raise GateError("not shipped: " + "; ".join(verdict.reasons))
        return list(ladder)

    smol = resolve("smollm2-135m-instruct").gguf
    spec = dataclasses.replace(spec, ladder=(str(smol),))
    lines: list[str] = []
    record = compile_ladder(spec, tmp_path / "x.kolm", lines.append, False, fake_compile)
    first = next(r for r in record if "K" in r)
    assert first["K"] >= 0.7 and not first["passed"]  # K passes; the floor does not
    assert first["reasons"] == [
        "accuracy 70.0% is below the TF-IDF floor 75.0% by 5.0% (gate.beat_floor)"
    ]
    assert any("TF-IDF floor 75.0%" in line and "climbing" in line for line in lines)
    assert len(tried) == 2 and [r["passed"] for r in record if "K" in r] == [False, True]


def test_the_shared_prefix_loss_holds_for_gemma3_with_sliding_window_layers():
    """The ladder's second rung (Gemma 3, `gemma3_text`) mixes sliding-window and full
    attention layers; its shared-prefix loss must equal the full model's, gradients too,
    with a prefix longer than the window and padded rows."""
    import torch

    from kolm.train import MIN_SHARED_PREFIX, SHARED_PREFIX_ARCHS, shared_prefix

    model = _tiny_gemma3_with_lora(window=16)
    cfg = model.get_base_model().config
    assert "full_attention" in cfg.layer_types and "sliding_attention" in cfg.layer_types
    assert cfg.model_type in SHARED_PREFIX_ARCHS
    params = [p for p in model.parameters() if p.requires_grad]
    rows, prefix = 3, torch.randint(0, 320, (1, 40))  # the prefix outruns the window
    ids = torch.cat([prefix.repeat(rows, 1), torch.randint(0, 320, (rows, 12))], dim=1)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :44] = -100
    labels[mask == 0] = -100
    assert shared_prefix(ids, labels) >= MIN_SHARED_PREFIX
    _assert_same_loss_and_gradients(model, params, ids, mask, labels)


def _assert_same_loss_and_gradients(model, params, ids, mask, labels) -> None:
    """`answer_loss` (output layer at answer positions, shared prefix run once) equals the
    model's own loss, and so do the gradients it gives the adapter, on both of its shared-
    prefix paths: the batch packed into one sequence (the default) and, for a batch that
    would pack longer than `PACK_MAX_TOKENS`, the prefix's cache copied into every row."""
    import kolm.train as train
    from kolm.train import _full_loss, answer_loss

    path, start = train.loss_path(model, ids, mask, labels)
    assert path == "packed"  # the default packs this batch
    assert train.packed_length(mask, start) < mask.sum()  # and computes fewer tokens

    assert train.loss_path(model, ids, mask, labels, pack=False) == ("prefix", start)
    found = []
    for fn in (_full_loss, answer_loss, functools.partial(answer_loss, pack=False)):
        loss = fn(model, ids, mask, labels)
        loss.backward()
        found.append((loss.item(), [p.grad.clone() for p in params]))
        for p in params:
            p.grad = None
    (full, g_full), *others = found
    for fast, g_fast in others:
        assert abs(fast - full) < 1e-5
        assert max((a - b).abs().max().item() for a, b in zip(g_full, g_fast, strict=True)) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_grpo_log_probs_with_the_instruction_run_once_equal_one_row_at_a_time(arch, monkeypatch):
    """GRPO's log-probabilities (`completion_logps`, what kolm's GRPO trainer learns from)
    run the shared instruction once; each row's values and the adapter's gradients must
    be those of the row alone, unpadded, whatever the padding TRL's layout gives it."""
    import torch

    import kolm.train as train

    paths = []
    plain = train.answer_logits

    def spy(model, ids, mask, labels, **kw):
        paths.append(train.loss_path(model, ids, mask, labels))
        return plain(model, ids, mask, labels, **kw)

    monkeypatch.setattr(train, "answer_logits", spy)

    model = _tiny_gemma3_with_lora(16) if arch == "gemma3" else _tiny_llama_with_lora()
    model.train()
    pad, eos = 0, 1
    prefix = torch.randint(2, 320, (40,)).tolist()
    suffixes = (3, 9, 9, 5, 12, 1)
    answers = (4, 1, 6, 2, 6, 3)  # some end in eos, some run to the limit
    prompts = [prefix + torch.randint(2, 320, (n,)).tolist() for n in suffixes]
    prompts[2] = list(prompts[1])  # a group: the same prompt sampled twice
    completions = [torch.randint(2, 320, (n,)).tolist() for n in answers]
    completions[1][-1] = completions[3][-1] = eos
    width, limit = max(map(len, prompts)), max(answers)
    ids = torch.tensor(
        [[pad] * (width - len(q)) + q + c + [pad] * (limit - len(c))
         for q, c in zip(prompts, completions, strict=True)]
    )  # fmt: skip
    at = torch.arange(ids.shape[1])[None]
    starts = torch.tensor([width - len(q) for q in prompts])[:, None]
    ends = torch.tensor([width + len(c) for c in completions])[:, None]
    mask = ((at >= starts) & (at < ends)).long()
    assert int(mask.sum()) == sum(map(len, prompts)) + sum(answers)
    params = [p for p in model.parameters() if p.requires_grad]

    logps, ents = train.completion_logps(model, ids, mask, limit, entropy=True)
    assert logps.shape == ents.shape == (len(prompts), limit)
    (logps * mask[:, width:]).sum().backward()
    fast = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    total = 0
    for r, (q, c) in enumerate(zip(prompts, completions, strict=True)):
        logits = model(input_ids=torch.tensor([q + c])).logits[0, len(q) - 1 : -1]
        alone = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(c)[:, None])[:, 0]
        assert torch.allclose(logps[r, : len(c)], alone, atol=1e-5), r
        assert not logps[r, len(c) :].any() and not ents[r, len(c) :].any()
        spread = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        assert torch.allclose(ents[r, : len(c)], spread.detach(), atol=1e-4), r
        total = total + alone.sum()
    total.backward()
    assert max((a - p.grad).abs().max().item() for a, p in zip(fast, params, strict=True)) < 1e-4
    # a completion masked whole (TRL's truncated-answer option) scores nothing and must
    # not end the shared prefix for the rest of the pass
    mask[4, width:] = 0
    again, _ = train.completion_logps(model, ids, mask, limit)
    assert not again[4].any()
    keep = [0, 1, 2, 3, 5]
    assert torch.allclose(again[keep], logps[keep].detach(), atol=1e-5)
    assert paths == [("packed", 40), ("packed", 40)]


def _tiny_llama_with_lora():
    """A random 3-layer Llama with a non-zero LoRA adapter."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    return _with_lora(LlamaForCausalLM(cfg))


def _tiny_gemma3_with_lora(window: int):
    """A random 7-layer Gemma 3 (five sliding-window layers, one full, one sliding) with
    a non-zero LoRA adapter, so the adapter's path matters."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=7,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=window,
        max_position_embeddings=256, final_logit_softcapping=None, attn_logit_softcapping=None,
    )  # fmt: skip
    return _with_lora(Gemma3ForCausalLM(cfg))


def _with_lora(model):
    """`model` with a rank-4 LoRA adapter on q/v whose weights are random, not zero."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    return model


def test_the_training_summary_names_threads_and_batch_size():
    from kolm.report import train_speed

    assert train_speed({"tokens_per_second": 550.4, "threads": 2, "batch_size": 8}) == (
        "550 (2 threads, batch 8)"
    )
    assert train_speed({"tokens_per_second": 441.0, "threads": 2}) == "441 (2 threads)"  # older


def test_rows_per_pass_is_the_largest_divisor_of_the_batch_that_fits():
    from kolm.align import PASS_TOKENS, micro_batch

    assert micro_batch(8, 190) == 8  # the shipped example's pairs: one pass, as before
    assert micro_batch(8, 1400) == 1  # a 150-label pair
    assert micro_batch(8, 700) == 2
    assert micro_batch(6, 700) == 2  # 3 would not fit, and 4 does not divide 6
    assert micro_batch(8, 1400, least=4) == 4  # KTO: two pairs a pass
    assert micro_batch(8, PASS_TOKENS + 1) == 1  # a row over the budget still trains
    # 10 rows at 8 a step: the last step holds 2, so passes of 4 would be uneven
    assert micro_batch(8, 500, rows=10) == 2
    assert micro_batch(8, 500, rows=16) == 4
    assert micro_batch(8, 190, rows=10) == 8  # rows that fit stay one pass a step
    assert micro_batch(8, 1400, least=4, rows=10) == 4  # no even split: two pairs still


def test_kto_compares_each_row_with_another_pairs_answer(tmp_path):
    """TRL's KTO estimates its KL term from rows whose answer was written for another
    input; no row is given its own pair's other answer (a shift by one row did that for
    half the rows)."""
    from datasets import Dataset

    from kolm import align

    rows = [
        {"prompt_ids": [p], "completion_ids": [p, k], "label": k == 1}
        for p in (10, 20, 30, 40)
        for k in (1, 0)
    ]

    class Base:
        calculate_KL = True

    trainer = align._pretokenized(Base)()
    out = trainer._prepare_dataset(Dataset.from_list(rows), None, None, "train")
    for row in out:
        assert row["KL_completion_ids"][0] != row["prompt_ids"][0]


def test_a_step_split_into_passes_trains_the_same_adapter_as_one_pass(
    compiled, tmp_path, monkeypatch
):
    """Long rows are split into micro-batches with accumulated gradients and recomputed
    activations; the step they add up to is the step one pass would take."""
    import torch
    from peft import get_peft_model_state_dict

    from kolm import align
    from kolm.compiler import prepare
    from kolm.train import load_adapter

    p = prepare(compiled["spec"])
    cfg = dataclasses.replace(
        p.spec.train, method="dpo", batch_size=4, preference_steps=2, threads=1,
        preference_learning_rate=1e-3,
    )  # fmt: skip
    sft = next(p.spec.spec_path.parent.glob(".kolm-work/*/*/adapter.pt"))
    examples = p.train[:4]
    others = sorted({e.output for e in p.train})
    pairs = [
        align.Pair(e.input, e.output, next(o for o in others if o != e.output), "student")
        for e in examples
    ]

    def run(name: str):
        model, tok = load_adapter(p.base.gguf, cfg, sft)
        res = align.align(
            model, tok, p.fmt, p.spec.description, pairs, cfg, tmp_path / name, progress=False
        )
        return res, {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}

    whole, one_pass = run("whole")
    assert whole.hyper["rows_per_pass"] == 4 and "activation_checkpointing" not in whole.hyper
    monkeypatch.setattr(align, "PASS_TOKENS", 1)  # every pair over the budget
    split, passes = run("split")
    assert split.hyper["rows_per_pass"] == 1 and split.hyper["activation_checkpointing"]
    assert whole.steps == split.steps == 2
    # the same loss and gradient norm (before clipping) at every step: a pass weighted
    # wrongly would change the norm even where Adam's step would hide it
    for key in ("loss", "grad_norm"):
        a = [x[key] for x in whole.log if key in x]
        b = [x[key] for x in split.log if key in x]
        assert len(a) == len(b) == 2
        assert b == pytest.approx(a, rel=1e-4)
    before = torch.load(sft, weights_only=True)
    moved = max((one_pass[k] - before[k]).abs().max().item() for k in one_pass)
    assert moved > 1e-4  # the stage did train
    # Adam divides each gradient element by its own magnitude, so an element whose gradient
    # sits near Adam's eps turns summation-order noise (which differs between CPUs) into a
    # visible fraction of the learning rate. So: no element apart by a tenth of a step, and
    # nearly all of them equal to 1e-5 (a pass dropped would turn the signs of many).
    lr = cfg.preference_learning_rate
    for k in one_pass:
        torch.testing.assert_close(passes[k], one_pass[k], rtol=0, atol=lr / 10)
    close = sum(((passes[k] - one_pass[k]).abs() <= 1e-5).sum().item() for k in one_pass)
    assert close / sum(v.numel() for v in one_pass.values()) > 0.99
