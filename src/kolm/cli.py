"""The `kolm` command line. Commands parse, call the library, print.

Heavy modules (torch, transformers, llama.cpp) are imported inside the commands
that need them, so `kolm verify` and `kolm inspect` start fast. Every KolmError
becomes a message and an exit code in `main`, and nowhere else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kolm import __version__
from kolm.errors import KolmError


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except KolmError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume from the cache", err=True)
        sys.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kolm")
def cli() -> None:
    """kolm compiles a narrow task into a small signed model file, and runs it locally."""


@cli.command("compile")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), help="Artifact to write (default: NAME.kolm)."
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    help="Cache folder (default: .kolm-work/NAME beside the spec).",
)
@click.option(
    "--no-embed-base", is_flag=True, help="Store only the base model's name, sha256 and size."
)
@click.option("--steps", type=int, help="Override train.steps.")
@click.option("--teacher", help="Override teacher.model (provider:model).")
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path),
    help="Teacher cache file (default: in the kolm cache dir).",
)
@click.option("--force", is_flag=True, help="Ship even below the gate (marked in the manifest).")
@click.option(
    "--drift",
    "drift_path",
    type=click.Path(exists=True, path_type=Path),
    help="A drift file whose inputs the teacher labels too.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def compile_cmd(
    spec: Path,
    out: Path | None,
    work_dir: Path | None,
    no_embed_base: bool,
    steps: int | None,
    teacher: str | None,
    cache_path: Path | None,
    force: bool,
    drift_path: Path | None,
    quiet: bool,
) -> None:
    """Compile the task in SPEC (a kolm.yaml) into a signed .kolm file.

    Below the ship gate (K-score, see docs/k-score.md) it writes only the report
    and exits 8, unless --force."""
    from kolm.compiler import compile_task

    task = _load_task(spec, steps=steps, teacher=teacher)
    out = out or Path(f"{task.name}.kolm")
    result = compile_task(
        task,
        out,
        work_dir=work_dir,
        embed_base=not no_embed_base,
        progress=not quiet,
        cache_path=cache_path,
        force=force,
        extra_inputs=_drift_inputs(drift_path),
    )
    _print_compile_summary(result)


@cli.command("label")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="JSONL of verified pairs to write.",
)
@click.option("--teacher", help="Override teacher.model (provider:model).")
@click.option("--k", type=int, help="Override teacher.k (samples per input).")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Teacher cache file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def label_cmd(
    spec: Path, out: Path, teacher: str | None, k: int | None, cache_path: Path | None, quiet: bool
) -> None:
    """Label SPEC's unlabeled inputs with its teacher; write verified pairs to --out."""
    from kolm.compiler import prepare, run_distill
    from kolm.data import write_jsonl

    task = _load_task(spec, teacher=teacher, k=k)
    if task.teacher is None:
        raise click.UsageError(
            "the spec has no teacher: add `teacher: provider:model` or pass --teacher"
        )
    report = run_distill(prepare(task), cache_path, progress=not quiet)
    tmp = out.with_name(out.name + ".partial")
    write_jsonl(tmp, [x.to_dict() for x in report.items])
    tmp.replace(out)
    click.echo(
        _table(_distill_rows(report.summary()) + [("written", str(out))], ("label summary", ""))
    )


def _drift_inputs(path: Path | None) -> list[str]:
    if path is None:
        return []
    from kolm.drift import DriftStore

    return DriftStore(path).inputs()


def _load_task(
    spec: Path, steps: int | None = None, teacher: str | None = None, k: int | None = None
):
    import dataclasses

    from kolm.spec import TeacherConfig, load_spec

    task = load_spec(spec)
    if steps is not None:
        task = dataclasses.replace(task, train=dataclasses.replace(task.train, steps=steps))
    if teacher is not None:
        base = task.teacher or TeacherConfig(model=teacher)
        task = dataclasses.replace(task, teacher=dataclasses.replace(base, model=teacher))
    if k is not None and task.teacher is not None:
        task = dataclasses.replace(task, teacher=dataclasses.replace(task.teacher, k=k))
    return task


def _distill_rows(d: dict) -> list[tuple[str, str]]:
    rules = ", ".join(f"{k} {v}" for k, v in d["rejected_by_rule"].items()) or "none"
    rows = [
        ("teacher / k", f"{d['teacher']} / {d['k']}"),
        (
            "inputs labeled",
            f"{d['labeled']} of {d['inputs']} ({d['unlabeled']} without a verified answer)",
        ),
        ("sample acceptance rate", f"{d['acceptance_rate']:.1%}"),
        ("mean agreement", f"{d['mean_agreement']:.1%} ({d['ties']} ties)"),
        ("rejected samples by rule", rules),
        ("calls / cache hits", f"{d['calls']} / {d['cache_hits']}"),
        ("tokens in / out", f"{d['prompt_tokens']} / {d['completion_tokens']}"),
        ("teacher cost", f"${d['usd']:.4f}"),
    ]
    if d["budget_stopped"]:
        rows.append(("budget", f"stopped: {d['budget_stopped']}"))
    return rows


def _print_compile_summary(result) -> None:
    m = result.manifest["metrics"]
    size = result.artifact.stat().st_size
    rows = _distill_rows(result.distill) if result.distill else []
    rows += [
        ("held-out examples", str(m["heldout_examples"])),
        ("student accuracy", f"{m['student']['accuracy']:.1%}"),
        ("untrained base accuracy", f"{m['base']['accuracy']:.1%}"),
        (f"teacher accuracy ({m['teacher']['source']})", f"{m['teacher']['accuracy']:.1%}"),
        (
            "student / teacher agreement",
            "n/a (no teacher)"
            if m["student_teacher_agreement"] is None
            else f"{m['student_teacher_agreement']:.1%}",
        ),
        ("verifier pass rate (coverage)", f"{m['student']['verifier_pass_rate']:.1%}"),
        ("llama.cpp / PyTorch agreement", f"{m['llamacpp_torch_agreement']:.1%}"),
        (
            "student latency p50 / p95",
            f"{m['student']['latency_p50_s'] * 1000:.0f} / {m['student']['latency_p95_s'] * 1000:.0f} ms",
        ),
        (
            "train steps / final loss",
            f"{m['train']['steps']} / {m['train']['final_loss']}"
            + (" (cached)" if result.cached_training else ""),
        ),
        (
            "time " + "/".join(result.timings),
            " / ".join(f"{v:.0f}s" for v in result.timings.values()),
        ),
        ("artifact", f"{result.artifact} ({size / 1e6:.1f} MB)"),
        ("artifact id", result.artifact_id[:16]),
        ("K-score", _k_line(result.manifest)),
        ("report", str(result.report)),
    ]
    click.echo(_table(rows, ("compile summary", "")))


@cli.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("text", required=False)
@click.option(
    "--input",
    "input_file",
    type=click.Path(path_type=Path),
    help="Batch: a JSONL file with 'input' fields, or one input per line.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object per input)."
)
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="Base GGUF for an artifact built with --no-embed-base.",
)
@click.option("--threads", type=int, help="llama.cpp threads (default: recorded in the artifact).")
@click.option(
    "--receipts",
    "receipts_path",
    type=click.Path(path_type=Path),
    help="Receipts file (default: $KOLM_HOME/receipts.sqlite).",
)
@click.option(
    "--no-store-io", is_flag=True, help="Keep only hashes of inputs and outputs in receipts."
)
@click.option(
    "--drift",
    "drift_path",
    type=click.Path(path_type=Path),
    help="Drift file (default: $KOLM_HOME/drift.sqlite).",
)
@click.option(
    "--min-confidence",
    type=float,
    default=0.3,
    show_default=True,
    help="Answers with a smaller top-token margin count as drift.",
)
@click.option(
    "--fallback",
    help="Teacher (provider:model) that answers drifting inputs instead. Off by default: the only network use of run.",
)
def run_cmd(
    artifact: Path,
    text: str | None,
    input_file: Path | None,
    as_json: bool,
    base: Path | None,
    threads: int | None,
    receipts_path: Path | None,
    no_store_io: bool,
    drift_path: Path | None,
    min_confidence: float,
    fallback: str | None,
) -> None:
    """Answer TEXT (or every input in --input) with the model in ARTIFACT; write a receipt per answer."""
    from tqdm.auto import tqdm

    from kolm.data import load_inputs
    from kolm.drift import DriftStore
    from kolm.receipts import ReceiptStore
    from kolm.runner import Runner

    if (text is None) == (input_file is None):
        raise click.UsageError("give either TEXT or --input FILE")
    inputs = [text] if text is not None else load_inputs(input_file)
    runner = Runner(
        artifact,
        base=base,
        threads=threads,
        receipts=ReceiptStore(receipts_path, store_io=not no_store_io),
        drift=DriftStore(drift_path),
        fallback=fallback,
        min_confidence=min_confidence,
    )
    batch = input_file is not None
    try:
        for item in tqdm(inputs, desc="run", unit="input", disable=not batch, file=sys.stderr):
            r = runner(item)
            if as_json or batch:
                click.echo(
                    json.dumps(
                        {
                            "input": r.input,
                            "output": r.output,
                            "path": r.path,
                            "verified": r.verified,
                            "failed_rule": r.failed_rule,
                            "confidence": r.confidence,
                            "latency_s": round(r.latency_s, 4),
                            "receipt": r.receipt,
                            "drift": r.drift,
                            "artifact": runner.artifact.id[:16],
                        },
                        ensure_ascii=False,
                    )
                )
            else:
                click.echo(r.output)
    finally:
        runner.close()


@cli.command("serve")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Anything but loopback requires --api-key.",
)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="KOLM_SERVE_API_KEY",
    help="Require 'Authorization: Bearer KEY' (env KOLM_SERVE_API_KEY).",
)
@click.option("--model-name", help="Model id clients ask for (default: the task name).")
@click.option(
    "--queue",
    "queue_size",
    type=int,
    default=64,
    show_default=True,
    help="Requests waiting at most; more get 503.",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="Base GGUF for an artifact built with --no-embed-base.",
)
@click.option(
    "--threads", type=int, help="llama.cpp threads (default: all cores but one, left to HTTP)."
)
@click.option("--receipts", "receipts_path", type=click.Path(path_type=Path), help="Receipts file.")
@click.option(
    "--no-store-io", is_flag=True, help="Keep only hashes of inputs and outputs in receipts."
)
@click.option("--drift", "drift_path", type=click.Path(path_type=Path), help="Drift file.")
@click.option("--min-confidence", type=float, default=0.3, show_default=True)
@click.option("--fallback", help="Teacher (provider:model) for drifting inputs; off by default.")
def serve_cmd(
    artifact: Path,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
    queue_size: int,
    base: Path | None,
    threads: int | None,
    receipts_path: Path | None,
    no_store_io: bool,
    drift_path: Path | None,
    min_confidence: float,
    fallback: str | None,
) -> None:
    """Serve ARTIFACT over an OpenAI-compatible HTTP API, with a receipt per request."""
    import os

    import uvicorn

    from kolm.drift import DriftStore
    from kolm.receipts import ReceiptStore
    from kolm.runner import Runner
    from kolm.serve import LOOPBACK, Worker, make_app

    if threads is None:
        # llama.cpp's worker threads spin; on a small machine they starve the HTTP side
        # (2 cores: 5.3 req/s with 2 threads, 5.9 with 1; benchmarks/serve_load.py).
        threads = max(1, (os.cpu_count() or 2) - 1)
    if host not in LOOPBACK and not api_key:
        raise click.UsageError(
            f"binding to {host} exposes the model beyond this machine: set --api-key"
        )
    runner = Runner(
        artifact,
        base=base,
        threads=threads,
        receipts=ReceiptStore(receipts_path, store_io=not no_store_io),
        drift=DriftStore(drift_path),
        fallback=fallback,
        min_confidence=min_confidence,
    )
    name = model_name or runner.artifact.manifest["task"]["name"]
    worker = Worker(runner, queue_size)
    click.echo(
        f"kolm: serving {name} ({runner.artifact.id[:16]}) on http://{host}:{port}/v1", err=True
    )
    try:
        uvicorn.run(make_app(worker, name, api_key), host=host, port=port, log_level="warning")
    finally:
        worker.close()


@cli.group("receipts")
def receipts_group() -> None:
    """List, show, export and verify the hash-chained receipts of every answer."""


def _store(path: Path | None):
    from kolm.receipts import ReceiptStore

    return ReceiptStore(path)


_receipts_opt = click.option(
    "--receipts", "receipts_path", type=click.Path(path_type=Path), help="Receipts file."
)


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
def receipts_anchor(receipts_path: Path | None) -> None:
    """Sign the chain head now and print the checkpoint: store it somewhere else."""
    click.echo(_store(receipts_path).anchor(), nl=False)


@cli.command("replay")
@click.argument("receipt")
@_receipts_opt
@click.option(
    "--artifact",
    type=click.Path(path_type=Path),
    help="The artifact, if it moved since the receipt.",
)
@click.option("--input", "text", help="The input, for receipts written with --no-store-io.")
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="Base GGUF for an artifact built with --no-embed-base.",
)
def replay_cmd(
    receipt: str,
    receipts_path: Path | None,
    artifact: Path | None,
    text: str | None,
    base: Path | None,
) -> None:
    """Re-run RECEIPT's input with its recorded settings; exit 10 if the output differs."""
    from kolm.runner import replay

    r = replay(receipt, _store(receipts_path), artifact=artifact, text=text, base=base)
    if r.build_differs:
        click.secho(
            f"note: llama.cpp {r.current_build} differs from the recorded {r.recorded_build}; "
            "outputs may differ in the last bits",
            fg="yellow",
            err=True,
        )
    if r.reproduced:
        click.echo(f"REPRODUCED {r.receipt[:16]}: {r.output}")
        return
    click.echo(f"DIFFERENT {r.receipt[:16]}: replay answered {r.output!r}")
    sys.exit(10)


@cli.group("drift")
def drift_group() -> None:
    """Inputs the model was unsure of (kept locally; fed to the teacher by `compile --drift`)."""


@drift_group.command("list")
@click.option("--drift", "drift_path", type=click.Path(path_type=Path), help="Drift file.")
@click.option("--artifact-id", help="Only this artifact (id prefix).")
def drift_list(drift_path: Path | None, artifact_id: str | None) -> None:
    """One line per drifted input."""
    from kolm.drift import DriftStore

    for e in DriftStore(drift_path).entries(artifact_id):
        click.echo(f"{e.id:>5}  {e.created_at}  {e.reason:<40}  {_short(e.input, 50)}")


@drift_group.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--drift", "drift_path", type=click.Path(path_type=Path), help="Drift file.")
def drift_export(out: Path, drift_path: Path | None) -> None:
    """Write drift entries to OUT as JSONL."""
    from kolm.drift import DriftStore

    click.echo(f"exported {DriftStore(drift_path).export(out)} drift entries to {out}")


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
        "parts": {n: art.manifest["parts"][n]["sha256"] for n in art.part_names()},
    }
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(
        f"OK {artifact}: signature valid (key {info['signed_by']}, {info['trust']}; hmac {info['hmac']})"
    )
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
    met = m.get("metrics", {})
    if met:
        rows += [
            (
                "student accuracy",
                f"{met['student']['accuracy']:.1%} on {met['heldout_examples']} held-out",
            ),
            ("untrained base accuracy", f"{met['base']['accuracy']:.1%}"),
            ("llama.cpp / PyTorch agreement", f"{met['llamacpp_torch_agreement']:.1%}"),
        ]
    if "kscore" in m:
        rows.append(("K-score", _k_line(m)))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())))
    click.echo(_table(rows, (str(artifact), "")))


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
def keys_export() -> None:
    """Print the public key (give it to whoever should trust your artifacts)."""
    from kolm.keys import KeyStore

    click.echo(KeyStore().export_public(), nl=False)


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


def _k_line(manifest: dict) -> str:
    from kolm.report import verdict

    k = manifest["kscore"]
    parts = " ".join(f"{c}={v:.2f}" for c, v in k["components"].items())
    return f"{k['K']:.3f} ({parts}) gate {manifest['gate']['min_k']:.2f}: {verdict(manifest)}"


@cli.command("eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable metrics.")
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="Base GGUF for an artifact built with --no-embed-base.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def eval_cmd(artifact: Path, data: Path, as_json: bool, base: Path | None, quiet: bool) -> None:
    """Evaluate ARTIFACT on labeled DATA (JSONL/CSV of input, output) with compile's metrics."""
    from kolm.runner import eval_artifact

    m = eval_artifact(artifact, data, base=base, progress=not quiet)
    if as_json:
        click.echo(json.dumps({k: v for k, v in m.items() if k != "outputs"}, indent=1))
        return
    rows = [
        ("examples", str(m["n"])),
        ("accuracy", f"{m['accuracy']:.1%}"),
        ("exact match", f"{m['exact_match']:.1%}"),
        ("verifier pass rate", f"{m['verifier_pass_rate']:.1%}"),
        (
            "latency p50 / p95",
            f"{m['latency_p50_s'] * 1000:.0f} / {m['latency_p95_s'] * 1000:.0f} ms",
        ),
    ]
    if "macro_f1" in m:
        rows.insert(2, ("macro-F1", f"{m['macro_f1']:.1%}"))
        rows += [
            (
                f"  {c}",
                f"P {v['precision']:.0%}  R {v['recall']:.0%}  F1 {v['f1']:.0%}  n={v['support']}",
            )
            for c, v in m["per_class"].items()
        ]
    for f, v in m.get("field_accuracy", {}).items():
        rows.append((f"  field {f}", f"{v:.1%}"))
    click.echo(_table(rows, (f"eval {artifact} on {data}", "")))


@cli.command("roi")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--calls-per-month", type=float, required=True, help="Your monthly call volume.")
@click.option("--json", "as_json", is_flag=True)
def roi_cmd(artifact: Path, calls_per_month: float, as_json: bool) -> None:
    """Frontier vs compiled cost at your volume, from the figures measured at compile."""
    from kolm.artifact import open_artifact
    from kolm.kscore import roi

    m = open_artifact(artifact).manifest
    if "economics" not in m:
        raise click.UsageError("this artifact predates cost accounting; recompile it")
    r = roi(m["economics"], calls_per_month)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    be = (
        "never"
        if r["break_even_calls"] is None
        else f"{r['break_even_calls']:,.0f} calls (~{r['break_even_days']} days)"
    )
    rows = [
        ("calls per month", f"{calls_per_month:,.0f}"),
        ("frontier API per month", f"${r['frontier_usd_per_month']:,.2f}"),
        ("compiled model per month", f"${r['compiled_usd_per_month']:,.2f}"),
        ("saving per month", f"${r['saving_usd_per_month']:,.2f}"),
        ("compile cost (teacher calls)", f"${r['compile_usd']:,.4f}"),
        ("break-even", be),
    ]
    if r["teacher_source"] == "gold":
        rows.append(
            (
                "note",
                "no teacher was measured: its cost is the gate's configured teacher_usd_per_1k",
            )
        )
    click.echo(_table(rows, (f"roi {artifact}", "")))


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _table(rows, header) -> str:
    w = max(len(str(r[0])) for r in [*rows, header])
    line = "-" * (w + 2 + max(len(str(r[1])) for r in [*rows, header]))
    out = [f"{header[0]:<{w}}  {header[1]}", line]
    out += [f"{a:<{w}}  {b}" for a, b in rows]
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    main()
