"""Drafting: lossless speculative greedy decoding with a recipe pack as the drafter.

At each step the pack proposes the tokens that always followed the answer so
far; the model evaluates the pending token and the whole draft in ONE batched
llama.cpp call with logits at every position, keeps the longest prefix equal to
its own greedy (argmax) tokens, adds its own next token, and drops the rejected
positions from the KV cache. With no pack (or no draft) a step is one token,
exactly plain greedy decoding. The stop rules, the text and the per-token
confidence margin are those of llama-cpp-python's `create_completion` with
top_k=1, so the answer is byte-identical with and without the pack.

It knows llama-cpp-python's low-level batch API and the pack's lookup; it knows
nothing of prompts, artifacts or verifiers (the caller hands it token ids).
`on_text`, when given, sees the settled text after every step (what no later
token or stop text can change), for streaming; it cannot change the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from kolm.decompose.mine import MAX_DRAFT, chain
from kolm.decompose.pack import Pack

SAME_KERNELS_BELOW = 64
"""llama.cpp's CPU backend switches kernels at 64-token batches: the same prompt
token's logits differ by up to 0.9 between a batch of 63 and one of 64 (measured on
the bundled Q4_1 base, 1 thread, where every batch under 64 matches one-token steps
bit for bit). A batch that holds prompt tokens is drafted on only while it stays
below that line, so the prompt is evaluated as plain decoding evaluates it. This
does not make every model batch-invariant (an F32 LoRA adapter, Gemma 3's Q4_K_M
base): compile writes adapters at Q8_0 (`kolm.export.ADAPTER_TYPES`), and
`runtime.Student` checks each model when it loads (`invariant_rows`)."""


@dataclass(frozen=True)
class Decoded:
    """One greedy answer and how it was produced."""

    tokens: list[int]
    """Answer tokens, without the end-of-turn token."""
    text: bytes
    finish_reason: str
    """`stop` (end-of-turn token or stop text) or `length`."""
    margins: list[float]
    """Top-1 minus top-2 probability for every generated token (end-of-turn included)."""
    generated: int
    """Tokens the model produced, end-of-turn included."""
    drafted: int
    """Of those, how many the pack had proposed (accepted drafts)."""
    proposed: int
    """Draft tokens sent for verification."""
    steps: int
    """Model evaluations (batched calls) after the prompt."""

    @property
    def drafted_share(self) -> float:
        return self.drafted / self.generated if self.generated else 0.0


class Pieces:
    """Token id → bytes, cached (the pack's JSON-key state is computed on bytes)."""

    def __init__(self, llm):
        self._llm, self._cache = llm, {}

    def __call__(self, t: int) -> bytes:
        b = self._cache.get(t)
        if b is None:
            b = self._cache[t] = self._llm.detokenize([t])
        return b

    def tokenize(self, text: str) -> list[int]:
        """Plain text (never special tokens) to token ids."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def decode(
    llm,
    prompt: list[int],
    pack: Pack | None,
    max_tokens: int,
    stop_ids: Collection[int],
    *,
    stop_texts: Collection[bytes] = (),
    max_draft: int = MAX_DRAFT,
    max_rows: int = SAME_KERNELS_BELOW - 1,
    pieces: Pieces | None = None,
    source: bytes = b"",
    constraint=None,
    on_text: Callable[[bytes], None] | None = None,
) -> Decoded:
    """Greedy answer to `prompt`, reusing whatever prefix of it llm's KV cache holds.

    `source` is the input's text, which a pack that copies inputs drafts from.
    `max_rows` bounds a batch that holds drafts (the pending tokens included): a batch
    that holds prompt tokens longer than that is evaluated without a draft.
    `constraint` (a `grammar.Constraint`) limits each step to what the grammar allows;
    drafts are then checked against the constrained choice.
    `on_text(settled)` is called after each step with the answer's bytes so far, minus
    any tail that could still become a stop text."""
    pieces = pieces or Pieces(llm)
    tokenize = pieces.tokenize
    if constraint is not None:
        constraint.reset()
    s = _State(llm, prompt, max_tokens, stop_ids, stop_texts, pieces, constraint)
    pending = s.reuse_prefix()
    while s.finish is None:
        pending = s.flush_prompt(pending)
        room = min(
            max_draft,
            max_tokens - len(s.out) - 1,
            s.room(len(pending)),
            min(max_rows, SAME_KERNELS_BELOW - 1) - len(pending),
        )
        draft = []
        if pack is not None and room > 0:
            draft = chain(pack, s.out, s.text, pieces, room, source, tokenize)
        pending = s.step(pending, draft)
        if on_text is not None:
            on_text(s.settled())
    return Decoded(
        s.out, s.final_text(), s.finish, s.margins, s.generated, s.drafted, s.proposed, s.steps
    )


class _State:
    """Bookkeeping of one `decode` call: KV position, answer, margins, stop rules."""

    def __init__(self, llm, prompt, max_tokens, stop_ids, stop_texts, pieces, constraint=None):
        self.llm, self.prompt, self.max_tokens = llm, list(prompt), max_tokens
        self.constraint = constraint
        self.stop_ids, self.stop_texts, self.pieces = set(stop_ids), list(stop_texts), pieces
        self.out: list[int] = []
        self.text = b""
        self.margins: list[float] = []
        self.finish: str | None = None
        self.cut: int | None = None
        self.multibyte = 0
        self.generated = self.drafted = self.proposed = self.steps = 0
        self.n_vocab = llm.n_vocab()
        self._buf = None  # scratch for the margin's softmax (one allocation per answer)
        self.cap = llm.n_batch  # llm._batch holds n_batch tokens

    def reuse_prefix(self) -> list[int]:
        """Keep the cached prefix of the prompt (at least one token is re-evaluated)."""
        llm, n = self.llm, 0
        cached = llm.input_ids[: llm.n_tokens]
        for a, b in zip(cached, self.prompt, strict=False):
            if a != b:
                break
            n += 1
        n = min(n, len(self.prompt) - 1)
        llm._ctx.kv_cache_seq_rm(-1, n, -1)
        llm.n_tokens = n
        return self.prompt[n:]

    def room(self, pending: int) -> int:
        return min(self.cap - pending, self.llm.n_ctx() - self.llm.n_tokens - pending)

    def flush_prompt(self, pending: list[int]) -> list[int]:
        """Evaluate all but the last batch of a long prompt, without logits."""
        while len(pending) > self.cap:
            self._decode(pending[: self.cap], 0)
            pending = pending[self.cap :]
        return pending

    def step(self, pending: list[int], draft: list[int]) -> list[int]:
        """One batched evaluation of pending + draft; returns the next pending token."""
        import numpy as np

        base = self.llm.n_tokens
        self._decode(pending + draft, len(draft) + 1)
        self.steps += 1
        self.proposed += len(draft)
        first = len(pending) - 1
        accepted = 0
        if self._buf is None:
            self._buf = np.empty(self.n_vocab, dtype=np.single)
        for j in range(len(draft) + 1):
            logits = _logits(self.llm, first + j, self.n_vocab)
            best = int(np.argmax(logits))
            if self.constraint is None:
                tok = best
            else:
                tok = self.constraint.pick(logits, best)
                self.constraint.accept(tok)
            self.margins.append(_margin(logits, best, self._buf))
            hit = j < len(draft) and tok == draft[j]
            self._emit(tok, hit)
            if self.finish is not None or not hit:
                break
            accepted += 1
        keep = base + len(pending) + accepted
        if keep < self.llm.n_tokens:
            self.llm._ctx.kv_cache_seq_rm(-1, keep, -1)
            self.llm.n_tokens = keep
        return [self.out[-1]] if self.finish is None else []

    def _emit(self, tok: int, drafted: bool) -> None:
        """The create_completion rules: end-of-turn, then stop text, then length."""
        self.generated += 1
        self.drafted += drafted
        if tok in self.stop_ids:
            self.finish = "stop"
            return
        self.out.append(tok)
        self.text += self.pieces(tok)
        if self._multibyte_pending():
            return
        for s in self.stop_texts:
            if s in self.text:
                self.finish, self.cut = "stop", self.text.index(s)
                return
        if len(self.out) >= self.max_tokens:
            self.finish = "length"

    def _multibyte_pending(self) -> bool:
        for k, char in enumerate(self.text[-3:]):
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self.multibyte = num - k
        if self.multibyte > 0:
            self.multibyte -= 1
            return True
        return False

    def settled(self) -> bytes:
        """The text so far that is sure to be in the answer: cut at a stop text, or before
        a tail that is the start of one."""
        if self.finish is not None:
            return self.final_text()
        text, end = self.text, len(self.text)
        for s in self.stop_texts:
            if s in text:
                end = min(end, text.index(s))
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    end = min(end, len(text) - n)
                    break
        return text[:end]

    def final_text(self) -> bytes:
        return self.text if self.cut is None else self.text[: self.cut]

    def _decode(self, tokens: list[int], n_logits: int) -> None:
        """Evaluate `tokens` at the current position; logits for the last n_logits."""
        from kolm.errors import RuntimeFailure

        llm = self.llm
        b = llm._batch.batch
        n, start = len(tokens), llm.n_tokens
        b.n_tokens = n
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = start + i
            b.seq_id[i][0] = 0
            b.n_seq_id[i] = 1
            b.logits[i] = i >= n - n_logits
        try:
            llm._ctx.decode(llm._batch)
        except RuntimeError as e:
            raise RuntimeFailure(f"llama.cpp failed to evaluate a batch: {e}") from None
        llm.input_ids[start : start + n] = tokens
        llm.n_tokens = start + n


PROBE_SIZES = (2, 3, 4, 8, 13, 25, 32, 33, 63)
"""Batch sizes `invariant_rows` checks by default: small and large, odd and even,
around 32 (where some builds hand batches to other kernels) and the largest batch
drafting makes (63, below SAME_KERNELS_BELOW)."""


def invariant_rows(llm, state, tokens: list[int], sizes: Collection[int] = ()) -> int:
    """The largest batch size up to which drafting is lossless for this model here.

    After the saved `state` (`llm.save_state()`), `tokens` are evaluated one at a
    time, then the first n of them in one batch for each n in `sizes` (default: the
    PROBE_SIZES that fit, and len(tokens)), smallest first; sizes above `llm.n_batch`
    are skipped. Returns the largest n such that every checked batch up to n gave
    each row the logits, bit for bit, of the one-token step: 1 when the smallest
    differs, len(tokens) when no size is checked. Leaves the model at `state`,
    whatever happens. A check, not a proof: sizes between those checked are not
    evaluated."""
    import numpy as np

    limit = min(len(tokens), llm.n_batch)
    sizes = sorted({n for n in (sizes or (*PROBE_SIZES, limit)) if 2 <= n <= limit})
    if not sizes:
        return len(tokens)
    n_vocab = llm.n_vocab()
    s = _State(llm, [], 0, (), (), None)
    rows = 1
    try:
        llm.load_state(state)
        single = []
        for t in tokens[: sizes[-1]]:
            s._decode([t], 1)
            single.append(np.array(_logits(llm, -1, n_vocab)))
        for n in sizes:
            llm.load_state(state)
            s._decode(list(tokens[:n]), n)
            if not all(np.array_equal(_logits(llm, i, n_vocab), single[i]) for i in range(n)):
                break
            rows = n
    finally:
        llm.load_state(state)
    return rows


def _logits(llm, i: int, n_vocab: int):
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))


def _margin(logits, best: int, buf) -> float:
    """Top-1 minus top-2 probability, the same float operations as runtime's margin recorder
    (`np.partition` for the top two, then a float32 softmax sum), without its copies:
    `best` is the argmax, `buf` a float32 scratch array of the vocabulary's size."""
    import numpy as np

    hi = float(logits[best])
    lo = max(
        float(logits[:best].max()) if best else -np.inf,
        float(logits[best + 1 :].max()) if best + 1 < len(logits) else -np.inf,
    )
    np.subtract(logits, hi, out=buf)
    z = np.exp(buf, out=buf).sum()
    return (1.0 - float(np.exp(lo - hi))) / float(z)
