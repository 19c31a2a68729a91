"""Recall inside artifacts: the index is a signed part, compile and run retrieve the same
chunks, receipts record them and replay reproduces the answer, a swapped index is refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
import zipfile
from pathlib import Path

import pytest

from kolm.artifact import minimal_manifest, open_artifact, write_artifact
from kolm.errors import ArtifactError, SpecError
from kolm.keys import KeyStore
from kolm.recall import Embedder, build_index
from kolm.recall.embed import EmbedderInfo
from kolm.recall.ground import INDEX_PART, Grounder
from kolm.spec import load_spec

from .conftest import run_cli, write_jsonl

DOCS = {
    "fees.md": "# Fees\n\nThe Zephyr plan costs 41 crowns a month.\n\n"
    "## Late fees\n\nA late payment adds 7 crowns.\n",
    "people.csv": "team,lead\nHarbor,Mira Osk\nLantern,Tobi Renn\nQuarry,Ada Vell\n",
    "hours.md": "# Hours\n\nThe Quarry desk opens at 06:40 and closes at 15:10.\n",
}
QA = [
    ("What does the Zephyr plan cost per month?", "41 crowns"),
    ("How much is added for a late payment?", "7 crowns"),
    ("Who leads the Harbor team?", "Mira Osk"),
    ("Who leads the Lantern team?", "Tobi Renn"),
    ("Who is the lead of Quarry?", "Ada Vell"),
    ("When does the Quarry desk open?", "06:40"),
    ("When does the Quarry desk close?", "15:10"),
    ("What is the monthly price of Zephyr?", "41 crowns"),
]


def write_task(root: Path, corpus: bool = True) -> Path:
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    (docs / "empty.md").write_text("")
    write_jsonl(root / "qa.jsonl", [{"input": q, "output": a} for q, a in QA])
    spec = {
        "name": "recall-toy",
        "description": "Answer from the context with the short answer only.",
        "examples": "qa.jsonl",
        "heldout_fraction": 0.25,
        "gate": {"min_k": 0.0},
        "train": {"steps": 2, "batch_size": 4, "max_seq_len": 256},
        "run": {"threads": 1, "max_tokens": 8},
    }
    if corpus:
        spec |= {"corpus": "docs/", "recall": {"k": 2, "chunk_chars": 200}}
    (root / "kolm.yaml").write_text(json.dumps(spec))
    return root / "kolm.yaml"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def signed_with_index(tmp_path: Path, index: Path, keys: KeyStore) -> Path:
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    out = tmp_path / "a.kolm"
    write_artifact(out, {INDEX_PART: index, "config.json": cfg}, minimal_manifest(), keys)
    return out


def test_a_swapped_or_corrupt_index_part_is_refused(tmp_path, embedder):
    root = tmp_path / "t"
    write_task(root)
    good, other = tmp_path / "good.sqlite", tmp_path / "other.sqlite"
    build_index(["docs"], good, base_dir=root, embedder=embedder)
    build_index(["docs/fees.md"], other, base_dir=root, embedder=embedder)
    keys = KeyStore()
    keys.ensure()
    art = signed_with_index(tmp_path, good, keys)
    assert open_artifact(art, keys).part_names() == ["config.json", INDEX_PART]

    def rewrite(dst: Path, data_for_index: bytes) -> Path:
        with zipfile.ZipFile(art) as zin, zipfile.ZipFile(dst, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info.filename)
                zout.writestr(info, data_for_index if info.filename == INDEX_PART else data)
        return dst

    swapped = rewrite(tmp_path / "swapped.kolm", other.read_bytes())
    with pytest.raises(ArtifactError, match=f"changed: {INDEX_PART}"):
        open_artifact(swapped, keys)
    flipped = bytearray(good.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    corrupt = rewrite(tmp_path / "corrupt.kolm", bytes(flipped))
    with pytest.raises(ArtifactError, match=f"changed: {INDEX_PART}"):
        open_artifact(corrupt, keys)


def test_the_bundled_index_retrieves_what_the_build_index_retrieves(tmp_path, embedder):
    root = tmp_path / "t"
    write_task(root)
    built = tmp_path / "i.sqlite"
    build_index(["docs"], built, base_dir=root, embedder=embedder)
    keys = KeyStore()
    keys.ensure()
    art = open_artifact(signed_with_index(tmp_path, built, keys), keys)
    blob = art.materialize(INDEX_PART)
    info = EmbedderInfo.from_dict(embedder.info.to_dict())
    at_compile = Grounder.open(built, info, k=2, mode="hybrid")
    at_run = Grounder.open(blob, info, k=2, mode="hybrid")
    for q, _ in QA:
        assert at_compile.ids(q) == at_run.ids(q)
        assert at_run.by_ids(at_run.ids(q)) == at_compile.context(q)
    # the materialized blob is opened read-only: its hash still matches after queries
    assert open_artifact(art.path, keys).materialize(INDEX_PART) == blob
    assert sqlite3.connect(blob).execute("SELECT count(*) FROM chunks").fetchone()[0] > 0


def test_corpus_is_checked_with_the_other_problems(tmp_path):
    root = tmp_path / "t"
    write_task(root)
    spec = json.loads((root / "kolm.yaml").read_text())
    spec |= {"corpus": ["docs/", "missing/"], "recall": {"k": 0}, "heldout_fraction": 2}
    (root / "kolm.yaml").write_text(json.dumps(spec))
    with pytest.raises(SpecError) as e:
        load_spec(root / "kolm.yaml")
    text = str(e.value)
    assert "nothing found at missing/" in text and "recall.k" in text
    assert "heldout_fraction" in text


@pytest.mark.slow
def test_compile_grounds_every_prompt_and_run_replays_the_same_chunks(tmp_path):
    from kolm.compiler import compile_task
    from kolm.receipts import ReceiptStore
    from kolm.runner import Runner, replay

    spec = load_spec(write_task(tmp_path / "t"))
    out = tmp_path / "toy.kolm"
    result = compile_task(spec, out, progress=False, log=lambda m: None, embed_base=False)
    m = result.manifest
    assert INDEX_PART in m["parts"] and "grounding.jsonl" in m["parts"]
    assert m["recall"]["embedder"]["dim"] == 384 and m["recall"]["chunks"] > 0
    assert m["recall"]["skipped"] == ["docs/empty.md"]
    art = open_artifact(out)
    grounding = [json.loads(x) for x in art.read_text("grounding.jsonl").splitlines()]
    held = [g for g in grounding if g["split"] == "heldout"]
    assert held and all(len(g["chunks"]) == 2 for g in grounding)

    store = ReceiptStore(tmp_path / "receipts.sqlite")
    runner = Runner(out, receipts=store, threads=1)
    try:
        for g in held:
            r = runner(g["input"])
            assert list(r.context) == g["chunks"]  # same chunks at compile and at run
            assert store.get(r.receipt).context == g["chunks"]
    finally:
        runner.close()
    rep = replay(r.receipt, store)
    assert rep.reproduced

    cli = run_cli("recall", str(out), held[0]["input"], "--json")
    assert cli.returncode == 0, cli.stderr
    assert [h["id"] for h in json.loads(cli.stdout)] == held[0]["chunks"]
    shown = run_cli("inspect", str(out))
    assert "embedder" in shown.stdout and "all-MiniLM-L6-v2" in shown.stdout
    assert "source docs/empty.md" in shown.stdout and "empty" in shown.stdout
    shutil.rmtree(tmp_path / "t")
