"""Drift: inputs the student was unsure of, kept locally for the next compile.

An input lands here when the student's output fails the verifier or its
confidence (the smallest top-1 vs top-2 probability margin over the answer's
tokens) falls under a threshold. Nothing here is ever sent anywhere; `kolm
compile --drift FILE` hands these inputs to the teacher at the next compile.
Knows SQLite; knows nothing of models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kolm.artifact import utc_now
from kolm.keys import kolm_home
from kolm.sqlitedb import open_db

MIGRATIONS = (
    """
    CREATE TABLE drift (
        id INTEGER PRIMARY KEY,
        artifact_id TEXT NOT NULL,
        input TEXT NOT NULL,
        output TEXT NOT NULL,
        reason TEXT NOT NULL,
        confidence REAL,
        receipt TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX drift_artifact ON drift(artifact_id);
    """,
)


def default_path() -> Path:
    return Path(os.environ.get("KOLM_DRIFT") or kolm_home() / "drift.sqlite")


@dataclass(frozen=True)
class DriftEntry:
    id: int
    artifact_id: str
    input: str
    output: str
    reason: str
    confidence: float | None
    receipt: str | None
    created_at: str


def drift_reason(
    verified: bool | None, failed_rule: str | None, confidence: float | None, threshold: float
) -> str | None:
    """Why an answer counts as drift, or None when it does not."""
    if verified is False:
        return f"verifier: {failed_rule}"
    if confidence is not None and confidence < threshold:
        return f"low_confidence: margin {confidence:.3f} < {threshold}"
    return None


def coverage_reason(
    drafted_share: float | None, expected: float | None, tokens: int, min_tokens: int = 4
) -> str | None:
    """Drift when an answer falls mostly outside the recipe pack's coverage.

    The pack was mined from the accepted outputs; an answer it drafted less than half
    as much of as it expects is unlike them, so the next compile should see its input."""
    if drafted_share is None or not expected or tokens < min_tokens:
        return None
    if drafted_share < expected / 2:
        return f"recipes: {drafted_share:.0%} of tokens from the pack (expected {expected:.0%})"
    return None


class DriftStore:
    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_path())
        self._db = open_db(self.path, MIGRATIONS, "drift file")

    def add(
        self,
        artifact_id: str,
        text: str,
        output: str,
        reason: str,
        confidence: float | None,
        receipt: str | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO drift (artifact_id, input, output, reason, confidence, receipt, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (artifact_id, text, output, reason, confidence, receipt, utc_now()),
        )

    def entries(self, artifact_id: str | None = None, limit: int | None = None) -> list[DriftEntry]:
        sql, args = "SELECT * FROM drift", []
        if artifact_id:
            sql += " WHERE artifact_id LIKE ?"
            args.append(artifact_id + "%")
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [DriftEntry(*row) for row in self._db.execute(sql, args)]

    def inputs(self) -> list[str]:
        """Distinct drifted inputs, oldest first (what the next compile should learn)."""
        return list(dict.fromkeys(e.input for e in self.entries()))

    def export(self, out: Path) -> int:
        rows = self.entries()
        with out.open("w", encoding="utf-8") as f:
            for e in rows:
                f.write(json.dumps(e.__dict__, ensure_ascii=False) + "\n")
        return len(rows)
