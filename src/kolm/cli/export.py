"""The export command: an artifact as a merged GGUF, an Ollama Modelfile or a PEFT folder."""

from __future__ import annotations

from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import _table


@cli.command("export")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "to",
    type=click.Choice(["gguf", "ollama", "peft"]),
    required=True,
    help="gguf: one merged GGUF for llama.cpp; ollama: Modelfile + GGUF files; "
    "peft: adapter_config.json + adapter_model.safetensors for PeftModel.from_pretrained.",
)
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), required=True, help="Folder to write."
)
@click.option(
    "--precision",
    type=click.Choice(["adapter", "f16", "q8_0", "q4_0", "q4_k"]),
    help="Weights of the exported model (default: f16 for gguf; base + ADAPTER for ollama).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Threads for llama.cpp's quantizer.",
)
def export_cmd(artifact: Path, to: str, out: Path, precision: str | None, threads: int) -> None:
    """Write ARTIFACT (verified first) in the shape another runtime loads, into --out."""
    from kolm.exports import RECORD, export_artifact

    r = export_artifact(artifact, to, out, precision, threads=threads)
    rows = [
        ("from", f"{artifact} (manifest {r.artifact_id[:16]}, K {_k(r.k)})"),
        ("precision", r.precision),
        *((f"  {name}", f"{(Path(r.out) / name).stat().st_size / 1e6:.1f} MB") for name in r.files),
        ("record", str(Path(r.out) / RECORD)),
        *(("not carried", note) for note in r.not_carried),
    ]
    click.echo(_table(rows, (f"export {to} -> {r.out}", "")))


def _k(k: float | None) -> str:
    return "n/a" if k is None else f"{k:.3f}"
