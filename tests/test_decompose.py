"""Decompose: the recipe pack is rebuilt byte-identically, and drafting with it never changes
an answer (real llama.cpp on the bundled SmolLM2 base, and on the compiled toy artifact's
Q8_0 adapter); the load-time probe caps drafting where batched logits differ."""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm.artifact import minimal_manifest, open_artifact, write_artifact
from kolm.basemodel import resolve
from kolm.decompose.mine import Tokenizer, base_tokenizer, mine, replay_share
from kolm.decompose.pack import PART, Pack
from kolm.errors import ArtifactError
from kolm.keys import KeyStore
from kolm.prompt import format_from_gguf
from kolm.runtime import Decoding, Student

REPO = Path(__file__).resolve().parents[1]
INSTRUCTION = "Extract the invoice fields as JSON with keys vendor, invoice, total, currency, due."
ROWS = [json.loads(x) for x in (REPO / "examples/invoice-fields/invoices.jsonl").open()]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def base():
    return resolve("smollm2-135m-instruct").gguf


@pytest.fixture(scope="module")
def tok(base):
    return base_tokenizer(base, format_from_gguf(base).eos)


@pytest.fixture(scope="module")
def students(base):
    """Plain and pack-drafting students, and a pack mined from the plain one's own answers."""
    fmt = format_from_gguf(base)
    dec = Decoding(max_tokens=MAX_TOKENS, threads=1, flash_attn=True)
    plain = Student(base, None, fmt, INSTRUCTION, dec)
    mined_from = [plain.answer(r["input"]).output for r in ROWS[:10]]
    pack = mine(mined_from, base_tokenizer(base, fmt.eos), min_support=1)
    fast = Student(base, None, fmt, INSTRUCTION, dec, pack=pack)
    yield plain, fast
    plain.close()
    fast.close()


def _same(a, b) -> bool:
    keys = ("output", "confidence", "completion_tokens", "finish_reason", "prompt_tokens")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


# -- the pack ------------------------------------------------------------------------


def test_pack_is_rebuilt_byte_identically(tok):
    outputs = [r["output"] for r in ROWS[:120]]
    one = mine(outputs, tok, json_keys=True, heldout=[r["output"] for r in ROWS[200:]])
    shuffled = outputs[:]
    random.Random(1).shuffle(shuffled)
    two = mine(shuffled, tok, json_keys=True, heldout=[r["output"] for r in ROWS[200:]])
    assert one.to_bytes() == two.to_bytes()
    back = Pack.from_bytes(one.to_bytes())
    assert back == one and back.to_bytes() == one.to_bytes()
    assert one.entries > 50 and one.stats["expected_hit_rate"] > 0.3, one.stats
    assert set(one.closers) == {"vendor", "invoice", "total", "currency", "due"}
    assert tok.piece(one.closers["vendor"]) == b'",' and tok.piece(one.closers["due"]) == b'"}'
    assert b" " in one.value_bytes["vendor"] and b" " not in one.value_bytes["invoice"]
    assert mine(outputs[:-1], tok, json_keys=True).to_bytes() != one.to_bytes()


def test_json_keys_and_label_trie_draft_what_is_certain(tok):
    outputs = [r["output"] for r in ROWS[:120]]
    plain = mine(outputs, tok)
    keyed = mine(outputs, tok, json_keys=True)
    seqs = [tok.tokenize(r["output"]) + [tok.eos] for r in ROWS[200:]]
    assert keyed.keyed and replay_share(keyed, seqs, tok.piece) > replay_share(
        plain, seqs, tok.piece
    )
    labels = ["billing", "bug_report", "login_access", "shipping_delivery"]
    pack = mine(["billing", "billing"], tok, labels=labels)
    for label in labels:
        seq = tok.tokenize(label) + [tok.eos]
        # once the first token is out, the rest of the label (and the end) is certain
        assert all(pack.next_token(seq[:i]) == seq[i] for i in range(1, len(seq)))


def test_skeleton_closers_and_value_bytes_draft_more_of_the_held_out_answers(tok):
    """A value copied from the input stops at a byte its key never uses, then the key's
    closer ends it: more of each held-out answer is drafted, in fewer steps."""
    from kolm.decompose.mine import chain

    train, held = ROWS[:150], ROWS[200:]
    pack = mine(
        [r["output"] for r in train], tok, json_keys=True, inputs=[r["input"] for r in train]
    )
    assert pack.copy_input and pack.closers
    bare = replace(pack, closers={}, value_bytes={})
    seqs = [tok.tokenize(r["output"]) + [tok.eos] for r in held]
    args = dict(sources=[r["input"] for r in held], tokenize=tok.tokenize)
    assert replay_share(pack, seqs, tok.piece, **args) > replay_share(bare, seqs, tok.piece, **args)
    text = b'{"vendor": "Acme Tools", "invoice": "IN'
    source = b"Invoice INV-2291 from Acme Tools for $310.00 is due 2025-05-01."
    answer = tok.tokenize(text.decode())
    draft = chain(pack, answer, text, tok.piece, 12, source, tok.tokenize)
    assert b"".join(tok.piece(t) for t in draft).startswith(b'V-2291",')


def test_value_anchors_draft_a_value_before_its_first_byte(tok):
    """Where the input holds an anchor once (`$` before a total, `from ` before a vendor),
    the whole value is drafted from the input right after `"key": "`: held-out answers
    are drafted in fewer steps than with copying that waits for a value's first bytes."""
    from kolm.decompose.mine import chain

    train, held = ROWS[:150], ROWS[200:]
    pack = mine(
        [r["output"] for r in train], tok, json_keys=True, inputs=[r["input"] for r in train]
    )
    assert pack.copy_input and b"$" in pack.anchors["total"] and pack.anchors["vendor"]
    assert pack.stats["entries"]["anchors"] == sum(map(len, pack.anchors.values()))
    source = b"Statement from Acme Tools: invoice INV-2291, balance $310.00, payable by 2025-05-01."
    for text, value in [(b'{"vendor": "', b"Acme Tools"), (b'"total": "', b"310.00")]:
        draft = chain(pack, tok.tokenize(text.decode()), text, tok.piece, 12, source, tok.tokenize)
        assert b"".join(tok.piece(t) for t in draft).startswith(value + b'",'), text
    seqs = [tok.tokenize(r["output"]) + [tok.eos] for r in held]
    args = dict(sources=[r["input"] for r in held], tokenize=tok.tokenize)
    bare = replace(pack, anchors={})
    assert replay_share(pack, seqs, tok.piece, **args) > replay_share(bare, seqs, tok.piece, **args)
    assert Pack.from_bytes(pack.to_bytes()) == pack


def test_an_anchor_that_was_once_wrong_is_not_kept():
    from kolm.decompose.mine import _anchors

    outs = [json.dumps({"to": n, "code": "zz"}) for n in ("Ann Lee", "Bo Chan", "Cy Diaz")]
    ins = [f"please pay {n} today" for n in ("Ann Lee", "Bo Chan", "Cy Diaz")]
    assert b"pay ".endswith(_anchors(ins, outs, 2)["to"][0])  # the shortest that is unique
    assert "code" not in _anchors(ins, outs, 2)  # its value is never in the input
    wrong = [*ins, "please pay the invoice, Di Fox"]  # `pay ` once, not before the value
    got = _anchors(wrong, [*outs, json.dumps({"to": "Di Fox"})], 2)
    assert all(not a.endswith(b"pay ") for a in got.get("to", ()))
    assert _anchors(ins[:2], outs[:2], 2) == {}  # three inputs at least


def test_damaged_pack_bytes_are_refused(tok):
    data = mine([r["output"] for r in ROWS[:40]], tok, json_keys=True).to_bytes()
    for bad in (data[: len(data) // 2], b"XXXX" + data[4:], data + b"\0"):
        with pytest.raises(ArtifactError):
            Pack.from_bytes(bad)


def test_corrupt_pack_part_is_refused_by_the_artifact_check(tmp_path, tok):
    keys = KeyStore()
    keys.ensure()
    (tmp_path / PART).write_bytes(mine([r["output"] for r in ROWS[:40]], tok).to_bytes())
    (tmp_path / "config.json").write_text("{}")
    out = tmp_path / "a.kolm"
    parts = {PART: tmp_path / PART, "config.json": tmp_path / "config.json"}
    write_artifact(out, parts, minimal_manifest(), keys)
    assert open_artifact(out).manifest["parts"][PART]["size"] > 0
    bad = tmp_path / "bad.kolm"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == PART:
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    with pytest.raises(ArtifactError, match=f"changed: {PART}"):
        open_artifact(bad)


# -- drafting is lossless ----------------------------------------------------------------


def test_plain_loop_matches_llama_cpp_create_completion(base):
    """Without a pack, decoding is exactly what create_completion(top_k=1) returned before."""
    fmt = format_from_gguf(base)
    for fa in (False, True):
        dec = Decoding(max_tokens=MAX_TOKENS, threads=1, flash_attn=fa)
        s = Student(base, None, fmt, INSTRUCTION, dec)
        try:
            for r in ROWS[:3]:
                got = s.answer(r["input"])
                want = _create_completion(s, r["input"])
                assert (got.output, got.confidence, got.completion_tokens) == want
        finally:
            s.close()


def test_drafting_is_byte_identical_on_mined_inputs(students):
    plain, fast = students
    drafted = 0.0
    for r in ROWS[:10] + ROWS[150:156]:
        a, b = plain.answer(r["input"]), fast.answer(r["input"])
        assert _same(a, b), (r["input"], a, b)
        assert a.drafted_share is None and b.drafted_share is not None
        drafted += b.drafted_share
    assert drafted > 3  # the drafts were really used (and sometimes rejected)


def test_drafting_with_value_anchors_is_byte_identical(base, tok):
    """A pack mined from gold answers and inputs (copying and anchors on) proposes whole
    values to an untrained base that writes other things: every answer is unchanged."""
    train = ROWS[:150]
    pack = mine(
        [r["output"] for r in train], tok, json_keys=True, inputs=[r["input"] for r in train]
    )
    assert pack.anchors
    fmt = format_from_gguf(base)
    dec = Decoding(max_tokens=MAX_TOKENS, threads=1, flash_attn=True)
    plain = Student(base, None, fmt, INSTRUCTION, dec)
    fast = Student(base, None, fmt, INSTRUCTION, dec, pack=pack)
    try:
        proposed = 0
        for r in ROWS[200:206]:
            a, b = plain.answer(r["input"]), fast.answer(r["input"])
            assert _same(a, b), (r["input"], a, b)
            proposed += fast.last_decode.proposed
        assert proposed > 0
    finally:
        plain.close()
        fast.close()


@pytest.mark.slow
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(min_size=1, max_size=80))
def test_drafting_is_byte_identical_on_any_input(students, text):
    plain, fast = students
    assert _same(plain.answer(text), fast.answer(text))


def test_skeleton_drafts_under_a_json_grammar_are_byte_identical(base, tok):
    """A JSON pack (keyed n-grams, input copies, per-key value bytes and closers) drafting
    under `run.constrain`'s grammar gives exactly the plain constrained answers."""
    from kolm.decompose.grammar import grammar_for
    from kolm.verifier import synthesize

    verifier = synthesize([r["output"] for r in ROWS[:60]])
    gbnf = grammar_for(verifier, [ROWS[0]["output"]])
    fmt = format_from_gguf(base)
    dec = Decoding(max_tokens=72, threads=1, flash_attn=True, constrain=True)
    plain = Student(base, None, fmt, INSTRUCTION, dec, grammar=gbnf)
    try:
        rows = ROWS[:6]
        mined = [plain.answer(r["input"]).output for r in rows]
        pack = mine(mined, tok, json_keys=True, inputs=[r["input"] for r in rows], min_support=1)
        assert pack.closers and pack.value_bytes, pack.stats
        fast = Student(base, None, fmt, INSTRUCTION, dec, pack=pack, grammar=gbnf)
        try:
            drafted = 0.0
            for r in rows[:2] + ROWS[150:153]:
                a, b = plain.answer(r["input"]), fast.answer(r["input"])
                assert _same(a, b), (r["input"], a, b)
                assert verifier.check(b.output).ok or b.finish_reason == "length", b.output
                drafted += b.drafted_share
            assert drafted / 5 > 0.5  # the skeleton and copies were really drafted
        finally:
            fast.close()
    finally:
        plain.close()


def test_no_flash_attention_means_no_drafting(base, tok):
    """Without flash attention batched logits differ from one-token ones: the pack is not used."""
    fmt = format_from_gguf(base)
    pack = mine([r["output"] for r in ROWS[:40]], tok)
    s = Student(base, None, fmt, INSTRUCTION, Decoding(max_tokens=4, threads=1), pack=pack)
    try:
        assert s.pack is None and s.answer("hi").drafted_share is None
    finally:
        s.close()


def _create_completion(s: Student, text: str):
    """Plain greedy decoding as runtime.py did it before drafting (the reference)."""
    import numpy as np
    from llama_cpp import LogitsProcessorList

    margins: list[float] = []

    def record(_ids, logits):
        top2 = np.partition(logits, -2)[-2:]
        hi, lo = float(max(top2)), float(min(top2))
        z = np.exp(logits - hi).sum()
        margins.append((1.0 - float(np.exp(lo - hi))) / float(z))
        return logits

    tokens = s.prompt_tokens(text)
    s._llm.load_state(s._state)
    out = s._llm.create_completion(
        tokens,
        logits_processor=LogitsProcessorList([record]),
        max_tokens=s.decoding.max_tokens,
        temperature=0.0,
        top_k=1,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
        seed=0,
        stop=[s.fmt.eos],
    )
    c = out["choices"][0]
    return c["text"].strip(), round(min(margins), 4), int(out["usage"]["completion_tokens"])


# -- artifacts with and without a pack -----------------------------------------------------


def test_artifact_without_a_pack_still_runs_and_answers_the_same(compiled, env, tmp_path):
    from kolm.runner import Runner, load_pack

    art = open_artifact(compiled["out"])
    assert PART in art.part_names() and load_pack(art).entries > 0
    assert art.manifest["recipes"]["entries"] == load_pack(art).entries
    parts = {}
    for name in art.part_names():
        if name != PART:
            parts[name] = tmp_path / name
            shutil.copyfile(art.materialize(name), parts[name])
    manifest = {k: v for k, v in art.manifest.items() if k not in ("parts", "recipes")}
    old = tmp_path / "no-pack.kolm"
    write_artifact(old, parts, manifest, KeyStore())
    with_pack, without = Runner(compiled["out"], threads=1), Runner(old, threads=1)
    try:
        assert with_pack.settings["recipe_pack"] is True
        assert without.settings["recipe_pack"] is False and without.student.pack is None
        for text in ("I keep thinking about a red car.", "Tell me about the cello", "snow"):
            a, b = with_pack(text), without(text)
            assert a.output == b.output
            # The adapter is Q8_0: batched logits are the one-token ones, margins included.
            assert a.confidence == b.confidence
            assert a.drafted_share is not None and b.drafted_share is None
    finally:
        with_pack.close()
        without.close()


def test_format_v1_fixture_has_no_pack():
    from kolm.runner import load_pack

    fixtures = Path(__file__).parent / "fixtures"
    KeyStore().trust((fixtures / "format-v1.pub").read_text())
    assert load_pack(open_artifact(fixtures / "format-v1.kolm")) is None


def test_tokenizer_type_is_what_mining_needs(tok):
    assert isinstance(tok, Tokenizer) and tok.piece(tok.tokenize("{")[0]) == b"{"


# -- constrained output ------------------------------------------------------------------


def test_run_constrain_unset_is_on_for_label_sets_and_off_for_json(compiled, env, tmp_path):
    """An answer that is not one of a closed label set is always wrong, so a label task
    is constrained unless its spec says `run.constrain: false`; JSON stays opt-in."""
    from kolm.compiler import constrained
    from kolm.verifier import synthesize

    labels = synthesize(["a", "b", "a"], labels=["a", "b"])
    schema = synthesize(['{"x": 1}', '{"x": 2}'])
    assert labels.kind == "label" and schema.kind == "json"
    assert constrained(None, labels) and not constrained(None, schema)
    assert not constrained(False, labels) and constrained(True, schema)
    assert compiled["spec"].run.constrain is None  # the toy spec leaves it unset
    config = open_artifact(compiled["out"]).read_json("config.json")
    assert config["decoding"]["constrain"] is True  # and its labels are constrained
    from kolm.spec import load_spec

    from .toy import write_toy_task

    off = load_spec(write_toy_task(tmp_path / "t", extra="run: {constrain: false}\n"))
    assert off.run.constrain is False


@pytest.mark.parametrize("kind", ["label", "json"])
def test_grammar_constrained_outputs_always_pass_the_verifier(base, kind):
    from kolm.decompose.grammar import grammar_for
    from kolm.verifier import synthesize

    if kind == "label":
        seeds = ["billing", "bug_report", "login_access", "shipping_delivery"] * 2
        instruction = "Route the support ticket to a queue."
    else:
        seeds = [
            json.dumps({"currency": c, "paid": p, "items": n})
            for c, p, n in [
                ("USD", True, 1),
                ("EUR", False, 3),
                ("GBP", True, 2),
                ("USD", False, 7),
            ]
        ]
        instruction = INSTRUCTION
    verifier = synthesize(seeds, labels=seeds if kind == "label" else ())
    assert verifier.kind == kind
    gbnf = grammar_for(verifier, seeds)
    fmt = format_from_gguf(base)
    dec = Decoding(max_tokens=32, threads=1, flash_attn=True)
    free = Student(base, None, fmt, instruction, dec)
    tied = Student(base, None, fmt, instruction, replace(dec, constrain=True), grammar=gbnf)
    try:
        texts = [r["input"] for r in ROWS[:4]]
        free_pass = sum(verifier.check(free.answer(t).output).ok for t in texts)
        outs = [tied.answer(t).output for t in texts]
        assert all(verifier.check(o).ok for o in outs), outs
        assert free_pass < len(texts)  # the untrained base alone does not produce these shapes
    finally:
        free.close()
        tied.close()


def test_answers_mostly_outside_the_pack_are_drift_candidates():
    from kolm.drift import coverage_reason

    assert coverage_reason(0.1, 0.8, tokens=30).startswith("recipes: 10% of tokens")
    assert coverage_reason(0.6, 0.8, tokens=30) is None
    assert coverage_reason(0.0, 0.8, tokens=2) is None  # too short to judge
    assert coverage_reason(None, 0.8, tokens=30) is None  # no pack in use


def test_shipped_json_example_is_valid_and_reproducible(tmp_path):
    import subprocess
    import sys

    from kolm.compiler import prepare
    from kolm.spec import load_spec

    folder = REPO / "examples/invoice-fields"
    assert (
        (folder / "kolm.yaml")
        .read_text()
        .startswith("# Compile:  kolm compile examples/invoice-fields/kolm.yaml")
    )
    assert "CC0" in (folder / "LICENSE.txt").read_text()
    p = prepare(load_spec(folder / "kolm.yaml"))
    assert p.output_kind == "json" and len(p.train) + len(p.heldout) == 240
    assert set(p.verifier.schema["required"]) == {"vendor", "invoice", "total", "currency", "due"}
    shutil.copyfile(folder / "make_data.py", tmp_path / "make_data.py")
    subprocess.run([sys.executable, "make_data.py"], cwd=tmp_path, check=True)
    assert (tmp_path / "invoices.jsonl").read_bytes() == (folder / "invoices.jsonl").read_bytes()


def test_the_compiled_adapter_gives_every_batched_row_the_logits_of_a_one_token_step(compiled, env):
    """Compile writes the LoRA at Q8_0 (rank padded to 32): loading it adds no batch
    dependence to the base's own, so each row of a batched evaluation — what verifying
    a draft costs — has the logits a one-token step has wherever the bare base does
    (on this machine's CPUs: every batch up to 63 tokens)."""
    from llama_cpp import Llama

    from kolm.decompose.draft import invariant_rows
    from kolm.runner import adapter_path

    art = open_artifact(compiled["out"])
    assert art.manifest["adapter"] == {"tensor_type": "q8_0", "rank": 8, "stored_rank": 32}
    base = art.materialize("base.gguf")
    found = {}
    for name, lora in (("base", None), ("adapter", adapter_path(art))):
        llm = Llama(
            model_path=str(base),
            lora_path=str(lora) if lora else None,
            n_ctx=256,
            n_threads=1,
            n_threads_batch=1,
            flash_attn=True,
            verbose=False,
        )
        try:
            llm.eval(llm.tokenize(b"Tell me about the cello and the red car.", add_bos=False))
            state = llm.save_state()
            probe = llm.tokenize(b' {"word": "cello", "total": 12.5} snow', add_bos=False) * 6
            found[name] = invariant_rows(llm, state, probe[:63])
            assert llm.n_tokens == state.n_tokens  # left where it was
        finally:
            llm.close()
    assert found["adapter"] == found["base"]
    if found["base"] < 63:
        pytest.skip(f"the bare base differs from {found['base']}-token batches on this CPU")
    assert found["adapter"] == 63


def test_the_compiled_adapter_drafts_bit_exactly_and_an_f32_one_does_not_draft(
    compiled, env, tmp_path
):
    """With the Q8_0 adapter as compiled, drafted answers equal plain ones, confidences
    included. The same adapter written at F32 (as compiles before 2026-12-05 wrote it)
    turns the pack off when loaded: its batched rows differ in the last bits, which
    reach the logits only for some inputs, so no probe can clear it."""
    from kolm.export import read_lora, write_adapter
    from kolm.prompt import PromptFormat
    from kolm.runner import adapter_path, load_pack

    art = open_artifact(compiled["out"])
    base, shipped = art.materialize("base.gguf"), adapter_path(art)
    config = art.read_json("config.json")
    fmt, instruction = PromptFormat.from_dict(config["prompt_format"]), config["instruction"]
    dec = replace(Decoding(**config["decoding"]), threads=1)
    pack = load_pack(art)
    held = [json.loads(x)["input"] for x in art.read_text("heldout.jsonl").splitlines()]
    plain = Student(base, shipped, fmt, instruction, dec)
    fast = Student(base, shipped, fmt, instruction, dec, pack=pack)
    try:
        assert fast.pack is pack and fast.max_draft >= 1  # drafting (capped or not) is on
        drafted = 0.0
        for text in held[:8]:
            a, b = plain.answer(text), fast.answer(text)
            assert _same(a, b), (text, a, b)
            drafted += b.drafted_share
        assert drafted > 0
    finally:
        plain.close()
        fast.close()
    alpha, pairs = read_lora(shipped)
    f32 = tmp_path / "f32.gguf"
    assert write_adapter(pairs, "llama", alpha, f32, "f32") == "f32"
    old = Student(base, f32, fmt, instruction, dec, pack=pack)
    try:
        assert old.pack is None and old.max_rows == 1
        assert "stored at f32" in old.draft_note and "again writes its adapter" in old.draft_note
        assert old.answer(held[0]).drafted_share is None
    finally:
        old.close()


@pytest.mark.parametrize("rows", [3, 1])
def test_the_load_time_probe_caps_or_turns_off_drafting(base, tok, monkeypatch, rows):
    """Where the probe finds only `rows` matching rows, no batch that holds a draft is
    longer than that (nor holds prompt tokens), or the pack is off; answers are unchanged."""
    import kolm.decompose.draft as draft

    calls = []

    def probe(llm, state, tokens):
        calls.append(len(tokens))
        return min(rows, len(tokens))

    monkeypatch.setattr(draft, "invariant_rows", probe)
    fmt = format_from_gguf(base)
    dec = Decoding(max_tokens=MAX_TOKENS, threads=1, flash_attn=True)
    pack = mine([r["output"] for r in ROWS[:40]], tok)
    plain = Student(base, None, fmt, INSTRUCTION, dec)
    fast = Student(base, None, fmt, INSTRUCTION, dec, pack=pack)
    batches = []
    real = draft._State._decode

    def spy(self, tokens, n_logits):
        if n_logits > 1:
            batches.append(len(tokens))
        return real(self, tokens, n_logits)

    monkeypatch.setattr(draft._State, "_decode", spy)
    try:
        assert calls[0] == draft.SAME_KERNELS_BELOW - 1
        if rows == 1:
            assert fast.pack is None and "the recipe pack is off" in fast.draft_note
        else:
            assert fast.pack is pack and (fast.max_draft, fast.max_rows) == (2, 3)
            assert "capped at 2 tokens" in fast.draft_note
        for r in ROWS[200:204]:
            a, b = plain.answer(r["input"]), fast.answer(r["input"])
            assert _same(a, b), (r["input"], a, b)
        assert batches and max(batches) <= rows or rows == 1 and not batches
    finally:
        plain.close()
        fast.close()


def test_the_probe_verdict_is_cached_per_model_settings_and_machine(
    base, tok, tmp_path, monkeypatch
):
    """`kolm run` loads pay for the probe once: the verdict is kept by model files,
    llama.cpp version, kernel-picking settings and CPU; a damaged cache is probed again."""
    import kolm.decompose.draft as draft

    calls = []
    real = draft.invariant_rows

    found = []

    def counting(*args):
        calls.append(len(args[2]))
        found.append(real(*args))
        return found[-1]

    monkeypatch.setattr(draft, "invariant_rows", counting)
    cache = tmp_path / "cache" / "draft-probe.json"
    fmt = format_from_gguf(base)
    pack = mine([r["output"] for r in ROWS[:40]], tok)

    def load(threads=1):
        dec = Decoding(max_tokens=4, threads=threads, flash_attn=True)
        s = Student(base, None, fmt, INSTRUCTION, dec, pack=pack, probe_cache=cache)
        s.close()
        return s

    first = load()
    full = draft.SAME_KERNELS_BELOW - 1
    assert calls == [full] and list(json.loads(cache.read_text()).values()) == found
    load()
    assert len(calls) == 1  # the same model, settings and machine: no second probe
    load(threads=2)
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2
    # A cached cap is applied as found, without probing.
    cache.write_text(json.dumps(dict.fromkeys(json.loads(cache.read_text()), 3)))
    capped = load()
    assert len(calls) == 2 and (capped.max_draft, capped.max_rows) == (2, 3)
    cache.write_text("{damaged")
    again = load()
    assert len(calls) == 3 and again.max_rows == first.max_rows
    assert len(json.loads(cache.read_text())) == 1 and not list(cache.parent.glob("*.partial"))


class _FakeLlm:
    """What `invariant_rows` touches of a Llama: a vocabulary, a batch size, states."""

    n_batch = 512

    def __init__(self):
        self.loads = 0

    def n_vocab(self):
        return 4

    def load_state(self, state):
        self.loads += 1
        self.at = state


@pytest.mark.parametrize("bad_from", [None, 2, 4, 13, 40])
def test_invariant_rows_reports_the_largest_size_below_the_first_that_differs(
    monkeypatch, bad_from
):
    """Fake kernels whose batched rows differ once a batch reaches `bad_from` tokens:
    the check returns the largest size it checked below that (1 when 2 differs) and
    always leaves the model at the saved state."""
    import numpy as np

    import kolm.decompose.draft as draft

    llm = _FakeLlm()
    batch = {"n": 0}

    def decode(self, tokens, n_logits):
        batch["n"] = len(tokens)

    def logits(_llm, i, n_vocab):
        row = np.arange(n_vocab, dtype=np.float32)
        if batch["n"] > 1 and bad_from is not None and batch["n"] >= bad_from:
            row[0] += 1e-3  # the last bits of a batched row
        return row

    monkeypatch.setattr(draft._State, "_decode", decode)
    monkeypatch.setattr(draft, "_logits", logits)
    got = draft.invariant_rows(llm, "S", list(range(63)))
    below = [n for n in (1, *draft.PROBE_SIZES) if bad_from is None or n < bad_from]
    assert got == max(below) and llm.at == "S"
    assert draft.invariant_rows(llm, "S", [7]) == 1  # nothing to check: no difference found
    assert draft.invariant_rows(llm, "S", list(range(10)), sizes=(2, 5)) == (
        5 if bad_from is None or bad_from > 5 else 1 if bad_from <= 2 else 2
    )


def test_invariant_rows_restores_the_state_when_llama_cpp_fails(monkeypatch):
    import kolm.decompose.draft as draft

    llm = _FakeLlm()

    def decode(self, tokens, n_logits):
        raise RuntimeError("llama.cpp failed to evaluate a batch")

    monkeypatch.setattr(draft._State, "_decode", decode)
    with pytest.raises(RuntimeError):
        draft.invariant_rows(llm, "S", list(range(10)))
    assert llm.at == "S" and llm.loads == 2
