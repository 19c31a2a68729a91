"""The receipts chain detects every kind of tampering (property-based)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm.keys import KeyStore
from kolm.receipts import ANCHOR_EVERY, ReceiptStore


def fill(store: ReceiptStore, n: int) -> None:
    for i in range(n):
        store.append(
            artifact_id="a" * 64,
            artifact_path="/m.kolm",
            input=f"input {i}",
            output=f"out {i % 3}",
            settings={"decoding": {"threads": 2}},
            latency_ms=10.0 + i,
            verified=True,
            failed_rule=None,
            path="student",
            confidence=0.9,
        )


def tamper(db: sqlite3.Connection, op: str, k: int, n: int) -> None:
    if op == "edit_body":
        body = json.loads(db.execute("SELECT body FROM receipts WHERE seq=?", (k,)).fetchone()[0])
        body["latency_ms"] += 1
        db.execute(
            "UPDATE receipts SET body=? WHERE seq=?",
            (json.dumps(body, sort_keys=True, separators=(",", ":")), k),
        )
    elif op == "edit_output":
        db.execute("UPDATE receipts SET output='forged answer' WHERE seq=?", (k,))
    elif op == "delete":
        db.execute("DELETE FROM receipts WHERE seq=?", (k,))
    elif op == "swap":
        j = k + 1 if k < n else k - 1
        db.execute("UPDATE receipts SET seq=-1 WHERE seq=?", (k,))
        db.execute("UPDATE receipts SET seq=? WHERE seq=?", (k, j))
        db.execute("UPDATE receipts SET seq=? WHERE seq=-1", (j,))
    elif op == "rehash":  # an editor who recomputes the hash still lacks the HMAC key
        import hashlib

        body = json.loads(db.execute("SELECT body FROM receipts WHERE seq=?", (k,)).fetchone()[0])
        body["path"] = "fallback:evil"
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
        rid = hashlib.sha256(blob.encode()).hexdigest()
        db.execute("UPDATE receipts SET body=?, id=? WHERE seq=?", (blob, rid, k))
        db.execute("UPDATE receipts SET prev=? WHERE seq=?", (rid, k + 1))
    db.commit()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(2, 12),
    op=st.sampled_from(["edit_body", "edit_output", "delete", "swap", "rehash"]),
    data=st.data(),
)
def test_any_edit_delete_or_reorder_is_found_at_its_link(tmp_path_factory, n, op, data):
    path = tmp_path_factory.mktemp("r") / "receipts.sqlite"
    store = ReceiptStore(path)
    fill(store, n)
    assert store.verify().ok
    k = data.draw(st.integers(1, n - 1 if op in ("delete",) else n))
    tamper(sqlite3.connect(path), op, k, n)
    report = ReceiptStore(path).verify()
    assert not report.ok
    assert report.first_broken in (k, k + 1, min(k, k + 1 if k < n else k - 1)), report
    assert report.problem


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(2, 12), cut=st.integers(1, 11))
def test_a_cut_tail_is_found_only_against_a_checkpoint(tmp_path_factory, n, cut):
    cut = min(cut, n)
    path = tmp_path_factory.mktemp("r") / "receipts.sqlite"
    store = ReceiptStore(path)
    fill(store, n)
    checkpoint = store.anchor()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM receipts WHERE seq > ?", (n - cut,))
    db.execute("DELETE FROM anchors")  # a careful forger removes the stored anchors too
    db.commit()
    store = ReceiptStore(path)
    assert store.verify().ok  # the remaining chain is internally consistent...
    report = store.verify(checkpoint)
    assert not report.ok and "tail was cut" in report.problem  # ...but the outside checkpoint knows


def test_anchors_are_signed_every_n_and_forged_checkpoints_fail(tmp_path):
    store = ReceiptStore(tmp_path / "r.sqlite")
    fill(store, ANCHOR_EVERY + 1)
    assert store._db.execute("SELECT COUNT(*) FROM anchors").fetchone()[0] == 1
    cp = store.anchor()
    assert store.verify(cp).ok
    forged = cp.replace(f"\n{ANCHOR_EVERY + 1}\n", f"\n{ANCHOR_EVERY}\n")
    assert "signature" in store.verify(forged).problem
    other = ReceiptStore(tmp_path / "other.sqlite")
    fill(other, 2)
    assert "different receipts log" in store.verify(other.anchor()).problem
    stranger = ReceiptStore(tmp_path / "s.sqlite", keys=KeyStore(tmp_path / "stranger"))
    fill(stranger, 1)
    # A log written with another machine's keys fails at its first HMAC.
    assert "bad HMAC" in ReceiptStore(tmp_path / "s.sqlite").verify(stranger.anchor()).problem


def test_no_store_io_keeps_hashes_only(tmp_path):
    store = ReceiptStore(tmp_path / "r.sqlite", store_io=False)
    fill(store, 2)
    r = store.get("1")
    assert r.input is None and r.output is None and len(r.input_sha256) == 64
    assert store.verify().ok
    with pytest.raises(Exception, match="no receipt"):
        store.get("99")


@pytest.mark.parametrize(
    "body", ["{not json", "[1, 2]", '{"seq": 2}', '"a string"', "null"], ids=str
)
def test_a_malformed_body_breaks_the_chain_at_its_receipt_not_with_a_traceback(tmp_path, body):
    import hashlib

    from .conftest import run_cli

    path = tmp_path / "r.sqlite"
    fill(ReceiptStore(path), 3)
    db = sqlite3.connect(path)
    rid = hashlib.sha256(body.encode()).hexdigest()  # a forger keeps the id consistent
    db.execute("UPDATE receipts SET body=?, id=? WHERE seq=2", (body, rid))
    db.execute("UPDATE receipts SET prev=? WHERE seq=3", (rid,))
    db.commit()
    report = ReceiptStore(path).verify()
    assert not report.ok and report.first_broken == 2 and "malformed body" in report.problem
    r = run_cli("receipts", "verify", "--receipts", str(path))
    assert r.returncode == 9 and "chain broken at 2" in r.stderr and "Traceback" not in r.stderr
    shown = run_cli("receipts", "show", "2", "--receipts", str(path))
    assert shown.returncode == 9 and "malformed body" in shown.stderr
    assert "Traceback" not in shown.stderr


def test_id_prefixes_are_literal_not_sql_wildcards(tmp_path):
    store = ReceiptStore(tmp_path / "r.sqlite")
    fill(store, 1)
    rid = store.get("1").id
    assert store.get(rid[:8]).id == rid
    for ref in ("%", "%%%%%%%%", "________", rid[:7] + "_", rid[:4] + "%"):
        with pytest.raises(Exception, match="no receipt matches"):
            store.get(ref)
