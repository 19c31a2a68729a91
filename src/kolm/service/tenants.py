"""Tenants of `kolm server`: API keys (stored as sha256), directories, quotas, audit log.

Every API key belongs to one tenant. A key is 32 random bytes shown once when the
tenant is added; only its sha256 is stored (a random key needs no slow hash). Each
tenant's uploads, teacher cache, work dirs and artifacts live under
`DATA/tenants/NAME/`. This module knows nothing of HTTP or compiling.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kolm.errors import ServiceError
from kolm.sqlitedb import open_db

MIGRATIONS = [
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY, key_sha256 TEXT UNIQUE NOT NULL, created REAL NOT NULL,
        max_jobs INTEGER NOT NULL, max_storage_bytes INTEGER NOT NULL, max_usd REAL NOT NULL,
        spent_usd REAL NOT NULL DEFAULT 0);
    CREATE TABLE audit (
        t REAL NOT NULL, tenant TEXT, method TEXT NOT NULL, route TEXT NOT NULL,
        status INTEGER NOT NULL, ms REAL NOT NULL);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
        created REAL NOT NULL, updated REAL NOT NULL, heartbeat REAL,
        spec TEXT NOT NULL, options TEXT NOT NULL, teacher_provider TEXT,
        sealed_key BLOB, exit_code INTEGER, error TEXT, result TEXT, usd REAL NOT NULL DEFAULT 0,
        cancel INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX jobs_tenant ON jobs (tenant, created);
    """,
]


@dataclass(frozen=True)
class Quotas:
    """Limits per tenant; a request over one is refused with a message saying which."""

    max_jobs: int = 2
    """Jobs queued or running at once."""
    max_storage_bytes: int = 5_000_000_000
    """Bytes under the tenant's directory (uploads, cache, work dirs, artifacts)."""
    max_usd: float = 50.0
    """Teacher spend over the tenant's lifetime."""


@dataclass(frozen=True)
class Tenant:
    name: str
    quotas: Quotas
    spent_usd: float


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ServiceDB:
    """The service's SQLite file: tenants, jobs and the audit log (one connection, locked)."""

    def __init__(self, data: Path):
        self.data = Path(data)
        self.db = open_db(self.data / "service.sqlite", MIGRATIONS, "service database")
        self.lock = threading.Lock()

    def q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # -- tenants ----------------------------------------------------------------
    def add_tenant(self, name: str, quotas: Quotas) -> str:
        """Create a tenant; return its API key (shown once, stored only as a hash)."""
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ServiceError(f"tenant name {name!r} may only hold letters, digits, '-', '_'")
        if self.q("SELECT 1 FROM tenants WHERE name = ?", (name,)):
            raise ServiceError(f"tenant {name!r} exists", hint="pick another name")
        key = "kolm_" + secrets.token_urlsafe(32)
        self.q(
            "INSERT INTO tenants VALUES (?, ?, ?, ?, ?, ?, 0)",
            (
                name,
                key_hash(key),
                time.time(),
                quotas.max_jobs,
                quotas.max_storage_bytes,
                quotas.max_usd,
            ),
        )
        tenant_dir(self.data, name).mkdir(parents=True, exist_ok=True)
        return key

    def tenant_for_key(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        rows = self.q("SELECT name FROM tenants WHERE key_sha256 = ?", (key_hash(key),))
        return self.tenant(rows[0][0]) if rows else None

    def tenant(self, name: str) -> Tenant:
        (row,) = self.q(
            "SELECT max_jobs, max_storage_bytes, max_usd, spent_usd FROM tenants WHERE name = ?",
            (name,),
        )
        return Tenant(name, Quotas(row[0], row[1], row[2]), row[3])

    def tenants(self) -> list[Tenant]:
        return [self.tenant(r[0]) for r in self.q("SELECT name FROM tenants ORDER BY name")]

    def add_spend(self, name: str, usd: float) -> None:
        self.q("UPDATE tenants SET spent_usd = spent_usd + ? WHERE name = ?", (usd, name))

    # -- audit ------------------------------------------------------------------
    def audit(self, tenant: str | None, method: str, route: str, status: int, ms: float) -> None:
        """One row per request: who, what, the answer's status, how long. Never a secret."""
        self.q(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), tenant, method, route, status, ms),
        )

    def audit_rows(self, limit: int = 100) -> list[tuple]:
        return self.q("SELECT * FROM audit ORDER BY rowid DESC LIMIT ?", (limit,))


def tenant_dir(data: Path, name: str) -> Path:
    return Path(data) / "tenants" / name


def storage_used(data: Path, name: str) -> int:
    """Bytes under the tenant's directory."""
    root = tenant_dir(data, name)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
