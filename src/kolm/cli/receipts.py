"""Commands over what answering left behind: receipts, replay, drift."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import (
    _short,
    base_option,
    drift_option,
    insecure_option,
    receipts_option,
    threads_option,
)


@cli.group("receipts")
def receipts_group() -> None:
    """List, show, export and verify the hash-chained receipts of every answer."""


def _store(path: Path | None):
    from kolm.receipts import ReceiptStore

    return ReceiptStore(path)


_receipts_opt = receipts_option


@receipts_group.command("list")
@_receipts_opt
@click.option("--limit", type=int, default=20, show_default=True)
def receipts_list(receipts_path: Path | None, limit: int) -> None:
    """Newest receipts first."""
    for r in _store(receipts_path).list(limit):
        click.echo(
            f"{r.seq:>6}  {r.id[:16]}  {r.created_at}  {r.path:<10} {r.latency_ms:>8.1f} ms  "
            f"{'' if r.output is None else _short(r.output, 40)}"
        )


@receipts_group.command("show")
@click.argument("receipt")
@_receipts_opt
def receipts_show(receipt: str, receipts_path: Path | None) -> None:
    """Print one receipt (by id, id prefix or sequence number) as JSON."""
    click.echo(
        json.dumps(_store(receipts_path).get(receipt).to_dict(), indent=1, ensure_ascii=False)
    )


@receipts_group.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@_receipts_opt
def receipts_export(out: Path, receipts_path: Path | None) -> None:
    """Write every receipt to OUT as JSONL, oldest first."""
    click.echo(f"exported {_store(receipts_path).export(out)} receipts to {out}")


@receipts_group.command("verify")
@_receipts_opt
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, path_type=Path),
    help="A checkpoint from `kolm receipts anchor`, kept elsewhere.",
)
def receipts_verify(receipts_path: Path | None, checkpoint: Path | None) -> None:
    """Walk the chain; report the first broken link. Exit 9 when broken."""
    from kolm.errors import ReceiptError

    report = _store(receipts_path).verify(checkpoint.read_text() if checkpoint else None)
    if not report.ok:
        raise ReceiptError(f"receipts chain broken at {report.first_broken}: {report.problem}")
    click.echo(
        f"OK: {report.count} receipts, chain intact"
        + (", checkpoint matches" if checkpoint else "")
    )


@receipts_group.command("anchor")
@_receipts_opt
@click.option(
    "--push",
    "push_ref",
    metavar="REF",
    help="Also publish the checkpoint as an OCI referrer of artifact REF (REGISTRY/NAME:TAG).",
)
@insecure_option
def receipts_anchor(receipts_path: Path | None, push_ref: str | None, insecure: bool) -> None:
    """Sign the chain head now and print the checkpoint: store it somewhere else."""
    note = _store(receipts_path).anchor()
    if push_ref:
        from kolm.registry import push_checkpoint

        digest = push_checkpoint(push_ref, note, insecure=insecure)
        click.echo(f"published as referrer {digest} of {push_ref}", err=True)
    click.echo(note, nl=False)


@cli.command("replay")
@click.argument("receipt")
@_receipts_opt
@click.option(
    "--artifact",
    type=click.Path(path_type=Path),
    help="The artifact, if it moved since the receipt.",
)
@click.option("--input", "text", help="The input, for receipts written with --no-store-io.")
@base_option
@threads_option
def replay_cmd(
    receipt: str,
    receipts_path: Path | None,
    artifact: Path | None,
    text: str | None,
    base: Path | None,
    threads: int | None,
) -> None:
    """Re-run RECEIPT's input with its recorded settings; exit 10 if the output differs.

    It uses the recorded llama.cpp thread count unless --threads says otherwise."""
    from kolm.runner import replay

    r = replay(
        receipt, _store(receipts_path), artifact=artifact, text=text, base=base, threads=threads
    )
    if r.build_differs:
        click.secho(
            f"note: llama.cpp {r.current_build} differs from the recorded {r.recorded_build}; "
            "outputs may differ in the last bits",
            fg="yellow",
            err=True,
        )
    if r.drafting_differs:
        click.secho(f"note: {r.drafting_differs}", fg="yellow", err=True)
    if r.reproduced:
        click.echo(f"REPRODUCED {r.receipt[:16]}: {r.output}")
        return
    click.echo(f"DIFFERENT {r.receipt[:16]}: replay answered {r.output!r}")
    sys.exit(10)


@cli.group("drift")
def drift_group() -> None:
    """Inputs the model was unsure of (kept locally; fed to the teacher by `compile --drift`)."""


@drift_group.command("list")
@drift_option
@click.option("--artifact-id", help="Only this artifact (id prefix).")
def drift_list(drift_path: Path | None, artifact_id: str | None) -> None:
    """One line per drifted input."""
    from kolm.drift import DriftStore

    for e in DriftStore(drift_path).entries(artifact_id):
        click.echo(f"{e.id:>5}  {e.created_at}  {e.reason:<40}  {_short(e.input, 50)}")


@drift_group.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@drift_option
def drift_export(out: Path, drift_path: Path | None) -> None:
    """Write drift entries to OUT as JSONL."""
    from kolm.drift import DriftStore

    click.echo(f"exported {DriftStore(drift_path).export(out)} drift entries to {out}")
