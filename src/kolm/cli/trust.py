"""Commands that check and describe artifacts, and manage signing keys: verify, inspect, keys."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import (
    _accuracy_line,
    _adapter_rows,
    _floor_line,
    _k_line,
    _ladder_rows,
    _precision_rows,
    _short,
    _table,
    _torch_agreement,
)
from kolm.cli.recall import inspect_rows


@cli.command("verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(artifact: Path, as_json: bool) -> None:
    """Check ARTIFACT's signature and the hash of every part."""
    from kolm.artifact import open_artifact

    art = open_artifact(artifact)
    info = {
        "artifact": str(artifact),
        "id": art.id,
        "signed_by": art.verified.key_id,
        "trust": art.verified.trust,
        "hmac": art.verified.hmac,
        "model_sig": art.model_sig,
        "parts": {n: art.manifest["parts"][n]["sha256"] for n in art.part_names()},
    }
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(
        f"OK {artifact}: signature valid (key {info['signed_by']}, {info['trust']}; hmac {info['hmac']})"
    )
    if art.model_sig:
        click.echo(f"  model.sig: DSSE in-toto statement valid (key {art.model_sig}), same digests")
    else:
        click.echo("  model.sig: absent (format 1 artifact)")
    for name in art.part_names():
        click.echo(f"  {name:<16} sha256 {art.manifest['parts'][name]['sha256'][:16]}…  ok")


@cli.command("inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest.")
def inspect_cmd(artifact: Path, as_json: bool) -> None:
    """Show what ARTIFACT holds: task, base, parts, metrics, versions."""
    from kolm.artifact import open_artifact

    art = open_artifact(artifact)
    m = art.manifest
    if as_json:
        click.echo(json.dumps(m, indent=1, ensure_ascii=False))
        return
    base = m["base"]
    rows = [
        ("task", m["task"]["name"]),
        ("instruction", _short(m["task"]["description"], 70)),
        (
            "output kind",
            m["task"]["output_kind"]
            + (f" ({len(m['task']['labels'])} labels)" if m["task"]["labels"] else ""),
        ),
        (
            "base",
            f"{base['name']} ({base['license']}, {'embedded' if base['embedded'] else 'by reference'}, sha256 {base['sha256'][:12]}…)",
        ),
        ("created", m["created_at"]),
        ("signed by", f"{art.verified.key_id} ({art.verified.trust})"),
    ]
    rows += [(f"part {n}", f"{m['parts'][n]['size'] / 1e6:.2f} MB") for n in art.part_names()]
    rows += inspect_rows(m, m["parts"])
    met = m.get("metrics", {})
    if met:
        rows += [
            (
                "student accuracy",
                _accuracy_line(met["student"])
                if "accuracy_ci95" in met["student"]
                else f"{met['student']['accuracy']:.1%} on {met['heldout_examples']} held-out",
            ),
            ("untrained base accuracy", f"{met['base']['accuracy']:.1%}"),
            ("llama.cpp / PyTorch agreement", _torch_agreement(met)),
        ]
        floor = _floor_line(met)
        if floor:
            rows.append(("TF-IDF floor", floor))
    rows += _precision_rows(m.get("precision"))
    rows += _adapter_rows(m)
    if "kscore" in m:
        rows.append(("K-score", _k_line(m)))
    rows += _per_base_rows(met)
    rows += _ladder_rows(m)
    rows += _recipe_rows(m.get("recipes"))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())))
    click.echo(_table(rows, (str(artifact), "")))


def _per_base_rows(metrics: dict) -> list[tuple[str, str]]:
    """The settings this base trained with over the spec's `train` block, and whose."""
    from kolm.report import per_base_rows

    return per_base_rows(metrics.get("train") or {})


def _recipe_rows(r: dict | None) -> list[tuple[str, str]]:
    if not r:
        return [("recipe pack", "none (plain decoding)")]
    measured = r.get("heldout_drafted_share")
    stats = r.get("stats") or {}
    counts = stats.get("entries") or {}
    extra = "".join(
        f", {counts[k]} {k}" for k in ("closers", "anchors") if counts.get(k)
    )  # packs mined before value anchors have none
    copying = ", copies from the input" if stats.get("copy_input") else ""
    return [
        (
            "recipe pack",
            f"{r['part']}: {r['bytes'] / 1e3:.1f} kB, {r['entries']} entries{extra}{copying}",
        ),
        (
            "  expected hit rate",
            f"{r['expected_hit_rate']:.1%} of answer tokens drafted"
            + (f" (measured on held-out: {measured:.1%})" if measured is not None else ""),
        ),
    ]


@cli.group("cache")
def cache_group() -> None:
    """Inspect, export or prune the teacher cache (every paid answer, kept)."""


@cache_group.command("stats")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Cache file.")
def cache_stats(cache_path: Path | None) -> None:
    """Responses and tokens per provider and model."""
    from kolm.cache import TeacherCache

    cache = TeacherCache(cache_path)
    rows = [
        (
            f"{r['provider']}:{r['model']}",
            f"{r['responses']} responses, {r['prompt_tokens']} / "
            f"{r['completion_tokens']} tokens, {r['first']} .. {r['last']}",
        )
        for r in cache.stats()
    ]
    click.echo(_table(rows or [("(empty)", "")], (str(cache.path), "")))


@cache_group.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Cache file.")
def cache_export(out: Path, cache_path: Path | None) -> None:
    """Write every cached response to OUT as JSONL."""
    from kolm.cache import TeacherCache

    click.echo(f"exported {TeacherCache(cache_path).export(out)} responses to {out}")


@cache_group.command("prune")
@click.option("--model", help="Delete responses of this provider:model.")
@click.option("--before", help="Delete responses created before this ISO date (e.g. 2026-01-01).")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Cache file.")
def cache_prune(model: str | None, before: str | None, cache_path: Path | None) -> None:
    """Delete cached responses (they will be paid for again if needed)."""
    from kolm.cache import TeacherCache

    click.echo(f"deleted {TeacherCache(cache_path).prune(model, before)} responses")


@cli.group("keys")
def keys_group() -> None:
    """Show, export, trust or rotate the local signing keys."""


@keys_group.command("show")
def keys_show() -> None:
    """Print this machine's key id and the keys it trusts."""
    from kolm.keys import KeyStore

    ks = KeyStore()
    ks.ensure()
    click.echo(f"key directory: {ks.dir}")
    for kid, kind in ks.trusted().items():
        click.echo(f"  {kid}  {kind}")


@keys_group.command("export")
@click.option(
    "--pem", is_flag=True, help="As PEM, for verifiers of model.sig outside kolm (OpenSSF format)."
)
def keys_export(pem: bool) -> None:
    """Print the public key (give it to whoever should trust your artifacts)."""
    from kolm.keys import KeyStore

    keys = KeyStore()
    click.echo(keys.export_public_pem() if pem else keys.export_public(), nl=False)


@keys_group.command("trust")
@click.argument("public_key", type=click.Path(exists=True, path_type=Path))
def keys_trust(public_key: Path) -> None:
    """Trust artifacts signed by the key in PUBLIC_KEY (from `kolm keys export`)."""
    from kolm.keys import KeyStore

    click.echo(f"trusted {KeyStore().trust(public_key.read_text())}")


@keys_group.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; the old one stays trusted for artifacts it signed."""
    from kolm.keys import KeyStore

    old, new = KeyStore().rotate()
    click.echo(f"rotated: {old} (retired, still trusted) -> {new}")
