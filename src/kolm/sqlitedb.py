"""SQLite files kolm keeps (teacher cache, receipts, drift): open, WAL, migrate.

Each store passes its ordered list of migrations; the file's `user_version`
says how many have run. A file from a newer kolm, or one that is not a
database, becomes the store's own error with a message that says so.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from kolm.errors import KolmError


def open_db(
    path: Path, migrations: Sequence[str], what: str, error: type[KolmError] = KolmError
) -> sqlite3.Connection:
    """Connect in autocommit mode with WAL and bring the schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise error(f"{what} {path} was made by a newer kolm (schema {version}); upgrade kolm")
        for i in range(version, len(migrations)):
            db.executescript(f"BEGIN; {migrations[i]} PRAGMA user_version={i + 1}; COMMIT;")
    except sqlite3.DatabaseError as e:
        raise error(
            f"{what} {path} is unreadable ({e})",
            hint="move it aside to start a fresh one",
        ) from None
    return db
