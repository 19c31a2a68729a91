"""Constrained output: the verifier's closed label set or JSON Schema as a llama.cpp grammar.

`grammar_for` writes GBNF (labels as literal alternatives; a JSON Schema through
llama-cpp-python's converter, keys in the order the accepted outputs use), and
`Constraint` applies it during greedy decoding: each step picks the highest-scoring
token the grammar allows (checking the unconstrained choice first, which is
nearly always allowed, before masking the whole vocabulary).

It knows GBNF and llama.cpp's grammar sampler; it does not know which outputs
are right, only which the verifier could accept (its regex, length and Python
checks are not expressed in the grammar).

Labels, keys and enum values are written as GBNF literals by one escaper
(backslash, quote, control characters and lone surrogates escaped; the
converter's own left backslashes and form feeds unescaped, and llama.cpp
refused the grammar). A schema the converter cannot express, or one asking for
more than `MAX_REPEAT` repetitions (the converter spells every one out: a
`minLength` of 10^9 never finished), is a `SpecError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kolm.decompose.pack import json_objects
from kolm.errors import RuntimeFailure, SpecError

MAX_REPEAT = 4096
"""Largest length or item count a schema may ask the grammar for (minLength, maxItems,
a pattern's {n,m}); the converter writes each repetition out."""
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def grammar_for(verifier, outputs: Sequence[str] = ()) -> str | None:
    """GBNF for the verifier's labels or JSON Schema, or None when it has neither."""
    if verifier.kind == "label" and verifier.labels:
        alts = " | ".join(_literal(label) for label in verifier.labels)
        return f"root ::= {alts}\n"
    if verifier.kind == "json" and verifier.schema is not None:
        return _schema_gbnf(verifier.schema, _key_order(outputs))
    return None


def _schema_gbnf(schema, order: list[str]) -> str:
    from llama_cpp.llama_grammar import SchemaConverter

    class _Converter(SchemaConverter):
        def _format_literal(self, literal):  # the converter's leaves `\` unescaped
            return _literal(literal)

    conv = _Converter(
        prop_order={name: i for i, name in enumerate(order)},
        allow_fetch=False,
        dotall=False,
        raw_pattern=False,
    )
    try:
        _check_repeats(schema)
        conv.visit(conv.resolve_refs(schema, "stdin"), "")
        return conv.format_grammar()
    except Exception as e:  # the converter asserts and raises ValueError/KeyError on schemas
        raise SpecError(
            [
                f"the verifier's JSON Schema cannot be written as an output grammar "
                f"({type(e).__name__}: {e}); simplify the schema, or set run.constrain: false"
            ],
            source="verifier",
        ) from None


def _check_repeats(node) -> None:
    """Refuse a repetition count over MAX_REPEAT anywhere in the schema."""
    if isinstance(node, list):
        for x in node:
            _check_repeats(x)
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _COUNTS and isinstance(value, int) and value > MAX_REPEAT:
            raise ValueError(f"{key} {value} is over {MAX_REPEAT}")
        if key == "pattern" and isinstance(value, str):
            for m in _QUANTIFIER.finditer(value):
                if max(int(g) for g in m.groups() if g) > MAX_REPEAT:
                    raise ValueError(f"pattern repetition {m.group(0)} is over {MAX_REPEAT}")
        _check_repeats(value)


_PLAIN = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _literal(text: str) -> str:
    """`text` as a GBNF string literal that matches exactly its UTF-8 bytes."""
    return '"' + "".join(_char(c) for c in text) + '"'


def _char(c: str) -> str:
    if c in _PLAIN:
        return _PLAIN[c]
    n = ord(c)
    if n < 0x20 or n == 0x7F or 0xD800 <= n <= 0xDFFF:
        return f"\\x{n:02X}" if n < 0x100 else f"\\u{n:04X}"
    return c


def _key_order(outputs: Sequence[str]) -> list[str]:
    """The keys of the first output that is a JSON object, in its order."""
    return list(next(json_objects(outputs), {}))


class Constraint:
    """llama.cpp's grammar sampler over one answer at a time (reset before each)."""

    def __init__(self, llm, gbnf: str):
        import llama_cpp
        from llama_cpp._internals import LlamaTokenDataArray

        self._c = llama_cpp
        self._smpl = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, gbnf.encode("utf-8"), b"root"
        )
        if not self._smpl:
            raise RuntimeFailure("llama.cpp rejected the output grammar", hint=gbnf[:200])
        self._all = LlamaTokenDataArray(n_vocab=llm.n_vocab())
        self._one = LlamaTokenDataArray(n_vocab=1)

    def reset(self) -> None:
        self._c.llama_sampler_reset(self._smpl)

    def pick(self, logits, best: int | None = None) -> int:
        """The highest-scoring allowed token (`best`: the argmax, when already known)."""
        import ctypes

        import numpy as np

        best = int(np.argmax(logits)) if best is None else best
        one = self._one
        one.copy_logits(np.array([logits[best]], dtype=np.single))
        one.candidates_data.id[0] = best
        self._c.llama_sampler_apply(self._smpl, ctypes.byref(one.candidates))
        if np.isfinite(one.candidates_data.logit[0]):
            return best
        self._all.copy_logits(logits)
        self._c.llama_sampler_apply(self._smpl, ctypes.byref(self._all.candidates))
        data = self._all.candidates_data
        return int(data.id[int(np.argmax(data.logit))])

    def accept(self, token: int) -> None:
        self._c.llama_sampler_accept(self._smpl, token)

    def close(self) -> None:
        if self._smpl:
            self._c.llama_sampler_free(self._smpl)
            self._smpl = None
