"""Commands that answer with an artifact: run and serve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kolm.cli.app import cli


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
@click.option(
    "--no-recipes",
    is_flag=True,
    help="Ignore the artifact's recipe pack (plain decoding; the same bytes, for comparison).",
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
    no_recipes: bool,
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
        recipes=not no_recipes,
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
                            "drafted_share": r.drafted_share,
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
@click.option(
    "--no-recipes",
    is_flag=True,
    help="Ignore the artifact's recipe pack (plain decoding; the same bytes, for comparison).",
)
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
    no_recipes: bool,
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
        recipes=not no_recipes,
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
