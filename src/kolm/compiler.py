"""Compile: spec → validated data → adapter → evaluation → signed `.kolm` file.

The pipeline calls each stage in order and caches the expensive one (training)
in a work directory keyed by everything it depends on, so a rerun or an
interrupted compile resumes instead of starting over. It knows the order of
the stages, not their insides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kolm import __version__
from kolm.artifact import (
    ADAPTER_PART,
    BASE_PART,
    cache_home,
    canonical_json,
    utc_now,
    write_artifact,
)
from kolm.basemodel import ResolvedBase, resolve
from kolm.data import Example, load_examples, load_inputs, split_heldout, write_jsonl
from kolm.errors import GateError, SpecError, TrainingError
from kolm.evaluate import agreement, run_and_score, task_metrics, wilson_interval
from kolm.keys import KeyStore
from kolm.kscore import KInputs, gate, kscore
from kolm.prompt import PromptFormat, format_from_gguf
from kolm.recall.ground import INDEX_PART, Grounder
from kolm.recall.index import IndexReport
from kolm.report import write_reports
from kolm.runtime import PROBE_CACHE, Decoding, Student, llama_cpp_version
from kolm.spec import FROM_SPEC, TaskSpec, TeacherConfig, describe_settings
from kolm.verifier import Verifier, check_seeds, label_shortfall, synthesize

Log = Callable[[str], None]
PROMPT_VERSION = 2
"""Bumped when prompt tokenization changes (2: content tokenized as plain text)."""
AGREEMENT_ROWS = 128
"""The llama.cpp / PyTorch agreement check decodes at most this many held-out inputs
in PyTorch (evenly spaced over the split), so a large held-out set costs minutes, not
the better part of an hour; the manifest records how many rows it covered."""


def _sampled_sha(p: Prepared, rows: list[int]) -> str:
    """What the PyTorch reference answers depend on beyond the training stage's key."""
    inputs = [p.heldout[i].input for i in rows]
    return hashlib.sha256(canonical_json([inputs, p.contexts(inputs)])).hexdigest()


def agreement_rows(n: int, limit: int | None = None) -> list[int]:
    """Indices of the held-out rows the PyTorch reference decodes: all of them up to
    `limit` (default `AGREEMENT_ROWS`), else `limit` evenly spaced ones, first row included."""
    limit = AGREEMENT_ROWS if limit is None else limit
    if n <= limit:
        return list(range(n))
    return [i * n // limit for i in range(limit)]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Prepared:
    """Everything checked before any expensive work starts."""

    spec: TaskSpec
    base: ResolvedBase
    fmt: PromptFormat
    train: list[Example]
    heldout: list[Example]
    unlabeled: list[str]
    output_kind: str
    labels: list[str]
    verifier: Verifier
    warnings: list[str] = field(default_factory=list)
    """Things worth saying before the work starts (e.g. label classes too small)."""
    grounder: Grounder | None = None
    """Set by the recall stage when the spec has a corpus."""
    index_report: IndexReport | None = None

    def __post_init__(self):
        self.seeds = list(self.train)  # the seed training split, before teacher labels join it

    def contexts(self, inputs: Sequence[str]) -> list[list[str]] | None:
        """Retrieved chunks for each input, or None without a corpus."""
        return None if self.grounder is None else self.grounder.contexts(inputs)


@dataclass
class CompileResult:
    """What a compile produced."""

    artifact: Path
    manifest: dict
    artifact_id: str
    timings: dict[str, float] = field(default_factory=dict)
    cached_training: bool = False
    report: Path | None = None

    @property
    def distill(self) -> dict | None:
        return self.manifest.get("distill")


def prepare(spec: TaskSpec, extra_inputs: list[str] | None = None) -> Prepared:
    """Load and check examples and base; raise with every problem found.

    `extra_inputs` (e.g. drifted inputs from `kolm run`) join the unlabeled pool."""
    examples = load_examples(spec.examples)
    unlabeled = load_inputs(spec.unlabeled) if spec.unlabeled else []
    unlabeled = list(dict.fromkeys(unlabeled + list(extra_inputs or [])))
    train, held = split_heldout(examples, spec.heldout_fraction, spec.seed)
    problems = []
    if len(examples) < 4:
        problems.append(f"examples: {len(examples)} examples; kolm needs at least 4")
    elif not held:
        problems.append("examples: the held-out split is empty; raise heldout_fraction")
    if problems:
        raise SpecError(problems, source=str(spec.spec_path or "spec"))
    outputs = [e.output for e in examples]
    v = spec.verifier
    verifier = synthesize(outputs, v.labels, v.regex, v.json_schema, v.functions)
    check_seeds(verifier, outputs)
    if extra_inputs and spec.teacher is None:
        raise SpecError(
            ["--drift needs a teacher to label the drifted inputs (add `teacher:` to the spec)"]
        )
    if spec.teacher is not None and not unlabeled:
        raise SpecError(
            ["teacher is set but there are no unlabeled inputs to label (add `unlabeled:`)"]
        )
    base = resolve(spec.base, spec.folder)
    seen = {e.input for e in examples}  # never ask the teacher for what the seeds answer
    unlabeled = [x for x in unlabeled if x not in seen]
    labels = list(verifier.labels)
    fmt = format_from_gguf(base.gguf)
    shortfall = label_shortfall(verifier, outputs)
    return Prepared(
        spec,
        base,
        fmt,
        train,
        held,
        unlabeled,
        verifier.kind,
        labels,
        verifier,
        [shortfall] if shortfall else [],
    )


def run_distill(
    p: Prepared,
    cache_path: Path | None = None,
    progress: bool = True,
    inputs: list[str] | None = None,
    teacher: TeacherConfig | None = None,
):
    """Label inputs (default: the unlabeled pool); demos come from the seeds' training split."""
    import asyncio

    from kolm.cache import TeacherCache
    from kolm.distill import distill

    teacher = teacher or p.spec.teacher
    assert teacher is not None
    pool = p.unlabeled if inputs is None else inputs
    cache = TeacherCache(cache_path)
    contexts = p.contexts(pool)
    context_for = None if contexts is None else dict(zip(pool, contexts, strict=True)).get
    try:
        return asyncio.run(
            distill(
                pool,
                p.spec.description,
                p.seeds,
                p.verifier,
                teacher,
                cache,
                progress,
                context_for=context_for,
            )
        )
    finally:
        cache.close()


def work_dir_for(spec: TaskSpec, override: Path | None) -> Path:
    if override is not None:
        return Path(override)
    root = spec.folder or Path.cwd()
    return root / ".kolm-work" / spec.name


def _prompts_payload(p: Prepared, base_sha: str, rows: list[Example]) -> dict:
    """What a model's prompts for `rows` depend on: kolm, the base, its prompt format,
    the instruction, the rows and (with a corpus) their retrieved chunks."""
    payload = {
        "kolm": __version__,
        "prompt": PROMPT_VERSION,
        "base": base_sha,
        "format": p.fmt.to_dict(),
        "instruction": p.spec.description,
        "rows": [e.to_dict() for e in rows],
    }
    if p.grounder is not None:
        payload["contexts"] = p.contexts([e.input for e in rows])
    return payload


def training_key(p: Prepared, base_sha: str) -> str:
    """Hash of everything the adapter depends on."""
    payload = _prompts_payload(p, base_sha, p.train)
    payload["train"] = payload.pop("rows")  # the key's old field name: caches stay valid
    payload["config"] = sft_config(p)
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def sft_config(p: Prepared) -> dict:
    """The train config the SFT stage depends on (not the preference stage's fields)."""
    from kolm.spec import PREFERENCE_FIELDS

    return {k: v for k, v in p.spec.train.settings().items() if k not in PREFERENCE_FIELDS}


def compile_task(
    spec: TaskSpec,
    out: Path,
    *,
    work_dir: Path | None = None,
    embed_base: bool = True,
    keys: KeyStore | None = None,
    progress: bool = True,
    log: Log = _stderr,
    cache_path: Path | None = None,
    force: bool = False,
    extra_inputs: list[str] | None = None,
    ladder: list[dict] | None = None,
    settings_from: str = FROM_SPEC,
) -> CompileResult:
    """Run every stage; below the gate, write only the report and raise GateError (unless force).

    `base: auto` climbs the base ladder (kolm.ladder); `ladder` holds the rungs tried so far,
    and `settings_from` says who wrote the base's `train.per_base` entry (the spec, or
    the ladder's default for that base). A spec that sets no learning rate trains at
    kolm's default for its base (`TrainConfig.rate_for`)."""
    if spec.base == "auto":
        from kolm.ladder import compile_ladder

        return compile_ladder(
            spec,
            out,
            log,
            force,
            work_dir=work_dir,
            embed_base=embed_base,
            keys=keys,
            progress=progress,
            cache_path=cache_path,
            extra_inputs=extra_inputs,
        )
    spec, per_base, settings_from = spec.own_settings(settings_from)
    if per_base:
        log(f"kolm: {spec.base} trains with {describe_settings(per_base)} ({settings_from})")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    p = prepare(spec, extra_inputs or [])
    for warning in p.warnings:
        log(f"kolm: warning: {warning}")
    if spec.gate.beat_floor and p.output_kind != "label":
        log(
            f"kolm: warning: gate.beat_floor applies to label tasks; this task's output is {p.output_kind}"
        )
    keys = keys or KeyStore()
    keys.ensure()
    base_sha = p.base.sha256()
    timings["prepare"] = time.perf_counter() - t
    if spec.corpus:
        t = time.perf_counter()
        _recall_stage(p, work_dir_for(spec, work_dir), log)
        timings["recall"] = time.perf_counter() - t
    t = time.perf_counter()
    report = None
    if spec.teacher is not None:
        log(
            f"kolm: labeling {len(p.unlabeled)} inputs with {spec.teacher.model.split('@')[0]} (k={spec.teacher.k})"
        )
        report = run_distill(p, cache_path, progress)
        p.train = p.train + [
            Example(x.input, x.output) for x in report.accepted if x.output is not None
        ]
    timings["distill"] = time.perf_counter() - t
    log(
        f"kolm: {len(p.train)} training / {len(p.heldout)} held-out examples, "
        f"output kind {p.output_kind}, base {p.base.name}"
    )
    work = work_dir_for(spec, work_dir) / training_key(p, base_sha)[:16]
    work.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    cached = (work / "done.json").is_file()
    train_info = (
        _train_stage(p, work, progress, log) if not cached else _load_json(work / "done.json")
    )
    adapter = work / "adapter.gguf"
    if spec.train.method != "sft":
        adapter, train_info = _align_stage(p, work, train_info, report, progress, log)
    if per_base:  # the manifest and report say which settings were this base's own
        own = {"per_base": {spec.base: per_base}, "per_base_from": settings_from}
        train_info = {**train_info, **own}
    _check_cached_answers(p, train_info, _torch_rows(train_info, len(p.heldout)))
    _requantize_cached_adapter(p, adapter, log)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    pack = _recipes_stage(p, log)
    timings["recipes"] = time.perf_counter() - t

    t = time.perf_counter()
    decoding = _decoding(p, train_info)
    base_cache = _base_cache(p, work_dir_for(spec, work_dir), base_sha, decoding)
    ev = _evaluate_stage(p, adapter, decoding, pack, progress, log, base_cache=base_cache)
    ev, precision, merged = _precision_stage(p, work, adapter, decoding, pack, ev, progress, log)
    teacher = _teacher_baseline(p, cache_path, progress, log)
    metrics = _metrics(p, ev, teacher, train_info)
    if p.output_kind == "label":
        metrics["floor"] = _floor(p, log, [r["correct"] for r in ev["rows"]])
    timings["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    embedded = embed_base or merged is not None  # a merged build's model is its base part
    if merged is not None and not embed_base:
        log("kolm: note: a merged build embeds its model; --no-embed-base does not apply")
    parts = _write_parts(p, work, decoding, embedded, report, pack, merged, adapter)
    manifest = _manifest(p, base_sha, embedded, decoding, metrics, train_info)
    manifest["precision"] = precision
    if merged is None:
        from kolm.export import adapter_format

        manifest["adapter"] = adapter_format(adapter)
    manifest["recipes"] = _recipes_summary(pack, parts, ev)
    if report is not None:
        manifest["distill"] = report.summary()
    size = sum(path.stat().st_size for path in parts.values()) + (0 if embedded else p.base.size)
    manifest["economics"] = _economics(p, metrics, report, teacher)
    score, verdict = _score(p, metrics, size, manifest["economics"]["student_usd_per_call"])
    manifest["kscore"] = score.to_dict()
    manifest["gate"] = {
        "min_k": p.spec.gate.min_k,
        "min_accuracy": p.spec.gate.min_accuracy,
        "beat_floor": p.spec.gate.beat_floor,
        **verdict.to_dict(),
        "overridden": not verdict.passed and force,
    }
    if ladder is not None:
        from kolm.ladder import rung_record

        acc = metrics["student"]["accuracy"]
        record = rung_record(
            p.base.name, p.base.license, score.K, verdict.passed, acc, verdict.reasons
        )
        own = {"per_base": per_base, "per_base_from": settings_from} if per_base else {}
        ladder.append(record | own)
        manifest["ladder"] = list(ladder)
    details = {"heldout": ev["rows"], "latencies_s": ev["latencies_s"]}
    report_path = write_reports(Path(out), manifest, details)
    if not verdict.passed and not force:
        raise GateError(
            "not shipped: " + "; ".join(verdict.reasons),
            hint=f"report: {report_path}; candidate files: {work}. "
            "Improve the data or training, or pass --force to ship anyway (marked in the manifest).",
        )
    manifest, art_id = write_artifact(out, parts, manifest, keys)
    timings["package"] = time.perf_counter() - t
    return CompileResult(Path(out), manifest, art_id, timings, cached, report_path)


def _requantize_cached_adapter(p: Prepared, adapter: Path, log: Log) -> None:
    """A cached stage from before adapters were written at Q8_0 is rewritten at Q8_0, so
    drafting on it is bit-exact (kolm.export.ADAPTER_TYPES)."""
    from kolm.basemodel import gguf_metadata
    from kolm.export import requantize

    arch = str(gguf_metadata(p.base.gguf, ("general.architecture",))["general.architecture"])
    if requantize(adapter, arch):
        log("kolm: rewrote the cached adapter at q8_0 (batch-invariant drafting)")
        for stale in adapter.parent.glob("merged-*.gguf"):  # merged from the F32 values
            stale.unlink()


def _train_stage(p: Prepared, work: Path, progress: bool, log: Log) -> dict:
    from kolm.export import write_lora_gguf
    from kolm.train import answer_ids, save_adapter_state, train_lora

    log("kolm: training LoRA adapter")
    result = train_lora(
        p.base.gguf,
        p.fmt,
        p.spec.description,
        p.train,
        p.spec.train,
        work / "ckpt",
        progress,
        contexts=p.contexts([e.input for e in p.train]),
    )
    tmp = work / "adapter.gguf.partial"
    write_lora_gguf(result.model, p.base.gguf, tmp, p.spec.train.lora_alpha)
    tmp.replace(work / "adapter.gguf")
    save_adapter_state(result.model, work / "adapter.pt")
    tok = result.tokenizer
    answer_tokens = max(len(answer_ids(tok, p.fmt, e.output)) for e in p.train)
    max_new = p.spec.run.max_tokens or answer_tokens + 8
    rows, torch_outputs = _reference_answers(p, result.model, tok, max_new, progress, log)
    info = {
        "steps": result.steps,
        "batch_size": result.batch_size,
        "seconds": round(result.seconds, 2),
        "method": "sft",
        "tokens_per_second": round(result.tokens_per_second, 1),
        "padded_share": round(result.padded_share, 4),
        "threads": result.threads,
        "final_loss": round(sum(result.losses[-10:]) / max(1, len(result.losses[-10:])), 4),
        "device": result.device,
        "truncated_examples": result.truncated,
        "resumed_from_step": result.resumed_from,
        "max_answer_tokens": answer_tokens,
        "torch_heldout_outputs": torch_outputs,
        "torch_heldout_rows": rows,
        "torch_heldout_sha256": _sampled_sha(p, rows),
    }
    (work / "done.json").write_text(json.dumps(info, indent=1))
    (work / "ckpt" / "checkpoint.pt").unlink(missing_ok=True)
    return info


def _align_stage(
    p: Prepared, work: Path, sft_info: dict, report, progress: bool, log: Log
) -> tuple[Path, dict]:
    """The preference stage (kolm.align) on the SFT adapter; cached in its own folder.

    Returns the adapter to ship and the train info (the SFT adapter when there are no pairs)."""
    cfg = p.spec.train
    from kolm.align import stage_version

    key = {"sft": work.name, "pairs": report.preference_pairs() if report else []}
    key["stage"] = stage_version(cfg.method)
    key |= {k: v for k, v in cfg.settings().items() if k not in sft_config(p)}
    folder = work / f"{cfg.method}-{hashlib.sha256(canonical_json(key)).hexdigest()[:12]}"
    if (folder / "done.json").is_file():
        info = _load_json(folder / "done.json")
        return (
            folder / "adapter.gguf" if info["preference"]["steps"] else work / "adapter.gguf"
        ), info
    folder.mkdir(exist_ok=True)
    info = _run_align(p, work, folder, sft_info, key["pairs"], progress, log)
    (folder / "done.json").write_text(json.dumps(info, indent=1))
    return (folder / "adapter.gguf" if info["preference"]["steps"] else work / "adapter.gguf"), info


def _run_align(p: Prepared, work, folder, sft_info, teacher_rows, progress, log) -> dict:
    from kolm.align import align, grpo, preference_steps, teacher_pairs
    from kolm.train import load_adapter

    cfg = p.spec.train
    model, tok = load_adapter(p.base.gguf, cfg, work / "adapter.pt")
    inputs = [e.input for e in p.train]
    contexts = p.contexts(inputs)
    ctx = dict(zip(inputs, contexts, strict=True)) if contexts else None
    max_new = sft_info["max_answer_tokens"] + 8
    info = {**sft_info, "method": cfg.method}
    if cfg.method == "grpo":
        log(f"kolm: grpo: {len(inputs)} training inputs; training {cfg.preference_steps} steps")
        res = grpo(
            model, tok, p.fmt, p.spec.description, p.train, p.verifier.passing, cfg,
            folder / "ckpt", max_new, progress, ctx,
        )  # fmt: skip
        _log_rewards(res.hyper, log)
        return _finish_align(p, folder, model, tok, info, res, max_new, progress, log)
    pairs = teacher_pairs(teacher_rows) + _student_pairs(
        p, work, model, tok, contexts, max_new, log, progress
    )
    if not pairs:
        log(
            f"kolm: {cfg.method}: no preference pairs (no rejected samples, no wrong answers); "
            "skipping the preference stage and shipping the SFT adapter"
        )
        info["preference"] = {"method": cfg.method, "pairs": 0, "steps": 0, "skipped": "no pairs"}
        return info
    steps = preference_steps(cfg, len(pairs))
    log(f"kolm: {cfg.method}: {len(pairs)} preference pairs; training {steps} steps")
    if len(pairs) < cfg.batch_size:
        log(
            f"kolm: {cfg.method}: only {len(pairs)} pairs for {len(inputs)} training inputs, "
            "too few to move the student much (docs/benchmarks.md measures this case); "
            "a teacher's rejected samples add pairs"
        )
    res = align(model, tok, p.fmt, p.spec.description, pairs, cfg, folder / "ckpt", progress, ctx)
    return _finish_align(p, folder, model, tok, info, res, max_new, progress, log)


def _log_rewards(hyper: dict, log: Log) -> None:
    """Say how GRPO's rewards went, and how many of its groups had anything to learn."""
    ends = hyper.get("mean_reward_first_last")
    share = hyper.get("groups_with_signal")
    if ends is None or share is None:
        return
    log(
        f"kolm: grpo: mean reward {ends[0]:.2f} at the first step, {ends[1]:.2f} at the last; "
        f"{share:.0%} of the sampled groups differed in reward (GRPO learns only from those)"
    )


def _student_pairs(
    p: Prepared, work: Path, model, tok, contexts, max_new: int, log: Log, progress: bool
) -> list:
    """The SFT student's wrong answers on the training inputs, kept beside the SFT adapter
    so that switching between preference methods does not decode them again."""
    from kolm.align import Pair, student_pairs

    key = canonical_json({"verifier": p.verifier.to_dict(), "max_new": max_new})
    cached = work / f"student-pairs-{hashlib.sha256(key).hexdigest()[:12]}.json"
    if cached.is_file():
        rows = _load_json(cached)
        log(f"kolm: {p.spec.train.method}: the SFT student's wrong answers (cached)")
        return [Pair(**r) for r in rows]
    log(
        f"kolm: {p.spec.train.method}: collecting the SFT student's wrong answers on the training inputs"
    )
    norm = lambda text: p.verifier.check(text).normalized  # noqa: E731
    pairs = student_pairs(
        model, tok, p.fmt, p.spec.description, p.train, norm, contexts, max_new, progress
    )
    tmp = cached.with_suffix(".partial")
    tmp.write_text(json.dumps([dataclasses.asdict(x) for x in pairs], indent=1))
    tmp.replace(cached)
    return pairs


def _reference_answers(
    p: Prepared, model, tok, max_new: int, progress: bool, log: Log
) -> tuple[list[int], list[str]]:
    """The held-out rows the llama.cpp/PyTorch agreement check samples, and PyTorch's
    greedy answers to them."""
    from kolm.train import greedy_outputs, prompt_ids

    n = len(p.heldout)
    rows = agreement_rows(n)
    log(
        f"kolm: PyTorch reference answers on the {n} held-out inputs"
        if len(rows) == n
        else f"kolm: PyTorch reference answers on {len(rows)} of {n} held-out inputs (evenly spread)"
    )
    held = [p.heldout[i].input for i in rows]
    prompts = prompt_ids(tok, p.fmt, p.spec.description, held, p.contexts(held))
    bar = "reference" if progress else None
    return rows, greedy_outputs(model, tok, prompts, max_new, bar=bar)


def _finish_align(
    p: Prepared, folder: Path, model, tok, info: dict, res, max_new: int, progress: bool, log: Log
) -> dict:
    """Export the stage's adapter, its PyTorch held-out answers and its record."""
    from kolm.export import write_lora_gguf

    tmp = folder / "adapter.gguf.partial"
    write_lora_gguf(model, p.base.gguf, tmp, p.spec.train.lora_alpha)
    tmp.replace(folder / "adapter.gguf")
    rows, info["torch_heldout_outputs"] = _reference_answers(p, model, tok, max_new, progress, log)
    info["torch_heldout_rows"] = rows
    info["torch_heldout_sha256"] = _sampled_sha(p, rows)
    shutil.rmtree(folder / "ckpt", ignore_errors=True)
    info["preference"] = {
        "pairs": res.pairs,
        "pairs_by_source": res.pairs_by_source,
        "steps": res.steps,
        "seconds": round(res.seconds, 2),
        "final_loss": res.final_loss,
        "resumed_from_step": res.resumed_from,
        **res.hyper,
    }
    return info


def _decoding(p: Prepared, train_info: dict) -> Decoding:
    run = p.spec.run
    return Decoding(
        max_tokens=run.max_tokens or train_info["max_answer_tokens"] + 8,
        seed=p.spec.seed,
        n_ctx=run.n_ctx,
        threads=run.threads,
        flash_attn=True,
        constrain=constrained(run.constrain, p.verifier),
    )


def constrained(setting: bool | None, verifier: Verifier) -> bool:
    """`run.constrain` resolved for this task: unset means on for a closed label set."""
    if setting is not None:
        return setting
    return verifier.kind == "label" and bool(verifier.labels)


def _recipes_stage(p: Prepared, log: Log):
    """Mine the recipe pack from the accepted outputs (seeds' training split + teacher's)."""
    from kolm.decompose.mine import base_tokenizer, mine

    log("kolm: mining the recipe pack from the accepted outputs")
    tok = base_tokenizer(p.base.gguf, p.fmt.eos)
    return mine(
        [e.output for e in p.train],
        tok,
        labels=p.labels if p.output_kind == "label" else (),
        json_keys=p.output_kind == "json",
        heldout=[e.output for e in p.heldout],
        inputs=[e.input for e in p.train],
        heldout_inputs=[e.input for e in p.heldout],
    )


def _grammar(p: Prepared) -> str | None:
    from kolm.decompose.grammar import grammar_for

    return grammar_for(p.verifier, [e.output for e in p.train[:1]])


def _recipes_summary(pack, parts: dict[str, Path], ev: dict) -> dict:
    from kolm.decompose.pack import PART

    shares = ev["drafted_shares"]
    return {
        "part": PART,
        "bytes": parts[PART].stat().st_size,
        "entries": pack.entries,
        "expected_hit_rate": pack.stats["expected_hit_rate"],
        "heldout_drafted_share": round(sum(shares) / len(shares), 4) if shares else None,
        "stats": pack.stats,
    }


def _evaluate_stage(
    p: Prepared,
    adapter: Path | None,
    decoding: Decoding,
    pack,
    progress: bool,
    log: Log,
    merged: Path | None = None,
    base_cache: Path | None = None,
) -> dict:
    """Student (with its recipe pack) and untrained base through llama.cpp on the held-out inputs.

    With `merged` (a merged build), the student is that model without an adapter,
    and the base is not run again. The base's answers are read from `base_cache` when
    a compile of the same held-out set, base and decoding wrote them there."""
    inputs = [e.input for e in p.heldout]
    gold = [e.output for e in p.heldout]
    runs = [("student", merged or p.base.gguf, adapter)]
    scores = {}
    cached = _load_scored(base_cache, len(inputs)) if merged is None and base_cache else None
    if cached is not None:
        log(
            "kolm: evaluating the student on the held-out set (llama.cpp); the untrained base's answers are cached"
        )
        scores["base"] = cached
    elif merged is None:
        log("kolm: evaluating student and untrained base on the held-out set (llama.cpp)")
        runs.append(("base", p.base.gguf, None))
    else:
        log(f"kolm: evaluating the merged {merged.name} on the held-out set (llama.cpp)")
    for name, model_path, adapter_path in runs:
        model = Student(
            model_path,
            adapter_path,
            p.fmt,
            p.spec.description,
            decoding,
            pack=pack if name == "student" else None,
            grammar=_grammar(p) if name == "student" else None,
            probe_cache=cache_home() / PROBE_CACHE,
        )
        if model.draft_note:
            log(f"kolm: note: {model.draft_note}")
        answer = _grounded(model, p.grounder)
        try:
            answer(inputs[0])  # warm-up
            scores[name] = run_and_score(answer, inputs, gold, desc=name, progress=progress)
        finally:
            model.close()
        if name == "base" and base_cache is not None:
            tmp = base_cache.with_suffix(".partial")
            tmp.write_text(json.dumps(dataclasses.asdict(scores[name])))
            tmp.replace(base_cache)
    student = scores["student"]
    checks = [p.verifier.check(o) for o in student.outputs]
    rows = [
        {
            "input": e.input,
            "expected": e.output,
            "output": o,
            "correct": c.normalized == p.verifier.check(e.output).normalized,
            "verified": c.ok,
            "failed_rule": c.failed,
        }
        for e, o, c in zip(p.heldout, student.outputs, checks, strict=True)
    ]
    return {
        "scores": scores,
        "rows": rows,
        "latencies_s": list(student.latencies_s),
        "drafted_shares": list(student.drafted_shares),
    }


def _base_cache(p: Prepared, root: Path, base_sha: str, decoding: Decoding) -> Path:
    """Where the untrained base's held-out answers are kept: keyed by what they depend on
    (not the training, the method or the grammar, which only the student gets), so a
    recompile that changes those does not run the base again."""
    payload = _prompts_payload(p, base_sha, p.heldout)
    payload["decoding"] = {
        k: v for k, v in decoding.to_dict().items() if k not in ("threads", "constrain")
    }
    payload["llama_cpp"] = llama_cpp_version()
    key = hashlib.sha256(canonical_json(payload)).hexdigest()[:16]
    root.mkdir(parents=True, exist_ok=True)
    return root / f"base-answers-{key}.json"


def _load_scored(path: Path, n: int):
    """Cached answers for `n` inputs, or None when there are none or they do not read
    back whole (then the base is simply scored again and the file rewritten)."""
    from kolm.evaluate import Scored

    if not path.is_file():
        return None
    try:
        d = _load_json(path)
        d["latencies_s"] = tuple(d["latencies_s"])
        d["drafted_shares"] = tuple(d["drafted_shares"])
        scored = Scored(**d)
    except (ValueError, KeyError, TypeError):
        return None
    return scored if len(scored.outputs) == n else None


def _precision_stage(
    p: Prepared,
    work: Path,
    adapter: Path,
    decoding: Decoding,
    pack,
    ev: dict,
    progress: bool,
    log: Log,
) -> tuple[dict, dict, Path | None]:
    """For `quantize:` other than adapter: merge, quantize and evaluate the merged model.

    Returns the evaluation of what ships, its precision record for the manifest, and
    the merged model's path (None for the default base + adapter build)."""
    from kolm.merge import describe, merge_gguf
    from kolm.precision import measure

    kind = p.spec.quantize
    student = ev["scores"]["student"]
    accuracy = _row_accuracy(ev["rows"])
    if kind == "adapter":
        size = p.base.size + adapter.stat().st_size
        rep = measure(kind, size, student.outputs, student.outputs, accuracy, student.latency_p50_s)
        return ev, rep.to_dict(), None
    path = work / f"merged-{kind}.gguf"
    if path.is_file():
        merge = describe(path, kind)
    else:
        log(f"kolm: merging the adapter into the base and writing it at {kind}")
        merge = merge_gguf(p.base.gguf, adapter, path, kind, threads=decoding.resolved().threads)
    shipped = _evaluate_stage(p, None, decoding, pack, progress, log, merged=path)
    shipped["scores"]["base"] = ev["scores"]["base"]
    s = shipped["scores"]["student"]
    rep = measure(
        kind,
        merge.size,
        s.outputs,
        student.outputs,
        _row_accuracy(shipped["rows"]),
        s.latency_p50_s,
        merge.note(),
        reference_accuracy=accuracy,
    )
    if rep.flagged:
        log(f"kolm: warning: {rep.line()}")
    record = rep.to_dict() | {
        "reference_latency_p50_s": round(student.latency_p50_s, 4),
        "tensor_types": merge.tensor_types,
        "fallback_tensors": len(merge.fallbacks),
    }
    return shipped, record, path


def _row_accuracy(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / len(rows) if rows else 0.0


def _grounded(model: Student, grounder: Grounder | None):
    """`model.answer` with each input's retrieved chunks in its prompt (when there is a corpus)."""
    if grounder is None:
        return model.answer
    return lambda text: model.answer(text, grounder.context(text))


def _recall_stage(p: Prepared, root: Path, log: Log) -> None:
    """Build or update the corpus index in the work dir; every prompt is grounded in it."""
    from kolm.recall import ChunkConfig, Embedder, build_index
    from kolm.recall.index import Index

    r = p.spec.recall
    embedder = Embedder(r.embedder)
    base_dir = p.spec.folder or Path.cwd()
    log(f"kolm: indexing the corpus ({', '.join(p.spec.corpus)}) with {embedder.info.name}")
    path = root / "index.sqlite"
    rep = build_index(
        p.spec.corpus,
        path,
        base_dir=base_dir,
        embedder=embedder,
        cfg=ChunkConfig(r.chunk_chars, r.overlap_chars),
    )
    s = rep.summary()
    log(
        f"kolm: corpus: {s['files']} files, {s['chunks']} chunks "
        f"({s['indexed']} indexed, {s['unchanged']} unchanged, {s['chunks_embedded']} chunks embedded)"
    )
    for f in rep.skipped():
        log(f"kolm: corpus: skipped {f.path} ({f.status}): {f.reason}")
    p.index_report = rep
    p.grounder = Grounder(Index(path, embedder), r.k, r.mode)


def _teacher_baseline(p: Prepared, cache_path: Path | None, progress: bool, log: Log) -> dict:
    """The teacher's own answers on the held-out inputs (one sample each, cached), or gold."""
    from kolm.distill import price_of, price_table
    from kolm.teacher import TeacherRef

    g = p.spec.gate
    if p.spec.teacher is None:
        return {
            "source": "gold",
            "note": "no teacher configured: gold labels stand in for the teacher (accuracy 1.0); "
            "latency and cost are gate.teacher_latency_s and gate.teacher_usd_per_1k",
            "accuracy": 1.0,
            "latency_s": g.teacher_latency_s,
            "usd_per_call": g.teacher_usd_per_1k / 1000,
            "outputs": None,
        }
    log("kolm: teacher baseline on the held-out inputs")
    cfg = dataclasses.replace(p.spec.teacher, k=1, min_agreement=0.0)
    rep = run_distill(p, cache_path, progress, inputs=[e.input for e in p.heldout], teacher=cfg)
    outputs = [x.samples[0] if x.samples else "" for x in rep.items]
    gold = [p.verifier.check(e.output).normalized for e in p.heldout]
    correct = sum(p.verifier.check(o).normalized == g_ for o, g_ in zip(outputs, gold, strict=True))
    lat = sorted(rep.latencies_s)
    model = TeacherRef.parse(cfg.model).model
    return {
        "source": "teacher",
        "note": f"{rep.teacher}, one sample per held-out input",
        "accuracy": correct / len(gold),
        "latency_s": lat[len(lat) // 2] if lat else g.teacher_latency_s,
        "usd_per_call": price_of(model, *rep.tokens_per_call, price_table(cfg.prices)),
        "usd_spent": rep.usd,
        "outputs": outputs,
    }


def _torch_rows(train_info: dict, n: int) -> list[int]:
    """The held-out rows the PyTorch answers are for (a stage cached before the sample
    was bounded decoded every row)."""
    return list(train_info.get("torch_heldout_rows") or range(n))


def _check_cached_answers(p: Prepared, train_info: dict, rows: list[int]) -> None:
    """The cached PyTorch answers must be for these held-out inputs: the training
    stage's key covers the training rows only, so an edit to held-out rows alone
    would otherwise compare answers to different inputs."""
    n = len(p.heldout)
    stored = train_info.get("torch_heldout_sha256")
    fits = len(train_info["torch_heldout_outputs"]) == len(rows) and all(i < n for i in rows)
    if not fits or (stored is not None and stored != _sampled_sha(p, rows)):
        raise TrainingError(
            "the cached training stage's PyTorch answers were made for other held-out inputs",
            hint="the held-out examples changed since it was cached: delete the work folder "
            "(--work-dir, default .kolm-work/ beside the spec) and compile again",
        )


def _metrics(p: Prepared, ev: dict, teacher: dict, train_info: dict) -> dict:
    gold = [e.output for e in p.heldout]
    student, base = ev["scores"]["student"], ev["scores"]["base"]
    s_metrics = task_metrics(p.output_kind, student.outputs, gold, p.verifier)
    s_metrics.update(
        latency_p50_s=round(student.latency_p50_s, 4), latency_p95_s=round(student.latency_p95_s, 4)
    )
    right = sum(r["correct"] for r in ev["rows"])
    s_metrics["correct"] = right
    s_metrics["accuracy_ci95"] = [round(x, 4) for x in wilson_interval(right, len(ev["rows"]))]
    b_metrics = task_metrics(p.output_kind, base.outputs, gold, p.verifier)
    b_metrics.update(
        latency_p50_s=round(base.latency_p50_s, 4), latency_p95_s=round(base.latency_p95_s, 4)
    )
    teacher_out = teacher.pop("outputs")
    rows = _torch_rows(train_info, len(gold))
    agree = None
    if teacher_out is not None:
        agree = agreement(
            [p.verifier.check(o).normalized for o in student.outputs],
            [p.verifier.check(o).normalized for o in teacher_out],
        )
    return {
        "heldout_examples": len(gold),
        "student": s_metrics,
        "base": b_metrics,
        "teacher": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in teacher.items()},
        "student_teacher_agreement": None if agree is None else round(agree, 4),
        "llamacpp_torch_agreement": round(
            agreement([student.outputs[i] for i in rows], train_info["torch_heldout_outputs"]), 4
        ),
        "llamacpp_torch_agreement_rows": len(rows),
        "train": {k: v for k, v in train_info.items() if not k.startswith("torch_heldout_")},
    }


def _floor(p: Prepared, log: Log, student_correct: list[bool]) -> dict:
    """The classical baseline (kolm.floor) on the student's training rows and held-out split,
    compared row by row with the student."""
    from kolm.floor import label_floor

    log("kolm: TF-IDF + logistic regression floor on the same split")
    rows = [(e.input, p.verifier.check(e.output).normalized) for e in p.train + p.heldout]
    n = len(p.train)
    floor = label_floor(rows[:n], rows[n:], p.labels)
    return floor.to_dict() | floor.against(student_correct)


def _score(p: Prepared, metrics: dict, size: int, student_usd_per_call: float):
    s, t = metrics["student"], metrics["teacher"]
    inputs = KInputs(
        student_accuracy=s["accuracy"],
        teacher_accuracy=t["accuracy"],
        size_bytes=size,
        student_latency_s=s["latency_p50_s"],
        teacher_latency_s=t["latency_s"],
        student_usd_per_call=student_usd_per_call,
        teacher_usd_per_call=t["usd_per_call"],
        coverage=s["verifier_pass_rate"],
    )
    score = kscore(inputs)
    floor = metrics.get("floor", {}).get("accuracy") if p.spec.gate.beat_floor else None
    return score, gate(score, p.spec.gate.min_k, p.spec.gate.min_accuracy, floor)


def _economics(p: Prepared, metrics: dict, report, teacher: dict) -> dict:
    compile_usd = (report.usd if report else 0.0) + teacher.get("usd_spent", 0.0)
    student_call = p.spec.gate.hardware_usd_per_hour * metrics["student"]["latency_p50_s"] / 3600
    return {
        "teacher_usd_per_call": metrics["teacher"]["usd_per_call"],
        "student_usd_per_call": student_call,
        "compile_usd": round(compile_usd, 6),
        "hardware_usd_per_hour": p.spec.gate.hardware_usd_per_hour,
        "teacher_source": metrics["teacher"]["source"],
    }


def _write_parts(
    p: Prepared,
    work: Path,
    decoding: Decoding,
    embed_base: bool,
    report=None,
    pack=None,
    merged: Path | None = None,
    adapter: Path | None = None,
) -> dict[str, Path]:
    """The artifact's parts; a merged build ships `merged` as its base part and no adapter.

    `adapter` is the LoRA that ships (after a preference stage, that stage's)."""
    from kolm.decompose.pack import PART

    parts_dir = work / "parts"
    parts_dir.mkdir(exist_ok=True)
    (parts_dir / "verifier.json").write_text(
        json.dumps(p.verifier.to_dict(), indent=1, ensure_ascii=False)
    )
    write_jsonl(parts_dir / "train.jsonl", [e.to_dict() for e in p.train])
    write_jsonl(parts_dir / "heldout.jsonl", [e.to_dict() for e in p.heldout])
    config = {
        "instruction": p.spec.description,
        "prompt_format": p.fmt.to_dict(),
        "decoding": decoding.to_dict(),
        "train": p.spec.train.settings(),
        "output_kind": p.output_kind,
        "labels": p.labels,
    }
    if p.grounder is not None:
        config["recall"] = _recall_config(p)
    (parts_dir / "config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    parts = {
        "train.jsonl": parts_dir / "train.jsonl",
        "heldout.jsonl": parts_dir / "heldout.jsonl",
        "config.json": parts_dir / "config.json",
        "verifier.json": parts_dir / "verifier.json",
    }
    if pack is not None:
        (parts_dir / PART).write_bytes(pack.to_bytes())
        parts[PART] = parts_dir / PART
    if report is not None:
        write_jsonl(parts_dir / "distilled.jsonl", [x.to_dict() for x in report.items])
        write_jsonl(parts_dir / "preferences.jsonl", report.preference_pairs())
        parts["distilled.jsonl"] = parts_dir / "distilled.jsonl"
        parts["preferences.jsonl"] = parts_dir / "preferences.jsonl"
    if p.grounder is not None:
        parts[INDEX_PART] = p.grounder.index.path
        rows = [
            {"split": split, "input": e.input, "chunks": p.grounder.ids(e.input)}
            for split, examples in (("train", p.train), ("heldout", p.heldout))
            for e in examples
        ]
        write_jsonl(parts_dir / "grounding.jsonl", rows)
        parts["grounding.jsonl"] = parts_dir / "grounding.jsonl"
    if merged is not None:
        parts[BASE_PART] = merged
    else:
        parts[ADAPTER_PART] = adapter or work / "adapter.gguf"
        if embed_base:
            parts[BASE_PART] = p.base.gguf
    return parts


def _manifest(
    p: Prepared, base_sha: str, embedded: bool, decoding: Decoding, metrics: dict, train_info: dict
) -> dict:
    return {
        "created_at": utc_now(),
        "task": {
            "name": p.spec.name,
            "description": p.spec.description,
            "output_kind": p.output_kind,
            "labels": p.labels,
            "verifier": p.verifier.describe(),
        },
        "base": {
            "name": p.base.name,
            "license": p.base.license,
            "sha256": base_sha,
            "size": p.base.size,
            "embedded": embedded,
        },
        "decoding": decoding.to_dict(),
        "metrics": metrics,
        "versions": versions(),
        **({"recall": _recall_manifest(p)} if p.grounder is not None else {}),
    }


def _recall_config(p: Prepared) -> dict:
    """What `run` needs to ground the same way: k, mode and the embedder's identity."""
    assert p.grounder is not None
    return {
        "part": INDEX_PART,
        "k": p.grounder.k,
        "mode": p.grounder.mode,
        "embedder": p.grounder.index.info.to_dict(),
    }


def _recall_manifest(p: Prepared) -> dict:
    """The index as `kolm inspect` shows it: size, chunks, embedder, sources, skipped files."""
    assert p.grounder is not None and p.index_report is not None
    stats = p.grounder.index.stats()
    return {
        **_recall_config(p),
        "chunks": stats["chunks"],
        "chunking": stats["chunking"],
        "sources": [
            {k: f[k] for k in ("path", "kind", "status", "chunks")} | {"reason": f["reason"]}
            for f in stats["files"]
        ],
        "skipped": [f["path"] for f in stats["files"] if f["status"] != "indexed"],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"kolm": __version__, "python": sys.version.split()[0], "llama_cpp": llama_cpp_version()}
    for dist in ("torch", "transformers", "peft", "gguf"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())
