"""Helpers and options shared by several commands: tables, short text, the K line.

Options used by more than one command are declared here once, so they read the
same everywhere (`--threads`, `--base`, `--receipts`, `--drift`, ...).
"""

from __future__ import annotations

from pathlib import Path

import click


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


def _accuracy_line(student: dict) -> str:
    from kolm.report import accuracy_line

    return accuracy_line(student)


def _torch_agreement(metrics: dict) -> str:
    from kolm.report import torch_agreement

    return torch_agreement(metrics)


def _ladder_rows(manifest: dict) -> list[tuple[str, str]]:
    """One row per rung `base: auto` tried (K, accuracy, why it failed), for summaries."""
    from kolm.report import ladder_lines

    return [
        (f"ladder rung {i}: {b}", what) for i, (b, what) in enumerate(ladder_lines(manifest), 1)
    ]


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _table(rows, header) -> str:
    w = max(len(str(r[0])) for r in [*rows, header])
    line = "-" * min(100, w + 2 + max(len(str(r[1])) for r in [*rows, header]))
    out = [f"{header[0]:<{w}}  {header[1]}", line]
    out += [f"{a:<{w}}  {b}" for a, b in rows]
    return "\n".join(out)


def _precision_rows(record: dict | None) -> list[tuple[str, str]]:
    """The precision line: size, accuracy, agreement with the unmerged student, p50, flag."""
    if not record:
        return []
    from kolm.precision import PrecisionReport

    fields = PrecisionReport.__dataclass_fields__
    rep = PrecisionReport(**{k: v for k, v in record.items() if k in fields})
    rows = [("precision", rep.line())]
    return rows + ([("  quantizer note", rep.note)] if rep.note else [])


def _adapter_rows(manifest: dict) -> list[tuple[str, str]]:
    """How the LoRA adapter is stored, and what that means for drafting."""
    from kolm.artifact import ADAPTER_PART

    record = manifest.get("adapter")
    if not record:
        if ADAPTER_PART not in manifest.get("parts", {}):
            return []  # a merged build (or a manifest without parts): no adapter
        return [
            (
                "adapter",
                "f32 (compiled before 2026-12-05): `kolm run` turns its recipe pack off; "
                "compile again for a Q8_0 adapter and bit-exact drafting",
            )
        ]
    text = f"{record['tensor_type']}, rank {record['rank']}"
    if record["stored_rank"] != record["rank"]:
        text += f" (stored as {record['stored_rank']}, zero-padded)"
    text += (
        ": a batch-invariant adapter; drafting is checked when loaded"
        if record["tensor_type"] == "q8_0"
        else ": a layer width is not a multiple of 32, so not Q8_0: the recipe pack is off"
    )
    return [("adapter", text)]


# -- options shared by the commands that run a model, declared once ----------------
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="llama.cpp threads (default: every core but one; see docs/benchmarks.md).",
)
base_option = click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="Base GGUF for an artifact built with --no-embed-base.",
)
receipts_option = click.option(
    "--receipts",
    "receipts_path",
    type=click.Path(path_type=Path),
    help="Receipts file (default: $KOLM_HOME/receipts.sqlite).",
)
drift_option = click.option(
    "--drift",
    "drift_path",
    type=click.Path(path_type=Path),
    help="Drift file (default: $KOLM_HOME/drift.sqlite).",
)
min_confidence_option = click.option(
    "--min-confidence",
    type=float,
    default=0.3,
    show_default=True,
    help="Answers with a smaller top-token margin count as drift.",
)
fallback_option = click.option(
    "--fallback",
    help="Teacher (provider:model) that answers drifting inputs instead. "
    "Off by default: the only network use of run and serve.",
)
no_store_io_option = click.option(
    "--no-store-io", is_flag=True, help="Keep only hashes of inputs and outputs in receipts."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
no_recipes_option = click.option(
    "--no-recipes",
    is_flag=True,
    help="Ignore the artifact's recipe pack (plain decoding; the same bytes, for comparison).",
)


# -- options shared by the commands that talk to an OCI registry --------------------
insecure_option = click.option(
    "--insecure",
    is_flag=True,
    help="Speak plain http to the registry (loopback registries always use http).",
)
