"""Helpers and options shared by several commands: tables, short text, the K line."""

from __future__ import annotations


def _k_line(manifest: dict) -> str:
    from kolm.kscore import WEIGHTS
    from kolm.report import formula_label, verdict

    k = manifest["kscore"]
    comp = k["components"]  # read back from a manifest, keys are sorted: show them in K's order
    parts = " ".join(f"{c}={comp[c]:.2f}" for c in sorted(comp, key=list(WEIGHTS).index))
    line = f"{k['K']:.3f} ({parts}) gate {manifest['gate']['min_k']:.2f}: {verdict(manifest)}"
    return f"{line}; {formula_label(k)}"


def _floor_line(metrics: dict) -> str | None:
    from kolm.report import floor_verdict

    return floor_verdict(metrics)


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _table(rows, header) -> str:
    w = max(len(str(r[0])) for r in [*rows, header])
    line = "-" * (w + 2 + max(len(str(r[1])) for r in [*rows, header]))
    out = [f"{header[0]:<{w}}  {header[1]}", line]
    out += [f"{a:<{w}}  {b}" for a, b in rows]
    return "\n".join(out)
