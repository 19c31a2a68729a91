"""kolm push / pull against a real OCI registry (Debian's `docker-registry`, CNCF distribution).

Each test module run starts the registry on a free loopback port with a temp
storage folder; tests skip with the reason when the binary is absent
(`apt-get install -y docker-registry`).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from kolm.artifact import open_artifact
from kolm.errors import ArtifactError, RegistryError, SignatureError
from kolm.keys import KeyStore
from kolm.registry import ARTIFACT_TYPE, parse_ref, publish, pull, read_eval
from kolm.registry.auth import find_credentials
from kolm.registry.client import OCI_MANIFEST, Client
from kolm.registry.refs import base_url

from .conftest import run_cli
from .test_artifact import make

BINARY = shutil.which("docker-registry") or shutil.which("registry")
FIXTURES = Path(__file__).parent / "fixtures"
NO_BINARY = "no OCI registry binary: `apt-get install -y docker-registry` (Debian) to run this"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A running `docker-registry serve` on loopback; `host` is `127.0.0.1:PORT`."""

    def __init__(self, root: Path, auth: str = ""):
        if BINARY is None:
            pytest.skip(NO_BINARY)
        self.root, self.port = root, _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = root / "storage"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n{auth}"
        )
        self.log = open(root / "registry.log", "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [BINARY, "serve", str(config)], stdout=self.log, stderr=self.log
        )
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "registry.log").read_text())
            try:
                httpx.get(f"http://{self.host}/v2/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the registry did not start in 20 s")

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


def _no_partials(folder: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in folder.iterdir())


# -- references and schemes (no registry needed, but cheap) --------------------------
@pytest.mark.parametrize(
    "text, want",
    [
        ("localhost:5000/a/b:v1", ("localhost:5000", "a/b", "v1", None)),
        ("ghcr.io/org/model", ("ghcr.io", "org/model", "latest", None)),
        ("r.example/m@sha256:" + "a" * 64, ("r.example", "m", None, "sha256:" + "a" * 64)),
        ("[::1]:5000/x_y.z-w:1.0", ("[::1]:5000", "x_y.z-w", "1.0", None)),
    ],
)
def test_parse_ref(text, want):
    r = parse_ref(text)
    assert (r.registry, r.name, r.tag, r.digest) == want


@pytest.mark.parametrize(
    "text, why",
    [
        ("team/model:v1", "must start with the registry host"),
        ("localhost:5000/Team/m:v1", "must be lowercase"),
        ("localhost:5000/m:-bad", "tag '-bad'"),
        ("localhost:5000/m@sha256:xyz", "digest 'sha256:xyz'"),
        ("https://ghcr.io/m:v1", "without 'https://'"),
        ("localhost:5000/", "must start with the registry host"),
    ],
)
def test_bad_refs_say_what_is_wrong(text, why):
    with pytest.raises(RegistryError, match="not a registry reference") as e:
        parse_ref(text)
    assert why in str(e.value) and "REGISTRY/NAME:TAG" in str(e.value)


def test_plain_http_only_for_loopback_or_insecure():
    assert base_url("127.0.0.1:5000", False) == "http://127.0.0.1:5000"
    assert base_url("localhost:5000", False) == "http://localhost:5000"
    assert base_url("[::1]:5000", False) == "http://[::1]:5000"
    assert base_url("registry.example:5000", False) == "https://registry.example:5000"
    assert base_url("10.0.0.5:5000", False) == "https://10.0.0.5:5000"
    assert base_url("10.0.0.5:5000", True) == "http://10.0.0.5:5000"


def test_credentials_from_env_then_docker_config(tmp_path, monkeypatch):
    monkeypatch.delenv("KOLM_REGISTRY_USER", raising=False)
    monkeypatch.delenv("KOLM_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert find_credentials("r.example") is None
    auth = base64.b64encode(b"alice:s3cr:et").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"r.example": {"auth": auth}}}))
    c = find_credentials("r.example")
    assert (c.username, c.password) == ("alice", "s3cr:et") and "s3cr" not in repr(c)
    assert find_credentials("other.example") is None
    monkeypatch.setenv("KOLM_REGISTRY_USER", "bob")
    monkeypatch.setenv("KOLM_REGISTRY_PASSWORD", "pw")
    assert find_credentials("r.example").username == "bob"


# -- push and pull ---------------------------------------------------------------------
def test_push_pull_round_trip_is_byte_identical_and_verified(tmp_path, registry):
    art = make(tmp_path)
    ref = f"{registry.host}/team/toy:v1"
    pushed = publish(art, ref)
    assert pushed.uploaded and pushed.size == art.stat().st_size
    notes = pushed.annotations
    assert notes["vnd.kolm.task"] == "t" and notes["vnd.kolm.base"] == "none"
    assert notes["vnd.kolm.artifact.id"] == open_artifact(art).id
    assert notes["vnd.kolm.signer"] == KeyStore().key_id()
    pushed = publish(art, ref)  # a new manifest (new created time), the same blob
    assert pushed.uploaded is False  # HEAD found the blob: nothing sent again

    with Client(parse_ref(ref)) as c:
        doc, media, digest, _ = c.get_manifest_json("v1")
    assert doc["artifactType"] == ARTIFACT_TYPE and media == OCI_MANIFEST
    assert doc["layers"][0]["mediaType"] == "application/vnd.kolm.artifact.v1+zip"

    out = tmp_path / "got" / "toy.kolm"
    got = pull(ref, out)
    assert out.read_bytes() == art.read_bytes()
    assert got.digest == digest == pushed.digest and got.trust == "own"
    assert open_artifact(out).id == notes["vnd.kolm.artifact.id"]
    pinned = pull(f"{registry.host}/team/toy@{digest}", tmp_path / "pinned.kolm")
    assert Path(pinned.out).read_bytes() == art.read_bytes()


def test_cli_push_pull_json(tmp_path, registry):
    art = make(tmp_path)
    ref = f"{registry.host}/team/cli:v1"
    r = run_cli("push", str(art), ref, "--json")
    assert r.returncode == 0, r.stderr
    pushed = json.loads(r.stdout)
    r = run_cli("pull", ref, "--out", str(tmp_path / "o.kolm"), "--json")
    assert r.returncode == 0, r.stderr
    pulled = json.loads(r.stdout)
    assert pulled["digest"] == pushed["digest"] and pulled["trust"] == "own"
    assert (tmp_path / "o.kolm").read_bytes() == art.read_bytes()
    r = run_cli("pull", "--eval", ref)
    assert r.returncode == 13 and "has no published metrics" in r.stderr
    r = run_cli("pull", ref, cwd=tmp_path)  # default name: the layer's title
    assert r.returncode == 0 and "every part verified" in r.stdout
    assert (tmp_path / "m.kolm").read_bytes() == art.read_bytes()


def test_tampered_blob_in_the_registry_is_refused_and_nothing_written(tmp_path, registry):
    art = make(tmp_path)
    ref = f"{registry.host}/team/tamper:v1"
    publish(art, ref)
    with Client(parse_ref(ref)) as c:
        layer = c.get_manifest_json("v1")[0]["layers"][0]
    blob = registry.blob_file(layer["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    out = tmp_path / "dest" / "t.kolm"
    with pytest.raises(ArtifactError, match="not what its manifest names") as e:
        pull(ref, out)
    assert "nothing was written" in str(e.value)
    assert not out.exists() and _no_partials(out.parent)
    r = run_cli("pull", ref, "--out", str(out))
    assert r.returncode == 4 and "hashes to" in r.stderr and not out.exists()


def test_untrusted_signer_is_refused_until_trusted(tmp_path, registry):
    other = KeyStore(tmp_path / "other-machine")
    art = make(tmp_path, keys=other)
    ref = f"{registry.host}/team/theirs:v1"
    publish(art, ref, keys=other)
    out = tmp_path / "dest" / "theirs.kolm"
    with pytest.raises(SignatureError, match="does not trust") as e:
        pull(ref, out)
    assert "kolm keys trust" in str(e.value) and str(tmp_path) not in e.value.message
    assert not out.exists() and _no_partials(out.parent)
    KeyStore().trust(other.export_public())
    got = pull(ref, out)
    assert got.trust == "trusted" and got.signed_by == other.key_id()
    assert out.read_bytes() == art.read_bytes()


def test_a_manifest_that_is_not_a_kolm_artifact_is_refused(tmp_path, registry):
    ref = parse_ref(f"{registry.host}/team/other:v1")
    with Client(ref) as c:
        layer = c.push_bytes(b"hello")
        config = c.push_bytes(b"{}")
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 5}],
        }
        c.put_manifest("v1", json.dumps(doc).encode(), OCI_MANIFEST)
    with pytest.raises(RegistryError, match="is not a kolm artifact"):
        pull(ref, tmp_path / "x.kolm")
    assert not (tmp_path / "x.kolm").exists()


def test_cli_errors_are_clear(tmp_path, registry):
    r = run_cli("pull", "team/model:v1")
    assert r.returncode == 13 and "must start with the registry host" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("pull", f"{registry.host}/team/missing:v1", "--out", str(tmp_path / "m.kolm"))
    assert r.returncode == 13 and "404" in r.stderr and "check the name and tag" in r.stderr
    port = _free_port()
    r = run_cli("pull", f"127.0.0.1:{port}/team/m:v1")
    assert r.returncode == 13 and "cannot reach registry" in r.stderr
    r = run_cli("push", str(tmp_path / "nope.kolm"), f"{registry.host}/team/m:v1")
    assert r.returncode == 4 and "no such artifact" in r.stderr
    r = run_cli("push", str(make(tmp_path)), f"{registry.host}/team/m@sha256:" + "a" * 64)
    assert r.returncode == 13 and "push to a tag" in r.stderr
    ref = f"{registry.host}/team/folder:v1"
    publish(make(tmp_path), ref)
    r = run_cli("pull", ref, "--out", str(tmp_path))
    assert r.returncode == 2 and "directory" in r.stderr  # click refuses a folder for --out
    with pytest.raises(RegistryError, match="is a folder"):
        pull(ref, tmp_path)
    for args in (["push"], ["pull"], ["receipts", "anchor"]):
        r = run_cli(*args, "--help")
        assert r.returncode == 0 and "--insecure" in r.stdout, args


# -- referrers: published metrics and receipts checkpoints -----------------------------
def test_with_eval_metrics_are_readable_without_pulling(tmp_path, registry, monkeypatch):
    art = FIXTURES / "kscore-v1.kolm"
    KeyStore().trust((FIXTURES / "kscore-v1.pub").read_text())
    ref = f"{registry.host}/team/scored:v1"
    r = run_cli("push", str(art), ref, "--with-eval", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["eval_digest"].startswith("sha256:")
    manifest = open_artifact(art).manifest

    r = run_cli("pull", "--eval", ref, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)
    assert e["metrics"] == manifest["metrics"] and e["kscore"]["K"] == 0.9012
    assert e["trust"] == "trusted" and list(tmp_path.glob("*.kolm")) == []
    r = run_cli("pull", "--eval", ref)
    assert "76.6% on 64 held-out" in r.stdout and "0.901" in r.stdout

    monkeypatch.setenv("KOLM_HOME", str(tmp_path / "stranger"))
    with pytest.raises(SignatureError, match="does not trust"):
        read_eval(ref)


def test_with_eval_refuses_an_artifact_without_metrics(tmp_path, registry):
    r = run_cli("push", str(make(tmp_path)), f"{registry.host}/team/nometrics:v1", "--with-eval")
    assert r.returncode == 4 and "no held-out metrics" in r.stderr
    r = run_cli("pull", "--eval", f"{registry.host}/team/nometrics:v1")
    assert r.returncode == 13 and "404" in r.stderr  # nothing was pushed at all


def test_anchor_push_publishes_a_checkpoint_referrer(tmp_path, registry):
    from kolm.receipts import ReceiptStore

    receipts = tmp_path / "r.sqlite"
    store = ReceiptStore(receipts)
    for i in range(3):
        store.append(
            artifact_id="a",
            artifact_path="p",
            settings={},
            latency_ms=1.0,
            verified=True,
            failed_rule=None,
            path="student",
            confidence=0.9,
            input=f"in{i}",
            output="out",
            context=[],  # integ's verify wants every body field (see report)
            drafted_share=0.0,
        )
    ref = f"{registry.host}/team/anchored:v1"
    publish(make(tmp_path), ref)
    r = run_cli("receipts", "anchor", "--receipts", str(receipts), "--push", ref)
    assert r.returncode == 0, r.stderr
    assert "published as referrer sha256:" in r.stderr
    note = r.stdout
    assert note.startswith("kolm.receipts/v1\n")

    r = run_cli("pull", "--checkpoints", ref, "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert [c["text"] for c in found] == [note]
    kept = tmp_path / "checkpoint.txt"
    kept.write_text(found[0]["text"])
    r = run_cli("receipts", "verify", "--receipts", str(receipts), "--checkpoint", str(kept))
    assert r.returncode == 0 and "checkpoint matches" in r.stdout
    r = run_cli("pull", "--referrers", ref)
    assert "application/vnd.kolm.receipts.checkpoint.v1" in r.stdout


# -- auth: the bearer token flow against a registry that demands it -----------------------
class _TokenServer(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        want = "Basic " + base64.b64encode(b"alice:wonder").decode()
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        ok = self.headers.get("Authorization") == want
        body = json.dumps({"token": "tok-123"} if ok else {"error": "no"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def token_registry(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    realm = f"http://127.0.0.1:{server.server_address[1]}/token"
    auth = f"auth:\n  silly:\n    realm: {realm}\n    service: kolm-test\n"
    (tmp_path / "reg").mkdir()
    reg = Registry(tmp_path / "reg", auth)
    _TokenServer.seen = []
    yield reg
    reg.stop()
    server.shutdown()


def test_bearer_token_flow_with_credentials(tmp_path, token_registry, monkeypatch):
    art = make(tmp_path)
    ref = f"{token_registry.host}/team/private:v1"
    monkeypatch.delenv("KOLM_REGISTRY_USER", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    with pytest.raises(RegistryError, match="refused the request anonymously") as e:
        publish(art, ref)
    assert "KOLM_REGISTRY_USER" in str(e.value)

    monkeypatch.setenv("KOLM_REGISTRY_USER", "alice")
    monkeypatch.setenv("KOLM_REGISTRY_PASSWORD", "wonder")
    publish(art, ref)
    pull(ref, tmp_path / "p.kolm")
    assert (tmp_path / "p.kolm").read_bytes() == art.read_bytes()
    scopes = [s["path"] for s in _TokenServer.seen if s["auth"]]
    assert any("service=kolm-test" in p and "repository%3Ateam%2Fprivate" in p for p in scopes)


# -- every response read is bounded ------------------------------------------------------
class _HugeManifest(BaseHTTPRequestHandler):
    """A misbehaving registry: a manifest far over 4 MiB, sent without a length."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        self.end_headers()
        chunk = b" " * (1 << 20)
        try:
            for _ in range(64):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_an_oversized_manifest_is_refused_without_reading_it_all(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HugeManifest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ref = f"127.0.0.1:{server.server_address[1]}/team/huge:v1"
        with pytest.raises(RegistryError, match="manifest is over 4194304 bytes"):
            pull(ref, tmp_path / "h.kolm")
        assert not (tmp_path / "h.kolm").exists()
    finally:
        server.shutdown()


# -- auth: basic, against the registry's own htpasswd ---------------------------------
def _bcrypt(password: str) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt", reason="no crypt module to write a bcrypt htpasswd")
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("this libc's crypt(3) cannot make bcrypt hashes for htpasswd")
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


def test_basic_auth_with_htpasswd(tmp_path, monkeypatch):
    (tmp_path / "reg").mkdir()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{_bcrypt('wonder')}\n")
    auth = f"auth:\n  htpasswd:\n    realm: kolm-test\n    path: {htpasswd}\n"
    reg = Registry(tmp_path / "reg", auth)
    try:
        art, ref = make(tmp_path), f"{reg.host}/team/basic:v1"
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
        monkeypatch.delenv("KOLM_REGISTRY_USER", raising=False)
        with pytest.raises(RegistryError, match="refused the request anonymously"):
            publish(art, ref)
        monkeypatch.setenv("KOLM_REGISTRY_USER", "alice")
        monkeypatch.setenv("KOLM_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(RegistryError, match=r"as alice \(env\)"):
            publish(art, ref)
        monkeypatch.setenv("KOLM_REGISTRY_PASSWORD", "wonder")
        publish(art, ref)
        assert pull(ref, tmp_path / "b.kolm").digest.startswith("sha256:")
        assert (tmp_path / "b.kolm").read_bytes() == art.read_bytes()
    finally:
        reg.stop()


def test_a_manifest_whose_annotations_lie_is_refused(tmp_path, registry):
    """The blob is intact and signed, but the manifest claims another artifact id."""
    art = make(tmp_path)
    ref = parse_ref(f"{registry.host}/team/lying:v1")
    publish(art, ref)
    with Client(ref) as c:
        doc = c.get_manifest_json("v1")[0]
        doc["annotations"]["vnd.kolm.artifact.id"] = "f" * 64
        c.put_manifest("v1", json.dumps(doc).encode(), OCI_MANIFEST)
    out = tmp_path / "lying.kolm"
    with pytest.raises(ArtifactError, match="annotations name artifact ffff"):
        pull(ref, out)
    assert not out.exists() and _no_partials(tmp_path)


def test_chunked_upload_round_trips(tmp_path, registry):
    art = make(tmp_path)
    ref = f"{registry.host}/team/chunked:v1"
    size = art.stat().st_size
    pushed = publish(art, ref, chunk_bytes=size // 3)  # three full PATCHes and a tail
    assert pushed.uploaded
    pull(ref, tmp_path / "c.kolm")
    assert (tmp_path / "c.kolm").read_bytes() == art.read_bytes()
    r = run_cli("push", str(art), f"{registry.host}/team/chunked-cli:v1", "--chunk-mb", "1")
    assert r.returncode == 0 and "uploaded" in r.stdout, r.stderr


# -- the compile service's publish hook ------------------------------------------------
def test_service_publisher_names_jobs_and_pushes_with_eval(tmp_path, registry):
    from dataclasses import fields

    from kolm.service.jobs import Job
    from kolm.service.publish import RegistryPublisher, job_ref

    assert job_ref("r:5000/kolm/", "Acme Corp", "Support tickets!", "AB12") == (
        "r:5000/kolm/acme-corp/support-tickets:ab12"
    )
    with pytest.raises(RegistryError):
        RegistryPublisher("not a registry")  # refused at start, not on the first job
    art = FIXTURES / "kscore-v1.kolm"  # a signed artifact with held-out metrics
    KeyStore().trust((FIXTURES / "kscore-v1.pub").read_text())
    job = Job(**{**{f.name: None for f in fields(Job)}, "id": "J1", "tenant": "acme", "name": "t"})
    RegistryPublisher(f"{registry.host}/kolm")(art, job)
    ref = f"{registry.host}/kolm/acme/t:j1"
    got = pull(ref, tmp_path / "got.kolm")
    assert Path(got.out).read_bytes() == art.read_bytes()
    assert read_eval(ref)["kscore"]["K"] == open_artifact(art).manifest["kscore"]["K"]
