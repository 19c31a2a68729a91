"""The job queue: huey, on SQLite in the data dir by default, on Redis to share workers.

`kolm server` enqueues a job id; a huey consumer (threads inside the server, or
`kolm worker` processes on other machines sharing the data dir and the Redis URL)
runs it with `execute.Worker`. The queue holds only job ids; everything else is in the
service database. At start, jobs left `running` by a crashed process go back on the
queue (and resume from their work dir). This module knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from kolm.errors import ServiceError
from kolm.service.execute import Publish, Worker

TASK = "kolm.compile_job"
HEARTBEAT_S = 5.0
STALE_S = 30.0
"""A running job whose heartbeat is older than this is taken as orphaned by a crash."""


def make_huey(url: str | None, data: Path):
    """SqliteHuey at DATA/queue.sqlite (default, `sqlite://`), or RedisHuey for redis://."""
    import huey

    if not url or url.startswith("sqlite"):
        return huey.SqliteHuey("kolm", filename=str(Path(data) / "queue.sqlite"), results=False)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return huey.RedisHuey("kolm", url=url, results=False)
    raise ServiceError(
        f"unknown queue {url!r}", hint="use sqlite:// (default) or redis://HOST:PORT/DB"
    )


class Queue:
    """A huey instance with kolm's one task registered, and the worker that runs it."""

    def __init__(self, url: str | None, data: Path, secret: bytes, publish: Publish | None = None):
        self.url = url
        self.embedded = not url or url.startswith("sqlite")
        self.huey = make_huey(url, data)
        self.worker = Worker(data, secret, publish)
        self.jobs = self.worker.jobs
        self._task = self.huey.task(name=TASK)(self._run)

    def _run(self, job_id: str) -> None:
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job_id, stop), daemon=True)
        beat.start()
        try:
            self.worker.run(job_id)
        finally:
            stop.set()

    def _beat(self, job_id: str, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            self.jobs.touch(job_id)

    def enqueue(self, job_id: str) -> None:
        self._task(job_id)

    def ping(self) -> None:
        """Fail now, with a clear message, if the queue's storage cannot be reached."""
        try:
            self.huey.pending_count()
        except Exception as e:
            raise ServiceError(f"cannot reach the queue at {self.url}: {e}") from None

    def recover(self, stale_s: float = STALE_S) -> list[str]:
        """Put back on the queue the jobs a crashed process left running."""
        now, back = time.time(), []
        for job in self.jobs.with_state("running"):
            if now - (job.heartbeat or 0) >= stale_s:
                self.jobs.advance(job.id, "queued", error=None)
                self.enqueue(job.id)
                back.append(job.id)
        return back

    def consumer(self, workers: int):
        """A huey consumer running `workers` jobs at once in threads."""
        logging.getLogger("huey").setLevel(logging.WARNING)
        return _Consumer(
            self.huey,
            workers=workers,
            worker_type="thread",
            periodic=False,
            initial_delay=0.1,
            max_delay=1.0,
        )


def _consumer_class():
    from huey.consumer import Consumer

    class Embedded(Consumer):
        """A consumer that leaves signal handling to its host (uvicorn in `kolm server`)."""

        def _set_signal_handlers(self) -> None:
            pass

    return Embedded


def _Consumer(*args, **kwargs):  # noqa: N802 (a class made lazily, so huey loads only when used)
    return _consumer_class()(*args, **kwargs)
