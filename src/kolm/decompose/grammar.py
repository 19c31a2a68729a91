"""Constrained output: the verifier's closed label set or JSON Schema as a llama.cpp grammar.

`grammar_for` writes GBNF (labels as literal alternatives; a JSON Schema through
llama-cpp-python's converter, keys in the order the accepted outputs use), and
`Constraint` applies it during greedy decoding: each step picks the highest-scoring
token the grammar allows (checking the unconstrained choice first, which is
nearly always allowed, before masking the whole vocabulary).

It knows GBNF and llama.cpp's grammar sampler; it does not know which outputs
are right, only which the verifier could accept (its regex, length and Python
checks are not expressed in the grammar).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from kolm.errors import RuntimeFailure


def grammar_for(verifier, outputs: Sequence[str] = ()) -> str | None:
    """GBNF for the verifier's labels or JSON Schema, or None when it has neither."""
    if verifier.kind == "label" and verifier.labels:
        alts = " | ".join(_literal(label) for label in verifier.labels)
        return f"root ::= {alts}\n"
    if verifier.kind == "json" and verifier.schema is not None:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        return json_schema_to_gbnf(json.dumps(verifier.schema), _key_order(outputs))
    return None


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _key_order(outputs: Sequence[str]) -> list[str]:
    for o in outputs:
        try:
            value = json.loads(o)
        except ValueError:
            continue
        if isinstance(value, dict):
            return list(value)
    return []


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

    def pick(self, logits) -> int:
        """The highest-scoring allowed token."""
        import ctypes

        import numpy as np

        best = int(np.argmax(logits))
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
