"""Evaluate: run a student over inputs and score its outputs against expected ones.

Knows exact and normalized matching, latency percentiles, and how sure a held-out
figure is (an interval for an accuracy, a paired test between two models scored on the
same rows). Does not know how a student is loaded or where the examples came from.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kolm.runtime import Answer


@dataclass(frozen=True)
class Scored:
    """Outputs of one model on a set of inputs, scored."""

    outputs: list[str]
    accuracy: float
    correct: int
    total: int
    latency_p50_s: float
    latency_p95_s: float
    latencies_s: tuple[float, ...] = ()
    drafted_shares: tuple[float, ...] = ()
    """Per answer, the share of tokens the recipe pack drafted (empty without a pack)."""

    def to_dict(self) -> dict:
        return {
            "accuracy": round(self.accuracy, 4),
            "correct": self.correct,
            "total": self.total,
            "latency_p50_s": round(self.latency_p50_s, 4),
            "latency_p95_s": round(self.latency_p95_s, 4),
        }


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used for matching."""
    return re.sub(r"\s+", " ", text.strip()).lower()


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    if not a:
        return 0.0
    return sum(normalize(x) == normalize(y) for x, y in zip(a, b, strict=True)) / len(a)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1])


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for `correct` of `n` (95% at z = 1.96): where the
    accuracy on unseen rows of the same kind plausibly lies, given this many scored."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_p_value(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: the chance of a split of the disagreeing rows at
    least this lopsided if the two models were equally good on rows like these."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def run_and_score(
    answer: Callable[[str], Answer],
    inputs: Sequence[str],
    expected: Sequence[str],
    desc: str = "eval",
    progress: bool = True,
) -> Scored:
    from tqdm.auto import tqdm

    answers = [answer(x) for x in tqdm(inputs, desc=desc, unit="input", disable=not progress)]
    outputs = [a.output for a in answers]
    correct = sum(normalize(o) == normalize(e) for o, e in zip(outputs, expected, strict=True))
    lat = [a.latency_s for a in answers]
    return Scored(
        outputs=outputs,
        accuracy=correct / len(inputs) if inputs else 0.0,
        correct=correct,
        total=len(inputs),
        latency_p50_s=percentile(lat, 50),
        latency_p95_s=percentile(lat, 95),
        latencies_s=tuple(lat),
        drafted_shares=tuple(
            a.drafted_share for a in answers if getattr(a, "drafted_share", None) is not None
        ),
    )


def task_metrics(kind: str, outputs: Sequence[str], expected: Sequence[str], verifier) -> dict:
    """Metrics chosen by output kind, plus the verifier pass rate for every kind."""
    checks = [verifier.check(o) for o in outputs]
    gold = [verifier.check(e).normalized for e in expected]
    got = [c.normalized for c in checks]
    n = len(outputs) or 1
    out: dict = {
        "n": len(outputs),
        "verifier_pass_rate": round(sum(c.ok for c in checks) / n, 4),
        "exact_match": round(
            sum(o.strip() == e.strip() for o, e in zip(outputs, expected, strict=True)) / n, 4
        ),
        "accuracy": round(sum(g == x for g, x in zip(got, gold, strict=True)) / n, 4),
    }
    if kind == "label":
        out.update(label_metrics(got, gold, list(verifier.labels)))
    elif kind == "json":
        out["schema_valid_rate"] = out["verifier_pass_rate"]
        out["field_accuracy"] = field_accuracy(got, gold)
    else:
        out["normalized_match"] = round(
            sum(normalize(o) == normalize(e) for o, e in zip(outputs, expected, strict=True)) / n, 4
        )
    return out


def label_metrics(got: Sequence[str], gold: Sequence[str], labels: list[str]) -> dict:
    """Macro-F1 over the union of expected and predicted labels, a per-class table and the
    confusion matrix (rows: expected, cols: predicted)."""
    classes = sorted(set(labels) | set(gold))
    other = "(other)"
    cols = classes + ([other] if any(g not in classes for g in got) else [])
    index = {c: i for i, c in enumerate(cols)}
    matrix = [[0] * len(cols) for _ in classes]
    for g, e in zip(got, gold, strict=True):
        matrix[classes.index(e)][index.get(g, index.get(other, 0))] += 1
    per_class = {}
    for i, c in enumerate(classes):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[c] = {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    # Average over every class that was expected or predicted (as scikit-learn does):
    # a class only ever predicted wrongly scores 0 instead of vanishing from the mean,
    # and predictions outside the label set count once, as "(other)", with F1 0.
    averaged = [per_class[c]["f1"] for c in classes if c in set(gold) | set(got)]
    averaged += [0.0] if other in cols else []
    macro = sum(averaged) / len(averaged) if averaged else 0.0
    return {
        "macro_f1": round(macro, 4),
        "per_class": per_class,
        "confusion": {"labels": cols, "rows": classes, "matrix": matrix},
    }


def field_accuracy(got: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
    """Share of examples whose output has each expected top-level field right."""
    import json

    hits: dict[str, list[bool]] = {}
    for g, e in zip(got, gold, strict=True):
        try:
            expected = json.loads(e)
        except ValueError:
            continue
        try:
            value = json.loads(g)
        except ValueError:
            value = None
        if not isinstance(expected, dict):
            continue
        for key, want in expected.items():
            ok = isinstance(value, dict) and value.get(key) == want
            hits.setdefault(key, []).append(ok)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}
