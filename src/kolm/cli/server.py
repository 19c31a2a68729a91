"""Commands of the compile service: server, server tenants, worker, login."""

from __future__ import annotations

from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import _table, insecure_option

DEFAULT_DATA = Path("kolm-server-data")
data_option = click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="The service's folder: database, queue, signing key, tenants' files.",
)
queue_option = click.option(
    "--queue",
    "queue_url",
    help="Job queue: sqlite:// in the data folder (default) or redis://HOST:PORT/DB "
    "to share it with `kolm worker` processes.",
)

publish_option = click.option(
    "--publish",
    metavar="REGISTRY/PREFIX",
    help="Also push every finished artifact (with its eval referrer) to "
    "REGISTRY/PREFIX/TENANT/TASK:JOB-ID; a failed push fails the job.",
)


def _publisher(prefix: str | None, insecure: bool):
    if not prefix:
        return None
    from kolm.service.publish import RegistryPublisher

    return RegistryPublisher(prefix, insecure)


@cli.group("server", invoke_without_command=True)
@data_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8700, show_default=True)
@queue_option
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Jobs run at once inside the server (0: none, workers run elsewhere).",
)
@click.option(
    "--max-upload-mb", type=float, default=500.0, show_default=True, help="Largest job upload."
)
@publish_option
@insecure_option
@click.pass_context
def server_group(
    ctx: click.Context,
    data: Path,
    host: str,
    port: int,
    queue_url: str | None,
    workers: int,
    max_upload_mb: float,
    publish: str | None,
    insecure: bool,
) -> None:
    """Compile as a service: an HTTP API that queues, runs and serves compile jobs.

    Add a tenant first (`kolm server tenants add NAME`); its key is shown once."""
    if ctx.invoked_subcommand is not None:
        return
    from kolm.service.app import Limits
    from kolm.service.host import run_server

    size = int(max_upload_mb * 1e6)
    run_server(
        data, host, port, queue_url, workers, Limits(size, size), _publisher(publish, insecure)
    )


@server_group.group("tenants")
def tenants_group() -> None:
    """Add and list the service's tenants (each API key belongs to one)."""


@tenants_group.command("add")
@click.argument("name")
@data_option
@click.option("--max-jobs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-storage-gb", type=float, default=5.0, show_default=True)
@click.option("--max-usd", type=float, default=50.0, show_default=True, help="Teacher spend.")
def tenants_add(name: str, data: Path, max_jobs: int, max_storage_gb: float, max_usd: float):
    """Add tenant NAME and print its API key (shown once; only its hash is kept)."""
    from kolm.service.tenants import Quotas, ServiceDB

    quotas = Quotas(max_jobs, int(max_storage_gb * 1e9), max_usd)
    key = ServiceDB(data).add_tenant(name, quotas)
    click.echo(key)
    click.echo(f"tenant {name} added; the key above is shown only now", err=True)


@tenants_group.command("list")
@data_option
def tenants_list(data: Path) -> None:
    """Tenants, their quotas and teacher spend."""
    from kolm.service.tenants import ServiceDB

    rows = [
        (
            t.name,
            f"{t.quotas.max_jobs} jobs, {t.quotas.max_storage_bytes / 1e9:g} GB, "
            f"${t.spent_usd:.4f} of ${t.quotas.max_usd:g} spent",
        )
        for t in ServiceDB(data).tenants()
    ]
    click.echo(_table(rows or [("(none)", "")], ("tenant", "quotas")))


@cli.command("worker")
@queue_option
@data_option
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@publish_option
@insecure_option
def worker_cmd(
    queue_url: str | None, data: Path, workers: int, publish: str | None, insecure: bool
) -> None:
    """Run compile jobs from a shared queue (the server's --queue and --data)."""
    from kolm.service.host import run_worker

    if not queue_url:
        raise click.UsageError("--queue is required (the URL the server was started with)")
    run_worker(data, queue_url, workers, _publisher(publish, insecure))


@cli.command("login")
@click.argument("url")
@click.option("--key", help="API key (default: $KOLM_API_KEY, else asked for).")
@click.option("--trust", is_flag=True, help="Also trust the key the server signs artifacts with.")
def login_cmd(url: str, key: str | None, trust: bool) -> None:
    """Check an API key against the server at URL and store it (credentials file, 0600)."""
    import os

    from kolm.service.client import KEY_ENV, Client, save_login

    key = key or os.environ.get(KEY_ENV) or click.prompt("API key", hide_input=True)
    client = Client(url, key)
    n = len(client.jobs())  # 401 here: the key is wrong
    path = save_login(url, key)
    click.echo(f"logged in to {client.url} ({n} jobs); key stored in {path}")
    if trust:
        from kolm.keys import KeyStore

        click.echo(f"trusted the server's signing key {KeyStore().trust(client.public_key())}")
