"""Compile with a teacher: unlabeled inputs are labeled, verified and trained on."""

from __future__ import annotations

import json
import zipfile

from kolm.artifact import open_artifact
from kolm.compiler import compile_task
from kolm.spec import load_spec

from .conftest import write_jsonl
from .oracle import Oracle
from .toy import INSTRUCTION, toy_examples


def test_compile_labels_unlabeled_inputs_and_packs_the_evidence(tmp_path, monkeypatch):
    rows = toy_examples()
    seeds, pool = rows[::2], rows[1::2]
    truth = {r["input"]: r["output"] for r in rows}
    oracle = Oracle(truth, sorted(set(truth.values())), p_correct=0.6, faults={"500": 0.1})
    url = oracle.start()
    monkeypatch.setenv("KOLM_OPENAI_COMPATIBLE_API_KEY", "sk-local-test")
    try:
        write_jsonl(tmp_path / "seeds.jsonl", seeds)
        (tmp_path / "pool.txt").write_text("\n".join(r["input"] for r in pool) + "\n")
        (tmp_path / "kolm.yaml").write_text(
            f"name: toy\ndescription: {json.dumps(INSTRUCTION)}\nexamples: seeds.jsonl\nunlabeled: pool.txt\n"
            "heldout_fraction: 0.25\ntrain: {steps: 4, max_seq_len: 96}\ngate: 0\n"
            f"teacher: {{model: 'openai-compatible:oracle@{url}/v1', k: 8}}\n"
        )
        spec = load_spec(tmp_path / "kolm.yaml")
        result = compile_task(spec, tmp_path / "toy.kolm", progress=False, log=lambda m: None)
    finally:
        oracle.stop()
    d = result.manifest["distill"]
    assert d["inputs"] == len(pool) and d["labeled"] >= len(pool) - 2
    assert d["calls"] == 8 * len(pool) and d["teacher"] == "openai-compatible:oracle"
    art = open_artifact(tmp_path / "toy.kolm")
    with zipfile.ZipFile(art.path) as z:
        names = set(z.namelist())
        train = [json.loads(x) for x in z.read("train.jsonl").decode().splitlines()]
        held = [json.loads(x) for x in z.read("heldout.jsonl").decode().splitlines()]
        distilled = [json.loads(x) for x in z.read("distilled.jsonl").decode().splitlines()]
    assert {"distilled.jsonl", "preferences.jsonl", "verifier.json"} <= names
    # Teacher labels joined the training set; held-out inputs never did.
    assert {r["input"] for r in pool} & {t["input"] for t in train}
    assert not {h["input"] for h in held} & {t["input"] for t in train}
    correct = sum(x["output"] == truth[x["input"]] for x in distilled if x["output"])
    assert correct >= 0.9 * d["labeled"]
    assert art.read_json("verifier.json")["kind"] == "label"
    # The teacher baseline was measured on the held-out inputs (one cached call each).
    t = art.manifest["metrics"]["teacher"]
    assert t["source"] == "teacher" and 0.4 <= t["accuracy"] <= 1.0 and t["latency_s"] > 0
    assert art.manifest["metrics"]["student_teacher_agreement"] is not None
    assert oracle.requests >= 8 * len(pool) + len(held)
