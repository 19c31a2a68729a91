"""Runtime: answer inputs with llama.cpp from a base GGUF plus a LoRA adapter.

The shared prompt prefix (template + instruction) is evaluated once at load and
its state restored before every call, so each answer is computed the same way
whatever came before it (greedy decoding; same machine and build → same bytes).
Decoding is `decompose.draft.decode`: plain greedy one token at a time, or, with
a recipe pack and flash attention, drafts verified in batches — the same bytes
either way, because a model loaded with a pack is first checked: batches whose
logits differ from one-token steps on this machine hold no draft (the verdict is
cached in a JSON file the caller names, keyed by the model files, the llama.cpp
build, the settings and the CPU flags from /proc/cpuinfo). With `on_delta` an
answer is also handed out as it is made (`TextDeltas`: whole characters only,
the same text the answer ends up with).
Knows llama-cpp-python and how an adapter GGUF says its tensor type; knows nothing
of artifacts, signatures or training.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kolm.errors import InputError, RuntimeFailure
from kolm.prompt import PromptFormat, token_ids

PROBE_TEXT = (
    ' {"invoice": "INV-2041", "total": 1280.50, "due": "2024-03-09"} Since the last'
    " update the login page fails; please route this ticket to the right queue."
)
"""What the load-time drafting probe evaluates (any text: it only compares kernels)."""


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; recorded in the artifact and in every receipt."""

    max_tokens: int = 32
    temperature: float = 0.0
    seed: int = 0
    n_ctx: int = 1024
    n_batch: int = 512
    threads: int = 0
    flash_attn: bool = False
    """llama.cpp flash attention. Without it a position's logits depend on how many
    tokens share its batch, so (older artifacts) the recipe pack is not used; with it
    they need not, which the load-time check confirms per model (`_probe_drafting`)."""
    constrain: bool = False
    """Constrain outputs with a grammar from the verifier (labels or JSON Schema)."""

    def resolved(self) -> Decoding:
        threads = self.threads or default_threads()
        return replace(self, threads=threads)

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
    drafted_share: float | None = None
    """Share of generated tokens the recipe pack drafted (None when no pack was used)."""


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
        pack=None,
        grammar: str | None = None,
        probe_cache: Path | None = None,
    ):
        self.fmt, self.instruction = fmt, instruction
        self.decoding = decoding.resolved()
        self._llm = _load(base, adapter, self.decoding)
        self.pack = pack if self.decoding.flash_attn else None
        """The recipe pack in use (None: plain decoding)."""
        if self.pack is not None:
            self.pack.check_vocab(self._llm.n_vocab())  # an unknown id aborts llama.cpp
        self._stop_ids = _end_of_turn_ids(self._llm)
        self._pieces = None
        self._constraint = None
        if grammar and self.decoding.constrain:
            from kolm.decompose.grammar import Constraint

            self._constraint = Constraint(self._llm, grammar)
        self.last_decode = None
        """How the last answer was decoded (`decompose.draft.Decoded`)."""
        from kolm.decompose.mine import MAX_DRAFT

        self.max_draft = MAX_DRAFT
        """Most tokens one drafting step proposes (benchmarks vary it)."""
        self._prefix = token_ids(fmt.prefix_segments(instruction), self._tokenize)
        self._llm.reset()
        self._llm.eval(self._prefix)
        self._state = self._llm.save_state()
        from kolm.decompose.draft import SAME_KERNELS_BELOW

        self.max_rows = SAME_KERNELS_BELOW - 1
        """Most tokens in a batch that holds drafts (`_probe_drafting` may lower it)."""
        self.draft_note = ""
        """Why drafting was capped or turned off on this machine ("" when it was not)."""
        if self.pack is not None:
            self._probe_drafting(base, adapter, probe_cache)

    def _probe_drafting(self, base: Path, adapter: Path | None, cache: Path | None) -> None:
        """Draft only over batches whose logits equal one-token steps on this machine.

        An adapter not stored at Q8_0 (compiled before 2026-12-05) turns the pack off:
        its batched rows differ in the last bits, which reach the logits only for some
        inputs, so no probe can clear it. Otherwise up to 63 probe tokens after the
        instruction are evaluated one at a time and in batches of several sizes
        (`draft.invariant_rows`). Batches longer than the largest size that matched
        hold no draft: drafts are capped below it, or the pack is off. The check finds
        kernels that differ; it cannot prove that every input agrees. Its verdict is
        kept in `cache` (a JSON file), keyed by the model files, the llama.cpp build,
        the decoding settings that pick kernels and the CPU."""
        from kolm.decompose.draft import SAME_KERNELS_BELOW, invariant_rows

        if adapter is not None:
            from kolm.export import adapter_format

            kind = adapter_format(adapter)["tensor_type"]
            if kind != "q8_0":
                self._drafting_off(
                    f"the LoRA adapter is stored at {kind}, whose batched logits differ from "
                    "one-token steps: the recipe pack is off (plain decoding); compiling an "
                    "artifact made before 2026-12-05 again writes its adapter at Q8_0"
                )
                return
        llm = self._llm
        room = min(SAME_KERNELS_BELOW - 1, self.decoding.n_ctx - len(self._prefix) - 1)
        room = min(room, llm.n_batch)
        if room < 2:
            return  # no batch can hold a draft and a token after it anyway
        files = (base, *([adapter] if adapter else []))
        key = _probe_key(files, self.decoding, room)
        rows = _cached_rows(cache, key)
        if rows is None:
            probe = (self._tokenize(PROBE_TEXT, False) * SAME_KERNELS_BELOW)[:room]
            try:
                rows = invariant_rows(llm, self._state, probe)
            except Exception as e:  # a model that answers must still load
                self._drafting_off(f"the drafting check failed ({e}): the recipe pack is off")
                return
            _store_rows(cache, key, rows)
        if rows >= room:
            return  # every batch checked matched
        self.max_rows = rows
        differ = "llama.cpp's batched logits differ from one-token steps"
        where = "for this model on this machine"
        if rows < 2:
            self._drafting_off(f"{differ} {where}: the recipe pack is off (plain decoding)")
        elif rows <= self.max_draft:
            self.max_draft = rows - 1
            self.draft_note = (
                f"{differ} in batches over {rows} tokens {where}: drafts are capped at "
                f"{rows - 1} tokens"
            )
        else:
            self.draft_note = (
                f"{differ} in batches over {rows} tokens {where}: a batch that holds prompt "
                "tokens holds a draft only up to that size"
            )

    def _drafting_off(self, why: str) -> None:
        self.pack, self.max_rows, self.draft_note = None, 1, why

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is for this model (as plain text)."""
        return len(self._tokenize(text, False))

    def prompt_tokens(self, user_input: str, context: Sequence[str] = ()) -> list[int]:
        """The prompt's token ids; only the chat template's own text can be control tokens."""
        return token_ids(self.fmt.segments(self.instruction, user_input, context), self._tokenize)

    def answer(
        self,
        user_input: str,
        context: Sequence[str] = (),
        on_delta: Callable[[str], None] | None = None,
    ) -> Answer:
        """Greedy answer; `on_delta` (optional) gets the answer's text piece by piece as it
        is decoded — once per decoding step, possibly "" — and the pieces add up to `output`."""
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
        from kolm.decompose.draft import Pieces, decode

        self._pieces = self._pieces or Pieces(self._llm)
        deltas = TextDeltas(on_delta) if on_delta is not None else None
        out = decode(
            self._llm,
            tokens,
            self.pack,
            d.max_tokens,
            self._stop_ids,
            stop_texts=[self.fmt.eos.encode("utf-8")] if self.fmt.eos else [],
            pieces=self._pieces,
            source=user_input.encode("utf-8"),
            constraint=self._constraint,
            max_draft=self.max_draft,
            max_rows=self.max_rows,
            on_text=deltas.feed if deltas is not None else None,
        )
        self.last_decode = out
        latency = time.perf_counter() - t0
        output = out.text.decode("utf-8", errors="ignore").strip()
        if deltas is not None:
            deltas.finish(output)
        return Answer(
            output=output,
            prompt_tokens=len(tokens),
            completion_tokens=len(out.tokens),
            latency_s=latency,
            finish_reason=out.finish_reason,
            confidence=round(min(out.margins), 4) if out.margins else None,
            drafted_share=round(out.drafted_share, 4) if self.pack is not None else None,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._constraint is not None:
                self._constraint.close()
            self._llm.close()


class TextDeltas:
    """Turn growing answer bytes into text pieces a client can show as they come.

    Only whole UTF-8 characters go out (a character split across tokens waits for
    its last byte), leading whitespace is dropped and trailing whitespace held back
    until something follows it, so the pieces add up exactly to the stripped answer."""

    def __init__(self, sink: Callable[[str], None]):
        self.sink, self.sent = sink, ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._fed, self._text = 0, ""

    def feed(self, settled: bytes) -> None:
        """`settled`: the answer's bytes so far (each call extends the last one)."""
        self._text += self._decoder.decode(settled[self._fed :])
        self._fed = len(settled)
        self._send(self._text.strip())

    def finish(self, output: str) -> None:
        """Send what is left of the final answer (`output`, which the pieces so far begin)."""
        self._send(output)

    def _send(self, text: str) -> None:
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent += delta
        self.sink(delta)


def _end_of_turn_ids(llm) -> frozenset[int]:
    """Every token llama.cpp treats as end of generation (create_completion stops on these)."""
    import llama_cpp

    vocab = llm._model.vocab
    return frozenset(t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))


PROBE_CACHE = "draft-probe.json"
"""The file name callers give the probe cache, in kolm's cache folder."""
PROBE_CACHE_ENTRIES = 256
"""Verdicts kept in the probe cache (the oldest are dropped)."""
PROBE_CACHE_MAX_BYTES = 1 << 20
"""A probe cache file larger than this is ignored (and replaced)."""


def _probe_key(files: Sequence[Path], d: Decoding, rows: int) -> str:
    """What decides llama.cpp's kernels for the probe: the model files (path, size and
    modification time; materialized parts are named by their digest), the llama.cpp
    build (version, its own feature line, its libraries' size and time), the settings
    that pick kernels, the probe's length and the CPU."""
    import hashlib
    import json
    import platform

    what = [
        [_file_id(f) for f in files],
        llama_cpp_version(),
        _llama_build(),
        [d.threads, d.flash_attn, d.n_batch, rows],
        [platform.machine(), _cpu_flags()],
    ]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _file_id(path: Path) -> list:
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _llama_build() -> list:
    """llama.cpp's system-info line and its shared libraries (a rebuild with other
    CMAKE_ARGS keeps llama-cpp-python's version but changes these)."""
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
        libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.so*"))
        libs += sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.dylib"))
        return [info, [_file_id(p) for p in libs if p.is_file()]]
    except Exception:  # pragma: no cover - an unusual install: key on the version alone
        return []


def _cpu_flags() -> str:
    """The CPU's model and feature flags (Linux), which pick llama.cpp's CPU kernels."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [x for x in f if x.startswith(("model name", "flags", "Features"))]
    except OSError:
        return ""
    return "".join(sorted(set(lines)))


def _read_cache(cache: Path) -> dict:
    """The cached verdicts; {} for a missing, oversized or damaged file."""
    import json

    try:
        if cache.stat().st_size > PROBE_CACHE_MAX_BYTES:
            return {}
        known = json.loads(cache.read_text(encoding="utf-8"))
    except Exception:  # OSError, bad JSON, a nesting too deep to parse
        return {}
    return known if isinstance(known, dict) else {}


def _cached_rows(cache: Path | None, key: str) -> int | None:
    """The verdict cached for `key`, or None (no cache, no entry, not a count)."""
    if cache is None:
        return None
    rows = _read_cache(cache).get(key)
    return rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0 else None


def _store_rows(cache: Path | None, key: str, rows: int) -> None:
    """Add a verdict (atomically; a cache that cannot be written is left alone)."""
    import json
    import tempfile

    if cache is None:
        return
    known = _read_cache(cache)
    known.pop(key, None)
    known[key] = rows
    keep = dict(list(known.items())[-PROBE_CACHE_ENTRIES:])
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=cache.parent, prefix=cache.name + ".", suffix=".partial")
        tmp = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(keep))
        tmp.replace(cache)
    except OSError:
        pass
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


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
            flash_attn=d.flash_attn,
            verbose=False,
        )
    except Exception as e:
        raise RuntimeFailure(f"llama.cpp could not load {base} (adapter {adapter}): {e}") from None
