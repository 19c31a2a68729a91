"""Artifact format: round trip, and every kind of damage is refused with a clear diff."""

import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm.artifact import (
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    canonical_json,
    open_artifact,
    write_artifact,
)
from kolm.errors import ArtifactError, SignatureError
from kolm.keys import KeyStore
from kolm.modelsig import MODEL_SIG

PARTS = {
    "adapter.gguf": b"GGUF" + bytes(range(256)) * 40,
    "config.json": b'{"a": 1}',
    "train.jsonl": b'{"input":"a","output":"b"}\n',
}


def manifest_fields(name: str = "t") -> dict:
    """The keys every kolm manifest carries (the reader checks them)."""
    return {
        "task": {"name": name, "description": "d", "output_kind": "label", "labels": ["x"]},
        "base": {"name": "none", "license": "n/a", "sha256": "0" * 64, "size": 0, "embedded": False},
        "created_at": "2026-11-23T00:00:00Z",
        "versions": {"kolm": "test"},
    }


def make(tmp_path: Path, keys: KeyStore | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    parts = {}
    for name, data in PARTS.items():
        (src / name).write_bytes(data)
        parts[name] = src / name
    out = tmp_path / "m.kolm"
    write_artifact(out, parts, manifest_fields(), keys or KeyStore())
    return out


def rewrite(src: Path, dst: Path, change) -> None:
    """Copy a zip member by member, letting `change(name, data)` alter or drop members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def test_round_trip(tmp_path):
    path = make(tmp_path)
    art = open_artifact(path)
    assert art.part_names() == sorted(PARTS)
    assert art.verified.trust == "own" and art.verified.hmac == "ok"
    assert art.manifest["format_version"] == FORMAT_VERSION == 2
    assert art.model_sig == art.verified.key_id
    for name, data in PARTS.items():
        assert art.materialize(name).read_bytes() == data
    with zipfile.ZipFile(path) as z:
        assert z.namelist()[:3] == [MANIFEST, SIGNATURE, MODEL_SIG]


@pytest.mark.parametrize("part", sorted(PARTS))
def test_one_changed_byte_in_any_part_is_refused(tmp_path, part):
    good = make(tmp_path)
    bad = tmp_path / "bad.kolm"

    def flip(name, data):
        if name == part:
            data = bytearray(data)
            data[len(data) // 2] ^= 0x01
        return bytes(data)

    rewrite(good, bad, flip)
    with pytest.raises(ArtifactError, match=f"changed: {part}"):
        open_artifact(bad)


def test_changed_manifest_is_refused(tmp_path):
    good = make(tmp_path)
    bad = tmp_path / "bad.kolm"

    def edit(name, data):
        if name == MANIFEST:
            m = json.loads(data)
            m["task"]["name"] = "evil"
            return canonical_json(m)
        return data

    rewrite(good, bad, edit)
    with pytest.raises(SignatureError, match="does not match the manifest"):
        open_artifact(bad)


def test_missing_and_extra_parts_are_listed(tmp_path):
    good = make(tmp_path)
    bad = tmp_path / "bad.kolm"
    rewrite(good, bad, lambda n, d: None if n == "config.json" else d)
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr("payload.sh", b"rm -rf /")
    with pytest.raises(ArtifactError) as err:
        open_artifact(bad)
    assert "missing: config.json" in str(err.value) and "extra: payload.sh" in str(err.value)


def test_unsigned_artifact_is_refused(tmp_path):
    good = make(tmp_path)
    bad = tmp_path / "bad.kolm"
    rewrite(good, bad, lambda n, d: None if n == SIGNATURE else d)
    with pytest.raises(SignatureError, match="unsigned"):
        open_artifact(bad)


def test_unknown_key_is_refused_until_trusted(tmp_path):
    other = KeyStore(tmp_path / "other-machine")
    path = make(tmp_path, keys=other)
    with pytest.raises(SignatureError, match="does not trust") as err:
        open_artifact(path)
    assert "kolm keys trust" in str(err.value)
    mine = KeyStore()
    mine.trust(other.export_public())
    art = open_artifact(path)
    assert art.verified.trust == "trusted" and art.verified.hmac == "not-local"


def test_rotated_key_still_verifies_old_artifacts(tmp_path):
    path = make(tmp_path)
    keys = KeyStore()
    old, new = keys.rotate()
    assert old != new
    art = open_artifact(path)
    assert art.verified.trust == "own-retired" and art.verified.key_id == old


@pytest.mark.parametrize("cut", [10, 200, 2000])
def test_truncated_file_is_refused(tmp_path, cut):
    path = make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    with pytest.raises(ArtifactError):
        open_artifact(path)


def test_not_a_zip_and_missing_file(tmp_path):
    (tmp_path / "x.kolm").write_text("hello")
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        open_artifact(tmp_path / "x.kolm")
    with pytest.raises(ArtifactError, match="no such artifact"):
        open_artifact(tmp_path / "absent.kolm")


def test_newer_format_version_is_refused_with_upgrade_hint(tmp_path):
    keys = KeyStore()
    good = make(tmp_path)
    bad = tmp_path / "future.kolm"
    future = {}

    def bump(name, data):
        if name == MANIFEST:
            m = json.loads(data)
            m["format_version"] = 99
            future["body"] = canonical_json(m)
            return future["body"]
        if name == SIGNATURE:
            return canonical_json(keys.sign(future["body"]))
        return data

    rewrite(good, bad, bump)
    with pytest.raises(ArtifactError, match="upgrade kolm"):
        open_artifact(bad)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(offset=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused_or_harmless(tmp_path, offset, bit):
    """Fuzz: flip one bit anywhere in the file; opening must fail or yield identical content."""
    path = tmp_path / "m.kolm"
    if not path.exists():
        make(tmp_path)
    data = bytearray(path.read_bytes())
    i = offset % len(data)
    data[i] ^= 1 << bit
    mutated = tmp_path / "mut.kolm"
    mutated.write_bytes(bytes(data))
    try:
        art = open_artifact(mutated)
    except ArtifactError:
        return
    # A flip in zip bookkeeping the reader ignores (e.g. a timestamp) is harmless:
    # the signed manifest and every part hash still match.
    for name, content in PARTS.items():
        with zipfile.ZipFile(mutated) as z:
            assert z.read(name) == content
    assert art.manifest["task"]["name"] == "t"


FIXTURES = Path(__file__).parent / "fixtures"


def test_artifacts_from_format_v1_stay_verifiable():
    """A v1 artifact signed by kolm 0.1.0 (committed); every later release must read it."""
    KeyStore().trust((FIXTURES / "format-v1.pub").read_text())
    art = open_artifact(FIXTURES / "format-v1.kolm")
    assert art.manifest["format_version"] == 1 and art.manifest["task"]["name"] == "fixture-v1"
    assert art.part_names() == ["config.json", "train.jsonl"]
    assert art.read_json("config.json") == {"instruction": "fixture"}
