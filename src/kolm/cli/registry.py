"""Commands that move artifacts through OCI registries: push and pull."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import _floor_line, _k_line, _table, insecure_option, quiet_option


@cli.command("push")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("ref")
@click.option(
    "--with-eval",
    is_flag=True,
    help="Also publish the held-out metrics and K as a referrer anyone can read without the model.",
)
@click.option(
    "--chunk-mb",
    type=click.IntRange(min=1),
    help="Upload in chunks of this many MB (for registries or proxies that cap request bodies).",
)
@insecure_option
@quiet_option
@click.option("--json", "as_json", is_flag=True)
def push_cmd(
    artifact: Path,
    ref: str,
    with_eval: bool,
    chunk_mb: int | None,
    insecure: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Verify ARTIFACT, then push it to REF (REGISTRY/NAME:TAG) as an OCI artifact."""
    from kolm.registry import publish

    chunk = chunk_mb * 1_000_000 if chunk_mb else None
    r = publish(
        artifact,
        ref,
        with_eval=with_eval,
        insecure=insecure,
        progress=not quiet,
        chunk_bytes=chunk,
    )
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    pinned = f"{r.ref.rsplit(':', 1)[0]}@{r.digest}"
    sent = "uploaded" if r.uploaded else "already in the registry, not sent again"
    click.echo(f"pushed {artifact} to {r.ref}")
    click.echo(f"  digest  {r.digest}  (pull exactly this: {pinned})")
    click.echo(f"  size    {r.size / 1e6:.2f} MB, {sent}, {r.seconds:.2f} s")
    if r.eval_digest:
        click.echo(f"  eval    referrer {r.eval_digest} (read it: kolm pull --eval {r.ref})")


@cli.command("pull")
@click.argument("ref")
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False), help="File to write.")
@click.option("--eval", "show_eval", is_flag=True, help="Show the published metrics; pull nothing.")
@click.option(
    "--checkpoints", is_flag=True, help="Print the receipts checkpoints published for REF."
)
@click.option("--referrers", is_flag=True, help="List everything published about REF.")
@insecure_option
@quiet_option
@click.option("--json", "as_json", is_flag=True)
def pull_cmd(
    ref: str,
    out: Path | None,
    show_eval: bool,
    checkpoints: bool,
    referrers: bool,
    insecure: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Download REF, verify its signature and every part, then write it (nothing on failure).

    An artifact signed by a key this machine does not trust is refused: trust the
    signer first with `kolm keys trust THEIR_KEY.pub`."""
    from kolm import registry

    if sum((show_eval, checkpoints, referrers)) > 1:
        raise click.UsageError("give at most one of --eval, --checkpoints, --referrers")
    if show_eval:
        return _show_eval(registry.read_eval(ref, insecure=insecure), as_json)
    if checkpoints:
        return _show_checkpoints(registry.read_checkpoints(ref, insecure=insecure), as_json)
    if referrers:
        found = registry.list_referrers(ref, insecure=insecure)
        return click.echo(json.dumps(found, indent=1) if as_json else _referrer_lines(found))
    r = registry.pull(ref, out, insecure=insecure, progress=not quiet)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    click.echo(
        f"OK {r.ref} -> {r.out}: signature valid (key {r.signed_by}, {r.trust}), every part verified"
    )
    click.echo(f"  digest  {r.digest}, {r.size / 1e6:.2f} MB in {r.seconds:.2f} s")


def _show_eval(e: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(e, indent=1))
        return
    rows = [
        ("task", e["task"]),
        ("base", e["base"]),
        ("artifact id", e["artifact_id"]),
        ("signed by", f"{e['signed_by']} ({e['trust']})"),
    ]
    met = e.get("metrics") or {}
    if met.get("student"):
        n = met.get("heldout_examples", "?")
        rows.append(("student accuracy", f"{met['student']['accuracy']:.1%} on {n} held-out"))
    if met.get("base"):
        rows.append(("untrained base accuracy", f"{met['base']['accuracy']:.1%}"))
    floor = _floor_line(met) if met.get("student") else None
    if floor:
        rows.append(("TF-IDF floor", floor))
    if e.get("kscore") and e.get("gate"):
        rows.append(("K-score", _k_line({"kscore": e["kscore"], "gate": e["gate"]})))
    click.echo(_table(rows, ("published metrics", e["ref"])))


def _show_checkpoints(found: list[dict], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    if not found:
        click.echo("no receipts checkpoints published")
    for c in found:
        click.echo(f"# {c['referrer']} published {c['created']}")
        click.echo(c["text"], nl=False)


def _referrer_lines(found: list[dict]) -> str:
    if not found:
        return "nothing published about it"
    lines = []
    for d in found:
        created = (d.get("annotations") or {}).get("org.opencontainers.image.created", "?")
        lines.append(f"{d.get('digest')}  {d.get('artifactType')}  {created}")
    return "\n".join(lines)
