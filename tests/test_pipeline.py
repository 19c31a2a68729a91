"""The whole path on the bundled SmolLM2: compile → artifact → verify → run, for real.

One compile is shared by the module (it trains a real LoRA adapter on 2 CPU cores).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import time
import zipfile

import pytest
from click.testing import CliRunner

from kolm.artifact import open_artifact
from kolm.cli import cli
from kolm.compiler import compile_task
from kolm.errors import ArtifactError, GateError
from kolm.kscore import combine
from kolm.spec import GateConfig

from .conftest import run_cli

EXPECTED_PARTS = {
    "manifest.json",
    "signature.json",
    "model.sig",
    "base.gguf",
    "adapter.gguf",
    "train.jsonl",
    "heldout.jsonl",
    "config.json",
    "verifier.json",
    "recipes.pack",
}


def test_artifact_holds_exactly_the_expected_parts(compiled, env):
    with zipfile.ZipFile(compiled["out"]) as z:
        assert set(z.namelist()) == EXPECTED_PARTS
    art = open_artifact(compiled["out"])
    m = art.manifest
    assert m["base"]["name"] == "smollm2-135m-instruct" and m["base"]["license"] == "apache-2.0"
    assert m["base"]["embedded"] is True
    assert set(m["versions"]) >= {"kolm", "torch", "transformers", "peft", "llama_cpp"}
    assert m["task"]["labels"] == ["alpha", "bravo", "charlie", "delta"]


def test_adapter_moves_llamacpp_answers_to_the_labels(compiled, env):
    metrics = compiled["result"].manifest["metrics"]
    student, base = metrics["student"]["accuracy"], metrics["base"]["accuracy"]
    assert student >= 0.75, metrics
    assert student >= base + 0.5, metrics
    # llama.cpp with the exported adapter answers like the PyTorch model it came from.
    assert metrics["llamacpp_torch_agreement"] >= 0.9, metrics
    assert metrics["llamacpp_torch_agreement_rows"] == metrics["heldout_examples"]
    assert not any(k.startswith("torch_") for k in metrics["train"])  # answers stay in the work dir


def test_a_cached_stage_is_not_compared_with_edited_held_out_inputs(compiled, tmp_path):
    """The training stage's key covers training rows only; its cached PyTorch answers
    are for the held-out inputs of that time. Editing a held-out row alone is refused
    with a clear error, not scored against answers to other inputs."""
    from kolm.compiler import work_dir_for
    from kolm.data import load_examples, split_heldout
    from kolm.errors import TrainingError
    from kolm.spec import load_spec

    spec = compiled["spec"]
    task = tmp_path / "task"
    shutil.copytree(spec.spec_path.parent, task, ignore=shutil.ignore_patterns(".kolm-work"))
    examples = load_examples(task / spec.examples.name)
    _, held = split_heldout(examples, spec.heldout_fraction, spec.seed)
    rows = [json.loads(line) for line in (task / spec.examples.name).read_text().splitlines()]
    edited = next(r for r in rows if r["input"] == held[0].input)
    edited["input"] += " please"  # same label, same position: the split is unchanged
    (task / spec.examples.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TrainingError, match="made for other held-out inputs"):
        compile_task(
            load_spec(task / "kolm.yaml"), tmp_path / "x.kolm", progress=False,
            log=lambda m: None, work_dir=work_dir_for(spec, None),
        )  # fmt: skip
    assert not (tmp_path / "x.kolm").exists()


@pytest.mark.parametrize("n,limit", [(0, 4), (3, 4), (4, 4), (5, 4), (600, 128), (129, 128)])
def test_the_agreement_sample_is_bounded_and_evenly_spread(n, limit):
    from kolm.compiler import agreement_rows

    rows = agreement_rows(n, limit)
    assert len(rows) == min(n, limit) and len(set(rows)) == len(rows)
    assert rows == sorted(rows) and all(0 <= i < n for i in rows)
    if n > limit:
        assert rows[0] == 0
        gaps = {b - a for a, b in zip(rows, rows[1:], strict=False)} | {n - rows[-1]}
        assert gaps <= {n // limit, -(-n // limit)}  # every gap the floor or ceiling of n/limit


def test_a_large_held_out_set_is_checked_against_pytorch_on_a_sample(compiled, monkeypatch):
    """Above `AGREEMENT_ROWS` held-out inputs, PyTorch decodes an evenly spread sample;
    the manifest, the log and the report say how many rows the agreement covers."""
    import kolm.compiler

    monkeypatch.setattr(kolm.compiler, "AGREEMENT_ROWS", 3)
    root = compiled["root"]
    lines: list[str] = []
    result = compile_task(
        compiled["spec"], root / "sampled.kolm", progress=False, log=lines.append,
        work_dir=root / "sampled-work",
    )  # fmt: skip
    m = result.manifest["metrics"]
    n = m["heldout_examples"]
    assert n > 3 and m["llamacpp_torch_agreement_rows"] == 3
    assert f"kolm: PyTorch reference answers on 3 of {n} held-out inputs (evenly spread)" in lines
    agreed = m["llamacpp_torch_agreement"] * 3  # a share of the 3 sampled rows
    assert abs(agreed - round(agreed)) < 1e-3, m["llamacpp_torch_agreement"]
    done = json.loads(next((root / "sampled-work").rglob("done.json")).read_text())
    assert done["torch_heldout_rows"] == kolm.compiler.agreement_rows(n, 3)
    assert len(done["torch_heldout_outputs"]) == 3
    report = (root / "sampled.report.md").read_text()
    assert f"(on 3 of {n} held-out)" in report
    shown = CliRunner().invoke(cli, ["inspect", str(result.artifact)])
    assert shown.exit_code == 0 and f"(on 3 of {n} held-out)" in shown.output, shown.output
    # The student's accuracy with its count and 95% interval, in inspect and the report.
    s = m["student"]
    lo, hi = s["accuracy_ci95"]
    interval = f"{s['accuracy']:.1%} ({s['correct']}/{n}; 95% interval {lo:.1%}–{hi:.1%})"
    assert interval in shown.output and f"- Student, held-out: {interval}" in report


def test_cli_verify_inspect_and_run(compiled, env):
    out = str(compiled["out"])
    v = run_cli("verify", out, env=env)
    assert v.returncode == 0, v.stderr
    assert "signature valid" in v.stdout and "adapter.gguf" in v.stdout
    i = run_cli("inspect", out, "--json", env=env)
    assert i.returncode == 0 and json.loads(i.stdout)["task"]["name"] == "toy"
    r = run_cli("run", out, "Tell me about a shiny violin", "--json", env=env)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["output"] == "delta"


def test_batch_run_matches_single_runs(compiled, env, tmp_path):
    inputs = ["I keep thinking about a big storm.", "my bicycle", "a jar of cherries"]
    (tmp_path / "in.txt").write_text("\n".join(inputs) + "\n")
    r = run_cli("run", str(compiled["out"]), "--input", str(tmp_path / "in.txt"), env=env)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["input"] for row in rows] == inputs
    from kolm.runner import load_student

    _, student = load_student(compiled["out"])
    try:
        # Same answers in a fresh process and in any order: the prefix state is reset per call.
        assert [student.answer(x).output for x in reversed(inputs)] == [
            row["output"] for row in reversed(rows)
        ]
    finally:
        student.close()


def test_tampered_adapter_is_refused_by_run(compiled, env, tmp_path):
    bad = tmp_path / "bad.kolm"
    with zipfile.ZipFile(compiled["out"]) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "adapter.gguf":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            zout.writestr(info, data)
    r = run_cli("run", str(bad), "hello", env=env)
    assert r.returncode == 4
    assert "changed: adapter.gguf" in r.stderr
    with pytest.raises(ArtifactError):
        open_artifact(bad)


def test_recompile_reuses_the_trained_adapter(compiled, env):
    out = compiled["root"] / "again.kolm"
    t0 = time.perf_counter()
    lines: list[str] = []
    result = compile_task(compiled["spec"], out, progress=False, log=lines.append, embed_base=False)
    assert result.cached_training
    # The untrained base's held-out answers are reused too, with the same figures.
    assert any("the untrained base's answers are cached" in x for x in lines), lines
    first = compiled["result"].manifest["metrics"]["base"]
    assert result.manifest["metrics"]["base"] == first
    # A cache file that does not read back is not trusted: the base is scored again.
    (cache,) = (compiled["spec"].spec_path.parent / ".kolm-work").rglob("base-answers-*.json")
    cache.write_text('{"outputs": ["tru')
    lines.clear()
    again = compile_task(
        compiled["spec"], compiled["root"] / "again2.kolm", progress=False, log=lines.append
    )
    assert any("evaluating student and untrained base" in x for x in lines), lines
    assert again.manifest["metrics"]["base"]["accuracy"] == first["accuracy"]
    assert json.loads(cache.read_text())["outputs"]  # rewritten whole
    assert time.perf_counter() - t0 < compiled["seconds"] / 2
    with zipfile.ZipFile(out) as z:
        assert "base.gguf" not in z.namelist()
    assert result.manifest["base"]["embedded"] is False
    # The base is found locally by name and checked by hash.
    r = run_cli("run", str(out), "Tell me about the tram", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "bravo"


def test_base_by_reference_with_wrong_override_is_refused(compiled, env, tmp_path):
    out = compiled["root"] / "again.kolm"
    if not out.exists():
        pytest.skip("needs test_recompile_reuses_the_trained_adapter")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    r = run_cli("run", str(out), "hi", "--base", str(fake), env=env)
    assert r.returncode == 3
    assert "not the base this artifact was built on" in r.stderr


def test_kscore_and_report_are_in_the_signed_manifest(compiled, env):
    m = open_artifact(compiled["out"]).manifest
    k = m["kscore"]
    assert set(k["components"]) == {"A", "S", "L", "C", "V"}
    assert k["K"] >= 0.7 and m["gate"]["passed"] and not m["gate"]["overridden"]
    assert k["formula"] == "weighted-harmonic-v2"
    assert k["K"] == pytest.approx(combine(k["components"]), abs=1e-3)
    assert m["metrics"]["teacher"]["source"] == "gold"
    floor = m["metrics"]["floor"]  # the toy task is a label task
    assert floor["method"].startswith("tfidf") and 0 <= floor["accuracy"] <= 1
    assert floor["heldout_examples"] == m["metrics"]["heldout_examples"]
    assert m["metrics"]["student"]["macro_f1"] >= 0.7
    html = (compiled["root"] / "toy.report.html").read_text()
    assert f"K = {k['K']:.3f}" in html
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    for title in (
        "Confusion matrix",
        "Latency histogram",
        "K-score components",
        "Worst errors",
        "break-even",
    ):
        assert title in html
    md = (compiled["root"] / "toy.report.md").read_text()
    assert f"K = {k['K']:.3f}" in md and "| A (accuracy) |" in md
    assert "floor: TF-IDF + logistic regression" in md and "- Floor: " in md


def test_compile_summary_shows_the_floor_and_the_formula(compiled, capsys):
    from kolm.cli.compile import _print_compile_summary

    _print_compile_summary(compiled["result"])
    out = capsys.readouterr().out
    assert re.search(r"TF-IDF floor +\d+\.\d% \(macro-F1 \d+\.\d%\); the student's", out)
    assert re.search(r"rows only the student gets right, \d+ only the floor; p = \d\.\d\d", out)
    student = compiled["result"].manifest["metrics"]["student"]
    lo, hi = student["accuracy_ci95"]
    assert (
        lo <= student["accuracy"] <= hi
        and student["n"] == compiled["result"].manifest["metrics"]["heldout_examples"]
    )
    shown = f"{student['accuracy']:.1%} ({student['correct']}/{student['n']}; 95% interval "
    assert re.search(r"student accuracy +" + re.escape(shown) + r"\d+\.\d%–\d+\.\d%\)", out)
    assert re.search(r"K-score +\d\.\d{3} \(A=.*; weighted harmonic mean", out)


def test_compile_json_prints_one_object_a_script_can_read(compiled, env, tmp_path):
    spec = compiled["root"] / "task" / "kolm.yaml"
    out = tmp_path / "j.kolm"
    r = run_cli("compile", str(spec), "--out", str(out), "-q", "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # stdout holds the JSON object and nothing else
    manifest = open_artifact(out).manifest
    assert summary["artifact"] == str(out) and summary["bytes"] == out.stat().st_size
    assert summary["kscore"] == manifest["kscore"] and summary["cached_training"] is True
    assert summary["metrics"]["student"] == manifest["metrics"]["student"]


def test_gate_blocks_below_min_k_and_force_ships_marked(compiled, env, tmp_path):
    strict = dataclasses.replace(compiled["spec"], gate=GateConfig(min_k=0.9999))
    out = tmp_path / "blocked.kolm"
    with pytest.raises(GateError) as err:
        compile_task(strict, out, progress=False, log=lambda m: None)
    assert "below the gate 1.00 by" in str(err.value) and "--force" in str(err.value)
    assert not out.exists() and (tmp_path / "blocked.report.html").exists()
    assert "BLOCKED" in (tmp_path / "blocked.report.md").read_text()
    forced = compile_task(strict, out, progress=False, log=lambda m: None, force=True)
    g = open_artifact(out).manifest["gate"]
    assert g["passed"] is False and g["overridden"] is True and forced.manifest["gate"] == g


def test_gate_exit_code_from_the_cli(compiled, env, tmp_path):
    spec = compiled["root"] / "task" / "kolm.yaml"
    strict = spec.with_name("strict.yaml")
    strict.write_text(spec.read_text() + "gate: {min_k: 0.5, min_accuracy: 1.01}\n")
    r = run_cli("compile", str(strict), "--out", str(tmp_path / "s.kolm"), "-q", env=env)
    assert r.returncode == 2 and "gate.min_accuracy" in r.stderr
    strict.write_text(spec.read_text() + "gate: 0.9999\n")
    r = run_cli("compile", str(strict), "--out", str(tmp_path / "s.kolm"), "-q", env=env)
    assert r.returncode == 8, r.stderr
    assert "not shipped" in r.stderr and not (tmp_path / "s.kolm").exists()


def test_eval_on_new_data_and_refusal_when_tampered(compiled, env, tmp_path):
    rows = [
        {"input": "Tell me about a tiny violin", "output": "delta"},
        {"input": "my old scooter", "output": "bravo"},
        {"input": "a bowl of grapes", "output": "alpha"},
        {"input": "the fog this morning", "output": "bravo"},
    ]  # last one is labeled wrong on purpose
    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_cli("eval", str(compiled["out"]), str(data), "--json", "-q", env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["n"] == 4 and m["accuracy"] == 0.75 and m["verifier_pass_rate"] == 1.0
    assert m["per_class"]["bravo"]["support"] == 2
    table = run_cli("eval", str(compiled["out"]), str(data), "-q", env=env)
    assert "macro-F1" in table.stdout
    bad = tmp_path / "bad.kolm"
    with zipfile.ZipFile(compiled["out"]) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data_ = zin.read(info.filename)
            zout.writestr(
                info,
                data_.replace(b"alpha", b"omega") if info.filename == "verifier.json" else data_,
            )
    refused = run_cli("eval", str(bad), str(data), env=env)
    assert refused.returncode == 4 and "changed: verifier.json" in refused.stderr


def test_roi_uses_the_manifest_figures(compiled, env):
    r = run_cli("roi", str(compiled["out"]), "--calls-per-month", "100000", "--json", env=env)
    assert r.returncode == 0, r.stderr
    roi = json.loads(r.stdout)
    # No teacher: the gate's default $1 per 1k calls stands in; the student costs $0.
    assert roi["frontier_usd_per_month"] == 100.0 and roi["compiled_usd_per_month"] == 0.0
    assert roi["break_even_calls"] == 0.0 and roi["teacher_source"] == "gold"
