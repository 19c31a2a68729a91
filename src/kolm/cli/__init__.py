"""The `kolm` command line. Commands parse, call the library, print.

One module per command group (compile, run, receipts, trust, recall, registry, server,
export), each attaching its commands to the root group in `app`. Heavy modules (torch, transformers,
llama.cpp) are imported inside the commands that need them, so `kolm verify` and
`kolm inspect` start fast.
"""

from kolm.cli import (  # noqa: F401  (they register commands)
    compile,
    export,
    recall,
    receipts,
    registry,
    run,
    server,
    trust,
)
from kolm.cli.app import cli, main

__all__ = ["cli", "main"]
