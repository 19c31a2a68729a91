"""The index: one SQLite file holding chunks, their vectors (sqlite-vec `vec0`) and
a keyword index (FTS5), searched by reciprocal-rank fusion of the two by default.

Building walks the sources, detects and extracts each file, chunks it and
embeds the new chunks; a file whose content hash is unchanged since the last
build is skipped without embedding anything, a file that disappeared loses its
chunks, and a file that cannot be read is recorded with its reason (never
dropped silently, never fatal). A file's chunks, vectors and row are written in
one transaction, so an interrupted build leaves a consistent index.

Knows SQLite, sqlite-vec and FTS5; uses `detect`, `extract`, `chunk` and
`embed`, and knows nothing about prompts, artifacts or models that answer.
This Python's `sqlite3` cannot load extensions, so `pysqlite3` is used.

Both sides are untrusted. A corpus file over `MAX_FILE_BYTES`, or a link from
a corpus folder to a file outside it, is refused with its reason; a file name
that is not UTF-8 is stored with its odd bytes escaped. An index opened for
search must have kolm's tables as plain tables (a view or a trigger in a
crafted file runs nothing: `trusted_schema` is off), a damaged one raises
`RecallError`, and a keyword query uses at most `MAX_QUERY_TERMS` distinct
words, each quoted, so no query text is FTS5 syntax.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

from kolm.errors import RecallError
from kolm.recall.chunk import ChunkConfig, chunk
from kolm.recall.detect import detect
from kolm.recall.embed import Embedder, EmbedderInfo, embedder_for
from kolm.recall.extract import Skipped, extract

SCHEMA_VERSION = 1
MODES = ("hybrid", "vector", "keyword")
RRF_K = 60
"""Reciprocal-rank fusion constant: score = sum over lists of 1 / (RRF_K + rank)."""
_EMBED_BATCH = 256
MAX_FILE_BYTES = 128 * 1024 * 1024
"""Largest corpus file read; a bigger one is refused before a byte is read."""
MAX_QUERY_TERMS = 256
"""Distinct words a keyword query uses (FTS5 time grows with the square of the count)."""
SKIPPED = ("unsupported", "failed", "empty", "refused")
"""Statuses of files that were not indexed, for a reason the user should see."""
Log = Callable[[str], None]


@dataclass(frozen=True)
class FileReport:
    """What happened to one source file in a build."""

    path: str
    status: str
    """`indexed`, `unchanged`, `removed`, or one of SKIPPED."""
    kind: str = ""
    reason: str = ""
    chunks: int = 0


@dataclass
class IndexReport:
    """The outcome of one build."""

    path: Path
    files: list[FileReport] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0

    def skipped(self) -> list[FileReport]:
        """Files not indexed for a reason the user should see."""
        return [f for f in self.files if f.status in SKIPPED]

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.files)

    def summary(self) -> dict:
        return {
            "files": len([f for f in self.files if f.status != "removed"]),
            "indexed": self.count("indexed"),
            "unchanged": self.count("unchanged"),
            "removed": self.count("removed"),
            "skipped": [asdict(f) for f in self.skipped()],
            "chunks_embedded": self.chunks_embedded,
            "chunks": self.chunks_total,
            "seconds": round(self.seconds, 2),
            "chunks_per_second": round(self.chunks_embedded / self.embed_seconds, 1)
            if self.embed_seconds
            else None,
        }


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk."""

    id: str
    path: str
    ref: str
    text: str
    score: float
    """Fused RRF score (hybrid), cosine similarity (vector) or -bm25 (keyword)."""

    def source(self) -> str:
        return f"{self.path} ({self.ref})"

    def formatted(self) -> str:
        """The chunk as a model is shown it: its source on the first line, then its text."""
        return f"[source: {self.source()}]\n{self.text}"

    def to_dict(self) -> dict:
        return asdict(self)


def connect(path: Path, readonly: bool = False):
    """A pysqlite3 connection with sqlite-vec loaded."""
    sqlite3 = _sqlite_module()
    try:
        import sqlite_vec
    except ImportError:
        raise RecallError(
            "the index needs the `sqlite-vec` package", hint="pip install sqlite-vec"
        ) from None
    if readonly:
        uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True)
    else:
        conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    return conn


def _sqlite_module():
    """pysqlite3 when installed (Linux wheels), else the standard module if it loads extensions."""
    try:
        import pysqlite3

        return pysqlite3
    except ImportError:
        import sqlite3

        if hasattr(sqlite3.Connection, "enable_load_extension"):
            return sqlite3
    raise RecallError(
        "this Python's sqlite3 cannot load extensions, and `pysqlite3` is not installed",
        hint="pip install pysqlite3-binary (Linux), or use a Python built with extension loading",
    )


def collect(sources: Sequence[str | Path], base_dir: Path) -> list[tuple[Path, str]]:
    """(file, name) for every file in the sources: folders (recursive), globs or files.

    Names are relative to `base_dir` when under it. Hidden files and folders are left out.
    A link in a folder (or glob) to a file outside that folder (or `base_dir`) is
    returned unresolved, and the builder refuses it. Raises RecallError listing
    every source that matched nothing."""
    found: dict[Path, str] = {}
    missing = []
    for src in sources:
        paths = _expand(str(src), base_dir)
        if not paths:
            missing.append(str(src))
        for p in paths:
            found.setdefault(p, _name(p, base_dir))
    if missing:
        raise RecallError(
            f"corpus: nothing found at {', '.join(missing)} (relative to {base_dir})",
            hint="give a folder, a glob such as docs/**/*.md, or a file",
        )
    return sorted(found.items(), key=lambda kv: kv[1])


def _expand(src: str, base_dir: Path) -> list[Path]:
    p = (base_dir / src).expanduser()
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
        return [_inside(f, p.resolve()) for f in files if not _hidden(f.relative_to(p))]
    if p.is_file():
        return [p.resolve()]
    if globlib.has_magic(src):
        files = [Path(f) for f in globlib.glob(str(base_dir / src), recursive=True)]
        return [_inside(f, base_dir.resolve()) for f in files if f.is_file() and not _hidden(f)]
    return []


def _inside(f: Path, root: Path) -> Path:
    """The file's real path when it lies under `root`; else the link itself, unresolved."""
    real = f.resolve()
    return real if real.is_relative_to(root) else f.parent.resolve() / f.name


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _name(p: Path, base_dir: Path) -> str:
    try:
        name = p.relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        name = p.as_posix()
    # a name that is not UTF-8 (surrogate escapes) cannot be stored in SQLite as it is
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def build_index(
    sources: Sequence[str | Path],
    out: Path,
    *,
    base_dir: Path | None = None,
    embedder: Embedder | None = None,
    cfg: ChunkConfig | None = None,
    log: Log | None = None,
) -> IndexReport:
    """Create or update the index at `out` from `sources`; see the module docstring."""
    t0 = time.perf_counter()
    base_dir = Path(base_dir or Path.cwd())
    files = collect(sources, base_dir)
    embedder = embedder or Embedder()
    cfg = cfg or ChunkConfig()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(out)
    try:
        _prepare(conn, embedder.info, cfg)
        report = _Builder(conn, embedder, cfg, out, log).run(files)
        conn.execute("VACUUM")
    finally:
        conn.close()
    report.seconds = time.perf_counter() - t0
    return report


def _prepare(conn, info: EmbedderInfo, cfg: ChunkConfig) -> None:
    conn.executescript(
        """
        CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS files(
          path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, kind TEXT,
          label TEXT, status TEXT NOT NULL, reason TEXT, chunks INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE IF NOT EXISTS chunks(
          rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, path TEXT NOT NULL,
          ordinal INTEGER NOT NULL, ref TEXT NOT NULL, text TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
        CREATE VIRTUAL TABLE IF NOT EXISTS chunk_text USING fts5(text, tokenize='porter unicode61');
        """
    )
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if "embedder" in meta:
        old = EmbedderInfo.from_dict(json.loads(meta["embedder"]))
        if old.sha256 != info.sha256:
            raise RecallError(
                f"this index was built with embedder {old.name!r} (sha256 {old.sha256[:16]}…), "
                f"not {info.name!r} (sha256 {info.sha256[:16]}…)",
                hint="build into a new file, or delete the old index first",
            )
    conn.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS chunk_vectors USING "
        f"vec0(embedding float[{info.dim}] distance_metric=cosine)"
    )
    if meta.get("chunking") not in (None, json.dumps(cfg.to_dict(), sort_keys=True)):
        conn.execute("UPDATE files SET sha256 = ''")  # other chunk settings: re-chunk everything
    rows = {
        "schema_version": str(SCHEMA_VERSION),
        "embedder": json.dumps(info.to_dict(), sort_keys=True),
        "chunking": json.dumps(cfg.to_dict(), sort_keys=True),
    }
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows.items())
    conn.commit()


_OUTSIDE = "a link to a file outside the corpus folder; copy the file into the folder to index it"


def _too_large() -> str:
    return (
        f"larger than {MAX_FILE_BYTES:,} bytes; split it into smaller files, "
        "or leave it out of the corpus"
    )


def _read_bounded(path: Path) -> bytes | None:
    """The file's bytes, or None when it holds more than MAX_FILE_BYTES (read stops there)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        return None
    with open(path, "rb") as f:  # bounded again: the file may grow after the stat
        data = f.read(MAX_FILE_BYTES + 1)
    return None if len(data) > MAX_FILE_BYTES else data


class _Builder:
    """One build pass: files are added to a transaction that commits with their vectors."""

    def __init__(self, conn, embedder: Embedder, cfg: ChunkConfig, out: Path, log: Log | None):
        self.conn, self.embedder, self.cfg, self.out = conn, embedder, cfg, out
        self.log = log or (lambda _msg: None)
        self.report = IndexReport(out)
        self.pending: list[tuple[int, str]] = []

    def run(self, files: list[tuple[Path, str]]) -> IndexReport:
        known = dict(self.conn.execute("SELECT path, sha256 FROM files WHERE status = 'indexed'"))
        for path, name in files:
            self.report.files.append(self._file(path, name, known.get(name)))
            if len(self.pending) >= _EMBED_BATCH:
                self._flush()
        self._flush()
        self._remove_missing({name for _, name in files})
        self.report.chunks_total = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return self.report

    def _file(self, path: Path, name: str, old_sha: str | None) -> FileReport:
        if path.is_symlink():
            self._delete_chunks(name)
            return self._record(name, "", 0, "", "", "refused", _OUTSIDE)
        try:
            data = _read_bounded(path)
        except OSError as e:
            self._delete_chunks(name)
            return self._record(name, "", 0, "", "", "failed", f"cannot read: {e.strerror or e}")
        if data is None:
            self._delete_chunks(name)
            return self._record(name, "", path.stat().st_size, "", "", "refused", _too_large())
        sha = hashlib.sha256(data).hexdigest()
        if sha == old_sha:
            n = self.conn.execute("SELECT chunks FROM files WHERE path = ?", (name,)).fetchone()[0]
            return FileReport(name, "unchanged", chunks=n)
        self._delete_chunks(name)
        if not data.strip():
            return self._record(
                name, sha, len(data), "empty", "empty", "empty", "the file is empty"
            )
        try:
            d = detect(path)
        except RecallError as e:
            return self._record(name, sha, len(data), "", "", "failed", e.message)
        try:
            pieces = chunk(extract(path, d.kind), self.cfg)
        except Skipped as e:
            return self._record(name, sha, len(data), d.kind, d.label, e.status, e.message)
        for i, c in enumerate(pieces):
            cid = hashlib.sha256(f"{name}\0{sha}\0{i}".encode()).hexdigest()[:16]
            cur = self.conn.execute(
                "INSERT INTO chunks(id, path, ordinal, ref, text) VALUES (?, ?, ?, ?, ?)",
                (cid, name, i, c.ref, c.text),
            )
            self.conn.execute(
                "INSERT INTO chunk_text(rowid, text) VALUES (?, ?)", (cur.lastrowid, c.text)
            )
            self.pending.append((cur.lastrowid, c.text))
        return self._record(name, sha, len(data), d.kind, d.label, "indexed", "", len(pieces))

    def _record(self, name, sha, size, kind, label, status, reason, chunks: int = 0) -> FileReport:
        self.conn.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, sha, size, kind, label, status, reason, chunks),
        )
        if status != "indexed":
            self.log(f"kolm: skipped {name}: {reason}")
        return FileReport(name, status, kind, reason, chunks)

    def _delete_chunks(self, name: str) -> None:
        rowids = [
            r for (r,) in self.conn.execute("SELECT rowid FROM chunks WHERE path = ?", (name,))
        ]
        for table in ("chunk_vectors", "chunk_text", "chunks"):
            self.conn.executemany(f"DELETE FROM {table} WHERE rowid = ?", [(r,) for r in rowids])

    def _remove_missing(self, present: set[str]) -> None:
        gone = [p for (p,) in self.conn.execute("SELECT path FROM files") if p not in present]
        for name in gone:
            self._delete_chunks(name)
            self.conn.execute("DELETE FROM files WHERE path = ?", (name,))
            self.report.files.append(FileReport(name, "removed"))
        self.conn.commit()

    def _flush(self) -> None:
        if self.pending:
            t = time.perf_counter()
            vectors = self.embedder.encode([text for _, text in self.pending])
            self.report.embed_seconds += time.perf_counter() - t
            self.conn.executemany(
                "INSERT INTO chunk_vectors(rowid, embedding) VALUES (?, ?)",
                [(rowid, v.tobytes()) for (rowid, _), v in zip(self.pending, vectors, strict=True)],
            )
            self.report.chunks_embedded += len(self.pending)
            self.log(f"kolm: embedded {self.report.chunks_embedded} chunks")
            self.pending = []
        self.conn.commit()


class Index:
    """A built index, opened read-only for search."""

    def __init__(self, path: str | Path, embedder: Embedder | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise RecallError(f"no such index: {self.path}", hint="build one with `kolm index`")
        try:
            self.conn = connect(self.path, readonly=True)
            _check_schema(self.conn, self.path)
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            self.info = EmbedderInfo.from_dict(json.loads(meta["embedder"]))
            self.chunking = json.loads(meta.get("chunking", "{}"))
        except RecallError:
            raise
        except Exception as e:  # not SQLite, or not one of ours
            raise RecallError(
                f"{self.path} is not a kolm index ({type(e).__name__}: {e})",
                hint="build one with `kolm index`, or give the index.sqlite from an artifact",
            ) from None
        self._embedder = embedder
        self._sql_error = _sqlite_module().Error

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = embedder_for(self.info)
        return self._embedder

    def _damaged(self, e: Exception) -> RecallError:
        return RecallError(
            f"{self.path} is damaged ({type(e).__name__}: {e})",
            hint="rebuild it with `kolm index`, or take it again from its artifact",
        )

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        """The top-k chunks for `query`, best first (ties broken by insertion order)."""
        try:
            return self._search(query, k, mode)
        except self._sql_error as e:  # SQLite reports damage only when a query reaches it
            raise self._damaged(e) from None

    def _search(self, query: str, k: int, mode: str) -> list[Hit]:
        if mode not in MODES:
            raise RecallError(f"unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}")
        if k < 1 or not query.strip():
            return []
        depth = max(4 * k, 20)
        if mode == "keyword":
            return self._hits(self._keyword(query, k))
        vec = self._vector(query, k if mode == "vector" else depth)
        if mode == "vector":
            return self._hits([(r, 1.0 - d) for r, d in vec])
        lists = [[r for r, _ in vec], [r for r, _ in self._keyword(query, depth)]]
        return self._hits(fuse(lists)[:k])

    def _vector(self, query: str, n: int) -> list[tuple[int, float]]:
        q = self.embedder.encode([query])[0]
        rows = self.conn.execute(
            "SELECT rowid, distance FROM chunk_vectors WHERE embedding MATCH ? AND k = ? "
            "ORDER BY distance",
            (q.tobytes(), n),
        ).fetchall()
        return sorted(rows, key=lambda r: (r[1], r[0]))

    def _keyword(self, query: str, n: int) -> list[tuple[int, float]]:
        words = sorted(list(dict.fromkeys(re.findall(r"\w+", query.lower())))[:MAX_QUERY_TERMS])
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.conn.execute(
            "SELECT rowid, bm25(chunk_text) AS s FROM chunk_text WHERE chunk_text MATCH ? "
            "ORDER BY s, rowid LIMIT ?",
            (match, n),
        ).fetchall()
        return [(r, -s) for r, s in rows]

    def _hits(self, scored: list[tuple[int, float]]) -> list[Hit]:
        out = []
        for rowid, score in scored:
            row = self.conn.execute(
                _CHUNK_COLUMNS + "FROM chunks WHERE rowid = ?", (rowid,)
            ).fetchone()
            if row is None:
                raise self._damaged(LookupError(f"search found chunk row {rowid}, which is gone"))
            cid, path, ref, text = row
            out.append(Hit(cid, path, ref, text, round(float(score), 6)))
        return out

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """Chunks by id, in the order given (replay uses the ids a receipt recorded)."""
        out = []
        for cid in ids:
            try:
                row = self.conn.execute(
                    _CHUNK_COLUMNS + "FROM chunks WHERE id = ?", (cid,)
                ).fetchone()
            except self._sql_error as e:
                raise self._damaged(e) from None
            if row is None:
                raise RecallError(f"chunk {cid} is not in {self.path}")
            out.append(Hit(*row, 0.0))
        return out

    def stats(self) -> dict:
        """Size, chunk count, embedder and sources (with every skipped file and its reason)."""
        try:
            return self._stats()
        except self._sql_error as e:
            raise self._damaged(e) from None

    def _stats(self) -> dict:
        files = [
            {"path": p, "kind": k, "status": s, "reason": r, "chunks": n}
            for p, k, s, r, n in self.conn.execute(
                "SELECT path, kind, status, reason, chunks FROM files ORDER BY path"
            )
        ]
        return {
            "size": self.path.stat().st_size,
            "chunks": self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0],
            "embedder": self.info.to_dict(),
            "chunking": self.chunking,
            "files": files,
        }

    def close(self) -> None:
        self.conn.close()


_CHUNK_COLUMNS = (
    "SELECT CAST(id AS TEXT), CAST(path AS TEXT), CAST(ref AS TEXT), CAST(text AS TEXT) "
)
_TABLES = {"meta": "table", "files": "table", "chunks": "table"}
_VIRTUAL = {"chunk_text": "using fts5", "chunk_vectors": "using vec0"}


def _check_schema(conn, path: Path) -> None:
    """kolm's tables are plain tables and its virtual tables the right modules; no views."""
    rows = conn.execute("SELECT name, type, lower(sql) FROM sqlite_master").fetchall()
    found = {name: (kind, sql or "") for name, kind, sql in rows}
    bad = [n for n, kind in _TABLES.items() if found.get(n, ("",))[0] != kind]
    bad += [n for n, using in _VIRTUAL.items() if using not in found.get(n, ("", ""))[1]]
    if bad:
        raise RecallError(
            f"{path} is not a kolm index: {', '.join(bad)} missing or not what kolm writes",
            hint="build one with `kolm index`, or give the index.sqlite from an artifact",
        )


def fuse(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: (item, score) best first; ties go to the smaller item."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
