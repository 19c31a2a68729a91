"""Precision: how a merged, quantized build compares with the unmerged student.

Summarizes one precision's held-out run — model size, accuracy, the share of
held-out answers identical to the unmerged student's (agreement), p50 latency —
and flags a precision that loses more than `MAX_AGREEMENT_LOSS` of agreement.
Knows nothing of how the models were built or run: callers pass the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

MAX_AGREEMENT_LOSS = 0.02
"""A precision whose answers differ from the unmerged student's on more than this
share of held-out inputs is flagged in the compile summary and the manifest."""


@dataclass(frozen=True)
class PrecisionReport:
    """One precision, measured on the held-out inputs."""

    kind: str
    """`adapter`, `f16`, `q8_0`, `q4_0` or `q4_k`."""
    model_bytes: int
    """Bytes of the model the runtime loads (merged file, or base + adapter)."""
    accuracy: float
    agreement: float
    """Share of held-out answers byte-identical to the unmerged student's."""
    latency_p50_s: float
    flagged: bool
    note: str = ""
    """Per-tensor fallbacks of the quantizer, if any."""
    reference_accuracy: float | None = None
    """The unmerged student's held-out accuracy, for comparison."""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("accuracy", "agreement", "latency_p50_s", "reference_accuracy"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        return d

    def line(self) -> str:
        """The compile summary's line for this precision."""
        text = (
            f"{self.kind}: model {self.model_bytes / 1e6:.1f} MB, accuracy {self.accuracy:.1%}, "
            f"{self.agreement:.1%} of answers identical to the unmerged student, "
            f"p50 {self.latency_p50_s * 1000:.0f} ms"
        )
        if self.flagged:
            text += f"  FLAGGED: loses more than {MAX_AGREEMENT_LOSS:.0%} agreement"
        return text


def identical_share(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of positions where the two answer lists hold the same text."""
    if not a:
        return 1.0
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def measure(
    kind: str,
    model_bytes: int,
    outputs: Sequence[str],
    reference: Sequence[str],
    accuracy: float,
    latency_p50_s: float,
    note: str = "",
    reference_accuracy: float | None = None,
) -> PrecisionReport:
    """The report for one precision's outputs against the unmerged student's."""
    agree = identical_share(outputs, reference)
    return PrecisionReport(
        kind,
        model_bytes,
        accuracy,
        agree,
        latency_p50_s,
        flagged=agree < 1 - MAX_AGREEMENT_LOSS,
        note=note,
        reference_accuracy=reference_accuracy,
    )
