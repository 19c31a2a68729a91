"""Commands for the corpus index: index (build or update one), recall (show what is retrieved)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import _short, _table


@cli.command("index")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Index file.")
@click.option(
    "--embedder",
    default=None,
    help="Packaged embedder name or sentence-transformers folder (default all-MiniLM-L6-v2).",
)
@click.option("--chunk-chars", type=int, default=400, show_default=True)
@click.option("--overlap-chars", type=int, default=60, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def index_cmd(
    sources: tuple[str, ...],
    out: Path,
    embedder: str | None,
    chunk_chars: int,
    overlap_chars: int,
    as_json: bool,
) -> None:
    """Build or update an index of SOURCES (folders, globs or files) at --out.

    Unchanged files (same sha256) are not embedded again; files that cannot be
    read are listed with their reason."""
    from kolm.recall import ChunkConfig, Embedder, build_index

    single = Path(sources[0])
    base = single if len(sources) == 1 and single.is_dir() else Path.cwd()
    rep = build_index(
        [str(Path(s).resolve()) for s in sources],
        out,
        base_dir=base,
        embedder=Embedder(embedder),
        cfg=ChunkConfig(chunk_chars, overlap_chars),
    )
    s = rep.summary()
    if as_json:
        click.echo(json.dumps({"index": str(out), **s}, indent=1))
        return
    rows = [
        ("files", f"{s['files']} ({s['indexed']} indexed, {s['unchanged']} unchanged)"),
        ("chunks", f"{s['chunks']} ({s['chunks_embedded']} embedded now)"),
        ("time", f"{s['seconds']} s"),
    ]
    if s["removed"]:
        rows.append(("removed", f"{s['removed']} files no longer in the sources"))
    rows += [(f"skipped {f['path']}", f"{f['status']}: {f['reason']}") for f in s["skipped"]]
    click.echo(_table(rows, (str(out), "")))


@cli.command("recall")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("query")
@click.option(
    "--k", type=int, default=None, help="Chunks to show (default: the artifact's k, or 5)."
)
@click.option("--mode", type=click.Choice(["hybrid", "vector", "keyword"]), default=None)
@click.option("--json", "as_json", is_flag=True)
def recall_cmd(source: Path, query: str, k: int | None, mode: str | None, as_json: bool) -> None:
    """Show the chunks SOURCE (a .kolm artifact or an index file) retrieves for QUERY."""
    from kolm.recall import Index

    if _is_index(source):
        grounder, index = None, Index(source)
        k, mode = k or 5, mode or "hybrid"
    else:
        grounder = _artifact_grounder(source)
        index = grounder.index
        k, mode = k or grounder.k, mode or grounder.mode
    try:
        hits = index.search(query, k=k, mode=mode)
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=1, ensure_ascii=False))
        return
    if not hits:
        click.echo("no chunks matched")
    for i, h in enumerate(hits, 1):
        click.echo(f"{i}. {h.source()}  score {h.score:.4f}  id {h.id}")
        click.echo("   " + _short(h.text, 300))


def _is_index(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def _artifact_grounder(path: Path):
    from kolm.artifact import open_artifact
    from kolm.errors import RecallError
    from kolm.runner import load_grounder

    grounder = load_grounder(open_artifact(path))
    if grounder is None:
        raise RecallError(
            f"{path} has no index (it was compiled without `corpus:`)",
            hint="add `corpus:` to the spec and compile again, or query an index file",
        )
    return grounder


def inspect_rows(manifest: dict, parts: dict) -> list[tuple[str, str]]:
    """Rows `kolm inspect` shows for an artifact's index (from the manifest; loads no model)."""
    r = manifest.get("recall")
    if not r:
        return []
    e = r["embedder"]
    size = parts.get(r["part"], {}).get("size", 0)
    rows = [
        (
            "index",
            f"{r['part']}: {size / 1e6:.2f} MB, {r['chunks']} chunks, k={r['k']} ({r['mode']})",
        ),
        ("embedder", f"{e['name']} ({e['dim']} dims, sha256 {e['sha256'][:12]}…)"),
    ]
    for f in r["sources"]:
        detail = (
            f"{f['kind'] or '?'}, {f['chunks']} chunks"
            if f["status"] == "indexed"
            else (f"{f['status']}: {f['reason']}")
        )
        rows.append((f"  source {f['path']}", detail))
    return rows
