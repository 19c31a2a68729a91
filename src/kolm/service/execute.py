"""One job, run by a worker: open its teacher key, compile, publish, record the outcome.

The compile runs with the job's own teacher key alone (`teacher.only_keys`), its own
work dir (so a job resumed after a crash restarts from the training checkpoint) and
its tenant's teacher cache (so no paid call is made twice). Progress events and log
lines go to the job's `events.jsonl` and `job.log`; a cancel stops the job at its next
event. The artifact is verified, then published by one rename; only then does the job
become `succeeded`. This module knows nothing of HTTP or which queue called it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from kolm.errors import GateError, KolmError
from kolm.service.jobs import Job, JobPaths, JobStore, job_paths
from kolm.service.seal import unseal
from kolm.service.tenants import ServiceDB

Publish = Callable[[Path, Job], None]
"""Called with a finished, verified artifact (e.g. push it to an OCI registry)."""


class JobCancelled(Exception):
    """Raised inside a running compile when its job was cancelled."""


class EventLog:
    """A job's events (JSON lines, numbered) and its plain log; also its cancel check."""

    def __init__(self, paths: JobPaths, jobs: JobStore, job_id: str, secret_text: str | None):
        paths.work.mkdir(parents=True, exist_ok=True)
        self.paths, self.jobs, self.job_id = paths, jobs, job_id
        self._secret = secret_text
        self._seq = _count_lines(paths.events)
        self._lock = threading.Lock()
        self._checked = 0.0
        self.usd_before, self.usd_run, self._done = 0.0, 0.0, 0

    def write(self, kind: str, **fields) -> None:
        with self._lock:
            self._seq += 1
            row = {"seq": self._seq, "t": round(time.time(), 3), "type": kind, **fields}
            line = self._clean(json.dumps(row))
            with self.paths.events.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def log(self, msg: str) -> None:
        msg = self._clean(msg)
        with self.paths.log.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        self.write("log", message=msg)
        self.check()

    def progress(self, event: dict) -> None:
        if event.get("stage") == "label":
            if event["done"] < self._done:  # a new labeling run (the teacher baseline)
                self.usd_before += self.usd_run
            self._done, self.usd_run = event["done"], event["usd"]
            event = {**event, "usd_total": round(self.spent, 6)}
        self.write("progress", **event)
        self.check()

    @property
    def spent(self) -> float:
        return self.usd_before + self.usd_run

    def check(self) -> None:
        """Beat the heartbeat and stop if the job was cancelled (at most twice a second)."""
        now = time.monotonic()
        if now - self._checked < 0.5:
            return
        self._checked = now
        self.jobs.touch(self.job_id)
        job = self.jobs.get(self.job_id)
        if job is not None and job.cancel:
            raise JobCancelled

    def _clean(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


class Worker:
    """Runs jobs from one data directory; `publish` (optional) gets each finished artifact."""

    def __init__(self, data: Path, secret: bytes, publish: Publish | None = None):
        self.data = Path(data)
        self.secret = secret
        self.publish = publish
        self.db = ServiceDB(self.data)
        self.jobs = JobStore(self.db)

    def run(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.state != "queued":
            return  # cancelled while queued, or already taken
        paths = job_paths(self.data, job.tenant, job_id)
        key = None
        if job.has_key:
            key = unseal(self.jobs.sealed_key(job_id) or b"", self.secret, job_id)
            if key is None:
                self.jobs.advance(job_id, "needs_key", error=NEEDS_KEY)
                EventLog(paths, self.jobs, job_id, None).write("state", state="needs_key")
                return
        self.jobs.advance(job_id, "running", attempts=job.attempts + 1, error=None)
        events = EventLog(paths, self.jobs, job_id, key)
        events.write("state", state="running", attempt=job.attempts + 1)
        try:
            self._run(job, paths, events, key)
        finally:
            key = None  # dropped: the sealed copy went with the terminal state
            self.db.add_spend(job.tenant, events.spent)

    def _run(self, job: Job, paths: JobPaths, events: EventLog, key: str | None) -> None:
        from kolm.progress import listening
        from kolm.teacher import only_keys

        try:
            with only_keys({job.teacher_provider: key} if key else {}), listening(events.progress):
                result = self._compile(job, paths, events)
            outcome = {"state": "succeeded", "exit_code": 0, "result": result}
        except JobCancelled:
            outcome = {"state": "cancelled", "exit_code": 130, "error": "cancelled"}
        except KolmError as e:
            outcome = {"state": "failed", "exit_code": e.exit_code, "error": events._clean(str(e))}
            if isinstance(e, GateError):
                outcome["result"] = self._reports_only(job, paths)
        except Exception as e:  # a bug: say so, keep the traceback in the job's log
            events.log("internal error:\n" + traceback.format_exc())
            outcome = {
                "state": "failed",
                "exit_code": 1,
                "error": events._clean(f"internal error: {type(e).__name__}: {e}"),
            }
        state = outcome.pop("state")
        self.jobs.advance(job.id, state, usd=round(job.usd + events.spent, 6), **outcome)
        events.write("state", state=state, exit_code=outcome["exit_code"])

    def _compile(self, job: Job, paths: JobPaths, events: EventLog) -> dict:
        from kolm.compiler import compile_task
        from kolm.keys import KeyStore
        from kolm.spec import load_spec

        spec = _limited(
            load_spec(paths.uploads / job.spec), job.options, self.db.tenant(job.tenant)
        )
        out = paths.work / "out" / f"{spec.name}.kolm"
        out.parent.mkdir(parents=True, exist_ok=True)
        keys = KeyStore(self.data)
        res = compile_task(
            spec,
            out,
            work_dir=paths.work / "compile",
            keys=keys,
            progress=False,
            log=events.log,
            cache_path=paths.cache,
            force=bool(job.options.get("force")),
        )
        from kolm.artifact import open_artifact

        open_artifact(out, keys)  # verified before anyone can download it
        files = _publish(out, paths)
        if self.publish is not None:
            self.publish(paths.artifacts / out.name, job)
        return {
            "artifact": out.name,
            "artifact_id": res.artifact_id,
            "files": files,
            "timings": res.timings,
            "cached_training": res.cached_training,
            "report": res.report.name if res.report else None,
        }

    def _reports_only(self, job: Job, paths: JobPaths) -> dict:
        out = next(iter((paths.work / "out").glob("*.report.html")), None)
        if out is None:
            return {}
        files = _publish(out.with_name(out.name.removesuffix(".report.html") + ".kolm"), paths)
        return {"files": files, "report": out.name}


NEEDS_KEY = (
    "this job was interrupted and its teacher key did not survive the restart; "
    "send it again (POST /v1/jobs/ID/key, or rerun `kolm compile --remote`)"
)


def _limited(spec, options: dict, tenant):
    """The spec with the job's options applied and its teacher spend capped by the quota."""
    if options.get("steps"):
        spec = dataclasses.replace(
            spec, train=spec.train.with_settings(steps=int(options["steps"]))
        )
    if spec.teacher is not None:
        left = max(0.0, tenant.quotas.max_usd - tenant.spent_usd)
        cap = left if spec.teacher.max_usd is None else min(spec.teacher.max_usd, left)
        spec = dataclasses.replace(spec, teacher=dataclasses.replace(spec.teacher, max_usd=cap))
    return spec


def _publish(artifact: Path, paths: JobPaths) -> list[str]:
    """Move the artifact (if any) and its reports into `artifacts/ID/` by one rename."""
    stem = artifact.name.removesuffix(".kolm")
    names = [artifact.name, f"{stem}.report.html", f"{stem}.report.md"]
    staging = paths.artifacts.with_name(f".{paths.artifacts.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = []
    for name in names:
        src = artifact.with_name(name)
        if src.is_file():
            shutil.copy2(src, staging / name)
            files.append(name)
    shutil.rmtree(paths.artifacts, ignore_errors=True)
    os.replace(staging, paths.artifacts)
    return files


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)
