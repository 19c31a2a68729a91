"""Runtime: answer inputs with llama.cpp from a base GGUF plus a LoRA adapter.

The shared prompt prefix (template + instruction) is evaluated once at load and
its state restored before every call, so each answer is computed the same way
whatever came before it (greedy decoding; same machine and build → same bytes).
Knows llama-cpp-python; knows nothing of artifacts, signatures or training.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kolm.errors import InputError, RuntimeFailure
from kolm.prompt import PromptFormat, token_ids


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; recorded in the artifact and in every receipt."""

    max_tokens: int = 32
    temperature: float = 0.0
    seed: int = 0
    n_ctx: int = 1024
    n_batch: int = 512
    threads: int = 0
    """llama.cpp threads; 0 means `default_threads()`."""

    def resolved(self) -> Decoding:
        threads = self.threads or default_threads()
        return Decoding(
            self.max_tokens, self.temperature, self.seed, self.n_ctx, self.n_batch, threads
        )

    def to_dict(self) -> dict:
        return asdict(self)


def default_threads() -> int:
    """llama.cpp threads when none are given: every usable core but one, at most 8.

    llama.cpp's workers spin while they wait, so one thread per core collapses when
    anything else wants a core (2 cores beside one busy process: 1 thread answers in
    0.8 s, 2 threads gave no answer in 150 s; docs/benchmarks.md). The core left
    over keeps answers fast on a busy machine and serves HTTP in `kolm serve`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores - 1, 8))


@dataclass(frozen=True)
class Answer:
    """One model answer."""

    output: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str
    confidence: float | None = None
    """Smallest top-1 minus top-2 probability over the answer's tokens (1 = certain)."""


def llama_cpp_version() -> str:
    try:
        import llama_cpp

        return str(llama_cpp.__version__)
    except Exception:  # pragma: no cover - reported, not fatal
        return "unknown"


class Student:
    """A loaded model that answers one input at a time. Not thread-safe."""

    def __init__(
        self,
        base: Path,
        adapter: Path | None,
        fmt: PromptFormat,
        instruction: str,
        decoding: Decoding,
    ):
        self.fmt, self.instruction = fmt, instruction
        self.decoding = decoding.resolved()
        self._llm = _load(base, adapter, self.decoding)
        self._prefix = token_ids(fmt.prefix_segments(instruction), self._tokenize)
        self._llm.reset()
        self._llm.eval(self._prefix)
        self._state = self._llm.save_state()

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is for this model (as plain text)."""
        return len(self._tokenize(text, False))

    def prompt_tokens(self, user_input: str, context: Sequence[str] = ()) -> list[int]:
        """The prompt's token ids; only the chat template's own text can be control tokens."""
        return token_ids(self.fmt.segments(self.instruction, user_input, context), self._tokenize)

    def answer(self, user_input: str, context: Sequence[str] = ()) -> Answer:
        d = self.decoding
        if not user_input.strip():
            raise InputError("empty input: there is nothing to answer")
        tokens = self.prompt_tokens(user_input, context)
        if len(tokens) + d.max_tokens > d.n_ctx:
            raise InputError(
                f"input too long: {len(tokens)} prompt tokens + {d.max_tokens} answer tokens "
                f"exceed the context of {d.n_ctx}",
                hint="shorten the input",
            )
        t0 = time.perf_counter()
        if tokens[: len(self._prefix)] == self._prefix:
            self._llm.load_state(self._state)
        else:
            self._llm.reset()
        margins: list[float] = []
        out = self._llm.create_completion(
            tokens,
            logits_processor=_margin_recorder(margins),
            max_tokens=d.max_tokens,
            temperature=d.temperature,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=d.seed,
            stop=[self.fmt.eos] if self.fmt.eos else None,
        )
        latency = time.perf_counter() - t0
        choice = out["choices"][0]
        return Answer(
            output=choice["text"].strip(),
            prompt_tokens=len(tokens),
            completion_tokens=int(out["usage"]["completion_tokens"]),
            latency_s=latency,
            finish_reason=str(choice.get("finish_reason")),
            confidence=round(min(margins), 4) if margins else None,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._llm.close()


def _margin_recorder(margins: list[float]):
    """A logits processor that records each step's top-1/top-2 probability margin, changing nothing."""
    import numpy as np
    from llama_cpp import LogitsProcessorList

    def record(_ids, logits):
        top2 = np.partition(logits, -2)[-2:]
        hi, lo = float(max(top2)), float(min(top2))
        z = np.exp(logits - hi).sum()
        margins.append((1.0 - float(np.exp(lo - hi))) / float(z))
        return logits

    return LogitsProcessorList([record])


def _load(base: Path, adapter: Path | None, d: Decoding):
    from llama_cpp import Llama

    try:
        return Llama(
            model_path=str(base),
            lora_path=str(adapter) if adapter else None,
            n_ctx=d.n_ctx,
            n_batch=d.n_batch,
            n_threads=d.threads,
            n_threads_batch=d.threads,
            seed=d.seed,
            verbose=False,
        )
    except Exception as e:
        raise RuntimeFailure(f"llama.cpp could not load {base} (adapter {adapter}): {e}") from None
