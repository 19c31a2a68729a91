"""Decompose against hostile input: damaged, bombed and lying recipe packs, and labels or
JSON Schemas full of grammar metacharacters.

The pack tests parse real bytes; the grammar tests hand the GBNF to llama.cpp's own
grammar parser over the bundled SmolLM2 vocabulary (vocab only, no weights loaded),
and one test loads the real model to show a pack naming unknown tokens is refused
before llama.cpp sees them (it aborted the process)."""

from __future__ import annotations

import contextlib
import json
import random
import struct
import time
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolm.basemodel import resolve
from kolm.decompose import pack as pack_mod
from kolm.decompose.grammar import grammar_for
from kolm.decompose.pack import MAGIC, VERSION, Pack
from kolm.errors import ArtifactError, SpecError

GOOD = Pack(
    eos=2,
    order=3,
    max_prefix=4,
    json_keys=True,
    copy_input=True,
    prefix={(): 5, (1, 2): 3},
    ngrams={(4,): 5, (4, 5): 6},
    keyed={("total", (1,)): 2, ("vendor", (7, 8)): 9},
    closers={"total": 6, "vendor": 6},
    value_bytes={"total": b".0123456789", "vendor": b" ABab"},
    anchors={"total": (b"$", b"\x00Total "), "vendor": (b"from ",)},
    stats={"sequences": 3},
)
HEADER = {
    "eos": 2,
    "order": 3,
    "max_prefix": 4,
    "json_keys": True,
    "copy_input": False,
    "stats": {},
    "keys": [],
}
EMPTY_TABLES = struct.pack("<III", 0, 0, 0)


def _pack_bytes(header, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<HI", VERSION, len(head)) + head + body


def _usable(p: Pack) -> None:
    """An accepted pack's fields have their types, and lookups work."""
    assert type(p.eos) is int and type(p.order) is int and type(p.max_prefix) is int
    assert isinstance(p.stats, dict) and isinstance(p.json_keys, bool)
    for key in (None, "total", "x"):
        p.next_token([1, 2, 3, 4, 5], key)
        p.next_token([], key)
    p.max_token()


# -- the pack -------------------------------------------------------------------------


def test_mutated_packs_raise_only_the_pack_error_quickly():
    data = GOOD.to_bytes()
    assert Pack.from_bytes(data) == GOOD
    rnd = random.Random(13)
    t = time.perf_counter()
    for _ in range(2000):
        m = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            op, at = rnd.random(), rnd.randrange(len(m) + 1)
            if op < 0.5 and at < len(m):
                m[at] = rnd.randrange(256)
            elif op < 0.75:
                del m[at:]
            else:
                m[at:at] = rnd.randbytes(rnd.randint(1, 8))
        with contextlib.suppress(ArtifactError):
            _usable(Pack.from_bytes(bytes(m)))
    assert time.perf_counter() - t < 20


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_pack_error(data):
    for candidate in (data, MAGIC + data):
        with contextlib.suppress(ArtifactError):
            _usable(Pack.from_bytes(candidate))


def test_compression_bomb_is_refused_without_inflating_it(monkeypatch):
    monkeypatch.setattr(pack_mod, "MAX_BODY_BYTES", 1024 * 1024)
    bomb = _pack_bytes(HEADER, zlib.compress(EMPTY_TABLES + bytes(64 * 1024 * 1024), 9))
    assert len(bomb) < 100_000
    t = time.perf_counter()
    with pytest.raises(ArtifactError, match="compression bomb"):
        Pack.from_bytes(bomb)
    assert time.perf_counter() - t < 1


@pytest.mark.parametrize(
    "change,field",
    [
        ({"order": "3"}, "order"),
        ({"eos": "x"}, "eos"),
        ({"eos": True}, "eos"),
        ({"eos": -1}, "eos"),
        ({"max_prefix": 2**40}, "max_prefix"),
        ({"json_keys": "no"}, "json_keys"),
        ({"copy_input": 1}, "copy_input"),
        ({"stats": [1]}, "stats"),
        ({"keys": "ab"}, "keys"),
        ({"keys": ["a", "a"]}, "keys"),
        ({"keys": [1]}, "keys"),
        ({"closers": [1]}, "closers"),
        ({"closers": {"a": "1"}}, "closers"),
        ({"closers": {"a": -1}}, "closers"),
        ({"value_bytes": {"a": "zz"}}, "value_bytes"),
        ({"value_bytes": {"a": 12}}, "value_bytes"),
        ({"value_bytes": {"a": "00" * 300}}, "value_bytes"),
        ({"anchors": {"a": "24"}}, "anchors"),
        ({"anchors": {"a": ["zz"]}}, "anchors"),
        ({"anchors": {"a": [" "]}}, "anchors"),  # fromhex(" ") is b"": an empty anchor
        ({"anchors": {"a": ["2 4"]}}, "anchors"),
        ({"value_bytes": {"a": " "}}, "value_bytes"),
        ({"anchors": {"a": [""]}}, "anchors"),
        ({"anchors": {"a": []}}, "anchors"),
        ({"anchors": {"a": ["00" * 17]}}, "anchors"),
        ({"anchors": {"a": ["24"] * 33}}, "anchors"),
        ({"anchors": []}, "anchors"),
        ({"order": None}, "order"),
    ],
)
def test_header_fields_must_have_their_types(change, field):
    with pytest.raises(ArtifactError, match=f"invalid fields: .*{field}"):
        Pack.from_bytes(_pack_bytes({**HEADER, **change}, zlib.compress(EMPTY_TABLES)))


def test_header_that_is_not_an_object_is_refused():
    for header in ([1], "x", 3):
        with pytest.raises(ArtifactError, match="not a JSON object"):
            Pack.from_bytes(_pack_bytes(header, zlib.compress(EMPTY_TABLES)))


def test_keyed_row_naming_an_unlisted_key_is_refused():
    body = struct.pack("<II", 0, 0) + struct.pack("<IBHII", 1, 1, 3, 7, 8)
    with pytest.raises(ArtifactError, match="JSON key it does not list"):
        Pack.from_bytes(_pack_bytes({**HEADER, "keys": ["a"]}, zlib.compress(body)))


def test_pack_naming_tokens_the_model_lacks_is_refused_before_decoding():
    """Token 49,160 in a 49,152-token vocabulary: llama.cpp aborted the process
    (std::out_of_range) the first time the pack drafted it."""
    from kolm.prompt import format_from_gguf
    from kolm.runtime import Decoding, Student

    base = resolve("smollm2-135m-instruct").gguf
    dec = Decoding(max_tokens=4, threads=1, flash_attn=True)
    bad = Pack(eos=2, order=1, max_prefix=4, json_keys=False, prefix={(): 49_160})
    with pytest.raises(ArtifactError, match="names token 49160, but the model has only 49152"):
        Student(base, None, format_from_gguf(base), "Say hi.", dec, pack=bad)
    ok = Pack(eos=2, order=1, max_prefix=4, json_keys=False, prefix={(): 49_151})
    ok.check_vocab(49_152)
    closer = Pack(eos=2, order=1, max_prefix=4, json_keys=True, closers={"a": 49_152})
    with pytest.raises(ArtifactError, match="names token 49152"):
        closer.check_vocab(49_152)


# -- the grammar ----------------------------------------------------------------------


@dataclass
class V:
    kind: str
    labels: list | None = None
    schema: object = None


@pytest.fixture(scope="module")
def accepts():
    """Whether llama.cpp's grammar parser accepts a GBNF string."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(resolve("smollm2-135m-instruct").gguf), vocab_only=True)

    def check(gbnf: str) -> bool:
        smpl = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode(), b"root")
        if smpl:
            llama_cpp.llama_sampler_free(smpl)
        return bool(smpl)

    return check


HOSTILE_LABELS = [
    ['a"b', "c"],
    ["line\nbreak", "cr\rtab\t"],
    ["back\\slash", "\\"],
    ["\x08bell\x0c", "\x00nul", "\x1b[31m", "\x7f"],
    ["[x]", "::=", "|", 'root ::= "y"', "(a)*"],
    ["lone \ud800 surrogate"],
    ["é😀", "\u2028"],
]


@pytest.mark.parametrize("labels", HOSTILE_LABELS)
def test_label_metacharacters_give_a_grammar_llama_cpp_accepts(accepts, labels):
    gbnf = grammar_for(V("label", labels))
    assert gbnf.startswith("root ::= ") and gbnf.count("\n") == 1
    assert accepts(gbnf)


def test_label_literal_matches_exactly_the_label():
    """The literal escapes decode back to the label (the GBNF escapes are JSON's subset)."""
    for labels in HOSTILE_LABELS[:5]:
        literals = grammar_for(V("label", labels))[9:-1].split(" | ")
        for label, lit in zip(labels, literals, strict=True):
            assert json.loads(lit.replace("\\x", "\\u00")) == label


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {'k"\n\\': {"type": "string"}}},
        {"type": "object", "properties": {"a": {"enum": ['x"\n\\', "\x08", "\\u0041"]}}},
        {"type": "object", "properties": {"a": {"const": "q\\\"'"}}},
    ],
)
def test_schema_keys_and_values_with_metacharacters_give_an_accepted_grammar(accepts, schema):
    assert accepts(grammar_for(V("json", schema=schema)))


@pytest.mark.parametrize(
    "schema,match",
    [
        ({"$ref": "#"}, "Unsupported ref"),
        ({"type": "nope"}, "Unrecognized schema"),
        ({"type": "string", "pattern": "((((("}, "Pattern must start"),
        ([1], "cannot be written"),
        ({"type": "string", "minLength": 10**9}, "minLength 1000000000 is over 4096"),
        ({"type": "array", "items": {"type": "string"}, "maxItems": 10**6}, "maxItems"),
        ({"type": "string", "pattern": "^a{1000000000}$"}, "pattern repetition"),
    ],
)
def test_schemas_the_converter_cannot_express_are_spec_errors_fast(schema, match):
    t = time.perf_counter()
    with pytest.raises(SpecError, match=match):
        grammar_for(V("json", schema=schema))
    assert time.perf_counter() - t < 5


def test_a_closer_that_ends_the_answer_ends_the_draft():
    """A crafted pack whose closer is the end-of-answer token: nothing is proposed after it
    (the verifier would stop there anyway; proposing more only wastes a batch)."""
    from kolm.decompose.mine import chain

    pack = Pack(
        eos=2,
        order=1,
        max_prefix=0,
        json_keys=True,
        copy_input=True,
        ngrams={(2,): 7, (7,): 7},
        closers={"a": 2},
        value_bytes={"a": b"xyzw"},
    )
    pieces = {5: b"z", 6: b"w", 7: b"!", 2: b""}
    draft = chain(
        pack, [9], b'{"a": "xy', pieces.__getitem__, 24, b"say xyzw now", lambda t: [5, 6]
    )
    assert draft == [5, 6, 2]
