"""Commands that answer with an artifact: run and serve."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import (
    base_option,
    drift_option,
    fallback_option,
    min_confidence_option,
    no_recipes_option,
    no_store_io_option,
    quiet_option,
    receipts_option,
    threads_option,
)
from kolm.data import BATCH_FORMATS


@dataclass(frozen=True)
class RunnerOptions:
    """What `--base` ... `--no-recipes` say about loading and answering with an artifact."""

    base: Path | None
    threads: int | None
    receipts_path: Path | None
    no_store_io: bool
    drift_path: Path | None
    min_confidence: float
    fallback: str | None
    no_recipes: bool

    def runner(self, artifact: Path):
        """The verified, loaded `Runner` these options describe."""
        from kolm.drift import DriftStore
        from kolm.receipts import ReceiptStore
        from kolm.runner import Runner

        runner = Runner(
            artifact,
            base=self.base,
            threads=self.threads,
            receipts=ReceiptStore(self.receipts_path, store_io=not self.no_store_io),
            drift=DriftStore(self.drift_path),
            fallback=self.fallback,
            min_confidence=self.min_confidence,
            recipes=not self.no_recipes,
        )
        if runner.student.draft_note:
            click.echo(f"kolm: note: {runner.student.draft_note}", err=True)
        return runner


def runner_options(*shown_before_recipes):
    """Declare the options `run` and `serve` share once, and hand the command one
    `RunnerOptions` (`runner_opts`) in their place. Options in `shown_before_recipes`
    are listed just above `--no-recipes` in --help (where `run` has always shown --quiet)."""
    options = (
        base_option,
        threads_option,
        receipts_option,
        no_store_io_option,
        drift_option,
        min_confidence_option,
        fallback_option,
        *shown_before_recipes,
        no_recipes_option,
    )
    names = [f.name for f in fields(RunnerOptions)]

    def decorate(command):
        @functools.wraps(command)
        def wrapper(**params):
            opts = RunnerOptions(**{n: params.pop(n) for n in names})
            return command(**params, runner_opts=opts)

        for option in reversed(options):  # applied last-first, as if stacked in this order
            wrapper = option(wrapper)
        return wrapper

    return decorate


@cli.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("text", required=False)
@click.option(
    "--input",
    "input_file",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Batch: answer every line of FILE ('-' reads stdin), one JSON object out per line in.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(BATCH_FORMATS),
    help="Batch input format (default: jsonl for .jsonl/.json, csv for .csv, else text).",
)
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Batch: write answers to this file, each flushed as it is made (default: stdout).",
)
@click.option(
    "--resume", is_flag=True, help="Batch: continue --out FILE, skipping lines already answered."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object per input)."
)
@runner_options(quiet_option)
def run_cmd(
    artifact: Path,
    text: str | None,
    input_file: Path | None,
    fmt: str | None,
    out: Path | None,
    resume: bool,
    as_json: bool,
    quiet: bool,
    runner_opts: RunnerOptions,
) -> None:
    """Answer TEXT (or every line of --input) with the model in ARTIFACT; write a receipt per answer.

    A batch answers every line in order, one JSON object per line: an answer, or
    {"line", "input", "error"} for a line that cannot be answered. It exits 11
    after the whole file when any line got an error."""
    if (text is None) == (input_file is None):
        raise click.UsageError("give either TEXT or --input FILE")
    if input_file is None and (out or resume or fmt):
        raise click.UsageError("--out, --resume and --format are for batches (--input FILE)")
    if resume and out is None:
        raise click.UsageError("--resume continues an --out FILE: give it")
    lines = _batch_lines(input_file, fmt) if input_file is not None else None
    runner = runner_opts.runner(artifact)
    try:
        if lines is None:
            _run_one(runner, text or "", as_json)
        else:
            _run_batch(runner, lines, out, resume, progress=not quiet)
    finally:
        runner.close()


def _batch_lines(path: Path, fmt: str | None):
    from kolm.data import batch_format, read_batch, read_text

    stdin = str(path) == "-"
    text = read_text(None if stdin else path)
    return read_batch(text, fmt or ("text" if stdin else batch_format(path)))


def _run_one(runner, text: str, as_json: bool) -> None:
    r = runner(text)
    if as_json:
        click.echo(
            json.dumps({**r.to_dict(), "artifact": runner.artifact.id[:16]}, ensure_ascii=False)
        )
    else:
        click.echo(r.output)


def _run_batch(runner, lines, out: Path | None, resume: bool, progress: bool) -> None:
    from kolm.batch import answer_batch, resume_point
    from kolm.errors import InputError

    start, earlier_errors = 0, []
    if out is not None:
        if resume:
            start, earlier_errors = resume_point(out, lines)
        elif out.exists() and out.stat().st_size:
            raise click.UsageError(
                f"{out} already holds answers: pass --resume to continue it, or remove it"
            )
    artifact_id = runner.artifact.id[:16]

    def answer(text: str) -> dict:
        return {**runner(text).to_dict(), "artifact": artifact_id}

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    sink = out.open("a", encoding="utf-8") if out is not None else sys.stdout
    try:
        summary = answer_batch(
            lines, answer, sink, start=start, progress=progress, earlier_errors=earlier_errors
        )
    finally:
        if out is not None:
            sink.close()
    click.echo(f"kolm: {summary.line()}", err=True)
    if summary.error_lines:
        shown = ", ".join(map(str, summary.error_lines[:10]))
        more = " ..." if len(summary.error_lines) > 10 else ""
        raise InputError(
            f"{len(summary.error_lines)} of {summary.lines} lines could not be answered "
            f"(lines {shown}{more}); their error objects say why"
        )


@cli.command("serve")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Anything but loopback requires an API key.",
)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="KOLM_SERVE_API_KEY",
    help="Require 'Authorization: Bearer KEY'. Prefer the environment variable "
    "KOLM_SERVE_API_KEY or --api-key-file: a key on the command line shows in `ps`.",
)
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the API key from this file (its first line).",
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
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    help="Larger request bodies get 413 before they are read (default: 1 MiB).",
)
@runner_options()
def serve_cmd(
    artifact: Path,
    host: str,
    port: int,
    api_key: str | None,
    api_key_file: Path | None,
    model_name: str | None,
    queue_size: int,
    max_body_bytes: int | None,
    runner_opts: RunnerOptions,
) -> None:
    """Serve ARTIFACT over an OpenAI-compatible HTTP API, with a receipt per request."""
    import uvicorn

    from kolm.serve import LOOPBACK, MAX_BODY_BYTES, Worker, make_app

    api_key = _api_key(api_key, api_key_file)
    if host not in LOOPBACK and not api_key:
        raise click.UsageError(
            f"binding to {host} exposes the model beyond this machine: set an API key "
            "(KOLM_SERVE_API_KEY or --api-key-file)"
        )
    runner = runner_opts.runner(artifact)
    name = model_name or runner.artifact.manifest["task"]["name"]
    worker = Worker(runner, queue_size)
    click.echo(
        f"kolm: serving {name} ({runner.artifact.id[:16]}) on http://{host}:{port}/v1 "
        f"with {runner.student.decoding.threads} llama.cpp threads",
        err=True,
    )
    app = make_app(worker, name, api_key, max_body_bytes=max_body_bytes or MAX_BODY_BYTES)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        worker.close()


def _api_key(given: str | None, key_file: Path | None) -> str | None:
    """The key from --api-key-file, KOLM_SERVE_API_KEY or --api-key (warned: `ps` shows it)."""
    from click.core import ParameterSource

    if key_file is not None:
        if given:
            raise click.UsageError("give the API key one way: --api-key-file or --api-key/env")
        lines = key_file.read_text(encoding="utf-8").splitlines()
        key = lines[0].strip() if lines else ""
        if not key:
            raise click.UsageError(f"{key_file} holds no API key on its first line")
        return key
    ctx = click.get_current_context()
    if given and ctx.get_parameter_source("api_key") == ParameterSource.COMMANDLINE:
        click.secho(
            "warning: an API key on the command line is visible to every user in `ps`; "
            "use KOLM_SERVE_API_KEY or --api-key-file",
            fg="yellow",
            err=True,
        )
    return given or None
