"""Distill: label inputs by asking a teacher k times and keeping the verified majority.

For each input the teacher is asked k times (few-shot, with demonstrations from
the training seeds only). Samples are scored by the verifier; among those that
pass, the most frequent normalized answer wins (ties go to the answer seen
first). Every call goes through the cache first, is paid for at most once, and
counts against the budget. Rejected samples are kept beside their winner as
preference pairs. Knows the labeling loop; not how teachers talk or how models train.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kolm.cache import Cached, TeacherCache, cache_key
from kolm.data import Example
from kolm.progress import emit
from kolm.prompt import user_turn
from kolm.spec import TeacherConfig
from kolm.teacher import (
    Backend,
    Completion,
    Request,
    Settings,
    TeacherRef,
    complete_with_retries,
    make_backend,
)
from kolm.verifier import Verifier

ANSWER_ONLY = (
    "Reply with the answer only, in exactly the format of the examples, with no explanation."
)

# USD per million tokens (input, output). Public list prices change: override them in
# the spec (`teacher.prices`) or in $KOLM_HOME/prices.json. Unknown models cost 0.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "claude-3-5-haiku-latest": (0.80, 4.00),
    "claude-sonnet-4-0": (3.00, 15.00),
}


@dataclass
class Budget:
    """Stops new calls once the call count or spend reaches its limit."""

    max_calls: int | None = None
    max_usd: float | None = None
    calls: int = 0
    usd: float = 0.0
    stopped: str | None = None

    def reserve(self) -> bool:
        if self.max_calls is not None and self.calls >= self.max_calls:
            self.stopped = f"max_calls={self.max_calls} reached"
        elif self.max_usd is not None and self.usd >= self.max_usd:
            self.stopped = f"max_usd={self.max_usd} reached"
        if self.stopped:
            return False
        self.calls += 1
        return True


@dataclass
class Labeled:
    """The outcome for one input."""

    input: str
    output: str | None
    agreement: float
    votes: dict[str, int]
    samples: list[str]
    rejected: list[dict]
    tie: bool = False
    missing_samples: int = 0

    def to_dict(self) -> dict:
        return {
            "input": self.input,
            "output": self.output,
            "agreement": round(self.agreement, 4),
            "votes": self.votes,
            "tie": self.tie,
            "rejected": self.rejected,
            "missing_samples": self.missing_samples,
        }


@dataclass
class DistillReport:
    items: list[Labeled]
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    budget_stopped: str | None = None
    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    teacher: str = ""
    k: int = 0
    latencies_s: list[float] = field(default_factory=list)
    """Per-call latency of every answer (from the cache for cached ones, when recorded)."""
    tokens_per_call: tuple[float, float] = (0.0, 0.0)
    """Mean (prompt, completion) tokens per answer, cached ones included."""

    @property
    def accepted(self) -> list[Labeled]:
        return [x for x in self.items if x.output is not None]

    def summary(self) -> dict:
        n_samples = sum(len(x.samples) for x in self.items)
        passing = sum(sum(x.votes.values()) for x in self.items)
        acc = self.accepted
        return {
            "teacher": self.teacher,
            "k": self.k,
            "inputs": len(self.items),
            "labeled": len(acc),
            "unlabeled": len(self.items) - len(acc),
            "samples": n_samples,
            "acceptance_rate": round(passing / n_samples, 4) if n_samples else 0.0,
            "mean_agreement": round(sum(x.agreement for x in acc) / len(acc), 4) if acc else 0.0,
            "ties": sum(x.tie for x in self.items),
            "rejected_by_rule": dict(sorted(self.rejected_by_rule.items())),
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usd": round(self.usd, 6),
            "budget_stopped": self.budget_stopped,
        }

    def preference_pairs(self) -> list[dict]:
        """(input, chosen, rejected) for DPO/ORPO-style training; KTO can use `label`."""
        return [
            {"input": x.input, "chosen": x.output, "rejected": r["output"], "reason": r["reason"]}
            for x in self.accepted
            for r in x.rejected
        ]


def pick_demos(seeds: Sequence[Example], n: int) -> list[Example]:
    """Up to n demonstrations, round-robin over outputs so every label is shown."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in seeds:
        groups[e.output].append(e)
    order = sorted(groups, key=lambda k: (-len(groups[k]), k))
    out: list[Example] = []
    i = 0
    while len(out) < n and any(i < len(groups[k]) for k in order):
        out += [groups[k][i] for k in order if i < len(groups[k])][: n - len(out)]
        i += 1
    return out


def build_request(
    instruction: str,
    demos: Sequence[Example],
    text: str,
    cfg: TeacherConfig,
    context: Sequence[str] = (),
) -> Request:
    """The teacher's chat: instruction, few-shot demos, then the input grounded in `context`."""
    messages: list[tuple[str, str]] = [("system", f"{instruction}\n\n{ANSWER_ONLY}")]
    for d in demos:
        messages += [("user", d.input), ("assistant", d.output)]
    messages.append(("user", user_turn(text, context)))
    return Request(tuple(messages), cfg.temperature, cfg.max_tokens)


def price_table(overrides: dict | None) -> dict[str, tuple[float, float]]:
    """Built-in prices, then $KOLM_HOME/prices.json, then the spec's `teacher.prices`."""
    return {
        **DEFAULT_PRICES,
        **_user_prices(),
        **{k: tuple(v) for k, v in (overrides or {}).items()},
    }


def price_of(model: str, prompt_tokens: float, completion_tokens: float, table: dict) -> float:
    """USD for one call's tokens, from a table made by `price_table` (unknown models cost 0)."""
    p_in, p_out = table.get(model, (0.0, 0.0))
    return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6


def select(text: str, samples: list[str], verifier: Verifier, min_agreement: float) -> Labeled:
    """Verify each sample and keep the most frequent passing answer."""
    checks = [verifier.check(s) for s in samples]
    votes = Counter(c.normalized for c in checks if c.ok)
    rejected = [
        {"output": s, "reason": c.failed} for s, c in zip(samples, checks, strict=True) if not c.ok
    ]
    if not votes:
        return Labeled(text, None, 0.0, {}, samples, rejected)
    ranked = votes.most_common()
    first_seen = {c.normalized: i for i, c in reversed(list(enumerate(checks))) if c.ok}
    best = max(ranked, key=lambda kv: (kv[1], -first_seen[kv[0]]))
    tie = sum(1 for _, n in ranked if n == best[1]) > 1
    agreement = best[1] / len(samples)
    for s, c in zip(samples, checks, strict=True):
        if c.ok and c.normalized != best[0]:
            rejected.append({"output": s, "reason": "minority"})
    output = best[0] if agreement >= min_agreement else None
    if output is None:
        rejected.append({"output": best[0], "reason": "low_agreement"})
    return Labeled(text, output, agreement, dict(votes), samples, rejected, tie)


async def distill(
    inputs: Sequence[str],
    instruction: str,
    seeds: Sequence[Example],
    verifier: Verifier,
    cfg: TeacherConfig,
    cache: TeacherCache,
    progress: bool = True,
    backend: Backend | None = None,
    context_for: Callable[[str], Sequence[str] | None] | None = None,
) -> DistillReport:
    """Label every input with k verified teacher samples.

    `context_for(input)` gives the retrieved chunks that ground the input's request."""
    from tqdm.auto import tqdm

    ref = TeacherRef.parse(cfg.model)
    settings = Settings(timeout_s=cfg.timeout_s, max_retries=cfg.max_retries)
    backend = backend or make_backend(ref, settings)
    demos = pick_demos(seeds, cfg.shots)
    report = DistillReport(items=[], teacher=str(ref), k=cfg.k)
    budget = Budget(cfg.max_calls, cfg.max_usd)
    prices = price_table(cfg.prices)  # read once, not per call
    sem = asyncio.Semaphore(cfg.concurrency)
    bar = tqdm(total=len(inputs) * cfg.k, desc="label", unit="sample", disable=not progress)

    seen_tokens = [0, 0, 0]

    def _account(prompt: int, completion: int, latency_ms: float | None) -> None:
        seen_tokens[0] += prompt
        seen_tokens[1] += completion
        seen_tokens[2] += 1
        if latency_ms is not None:
            report.latencies_s.append(latency_ms / 1000)

    # A model name only means something at its endpoint: two servers, two caches.
    model_id = f"{ref.model}@{ref.base_url}" if ref.base_url else ref.model

    async def one(text: str, sample: int) -> str | None:
        context = (context_for(text) if context_for else None) or ()
        request = build_request(instruction, demos, text, cfg, context)
        key = cache_key(ref.provider, model_id, request.to_dict(), sample)
        hit = cache.get(key)
        if hit is not None:
            report.cache_hits += 1
            _account(hit.prompt_tokens, hit.completion_tokens, hit.latency_ms)
            bar.update(1)
            emit(
                "label", done=seen_tokens[2], samples=len(inputs) * cfg.k, usd=round(report.usd, 6)
            )
            return hit.text
        async with sem:
            if not budget.reserve():
                bar.update(1)
                return None
            t0 = time.perf_counter()
            c: Completion = await complete_with_retries(backend, request, sample, settings)
            latency_ms = (time.perf_counter() - t0) * 1000
        _account(c.prompt_tokens, c.completion_tokens, latency_ms)
        cache.put(
            key,
            ref.provider,
            model_id,
            sample,
            request.to_dict(),
            Cached(c.text, c.prompt_tokens, c.completion_tokens, latency_ms),
        )
        report.calls += 1
        report.prompt_tokens += c.prompt_tokens
        report.completion_tokens += c.completion_tokens
        cost = price_of(ref.model, c.prompt_tokens, c.completion_tokens, prices)
        report.usd += cost
        budget.usd += cost
        bar.update(1)
        emit("label", done=seen_tokens[2], samples=len(inputs) * cfg.k, usd=round(report.usd, 6))
        return c.text

    try:
        per_input = await asyncio.gather(
            *(asyncio.gather(*(one(t, i) for i in range(cfg.k))) for t in inputs)
        )
    finally:
        bar.close()
        await backend.aclose()
    rules: Counter = Counter()
    for text, samples in zip(inputs, per_input, strict=True):
        got = [s for s in samples if s is not None]
        item = (
            select(text, got, verifier, cfg.min_agreement)
            if got
            else Labeled(text, None, 0.0, {}, [], [])
        )
        item.missing_samples = len(samples) - len(got)
        rules.update(r["reason"].split(":")[0] for r in item.rejected)
        report.items.append(item)
    report.rejected_by_rule = dict(rules)
    report.budget_stopped = budget.stopped
    if seen_tokens[2]:
        report.tokens_per_call = (seen_tokens[0] / seen_tokens[2], seen_tokens[1] / seen_tokens[2])
    return report


def _user_prices() -> dict[str, tuple[float, float]]:
    import json

    from kolm.keys import kolm_home

    path = kolm_home() / "prices.json"
    if not path.is_file():
        return {}
    try:
        return {k: (float(v[0]), float(v[1])) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, IndexError, KeyError):
        from kolm.errors import KolmError

        raise KolmError(
            f"{path} must map model names to [input, output] USD per million tokens"
        ) from None
