"""K-score: one number for "is the student good enough to ship", and the gate.

K is the weighted harmonic mean of five components in [0, 1], weights
A 0.40, S 0.15, L 0.15, C 0.15, V 0.15:

    K = 1 / (0.40/A + 0.15/S + 0.15/L + 0.15/C + 0.15/V)      (K = 0 if any is 0)

so a weak component drags K down and cannot be bought back by the others (see
docs/k-score.md for every normalization and worked examples). Manifests record
the formula; those without one were scored by the weighted arithmetic mean of
kolm 0.1 and keep that recorded K. Pure arithmetic on measured inputs; knows
nothing about how they were measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

WEIGHTS = {"A": 0.40, "S": 0.15, "L": 0.15, "C": 0.15, "V": 0.15}
SIZE_REFERENCE_BYTES = 3 * 1024**3
"""3 GiB: the size of a mid-size model at 4-bit; an artifact this size scores S = 0."""
NAMES = {"A": "accuracy", "S": "size", "L": "latency", "C": "cost", "V": "coverage"}
FORMULA = "weighted-harmonic-v2"
"""The formula new compiles record in `kscore.formula`."""
LEGACY_FORMULA = "weighted-arithmetic-v1"
"""What a manifest without `kscore.formula` was scored with (kolm 0.1)."""
FORMULAS = {
    FORMULA: "weighted harmonic mean",
    LEGACY_FORMULA: "weighted arithmetic mean (kolm 0.1)",
}


def combine(parts: dict[str, float], formula: str = FORMULA) -> float:
    """K from the five components under `formula` (the old one only to read and compare)."""
    if formula == LEGACY_FORMULA:
        return sum(WEIGHTS[n] * parts[n] for n in WEIGHTS)
    if formula != FORMULA:
        raise ValueError(f"unknown K-score formula {formula!r}; known: {', '.join(FORMULAS)}")
    if any(parts[n] <= 0 for n in WEIGHTS):
        return 0.0  # the limit of the harmonic mean as a component goes to 0
    return sum(WEIGHTS.values()) / sum(WEIGHTS[n] / parts[n] for n in WEIGHTS)


def shortfall(parts: dict[str, float], name: str, formula: str = FORMULA) -> float:
    """How much K would rise if component `name` were perfect (1.0): what it costs."""
    return combine({**parts, name: 1.0}, formula) - combine(parts, formula)


def formula_of(recorded: dict) -> str:
    """The formula a manifest's `kscore` mapping was computed with."""
    return recorded.get("formula", LEGACY_FORMULA)


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

    @property
    def parts(self) -> dict[str, float]:
        return {c: getattr(self, c) for c in WEIGHTS}

    def to_dict(self) -> dict:
        return {
            "K": round(self.K, 4),
            "formula": FORMULA,
            "components": {c: round(v, 4) for c, v in self.parts.items()},
            "weights": WEIGHTS,
            "inputs": asdict(self.inputs),
        }


def _clamp(x: float) -> float:
    return max(0.0, min(1.0, x))


def components(m: KInputs) -> dict[str, float]:
    """The five normalized components, each clamped to [0, 1]."""
    a = _clamp(m.student_accuracy / m.teacher_accuracy) if m.teacher_accuracy > 0 else 0.0
    s = _clamp(1 - m.size_bytes / SIZE_REFERENCE_BYTES)
    lat = _clamp(m.teacher_latency_s / m.student_latency_s) if m.student_latency_s > 0 else 1.0
    if m.teacher_usd_per_call > 0:
        c = _clamp(1 - m.student_usd_per_call / m.teacher_usd_per_call)
    else:  # a free teacher: a free student loses nothing on cost, a paid one loses all
        c = 1.0 if m.student_usd_per_call <= 0 else 0.0
    return {"A": a, "S": s, "L": lat, "C": c, "V": _clamp(m.coverage)}


def kscore(m: KInputs) -> KScore:
    parts = components(m)
    return KScore(**parts, K=combine(parts), inputs=m)


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons}


def gate(
    score: KScore, min_k: float, min_accuracy: float | None = None, floor: float | None = None
) -> GateVerdict:
    """Pass when K ≥ min_k (and accuracy ≥ min_accuracy, and ≥ the classical `floor`'s
    accuracy when given); say what fell short and by how much."""
    reasons = []
    if min_k > score.K:
        parts = score.parts
        gaps = sorted(WEIGHTS, key=lambda n: shortfall(parts, n), reverse=True)
        worst = ", ".join(
            f"{n} ({NAMES[n]}) = {parts[n]:.2f}, costs {shortfall(parts, n):.3f}" for n in gaps[:2]
        )
        reasons.append(
            f"K = {score.K:.3f} is below the gate {min_k:.2f} by {min_k - score.K:.3f}; weakest: {worst}"
        )
    acc = score.inputs.student_accuracy
    if min_accuracy is not None and acc < min_accuracy:
        reasons.append(
            f"accuracy {acc:.1%} is below the floor {min_accuracy:.1%} by {min_accuracy - acc:.1%}"
        )
    if floor is not None and acc < floor:
        reasons.append(
            f"accuracy {acc:.1%} is below the TF-IDF floor {floor:.1%} by {floor - acc:.1%}"
            " (gate.beat_floor)"
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
