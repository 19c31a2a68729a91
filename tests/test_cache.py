"""The teacher cache: migrations from older files, round trip, export and prune."""

import json
import sqlite3

import pytest

from kolm.cache import MIGRATIONS, Cached, TeacherCache, cache_key
from kolm.errors import KolmError


def test_a_version_1_cache_is_migrated_and_keeps_its_answers(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version=1; COMMIT;")
    db.execute(
        "INSERT INTO responses VALUES ('k1','openai','m',0,'{}','billing',10,2,'2025-01-01T00:00:00Z')"
    )
    db.commit()
    db.close()
    cache = TeacherCache(path)
    assert cache.get("k1") == Cached("billing", 10, 2, None)
    cache.put("k2", "openai", "m", 1, {"x": 1}, Cached("bug", 5, 1, 321.0))
    assert cache.get("k2").latency_ms == 321.0
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_keys_depend_on_every_part_of_the_request():
    base = cache_key("openai", "m", {"messages": [1]}, 0)
    assert base != cache_key("openai", "m", {"messages": [1]}, 1)
    assert base != cache_key("openai", "m2", {"messages": [1]}, 0)
    assert base != cache_key("anthropic", "m", {"messages": [1]}, 0)
    assert base != cache_key("openai", "m", {"messages": [2]}, 0)


def test_stats_export_prune(tmp_path):
    cache = TeacherCache(tmp_path / "c.sqlite")
    for i in range(3):
        cache.put(f"a{i}", "openai", "m", i, {"i": i}, Cached("x", 4, 1))
    cache.put("b0", "anthropic", "c", 0, {}, Cached("y", 2, 1))
    stats = {(s["provider"], s["model"]): s["responses"] for s in cache.stats()}
    assert stats == {("openai", "m"): 3, ("anthropic", "c"): 1}
    assert cache.export(tmp_path / "out.jsonl") == 4
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} == {"a0", "a1", "a2", "b0"}
    assert cache.prune(model="openai:m") == 3 and cache.count() == 1
    with pytest.raises(KolmError, match="needs --model"):
        cache.prune()


def test_newer_or_corrupt_cache_is_a_clear_error(tmp_path):
    newer = tmp_path / "newer.sqlite"
    sqlite3.connect(newer).execute("PRAGMA user_version=99").connection.commit()
    with pytest.raises(KolmError, match="newer kolm"):
        TeacherCache(newer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(KolmError, match="unreadable"):
        TeacherCache(junk)
