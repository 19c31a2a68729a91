"""Starting the service: `kolm server` (API plus embedded workers) and `kolm worker`.

The server opens the data dir, makes its signing key, puts back on the queue the jobs
a crash left running, starts `workers` huey worker threads (0: API only, for workers
elsewhere) and serves the API with uvicorn. A worker runs jobs from a shared queue and
data dir. This module wires the pieces; it knows nothing of routes or compiling.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kolm.service.execute import Publish


def _open(data: Path, queue_url: str | None, publish: Publish | None):
    from kolm.keys import KeyStore
    from kolm.service.queue import Queue
    from kolm.service.seal import service_secret

    data = Path(data)
    data.mkdir(parents=True, exist_ok=True)
    KeyStore(data).ensure()
    secret = service_secret()
    queue = Queue(queue_url, data, secret, publish)
    queue.ping()
    return data, secret, queue


def run_server(
    data: Path,
    host: str,
    port: int,
    queue_url: str | None = None,
    workers: int = 1,
    limits=None,
    publish: Publish | None = None,
) -> None:
    """Serve until interrupted; jobs still running then resume at the next start."""
    import uvicorn

    from kolm.service.app import create_app
    from kolm.service.queue import STALE_S

    data, secret, queue = _open(data, queue_url, publish)
    back = queue.recover(0 if queue.embedded else STALE_S)
    if back:
        print(f"kolm server: resuming {len(back)} interrupted job(s)", file=sys.stderr)
    consumer = queue.consumer(workers) if workers else None
    if consumer is not None:
        consumer.start()
    print(
        f"kolm server: http://{host}:{port} data {data} queue {queue_url or 'sqlite'} "
        f"workers {workers}",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(data, queue, secret, limits), host=host, port=port, log_level="warning"
        )
    finally:
        sys.stderr.flush()
        os._exit(0)  # worker threads may be mid-compile: they resume at the next start


def run_worker(
    data: Path, queue_url: str, workers: int = 1, publish: Publish | None = None
) -> None:
    """Run jobs from the shared queue until interrupted."""
    from kolm.service.queue import STALE_S

    data, _, queue = _open(data, queue_url, publish)
    queue.recover(STALE_S)
    print(
        f"kolm worker: queue {queue_url} data {data} workers {workers}", file=sys.stderr, flush=True
    )
    consumer = queue.consumer(workers)
    try:
        consumer.run()
    finally:
        os._exit(0)
