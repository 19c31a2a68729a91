"""The root `kolm` command group and the one place where errors become exit codes.

Every KolmError becomes a message and an exit code in `main`, and nowhere else.
Command modules (`kolm.cli.*`) attach their commands to `cli`.
"""

from __future__ import annotations

import sys

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
