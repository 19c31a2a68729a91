"""Load a verified artifact into a runnable student.

Joins `artifact` (verified parts on disk) and `runtime` (llama.cpp). Knows the
names of the parts a student needs; knows nothing about how they were made.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kolm import __version__
from kolm.artifact import ADAPTER_PART, Artifact, cache_home, open_artifact
from kolm.decompose.mine import MAX_DRAFT
from kolm.drift import DriftStore, coverage_reason, drift_reason
from kolm.errors import BaseModelError, ReceiptError
from kolm.keys import KeyStore
from kolm.prompt import PromptFormat
from kolm.receipts import ReceiptStore, sha256_text
from kolm.runtime import PROBE_CACHE, Decoding, Student, llama_cpp_version
from kolm.verifier import Verifier


def load_student(
    artifact: Artifact | str | Path,
    base: Path | None = None,
    threads: int | None = None,
    keys: KeyStore | None = None,
    decoding: Decoding | None = None,
    recipes: bool = True,
) -> tuple[Artifact, Student]:
    """Verify (when given a path), materialize the parts and load them in llama.cpp.

    `recipes=False` ignores the artifact's recipe pack (plain decoding, same bytes)."""
    art = artifact if isinstance(artifact, Artifact) else open_artifact(artifact, keys)
    config = art.read_json("config.json")
    decoding = decoding or Decoding(**config["decoding"])
    if threads:
        decoding = replace(decoding, threads=threads)
    student = Student(
        _base_path(art, base),
        adapter_path(art),
        PromptFormat.from_dict(config["prompt_format"]),
        config["instruction"],
        decoding,
        pack=load_pack(art) if recipes else None,
        grammar=load_grammar(art) if decoding.constrain else None,
        probe_cache=cache_home() / PROBE_CACHE,
    )
    return art, student


def adapter_path(art: Artifact) -> Path | None:
    """The artifact's LoRA adapter, or None for a merged build (the base part is the model)."""
    return art.materialize(ADAPTER_PART) if ADAPTER_PART in art.manifest["parts"] else None


def _base_path(art: Artifact, base: Path | None) -> Path:
    """The artifact's base; a `--base` given for an embedded base is used only if it is the same file."""
    if base is not None and ADAPTER_PART not in art.manifest["parts"]:
        raise BaseModelError(
            "this artifact is a merged build: its model is the base part, --base does not apply",
            hint="drop --base",
        )
    if base is None or not art.manifest["base"].get("embedded"):
        return art.base_path(base)
    from kolm.artifact import locate_base

    try:
        return locate_base(art.manifest["base"], base)  # same sha256: load it, skip extracting
    except BaseModelError as e:
        raise BaseModelError(
            f"{e.message}; this artifact embeds its own base",
            hint="drop --base (it is only for artifacts built with --no-embed-base)",
        ) from None


def load_grounder(art: Artifact, embedder: str | Path | None = None):
    """The artifact's bundled index with the embedder that built it, or None without one."""
    config = art.read_json("config.json")
    if "recall" not in config:
        return None
    from kolm.recall.embed import EmbedderInfo
    from kolm.recall.ground import Grounder

    r = config["recall"]
    info = EmbedderInfo.from_dict(r["embedder"])
    return Grounder.open(art.materialize(r["part"]), info, r["k"], r["mode"], embedder)


def load_grammar(art: Artifact) -> str | None:
    """The output grammar from the artifact's verifier (for `run.constrain`)."""
    from kolm.decompose.grammar import grammar_for

    verifier = load_verifier(art)
    if verifier is None:
        return None
    rows = [json.loads(x) for x in art.read_text("train.jsonl").splitlines()[:1] if x.strip()]
    return grammar_for(verifier, [r["output"] for r in rows])


def load_pack(art: Artifact):
    """The artifact's recipe pack, or None for artifacts made without one."""
    from kolm.decompose.pack import PART, Pack

    if PART not in art.manifest["parts"]:
        return None
    return Pack.from_bytes(art.read_bytes(PART))


def load_verifier(art: Artifact) -> Verifier | None:
    """The artifact's verifier, or None for artifacts made before verifiers existed."""
    if "verifier.json" not in art.manifest["parts"]:
        return None
    return Verifier.from_dict(art.read_json("verifier.json"))


def eval_artifact(
    path: Path,
    data: Path,
    base: Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    recipes: bool = True,
) -> dict:
    """Score an artifact on new labeled data with the metrics compile uses."""
    from kolm.data import load_examples
    from kolm.evaluate import run_and_score, task_metrics
    from kolm.verifier import synthesize

    examples = load_examples(data)
    art, student = load_student(path, base=base, threads=threads, recipes=recipes)
    verifier = load_verifier(art) or synthesize([e.output for e in examples])
    grounder = load_grounder(art)

    def answer(text: str):
        return student.answer(text, grounder.context(text) if grounder else ())

    try:
        scored = run_and_score(
            answer,
            [e.input for e in examples],
            [e.output for e in examples],
            desc="eval",
            progress=progress,
        )
    finally:
        student.close()
    metrics = task_metrics(verifier.kind, scored.outputs, [e.output for e in examples], verifier)
    metrics.update(
        latency_p50_s=round(scored.latency_p50_s, 4), latency_p95_s=round(scored.latency_p95_s, 4)
    )
    metrics["artifact"] = art.id
    metrics["recipe_pack"] = student.pack is not None
    if student.draft_note:
        metrics["recipe_pack_note"] = student.draft_note
    if scored.drafted_shares:
        metrics["drafted_share"] = round(sum(scored.drafted_shares) / len(scored.drafted_shares), 4)
    metrics["outputs"] = scored.outputs
    return metrics


@dataclass(frozen=True)
class Result:
    """One answered input, as `run` and `serve` report it."""

    input: str
    output: str
    path: str
    verified: bool | None
    failed_rule: str | None
    confidence: float | None
    latency_s: float
    receipt: str | None
    drift: str | None
    prompt_tokens: int = 0
    """Tokens of the whole prompt the student read (template included)."""
    completion_tokens: int = 0
    """Tokens of the output, counted with the student's tokenizer (whoever answered)."""
    finish_reason: str = "stop"
    """`stop`, or `length` when the answer hit max_tokens."""
    context: tuple[str, ...] = ()
    """Ids of the retrieved chunks the prompt was grounded in (empty without an index)."""

    drafted_share: float | None = None
    """Share of the answer's tokens drafted by the recipe pack (None: no pack)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency_s"] = round(self.latency_s, 4)
        return d


@dataclass(frozen=True)
class Answered:
    """An answer whose receipt is not written yet (`Runner.answer`, then `Runner.record`)."""

    result: Result
    student_output: str
    """The student's own answer (what drift logs, even when a fallback replaced it)."""
    grounded: bool
    """The artifact has an index (the receipt then lists the chunk ids, even none)."""


class Runner:
    """Answer, verify, log drift, optionally fall back to a teacher, and write a receipt.

    Not thread-safe: one Runner per thread (serve gives it one worker thread)."""

    def __init__(
        self,
        artifact: str | Path,
        base: Path | None = None,
        threads: int | None = None,
        receipts: ReceiptStore | None = None,
        drift: DriftStore | None = None,
        fallback: str | None = None,
        min_confidence: float = 0.3,
        keys: KeyStore | None = None,
        decoding: Decoding | None = None,
        recipes: bool = True,
    ):
        self.artifact, self.student = load_student(
            artifact, base=base, threads=threads, keys=keys, decoding=decoding, recipes=recipes
        )
        self.path = str(Path(artifact).resolve())
        self.verifier = load_verifier(self.artifact)
        self.grounder = load_grounder(self.artifact)
        self.receipts, self.drift = receipts, drift
        self.min_confidence = min_confidence
        self._fallback = _Fallback(self.artifact, fallback) if fallback else None
        self.settings = {
            "decoding": self.student.decoding.to_dict(),
            "llama_cpp": llama_cpp_version(),
            "kolm": __version__,
            "recipe_pack": self.student.pack is not None,
        }
        if self.student.draft_note:
            self.settings["recipe_pack_note"] = self.student.draft_note
        pack = self.student.pack
        self._expected_share = pack.stats.get("expected_hit_rate") if pack else None
        if self.student.max_draft < MAX_DRAFT:
            # Mined for uncapped drafts: a capped pack covers less of every answer,
            # which is this machine's kernels, not a drifting input.
            self._expected_share = None

    def __call__(self, text: str) -> Result:
        return self.record(self.answer(text))

    def answer(self, text: str, on_delta: Callable[[str], None] | None = None) -> Answered:
        """Answer (and fall back when configured) without writing anything yet.

        `on_delta` streams the answer's text as it is decoded; with a fallback teacher
        configured the answer may still be replaced, so it then comes in one piece."""
        g = self.grounder
        context, ids = (g.context(text), tuple(g.ids(text))) if g else ([], ())
        live = on_delta if self._fallback is None else None
        ans = self.student.answer(text, context, on_delta=live)
        output, path = ans.output, "student"
        verified, rule, _ = self._check(output)
        reason = drift_reason(verified, rule, ans.confidence, self.min_confidence)
        reason = reason or coverage_reason(
            ans.drafted_share, self._expected_share, ans.completion_tokens
        )
        n_out, finish = ans.completion_tokens, ans.finish_reason
        if reason and self._fallback is not None:
            reply, path = self._fallback(text, context)
            verified, rule, normalized = self._check(reply)
            output = normalized if verified else reply
            n_out, finish = self.student.count_tokens(output), "stop"
        if on_delta is not None and live is None:
            on_delta(output)
        result = Result(
            text,
            output,
            path,
            verified,
            rule,
            ans.confidence,
            ans.latency_s,
            None,
            reason,
            ans.prompt_tokens,
            n_out,
            "length" if finish == "length" else "stop",
            ids,
            ans.drafted_share,
        )
        return Answered(result, ans.output, g is not None)

    def record(self, answered: Answered, incomplete: bool = False) -> Result:
        """Write the receipt (and the drift entry) for an answer; `incomplete`: the client
        left a stream before the whole answer was sent."""
        r, receipt = answered.result, None
        if self.receipts is not None:
            receipt = self.receipts.append(
                artifact_id=self.artifact.id,
                artifact_path=self.path,
                input=r.input,
                output=r.output,
                settings=self.settings,
                latency_ms=round(r.latency_s * 1000, 3),
                verified=r.verified,
                failed_rule=r.failed_rule,
                path=r.path,
                confidence=r.confidence,
                context=list(r.context) if answered.grounded else None,
                drafted_share=r.drafted_share,
                incomplete=incomplete or None,
            ).id
        if r.drift and self.drift is not None:
            self.drift.add(
                self.artifact.id, r.input, answered.student_output, r.drift, r.confidence, receipt
            )
        return replace(r, receipt=receipt)

    def _check(self, output: str) -> tuple[bool | None, str | None, str]:
        """(passed, failed rule, normalized output); (None, None, output) without a verifier."""
        if self.verifier is None:
            return None, None, output
        c = self.verifier.check(output)
        return c.ok, c.failed, c.normalized

    def close(self) -> None:
        self.student.close()
        if self.grounder is not None:
            self.grounder.close()


class _Fallback:
    """The escape hatch: ask the configured teacher, the only network use `run` ever makes."""

    def __init__(self, art: Artifact, teacher: str):
        from kolm.data import Example
        from kolm.distill import pick_demos
        from kolm.spec import TeacherConfig

        self.cfg = TeacherConfig(model=teacher, k=1, temperature=0.0)
        rows = [x for x in art.read_text("train.jsonl").splitlines() if x.strip()]
        seeds = [Example(**json.loads(x)) for x in rows]
        self.demos = pick_demos(seeds, self.cfg.shots)
        self.instruction = art.read_json("config.json")["instruction"]

    def __call__(self, text: str, context: list[str] | None = None) -> tuple[str, str]:
        """The teacher's raw reply and the path name for the receipt."""
        from kolm.distill import build_request
        from kolm.teacher import Settings, TeacherRef, complete_with_retries, make_backend

        ref = TeacherRef.parse(self.cfg.model)
        settings = Settings(timeout_s=self.cfg.timeout_s, max_retries=self.cfg.max_retries)

        async def ask():
            backend = make_backend(ref, settings)
            try:
                return await complete_with_retries(
                    backend,
                    build_request(self.instruction, self.demos, text, self.cfg, context or ()),
                    0,
                    settings,
                )
            finally:
                await backend.aclose()

        return asyncio.run(ask()).text.strip(), f"fallback:{ref}"


@dataclass(frozen=True)
class Replay:
    receipt: str
    reproduced: bool
    output: str
    build_differs: bool
    recorded_build: str
    current_build: str
    drafting_differs: str = ""
    """Why the recipe pack was used differently from when the receipt was written
    ("" when it was not): answers then came from another decoding path."""


def replay(
    receipt_ref: str,
    store: ReceiptStore,
    artifact: Path | None = None,
    text: str | None = None,
    base: Path | None = None,
    threads: int | None = None,
) -> Replay:
    """Re-run a receipt's input with its recorded settings on the same artifact; compare output hashes."""
    r = store.get(receipt_ref)
    if r.path != "student":
        raise ReceiptError(
            f"receipt {r.id[:12]} was answered by {r.path}; only the student's answers replay locally"
        )
    text = r.input if text is None else text
    if text is None:
        raise ReceiptError(
            f"receipt {r.id[:12]} kept only hashes (--no-store-io)",
            hint="pass the input with --input TEXT",
        )
    if sha256_text(text) != r.input_sha256:
        raise ReceiptError("that input is not the one this receipt recorded (sha256 differs)")
    path = Path(artifact or r.artifact_path)
    decoding = Decoding(**r.settings["decoding"])
    runner_art, student = load_student(path, base=base, threads=threads, decoding=decoding)
    grounder = None
    try:
        if runner_art.id != r.artifact_id:
            raise ReceiptError(
                f"{path} is not the artifact that answered (id {r.artifact_id[:16]}…)",
                hint="pass the right one with --artifact PATH",
            )
        context: list[str] = []
        if r.context:  # the chunks the receipt recorded, not a fresh retrieval
            grounder = load_grounder(runner_art)
            if grounder is None:
                raise ReceiptError(f"receipt {r.id[:12]} names chunks but {path} has no index")
            context = grounder.by_ids(r.context)
        out = student.answer(text, context).output
        drafted = student.pack is not None
    finally:
        student.close()
        if grounder is not None:
            grounder.close()
    current = llama_cpp_version()
    recorded = r.settings.get("recipe_pack")
    drafting = ""
    if recorded is not None and bool(recorded) != drafted:
        drafting = (
            f"the receipt was answered {'with' if recorded else 'without'} the recipe pack "
            f"and the replay {'with' if drafted else 'without'} it"
            + (f" ({student.draft_note})" if student.draft_note else "")
        )
    return Replay(
        r.id,
        sha256_text(out) == r.output_sha256,
        out,
        current != r.settings["llama_cpp"],
        r.settings["llama_cpp"],
        current,
        drafting,
    )
