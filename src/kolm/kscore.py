"""K-score: one number for "is the student good enough to ship", and the gate.

K = 0.40·A + 0.15·S + 0.15·L + 0.15·C + 0.15·V, each component in [0, 1]
(see docs/k-score.md for every normalization and a worked example). Pure
arithmetic on measured inputs; knows nothing about how they were measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

WEIGHTS = {"A": 0.40, "S": 0.15, "L": 0.15, "C": 0.15, "V": 0.15}
SIZE_REFERENCE_BYTES = 3 * 1024**3
"""3 GiB: the size of a mid-size model at 4-bit; an artifact this size scores S = 0."""
NAMES = {"A": "accuracy", "S": "size", "L": "latency", "C": "cost", "V": "coverage"}


@dataclass(frozen=True)
class KInputs:
    """The raw measurements K is computed from (all stored in the manifest)."""

    student_accuracy: float
    teacher_accuracy: float
    size_bytes: int
    student_latency_s: float
    teacher_latency_s: float
    student_usd_per_call: float
    teacher_usd_per_call: float
    coverage: float


@dataclass(frozen=True)
class KScore:
    A: float
    S: float
    L: float
    C: float
    V: float
    K: float
    inputs: KInputs

    def to_dict(self) -> dict:
        return {
            "K": round(self.K, 4),
            "components": {c: round(getattr(self, c), 4) for c in WEIGHTS},
            "weights": WEIGHTS,
            "inputs": asdict(self.inputs),
        }


def _clamp(x: float) -> float:
    return max(0.0, min(1.0, x))


def kscore(m: KInputs) -> KScore:
    a = _clamp(m.student_accuracy / m.teacher_accuracy) if m.teacher_accuracy > 0 else 0.0
    s = _clamp(1 - m.size_bytes / SIZE_REFERENCE_BYTES)
    lat = _clamp(m.teacher_latency_s / m.student_latency_s) if m.student_latency_s > 0 else 1.0
    c = (
        _clamp(1 - m.student_usd_per_call / m.teacher_usd_per_call)
        if m.teacher_usd_per_call > 0
        else 0.0
    )
    v = _clamp(m.coverage)
    parts = {"A": a, "S": s, "L": lat, "C": c, "V": v}
    k = sum(WEIGHTS[n] * x for n, x in parts.items())
    return KScore(a, s, lat, c, v, k, m)


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons}


def gate(score: KScore, min_k: float, min_accuracy: float | None = None) -> GateVerdict:
    """Pass when K ≥ min_k (and accuracy ≥ min_accuracy); say what fell short and by how much."""
    reasons = []
    if min_k > score.K:
        gaps = sorted(WEIGHTS, key=lambda n: WEIGHTS[n] * (1 - getattr(score, n)), reverse=True)
        worst = ", ".join(
            f"{n} ({NAMES[n]}) = {getattr(score, n):.2f}, costs {WEIGHTS[n] * (1 - getattr(score, n)):.3f}"
            for n in gaps[:2]
        )
        reasons.append(
            f"K = {score.K:.3f} is below the gate {min_k:.2f} by {min_k - score.K:.3f}; weakest: {worst}"
        )
    acc = score.inputs.student_accuracy
    if min_accuracy is not None and acc < min_accuracy:
        reasons.append(
            f"accuracy {acc:.1%} is below the floor {min_accuracy:.1%} by {min_accuracy - acc:.1%}"
        )
    return GateVerdict(not reasons, reasons)


def roi(econ: dict, calls_per_month: float) -> dict:
    """Monthly frontier vs compiled cost at a call volume, and when compiling pays off."""
    teacher = calls_per_month * econ["teacher_usd_per_call"]
    student = calls_per_month * econ["student_usd_per_call"]
    saving = teacher - student
    per_call = econ["teacher_usd_per_call"] - econ["student_usd_per_call"]
    calls = econ["compile_usd"] / per_call if per_call > 0 else None
    return {
        "calls_per_month": calls_per_month,
        "frontier_usd_per_month": round(teacher, 4),
        "compiled_usd_per_month": round(student, 4),
        "saving_usd_per_month": round(saving, 4),
        "compile_usd": econ["compile_usd"],
        "break_even_calls": None if calls is None else round(calls, 1),
        "break_even_days": None
        if calls is None or calls_per_month <= 0
        else round(30 * calls / calls_per_month, 2),
        "teacher_source": econ.get("teacher_source", "teacher"),
    }
