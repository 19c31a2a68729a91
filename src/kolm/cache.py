"""The teacher cache: every response stored before it is used; it only grows.

A SQLite file keyed by sha256 of (provider, model, full request, sample index).
Each response is committed on its own, in WAL mode, so a process killed at any
point loses at most the calls in flight, and a rerun pays for nothing already
answered. The schema evolves through an ordered list of migrations. Knows
nothing about teachers beyond the strings it is given.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from kolm.artifact import cache_home, canonical_json, utc_now
from kolm.errors import KolmError
from kolm.sqlitedb import open_db

MIGRATIONS = (
    """
    CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        sample INTEGER NOT NULL,
        request TEXT NOT NULL,
        text TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX responses_model ON responses(provider, model);
    """,
    # 2: how long the call took, so a teacher baseline's latency survives caching.
    "ALTER TABLE responses ADD COLUMN latency_ms REAL;",
)


def default_cache_path() -> Path:
    return cache_home() / "teacher-cache.sqlite"


def cache_key(provider: str, model: str, request: dict, sample: int) -> str:
    payload = {"provider": provider, "model": model, "request": request, "sample": sample}
    return hashlib.sha256(canonical_json(payload)).hexdigest()


@dataclass(frozen=True)
class Cached:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float | None = None


class TeacherCache:
    """One SQLite file of responses. Use from one thread (the event loop's)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_cache_path())
        self._db = open_db(self.path, MIGRATIONS, "teacher cache")

    def get(self, key: str) -> Cached | None:
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens, latency_ms FROM responses WHERE key=?",
            (key,),
        ).fetchone()
        return Cached(*row) if row else None

    def put(
        self, key: str, provider: str, model: str, sample: int, request: dict, c: Cached
    ) -> None:
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO responses (key, provider, model, sample, request, text, "
                "prompt_tokens, completion_tokens, created_at, latency_ms) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    provider,
                    model,
                    sample,
                    canonical_json(request).decode(),
                    c.text,
                    c.prompt_tokens,
                    c.completion_tokens,
                    utc_now(),
                    c.latency_ms,
                ),
            )
        except sqlite3.OperationalError as e:
            raise KolmError(
                f"cannot write the teacher cache {self.path}: {e}",
                hint="free disk space, then rerun: every answer already cached is kept",
            ) from None

    def stats(self) -> list[dict]:
        rows = self._db.execute(
            "SELECT provider, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), MIN(created_at), "
            "MAX(created_at) FROM responses GROUP BY provider, model ORDER BY provider, model"
        ).fetchall()
        keys = (
            "provider",
            "model",
            "responses",
            "prompt_tokens",
            "completion_tokens",
            "first",
            "last",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def export(self, out: Path) -> int:
        n = 0
        with out.open("w", encoding="utf-8") as f:
            for row in self._db.execute(
                "SELECT key, provider, model, sample, request, text, prompt_tokens, completion_tokens, created_at "
                "FROM responses ORDER BY created_at, key"
            ):
                key, provider, model, sample, request, text, pt, ct, created = row
                f.write(
                    json.dumps(
                        {
                            "key": key,
                            "provider": provider,
                            "model": model,
                            "sample": sample,
                            "request": json.loads(request),
                            "text": text,
                            "prompt_tokens": pt,
                            "completion_tokens": ct,
                            "created_at": created,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
                n += 1
        return n

    def prune(self, model: str | None = None, before: str | None = None) -> int:
        """Delete responses of `provider:model` and/or created before an ISO date."""
        clauses, args = [], []
        if model:
            provider, _, name = model.partition(":")
            clauses.append("provider=? AND model=?")
            args += [provider, name]
        if before:
            clauses.append("created_at < ?")
            args.append(before)
        if not clauses:
            raise KolmError("prune needs --model and/or --before", hint="kolm cache prune --help")
        cur = self._db.execute(f"DELETE FROM responses WHERE {' AND '.join(clauses)}", args)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return cur.rowcount

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
