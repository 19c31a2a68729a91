"""Artifact format: round trip, and every kind of damage is refused with a clear diff."""

import base64
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolm.archive import copy_checked
from kolm.artifact import (
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    blob_dir,
    canonical_json,
    minimal_manifest,
    open_artifact,
    write_artifact,
)
from kolm.errors import ArtifactError, SignatureError
from kolm.keys import KeyStore
from kolm.modelsig import MODEL_SIG, pae, sign_bundle, verify_directory

PARTS = {
    "adapter.gguf": b"GGUF" + bytes(range(256)) * 40,
    "config.json": b'{"a": 1}',
    "train.jsonl": b'{"input":"a","output":"b"}\n',
}


def make(tmp_path: Path, keys: KeyStore | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    parts = {}
    for name, data in PARTS.items():
        (src / name).write_bytes(data)
        parts[name] = src / name
    out = tmp_path / "m.kolm"
    write_artifact(out, parts, minimal_manifest(), keys or KeyStore())
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


def resign(src: Path, dst: Path, edit_manifest=None, parts=None, keep_model_sig=False) -> None:
    """Rebuild `src` as its signer could: edit the manifest, swap parts, sign again
    with this machine's key (optionally keeping the old model.sig)."""
    keys = KeyStore()
    parts = parts or {}
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    m = json.loads(files[MANIFEST])
    for name, data in parts.items():
        files[name] = data
        m["parts"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if edit_manifest:
        edit_manifest(m)
    files[MANIFEST] = canonical_json(m)
    files[SIGNATURE] = canonical_json(keys.sign(files[MANIFEST]))
    if not keep_model_sig:
        digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != MODEL_SIG}
        files[MODEL_SIG] = sign_bundle("t", digests, keys)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicate_member_with_the_hostile_copy_first_is_refused(tmp_path):
    good = make(tmp_path)
    bad = tmp_path / "dup.kolm"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        zout.writestr("config.json", b'{"a": "evil"}')  # what other zip tools extract
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    with pytest.raises(ArtifactError, match="duplicate members: config.json"):
        open_artifact(bad)


@pytest.mark.parametrize("name", ["/etc/cron.d/x", "../x.json", "a/../../x", "a\\b.json", "a\0b"])
def test_unsafe_member_names_are_refused(tmp_path, name):
    good = make(tmp_path)
    bad = tmp_path / "names.kolm"
    placeholder = "Q" * len(name.encode())
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr(placeholder, b"x")
    # zipfile will not write some of these names, so patch them into the headers
    bad.write_bytes(bad.read_bytes().replace(placeholder.encode(), name.encode()))
    with pytest.raises(ArtifactError, match="unsafe member names"):
        open_artifact(bad)


@pytest.mark.parametrize("version", ["1", -1, 0, True, 1.0, None])
def test_malformed_format_version_is_refused_clearly(tmp_path, version):
    good = make(tmp_path)
    bad = tmp_path / "v.kolm"
    resign(good, bad, lambda m: m.update(format_version=version))
    with pytest.raises(ArtifactError, match="format_version must be a positive integer") as err:
        open_artifact(bad)
    assert "newer" not in str(err.value)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m.pop("task"), "task is missing"),
        (lambda m: m["task"].pop("name"), "task.name is missing"),
        (lambda m: m["base"].update(size="big"), "base.size must be int, not str"),
        (lambda m: m.update(parts=[]), "parts must be dict"),
        (lambda m: m["parts"]["config.json"].update(size=-1), "size must be a non-negative"),
        (lambda m: m["parts"].update({"../x": m["parts"].pop("config.json")}), "not allowed"),
    ],
)
def test_malformed_manifest_is_a_clear_artifact_error(tmp_path, edit, problem):
    """A validly signed manifest of the wrong shape: refused once, in the reader."""
    good = make(tmp_path)
    bad = tmp_path / "shape.kolm"
    resign(good, bad, edit)
    with pytest.raises(ArtifactError, match="manifest is malformed") as err:
        open_artifact(bad)
    assert problem in str(err.value)


def test_a_part_swapped_after_open_is_never_used(tmp_path):
    """The file is replaced between verification and use: the verified bytes are served,
    and a large part copied later is re-hashed and refused, leaving no file behind."""
    path = make(tmp_path)
    art = open_artifact(path)
    evil = tmp_path / "evil.kolm"
    resign(path, evil, parts={"config.json": b'{"a": 2}', "adapter.gguf": b"GGUF evil"})
    open_artifact(evil)  # validly signed by the same key: only the swap is wrong
    os.replace(evil, path)
    assert art.read_json("config.json") == {"a": 1}
    assert art.read_text("train.jsonl") == PARTS["train.jsonl"].decode()
    with pytest.raises(ArtifactError, match="changed since it was verified"):
        art.materialize("adapter.gguf")
    blobs = blob_dir()
    assert sorted(p.name for p in blobs.iterdir()) == []  # no blob, no .partial
    with pytest.raises(ArtifactError, match="has no part"):
        art.read_text("payload.sh")


def test_model_sig_round_trip_with_a_third_party_style_verifier(tmp_path):
    path = make(tmp_path)
    out = tmp_path / "extracted"
    with zipfile.ZipFile(path) as z:
        z.extractall(out)
    bundle = json.loads((out / MODEL_SIG).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    env = bundle["dsseEnvelope"]
    assert env["payloadType"] == "application/vnd.in-toto+json"
    st = json.loads(base64.b64decode(env["payload"]))
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://model_signing/signature/v1.0"
    names = [r["name"] for r in st["predicate"]["resources"]]
    assert names == sorted([MANIFEST, SIGNATURE, *PARTS])
    pem = KeyStore().export_public_pem()
    assert env["signatures"][0]["keyid"] == KeyStore().key_id()
    verified = verify_directory(out, pem)
    assert verified["config.json"] == hashlib.sha256(PARTS["config.json"]).hexdigest()
    # the PAE framing is what is signed: a bare Ed25519 check over it passes
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    load_pem_public_key(pem.encode()).verify(
        base64.b64decode(env["signatures"][0]["sig"]),
        pae(env["payloadType"], base64.b64decode(env["payload"])),
    )


def test_tampered_part_is_detected_via_the_statement(tmp_path):
    path = make(tmp_path)
    out = tmp_path / "extracted"
    with zipfile.ZipFile(path) as z:
        z.extractall(out)
    (out / "adapter.gguf").write_bytes(b"GGUF tampered")
    with pytest.raises(SignatureError, match="changed: adapter.gguf"):
        verify_directory(out, KeyStore().export_public_pem())
    # inside the archive: the part and kolm's manifest replaced consistently and re-signed,
    # but model.sig left as it was — the statement still names the old digest
    bad = tmp_path / "stale.kolm"
    resign(path, bad, parts={"adapter.gguf": b"GGUF tampered"}, keep_model_sig=True)
    with pytest.raises(SignatureError, match="model.sig disagrees") as err:
        open_artifact(bad)
    assert "changed: adapter.gguf, manifest.json, signature.json" in str(err.value)


def test_tampered_statement_is_refused(tmp_path):
    path = make(tmp_path)
    bad = tmp_path / "st.kolm"

    def edit(name, data):
        if name != MODEL_SIG:
            return data
        bundle = json.loads(data)
        st = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        st["predicate"]["resources"][0]["digest"] = "0" * 64
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
        return json.dumps(bundle).encode()

    rewrite(path, bad, edit)
    with pytest.raises(SignatureError, match="does not match its statement"):
        open_artifact(bad)


def test_model_sig_by_another_key_or_removed_is_refused(tmp_path):
    path = make(tmp_path)
    other = KeyStore(tmp_path / "other")
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != MODEL_SIG}
    bad = tmp_path / "other.kolm"
    rewrite(path, bad, lambda n, d: sign_bundle("t", digests, other) if n == MODEL_SIG else d)
    with pytest.raises(SignatureError, match="different key"):
        open_artifact(bad)
    gone = tmp_path / "gone.kolm"
    rewrite(path, gone, lambda n, d: None if n == MODEL_SIG else d)
    with pytest.raises(SignatureError, match="requires"):
        open_artifact(gone)


def test_inspect_and_verify_report_a_malformed_manifest_without_a_traceback(tmp_path):
    from .conftest import run_cli

    good = make(tmp_path)
    bad = tmp_path / "notask.kolm"
    resign(good, bad, lambda m: m.pop("task"))
    for command in ("inspect", "verify"):
        r = run_cli(command, str(bad))
        assert r.returncode == 4, r.stderr
        assert "task is missing" in r.stderr and "Traceback" not in r.stderr


def test_cli_verify_names_model_sig_and_exports_the_pem_a_third_party_needs(tmp_path):
    from .conftest import run_cli

    path = make(tmp_path)
    r = run_cli("verify", str(path))
    assert r.returncode == 0 and "model.sig: DSSE in-toto statement valid" in r.stdout
    assert json.loads(run_cli("verify", "--json", str(path)).stdout)["model_sig"]
    pem = run_cli("keys", "export", "--pem").stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    out = tmp_path / "extracted"
    with zipfile.ZipFile(path) as z:
        z.extractall(out)
    assert set(verify_directory(out, pem)) == {MANIFEST, SIGNATURE, *PARTS}
    KeyStore().trust((FIXTURES / "format-v1.pub").read_text())
    v1 = run_cli("verify", str(FIXTURES / "format-v1.kolm"))
    assert v1.returncode == 0 and "model.sig: absent (format 1 artifact)" in v1.stdout


def test_an_interrupted_copy_leaves_no_half_file(tmp_path):
    class Failing(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise OSError("disk went away")
            return super().read(4)

    dest = tmp_path / ("ab" * 32)
    with pytest.raises(OSError, match="disk went away"):
        copy_checked(Failing(b"GGUF and more"), dest, "ab" * 32, 13, "part x")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cached_blob_is_rehashed_and_replaced(tmp_path):
    art = open_artifact(make(tmp_path))
    blob = art.materialize("adapter.gguf")
    blob.write_bytes(b"GGUF damaged in the cache")
    assert art.materialize("adapter.gguf").read_bytes() == PARTS["adapter.gguf"]
