"""Compile jobs: records in the service database, their states and their folders.

    queued → running → succeeded | failed | cancelled
    queued → cancelled            running → queued (resumed after a crash)
    queued | running → needs_key  needs_key → queued (key sent again) | cancelled

A job's files live in its tenant's directory: `uploads/ID/` (spec and the files it
names), `work/ID/` (compile work dir, `job.log`, `events.jsonl`) and `artifacts/ID/`
(appears whole, by one rename, once the artifact is written and verified). This module
knows nothing of HTTP, queues or compiling.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from kolm.errors import ServiceError
from kolm.service.tenants import ServiceDB, tenant_dir

TRANSITIONS = {
    "queued": {"running", "cancelled", "needs_key"},
    "running": {"succeeded", "failed", "cancelled", "queued", "needs_key"},
    "needs_key": {"queued", "cancelled"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
}
ACTIVE = ("queued", "running", "needs_key")
TERMINAL = ("succeeded", "failed", "cancelled")
_COLS = (
    "id, tenant, name, state, created, updated, heartbeat, spec, options, teacher_provider, "
    "sealed_key IS NOT NULL, exit_code, error, result, usd, cancel, attempts"
)


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    name: str
    state: str
    created: float
    updated: float
    heartbeat: float | None
    spec: str
    """The spec's file name inside the job's upload folder."""
    options: dict
    """Compile options sent with the job (`force`, `steps`)."""
    teacher_provider: str | None
    has_key: bool
    """A teacher key is held (sealed) for this job; dropped when it ends."""
    exit_code: int | None
    error: str | None
    result: dict | None
    usd: float
    cancel: bool
    attempts: int

    def public(self) -> dict:
        """What the API shows (no key, no paths)."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "created": self.created,
            "updated": self.updated,
            "exit_code": self.exit_code,
            "error": self.error,
            "result": self.result,
            "teacher_usd": self.usd,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class JobPaths:
    uploads: Path
    work: Path
    artifacts: Path
    cache: Path

    @property
    def log(self) -> Path:
        return self.work / "job.log"

    @property
    def events(self) -> Path:
        return self.work / "events.jsonl"


def job_paths(data: Path, tenant: str, job_id: str) -> JobPaths:
    root = tenant_dir(data, tenant)
    return JobPaths(
        root / "uploads" / job_id,
        root / "work" / job_id,
        root / "artifacts" / job_id,
        root / "cache" / "teacher.sqlite",
    )


class JobStore:
    """Job records over the service database."""

    def __init__(self, db: ServiceDB):
        self.db = db

    def new_id(self) -> str:
        return secrets.token_hex(12)

    def create(
        self,
        job_id: str,
        tenant: str,
        name: str,
        spec: str,
        options: dict,
        provider: str | None,
        sealed_key: bytes | None,
    ) -> Job:
        now = time.time()
        self.db.q(
            "INSERT INTO jobs (id, tenant, name, state, created, updated, spec, options, "
            "teacher_provider, sealed_key) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (job_id, tenant, name, now, now, spec, json.dumps(options), provider, sealed_key),
        )
        return self.get(job_id)

    def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to another tenant."""
        rows = self.db.q(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,))
        if not rows or (tenant is not None and rows[0][1] != tenant):
            return None
        return _job(rows[0])

    def list(self, tenant: str, limit: int = 100) -> list[Job]:
        rows = self.db.q(
            f"SELECT {_COLS} FROM jobs WHERE tenant = ? ORDER BY created DESC LIMIT ?",
            (tenant, limit),
        )
        return [_job(r) for r in rows]

    def with_state(self, *states: str) -> list[Job]:
        marks = ",".join("?" * len(states))
        rows = self.db.q(f"SELECT {_COLS} FROM jobs WHERE state IN ({marks})", states)
        return [_job(r) for r in rows]

    def active_count(self, tenant: str) -> int:
        marks = ",".join("?" * len(ACTIVE))
        sql = f"SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state IN ({marks})"
        return self.db.q(sql, (tenant, *ACTIVE))[0][0]

    def sealed_key(self, job_id: str) -> bytes | None:
        return self.db.q("SELECT sealed_key FROM jobs WHERE id = ?", (job_id,))[0][0]

    def advance(self, job_id: str, state: str, **fields) -> Job:
        """Move a job to `state` (refused when the state machine does not allow it)."""
        with self.db.lock:
            (current,) = self.db.db.execute(
                "SELECT state FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if state not in TRANSITIONS[current]:
                raise ServiceError(f"job {job_id} is {current}; it cannot become {state}")
            sets = {"state": state, "updated": time.time(), **fields}
            if state in TERMINAL:
                sets["sealed_key"] = None  # the teacher key is dropped when the job ends
            if state == "running":
                sets["heartbeat"] = time.time()
            cols = ", ".join(f"{k} = ?" for k in sets)
            vals = [json.dumps(v) if k == "result" else v for k, v in sets.items()]
            self.db.db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*vals, job_id))
        return self.get(job_id)

    def touch(self, job_id: str) -> None:
        self.db.q("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), job_id))

    def set_fields(self, job_id: str, **fields) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.q(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))


def _job(row: tuple) -> Job:
    r = list(row)
    r[8] = json.loads(r[8])
    r[10] = bool(r[10])
    r[13] = json.loads(r[13]) if r[13] else None
    r[15] = bool(r[15])
    return Job(*r)
