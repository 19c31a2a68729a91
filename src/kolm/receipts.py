"""Receipts: an append-only, hash-chained, signed record of every inference.

Each receipt holds what is needed to audit and replay one answer — artifact id,
input and output hashes (and, unless told not to, the texts), the exact decoding
settings and build, timing, the verifier's verdict and which path answered —
plus the previous receipt's hash, its own hash, and an HMAC with the local key.
Every `ANCHOR_EVERY` receipts (and on demand) the chain head is signed with
Ed25519; `anchor` prints that checkpoint as plain text to keep elsewhere, since
only an outside copy can prove the tail was not cut. Knows SQLite and hashing;
knows nothing of models.
"""

from __future__ import annotations

import hashlib
import hmac as hmac_mod
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from kolm.artifact import canonical_json, utc_now
from kolm.errors import ReceiptError, SignatureError
from kolm.keys import KeyStore, kolm_home
from kolm.sqlitedb import open_db

ANCHOR_EVERY = 100
CHECKPOINT_HEADER = "kolm.receipts/v1"
GENESIS = "0" * 64
MIGRATIONS = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE receipts (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        prev TEXT NOT NULL,
        body TEXT NOT NULL,
        input TEXT,
        output TEXT,
        hmac TEXT NOT NULL
    );
    CREATE TABLE anchors (seq INTEGER PRIMARY KEY, head TEXT NOT NULL, note TEXT NOT NULL);
    """,
)


def default_path() -> Path:
    return Path(os.environ.get("KOLM_RECEIPTS") or kolm_home() / "receipts.sqlite")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Receipt:
    seq: int
    id: str
    prev: str
    artifact_id: str
    artifact_path: str
    input_sha256: str
    output_sha256: str
    settings: dict
    created_at: str
    latency_ms: float
    verified: bool | None
    failed_rule: str | None
    path: str
    """`student`, or `fallback:<teacher>` when the escape hatch answered."""
    confidence: float | None
    input: str | None = None
    output: str | None = None
    context: list[str] | None = None
    """Ids of the retrieved chunks the prompt was grounded in (None without an index)."""
    drafted_share: float | None = None
    """Share of the answer's tokens drafted by the recipe pack (absent in older receipts)."""
    incomplete: bool | None = None
    """True when a streaming client disconnected before the whole answer was sent
    (absent otherwise, and in older receipts)."""

    def to_dict(self) -> dict:
        return asdict(self)


_BODY_FIELDS = (
    "seq",
    "prev",
    "artifact_id",
    "artifact_path",
    "input_sha256",
    "output_sha256",
    "settings",
    "created_at",
    "latency_ms",
    "verified",
    "failed_rule",
    "path",
    "confidence",
    "context",
    "drafted_share",
    "incomplete",
)
# Present only when set, so receipts without them keep the shape older kolm wrote.
_OPTIONAL_FIELDS = frozenset({"context", "drafted_share", "incomplete"})


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    count: int
    first_broken: int | None = None
    problem: str | None = None


class ReceiptStore:
    """One receipts file. Appends are atomic (`BEGIN IMMEDIATE`), so processes can share it."""

    def __init__(
        self, path: Path | None = None, keys: KeyStore | None = None, store_io: bool = True
    ):
        self.path = Path(path or default_path())
        self.keys = keys or KeyStore()
        self.store_io = store_io
        self._db = open_db(self.path, MIGRATIONS, "receipts file", ReceiptError)
        self._db.execute("PRAGMA synchronous=FULL")  # an audit log survives power loss too
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))

    @property
    def log_id(self) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key='log_id'").fetchone()[0]

    # -- writing ------------------------------------------------------------------
    def append(self, **fields) -> Receipt:
        """Add a receipt; fields are Receipt's minus seq/id/prev/hashes/created_at, plus input/output."""
        text_in, text_out = fields.pop("input"), fields.pop("output")
        for optional in _OPTIONAL_FIELDS:
            if fields.get(optional) is None or fields.get(optional) is False:
                fields.pop(optional, None)  # receipts without an index or pack keep their old shape
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT seq, id FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            body = {
                **fields,
                "seq": seq,
                "prev": prev,
                "input_sha256": sha256_text(text_in),
                "output_sha256": sha256_text(text_out),
                "created_at": utc_now(),
            }
            body = {k: body[k] for k in _BODY_FIELDS if k in body}
            blob = canonical_json(body)
            rid = hashlib.sha256(blob).hexdigest()
            db.execute(
                "INSERT INTO receipts VALUES (?,?,?,?,?,?,?)",
                (
                    seq,
                    rid,
                    prev,
                    blob.decode(),
                    text_in if self.store_io else None,
                    text_out if self.store_io else None,
                    self.keys.mac(rid.encode()),
                ),
            )
            if seq % ANCHOR_EVERY == 0:
                self._store_anchor(seq, rid)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        stored = (text_in, text_out) if self.store_io else (None, None)
        return Receipt(id=rid, input=stored[0], output=stored[1], **body)

    def anchor(self) -> str:
        """Sign the current head now; return the checkpoint text to keep elsewhere."""
        row = self._db.execute("SELECT seq, id FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
        seq, head = row if row else (0, GENESIS)
        return self._store_anchor(seq, head)

    def _store_anchor(self, seq: int, head: str) -> str:
        note = self._note(seq, head)
        self._db.execute("INSERT OR REPLACE INTO anchors VALUES (?,?,?)", (seq, head, note))
        return note

    def _note(self, count: int, head: str) -> str:
        text = f"{CHECKPOINT_HEADER}\n{self.log_id}\n{count}\n{head}\n"
        sig = self.keys.sign(text.encode())
        return f"{text}\n— kolm {sig['key_id']} {sig['public_key']} {sig['signature']}\n"

    # -- reading ------------------------------------------------------------------
    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]

    def get(self, ref: str) -> Receipt:
        """By id or id prefix (8+ hex chars), or by sequence number.

        The prefix is matched literally (`%` and `_` are not wildcards)."""
        if ref.isdigit() and len(ref) < 8:
            rows = self._db.execute("SELECT * FROM receipts WHERE seq=?", (int(ref),)).fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM receipts WHERE substr(id, 1, ?) = ? LIMIT 2", (len(ref), ref)
            ).fetchall()
        if len(rows) != 1:
            what = "no receipt" if not rows else f"{len(rows)} receipts"
            raise ReceiptError(f"{what} matches {ref!r} in {self.path}", hint="kolm receipts list")
        return _to_receipt(rows[0])

    def list(self, limit: int = 20, offset: int = 0) -> list[Receipt]:
        rows = self._db.execute(
            "SELECT * FROM receipts ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return [_to_receipt(r) for r in rows]

    def export(self, out: Path) -> int:
        n = 0
        with out.open("w", encoding="utf-8") as f:
            for row in self._db.execute("SELECT * FROM receipts ORDER BY seq"):
                r = _to_receipt(row).to_dict()
                r["hmac"] = row[6]
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        return n

    # -- verifying ----------------------------------------------------------------
    def verify(self, checkpoint: str | None = None) -> ChainReport:
        """Walk the chain; report the first broken link (edit, deletion, reordering, cut tail)."""
        prev, expected_seq, ids = GENESIS, 1, {}
        for seq, rid, rprev, body, text_in, text_out, mac in self._db.execute(
            "SELECT * FROM receipts ORDER BY seq"
        ):
            problem = _check_row(
                self.keys, seq, rid, rprev, body, text_in, text_out, mac, prev, expected_seq
            )
            if problem:
                return ChainReport(False, expected_seq - 1, seq, problem)
            ids[seq] = rid
            prev, expected_seq = rid, seq + 1
        n = expected_seq - 1
        for seq, note in self._db.execute("SELECT seq, note FROM anchors ORDER BY seq"):
            problem = self._check_note(note, ids)
            if problem:
                return ChainReport(False, n, min(seq, n + 1), f"signed anchor at {seq}: {problem}")
        if checkpoint is not None:
            problem = self._check_note(checkpoint, ids)
            if problem:
                return ChainReport(False, n, None, f"checkpoint: {problem}")
        return ChainReport(True, n)

    def _check_note(self, note: str, ids: dict[int, str]) -> str | None:
        try:
            text, sigline = note.split("\n\n", 1)
            header, log_id, count, head = text.split("\n")
            _, _, kid, pub, sig = sigline.strip().split(" ")
            count_i = int(count)
        except ValueError:
            return "not a kolm receipts checkpoint"
        try:
            self.keys.verify((text + "\n").encode(), {"public_key": pub, "signature": sig})
        except SignatureError as e:
            return f"signature: {e.message}"
        if header != CHECKPOINT_HEADER or log_id != self.log_id:
            return "made for a different receipts log"
        if count_i > len(ids):
            return f"the log holds {len(ids)} receipts but a signed checkpoint saw {count_i}: the tail was cut"
        if count_i and ids.get(count_i) != head:
            return f"receipt {count_i} is not the head the checkpoint signed"
        return None


def _check_row(
    keys, seq, rid, rprev, body, text_in, text_out, mac, prev, expected_seq
) -> str | None:
    if seq != expected_seq:
        return f"receipt {expected_seq} is missing (next is {seq})"
    if not isinstance(body, str) or hashlib.sha256(body.encode()).hexdigest() != rid:
        return f"receipt {seq} was edited (its hash does not match its contents)"
    data = _body(body)
    if data is None:
        return f"receipt {seq} has a malformed body (not a receipt's JSON fields)"
    if data["seq"] != seq or data["prev"] != rprev:
        return f"receipt {seq} was moved (its recorded position differs)"
    if rprev != prev:
        return f"receipt {seq} does not follow receipt {seq - 1} (reordered or replaced)"
    if not isinstance(mac, str) or not hmac_mod.compare_digest(keys.mac(rid.encode()), mac):
        return f"receipt {seq} has a bad HMAC (not written with this machine's key)"
    if text_in is not None and (
        not isinstance(text_in, str) or sha256_text(text_in) != data["input_sha256"]
    ):
        return f"receipt {seq}: stored input was edited"
    if text_out is not None and (
        not isinstance(text_out, str) or sha256_text(text_out) != data["output_sha256"]
    ):
        return f"receipt {seq}: stored output was edited"
    return None


def _body(body: str) -> dict | None:
    """A receipt body's fields, or None when it is not exactly a receipt's fields."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    keys = set(data)
    if not keys <= set(_BODY_FIELDS) or not set(_BODY_FIELDS) - _OPTIONAL_FIELDS <= keys:
        return None
    return data


def _to_receipt(row) -> Receipt:
    seq, rid, prev, body, text_in, text_out, _ = row
    data = _body(body) if isinstance(body, str) else None
    if data is None:
        raise ReceiptError(
            f"receipt {seq} has a malformed body", hint="kolm receipts verify shows the chain"
        )
    return Receipt(id=rid, input=text_in, output=text_out, **data)
