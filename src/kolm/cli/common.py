"""Helpers and options shared by several commands: tables, short text, the K line."""

from __future__ import annotations


def _k_line(manifest: dict) -> str:
    from kolm.report import verdict

    k = manifest["kscore"]
    parts = " ".join(f"{c}={v:.2f}" for c, v in k["components"].items())
    return f"{k['K']:.3f} ({parts}) gate {manifest['gate']['min_k']:.2f}: {verdict(manifest)}"


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _table(rows, header) -> str:
    w = max(len(str(r[0])) for r in [*rows, header])
    line = "-" * (w + 2 + max(len(str(r[1])) for r in [*rows, header]))
    out = [f"{header[0]:<{w}}  {header[1]}", line]
    out += [f"{a:<{w}}  {b}" for a, b in rows]
    return "\n".join(out)
