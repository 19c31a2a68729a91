"""Evaluate: run a student over inputs and score its outputs against expected ones.

Knows exact and normalized matching and latency percentiles. Does not know how a
student is loaded or where the examples came from.
"""

from __future__ import annotations

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
    )
