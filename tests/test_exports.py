"""Exports and merged builds, loaded by the libraries their users would use.

Each export is loaded with its own runtime (llama-cpp-python for the merged GGUF,
peft + transformers for the PEFT folder; the Modelfile is parsed and its template
rendered) and its answers on the held-out inputs are compared with `kolm run`'s.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kolm.artifact import open_artifact
from kolm.compiler import compile_task
from kolm.export import permute_rows
from kolm.exports import go_template, unpermute_rows
from kolm.merge import PRECISIONS
from kolm.prompt import PromptFormat
from kolm.spec import QUANTIZE_CHOICES

from .conftest import run_cli

MIN_IDENTICAL = 0.98


def identical(a: list[str], b: list[str]) -> float:
    assert len(a) == len(b) and a
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@pytest.fixture(scope="module")
def reference(compiled, tmp_path_factory):
    """`kolm run` (the real CLI) on the artifact's held-out inputs."""
    art = open_artifact(compiled["out"])
    rows = [json.loads(x) for x in art.read_text("heldout.jsonl").splitlines() if x.strip()]
    inputs = [r["input"] for r in rows]
    folder = tmp_path_factory.mktemp("reference")
    (folder / "in.txt").write_text("\n".join(inputs) + "\n")
    env = {"KOLM_HOME": str(compiled["home"])}
    r = run_cli(
        "run", str(compiled["out"]), "--input", str(folder / "in.txt"), "--threads", "1", env=env
    )
    assert r.returncode == 0, r.stderr
    outputs = [json.loads(line)["output"] for line in r.stdout.splitlines()]
    config = art.read_json("config.json")
    return {"inputs": inputs, "outputs": outputs, "config": config, "id": art.id, "art": art}


def _record(folder, compiled_result) -> dict:
    record = json.loads((folder / "kolm-export.json").read_text())
    assert record["artifact_id"] == compiled_result.artifact_id
    assert record["k"] == pytest.approx(compiled_result.manifest["kscore"]["K"])
    return record


def test_precision_choices_are_the_merge_precisions():
    assert PRECISIONS == QUANTIZE_CHOICES == ("adapter", "f16", "q8_0", "q4_0", "q4_k")


def test_unpermute_inverts_llama_cpp_row_order():
    w = np.arange(2 * 8 * 3).reshape(16, 3)
    assert np.array_equal(unpermute_rows(permute_rows(w, 2), 2), w)
    assert not np.array_equal(permute_rows(w, 2), w)


def test_go_template_renders_the_same_prompt_as_kolm():
    fmt = PromptFormat.from_dict(
        {
            "template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
            "<|im_end|>\n{% endfor %}<|im_start|>assistant\n{{ '{{x}}' }}",
            "eos": "<|im_end|>",
        }
    )
    go = go_template(fmt)
    assert go.count("{{ .System }}") == 1 and go.count("{{ .Prompt }}") == 1
    assert '{{ "{{" }}x}}' in go  # literal braces are escaped for Go
    rendered = go.replace("{{ .System }}", "SYS").replace("{{ .Prompt }}", "USER")
    assert rendered.replace('{{ "{{" }}', "{{") == fmt.render("SYS", "USER")


def test_gguf_export_loads_in_llama_cpp_and_agrees_with_kolm_run(
    compiled, env, reference, tmp_path
):
    from gguf import GGUFReader
    from llama_cpp import Llama

    out = tmp_path / "gguf"
    r = run_cli("export", str(compiled["out"]), "--to", "gguf", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    record = _record(out, compiled["result"])
    assert record["precision"] == "f16" and list(record["files"]) == ["toy-f16.gguf"]
    model = out / "toy-f16.gguf"
    header = GGUFReader(str(model)).fields
    assert header["kolm.manifest_id"].contents() == reference["id"]
    assert float(header["kolm.k"].contents()) == pytest.approx(record["k"], abs=1e-4)
    cfg = reference["config"]
    llm = Llama(model_path=str(model), n_ctx=1024, n_threads=1, seed=0, verbose=False)
    try:
        got = []
        for text in reference["inputs"]:
            reply = llm.create_chat_completion(
                messages=[
                    {"role": "system", "content": cfg["instruction"]},
                    {"role": "user", "content": text},
                ],
                temperature=0.0,
                max_tokens=cfg["decoding"]["max_tokens"],
            )
            got.append(reply["choices"][0]["message"]["content"].strip())
    finally:
        llm.close()
    assert identical(got, reference["outputs"]) >= MIN_IDENTICAL, (got, reference["outputs"])


def test_peft_export_loads_with_peft_and_agrees_with_kolm_run(compiled, env, reference, tmp_path):
    import torch
    from peft import PeftModel

    from kolm.train import greedy_outputs, load_base, prompt_ids

    out = tmp_path / "peft"
    r = run_cli("export", str(compiled["out"]), "--to", "peft", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    _record(out, compiled["result"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    torch.set_num_threads(1)
    base, tok = load_base(out / "base" / "base.gguf")
    model = PeftModel.from_pretrained(base, str(out))
    model.eval()
    cfg = reference["config"]
    fmt = PromptFormat.from_dict(cfg["prompt_format"])
    prompts = prompt_ids(tok, fmt, cfg["instruction"], reference["inputs"])
    got = greedy_outputs(model, tok, prompts, cfg["decoding"]["max_tokens"])
    assert identical(got, reference["outputs"]) >= MIN_IDENTICAL, (got, reference["outputs"])


def test_ollama_modelfile_names_its_files_and_renders_kolms_prompt(
    compiled, env, reference, tmp_path
):
    out = tmp_path / "ollama"
    r = run_cli("export", str(compiled["out"]), "--to", "ollama", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    record = _record(out, compiled["result"])
    assert record["precision"] == "adapter"
    text = (out / "Modelfile").read_text()
    assert re.search(rf"^# kolm export .*manifest {reference['id']}, K \d\.\d{{4}}$", text, re.M)
    directives, params = parse_modelfile(text)
    assert (out / directives["FROM"].removeprefix("./")).is_file()
    assert (out / directives["ADAPTER"].removeprefix("./")).is_file()
    cfg = reference["config"]
    assert directives["SYSTEM"] == cfg["instruction"]
    assert ("stop", json.dumps(cfg["prompt_format"]["eos"])) in params
    assert ("temperature", "0") in params
    template = directives["TEMPLATE"]
    fmt = PromptFormat.from_dict(cfg["prompt_format"])
    for text_in in reference["inputs"]:
        rendered = template.replace("{{ .System }}", cfg["instruction"])
        rendered = rendered.replace("{{ .Prompt }}", text_in)
        assert rendered == fmt.render(cfg["instruction"], text_in)


def parse_modelfile(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Directives (triple-quoted values unquoted, across lines) and PARAMETER pairs."""
    directives, params, lines = {}, [], iter(text.splitlines())
    for line in lines:
        if not line or line.startswith("#"):
            continue
        word, _, value = line.partition(" ")
        if value.startswith('"""'):
            value = value[3:]
            while not value.endswith('"""'):
                value += "\n" + next(lines)
            value = value[:-3]
        if word == "PARAMETER":
            params.append(tuple(value.split(" ", 1)))
        else:
            directives[word] = value
    return directives, params


@pytest.fixture(scope="module")
def merged_f16(compiled):
    """The toy task compiled again with quantize: f16 (training is cached)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KOLM_HOME", str(compiled["home"]))
    spec = dataclasses.replace(compiled["spec"], quantize="f16")
    out = compiled["root"] / "toy-f16.kolm"
    result = compile_task(spec, out, progress=False, log=lambda m: None, force=True)
    yield result
    mp.undo()


def test_merged_f16_build_ships_one_model_and_agrees(merged_f16, compiled, env, reference):
    m = merged_f16.manifest
    assert "adapter.gguf" not in m["parts"] and m["base"]["embedded"] is True
    p = m["precision"]
    assert p["kind"] == "f16" and p["agreement"] >= MIN_IDENTICAL and not p["flagged"]
    assert p["tensor_types"] == {"F16": 211, "F32": 61}
    assert compiled["result"].manifest["precision"]["kind"] == "adapter"
    out = str(merged_f16.artifact)
    r = run_cli("run", out, "Tell me about a shiny violin", "--json", "--threads", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == "delta"
    i = run_cli("inspect", out, env=env)
    assert re.search(r"precision\s+f16: model \d+\.\d MB, accuracy", i.stdout), i.stdout
    v = run_cli("verify", out, env=env)
    assert v.returncode == 0 and "adapter.gguf" not in v.stdout


def test_merged_build_refuses_peft_and_base(merged_f16, env, tmp_path):
    out = str(merged_f16.artifact)
    r = run_cli("export", out, "--to", "peft", "--out", str(tmp_path / "p"), env=env)
    assert r.returncode == 15 and "no adapter to export" in r.stderr
    r = run_cli(
        "export", out, "--to", "gguf", "--precision", "q4_0", "--out", str(tmp_path), env=env
    )
    assert r.returncode == 15 and "compound" in r.stderr
    r = run_cli("run", out, "hello", "--base", str(tmp_path / "x.gguf"), env=env)
    assert r.returncode == 3 and "merged build" in r.stderr


def test_merged_build_exports_its_model_unchanged(merged_f16, env, tmp_path):
    from gguf import GGUFReader

    out = tmp_path / "gguf"
    r = run_cli("export", str(merged_f16.artifact), "--to", "gguf", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    fields = GGUFReader(str(out / "toy-f16.gguf")).fields
    assert fields["kolm.manifest_id"].contents() == merged_f16.artifact_id
    with zipfile.ZipFile(merged_f16.artifact) as z:
        shipped = z.getinfo("base.gguf").file_size
    assert abs((out / "toy-f16.gguf").stat().st_size - shipped) < 4096  # header only grew


@pytest.mark.parametrize(
    "precision",
    [
        "q4_k",
        pytest.param("q8_0", marks=pytest.mark.slow),
        pytest.param("q4_0", marks=pytest.mark.slow),
    ],
)
def test_quantized_merges_load_and_answer(compiled, reference, tmp_path, precision):
    from kolm.artifact import ADAPTER_PART
    from kolm.merge import merge_gguf
    from kolm.runtime import Decoding, Student

    art = reference["art"]
    rep = merge_gguf(art.base_path(), art.materialize(ADAPTER_PART), tmp_path / "m.gguf", precision)
    if precision == "q4_k":  # width 576 is not a multiple of 256: most matrices fall back
        assert rep.fallbacks and "256" in rep.note()
    cfg = reference["config"]
    decoding = dataclasses.replace(Decoding(**cfg["decoding"]), threads=1)
    fmt = PromptFormat.from_dict(cfg["prompt_format"])
    student = Student(Path(rep.path), None, fmt, cfg["instruction"], decoding)
    try:
        outs = [student.answer(x).output for x in reference["inputs"][:4]]
    finally:
        student.close()
    assert all(outs), outs
