"""`kolm server`: tenants, uploads, remote compile, the Redis queue, kill -9 and resume.

Every test runs the real server in a subprocess on loopback (uvicorn, huey, sqlite)
and talks to it over real HTTP; the teacher is the loopback oracle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kolm.service.client import Client

from .conftest import run_cli, write_jsonl
from .oracle import Oracle
from .toy import INSTRUCTION, toy_examples, write_toy_task

TEACHER_KEY = "sk-tenant-teacher-7f3a9c1e5b"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `kolm server` subprocess on a free loopback port."""

    def __init__(self, data: Path, home: Path, *args: str):
        self.data, self.home, self.args = data, home, args
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        cmd = [
            sys.executable,
            "-c",
            "from kolm.cli import main; main()",
            "server",
            "--data",
            str(self.data),
            "--port",
            str(self.port),
            *self.args,
        ]
        env = {**os.environ, "KOLM_HOME": str(self.home), "OMP_NUM_THREADS": "1"}
        env.pop("KOLM_SERVICE_SECRET", None)
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not start: " + self.log.read_text())

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def tenant(self, name: str, *args: str) -> str:
        r = run_cli("server", "tenants", "add", name, "--data", str(self.data), *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


@pytest.fixture
def servers(tmp_path):
    started: list[Server] = []

    def make(*args: str, data: Path | None = None) -> Server:
        s = Server(data or tmp_path / "data", tmp_path / "server-home", *args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


def _task(folder: Path, n: int | None = None, extra: str = "") -> Path:
    spec = write_toy_task(folder, steps=4, extra=extra)
    if n is not None:
        write_jsonl(folder / "examples.jsonl", toy_examples()[:n])
    return spec


def _submit(url: str, key: str | None, files: dict, spec="kolm.yaml", headers=None):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        url + "/v1/jobs",
        headers={**h, **(headers or {})},
        data={"spec": spec},
        files=[("file", (n, body, "text/plain")) for n, body in files.items()],
    )


def _toy_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tenants_see_only_their_own_jobs_and_keys_stay_secret(servers, tmp_path):
    server = servers("--workers", "0").start()  # no workers: jobs stay queued
    key_a, key_b = server.tenant("acme"), server.tenant("bolt")
    spec = _task(
        tmp_path / "task",
        extra="unlabeled: examples.jsonl\n"
        "teacher: {model: 'openai-compatible:m@http://127.0.0.1:9/v1'}\n",
    )
    r = _submit(
        server.url, key_a, _toy_files(spec.parent), headers={"X-Kolm-Teacher-Key": TEACHER_KEY}
    )
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    a, b = (Client(server.url, k).http for k in (key_a, key_b))
    assert a.get(f"/v1/jobs/{job}").json()["state"] == "queued"
    routes = [
        ("GET", f"/v1/jobs/{job}"),
        ("GET", f"/v1/jobs/{job}/logs"),
        ("GET", f"/v1/jobs/{job}/events"),
        ("POST", f"/v1/jobs/{job}/cancel"),
        ("POST", f"/v1/jobs/{job}/key"),
        ("GET", f"/v1/jobs/{job}/artifact"),
        ("GET", f"/v1/jobs/{job}/files/toy.report.html"),
    ]
    for method, path in routes:
        assert b.request(method, path).status_code == 404, path  # not 403: ids do not leak
        for bad in ({}, {"Authorization": "Bearer kolm_wrong"}):
            assert httpx.request(method, server.url + path, headers=bad).status_code == 401
    assert b.get("/v1/jobs").json()["jobs"] == []
    assert [j["id"] for j in a.get("/v1/jobs").json()["jobs"]] == [job]
    assert httpx.get(server.url + "/v1/jobs").status_code == 401
    assert _submit(server.url, "kolm_wrong", {"kolm.yaml": b"x"}).status_code == 401
    assert a.post(f"/v1/jobs/{job}/cancel").json()["state"] == "cancelled"
    # neither API key nor teacher key is on disk in clear; the audit log has every request
    server.kill(signal.SIGTERM)
    blobs = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for secret in (key_a, key_b, TEACHER_KEY):
        assert secret.encode() not in blobs
    import sqlite3

    rows = (
        sqlite3.connect(server.data / "service.sqlite")
        .execute("SELECT tenant, method, route, status FROM audit")
        .fetchall()
    )
    assert ("bolt", "GET", f"/v1/jobs/{job}", 404) in rows
    assert (None, "GET", "/v1/jobs", 401) in rows
    assert ("acme", "POST", "/v1/jobs", 201) in rows
    assert len(rows) >= 1 + len(routes) * 3 + 5


def test_uploads_with_traversal_absolute_names_outside_files_or_too_big_are_refused(
    servers, tmp_path
):
    server = servers("--workers", "0", "--max-upload-mb", "0.05").start()
    key = server.tenant("acme")
    files = _toy_files(_task(tmp_path / "task").parent)
    for bad in ("../evil.jsonl", "/tmp/evil.jsonl", "a/../../evil", "a\\..\\evil"):
        r = _submit(server.url, key, {**files, bad: b"{}"})
        assert r.status_code == 400 and "not allowed" in r.json()["error"], (bad, r.text)
    assert not list(tmp_path.rglob("evil*"))
    (tmp_path / "outside.jsonl").write_text((tmp_path / "task" / "examples.jsonl").read_text())
    spec = files["kolm.yaml"].replace(b"examples.jsonl", str(tmp_path / "outside.jsonl").encode())
    r = _submit(server.url, key, {**files, "kolm.yaml": spec})
    assert r.status_code == 422 and r.json()["exit_code"] == 2
    assert "outside the uploaded folder" in r.json()["error"]
    r = _submit(server.url, key, {**files, "big.txt": b"x" * 60_000})
    assert r.status_code == 413
    assert list((server.data / "tenants" / "acme" / "uploads").iterdir()) == []


def test_quota_on_concurrent_jobs_is_a_429(servers, tmp_path):
    server = servers("--workers", "0").start()
    key = server.tenant("acme", "--max-jobs", "1")
    files = _toy_files(_task(tmp_path / "task").parent)
    assert _submit(server.url, key, files).status_code == 201
    r = _submit(server.url, key, files)
    assert r.status_code == 429 and "quota" in r.json()["error"]


def _remote(server: Server, key: str, spec: Path, out: Path, home: Path, *args: str):
    return run_cli(
        "compile",
        str(spec),
        "--out",
        str(out),
        "-q",
        "--remote",
        server.url,
        *args,
        env={"KOLM_API_KEY": key, "KOLM_HOME": str(home), "OMP_NUM_THREADS": "1"},
    )


def test_remote_compile_of_a_bad_task_exits_like_a_local_one(servers, tmp_path, kolm_home):
    server = servers().start()
    key = server.tenant("acme")
    spec = _task(tmp_path / "task", n=3)  # valid YAML; too few examples (found by prepare)
    local = run_cli("compile", str(spec), "--out", str(tmp_path / "l.kolm"), "-q")
    remote = _remote(server, key, spec, tmp_path / "r.kolm", kolm_home)
    assert local.returncode == remote.returncode == 2, remote.stderr
    assert "kolm needs at least 4" in local.stderr and "kolm needs at least 4" in remote.stderr
    bad_yaml = tmp_path / "task" / "kolm.yaml"
    bad_yaml.write_text(bad_yaml.read_text() + "heldout_fraction: [\n")
    assert _remote(server, key, spec, tmp_path / "r.kolm", kolm_home).returncode == 2
    wrong = _remote(server, "kolm_wrong", _task(tmp_path / "t2"), tmp_path / "r.kolm", kolm_home)
    assert wrong.returncode == 14 and "401" in wrong.stderr


def test_login_stores_the_key_with_0600(servers, tmp_path, kolm_home):
    server = servers("--workers", "0").start()
    key = server.tenant("acme")
    bad = run_cli("login", server.url, "--key", "kolm_wrong", env={"KOLM_HOME": str(kolm_home)})
    assert bad.returncode == 14
    r = run_cli("login", server.url, "--key", key, env={"KOLM_HOME": str(kolm_home)})
    assert r.returncode == 0, r.stderr
    creds = kolm_home / "credentials.json"
    assert creds.stat().st_mode & 0o777 == 0o600
    assert json.loads(creds.read_text())[f"kolm-server:{server.url}"] == key


def test_redis_queue_runs_jobs_in_a_separate_worker(servers, tmp_path, kolm_home):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = _port()
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    worker = None
    try:
        server = servers("--workers", "0", "--queue", url).start()
        key = server.tenant("acme")
        env = {**os.environ, "KOLM_HOME": str(server.home)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from kolm.cli import main; main()",
                "worker",
                "--queue",
                url,
                "--data",
                str(server.data),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spec = _task(tmp_path / "task", n=3)
        remote = _remote(server, key, spec, tmp_path / "r.kolm", kolm_home)
        assert remote.returncode == 2 and "kolm needs at least 4" in remote.stderr
        (job,) = Client(server.url, key).jobs()
        assert job["state"] == "failed" and job["attempts"] == 1
    finally:
        for p in (worker, redis):
            if p is not None:
                p.kill()
                p.wait()


def _teacher_task(folder: Path, url: str) -> Path:
    rows = toy_examples()
    folder.mkdir(parents=True)
    write_jsonl(folder / "seeds.jsonl", rows[::2])
    (folder / "pool.txt").write_text("\n".join(r["input"] for r in rows[1::2]) + "\n")
    spec = folder / "kolm.yaml"
    spec.write_text(
        f"name: toy\ndescription: {json.dumps(INSTRUCTION)}\nexamples: seeds.jsonl\n"
        "unlabeled: pool.txt\nheldout_fraction: 0.25\ngate: 0\n"
        "train: {steps: 24, batch_size: 8, learning_rate: 0.002, max_seq_len: 96, threads: 1}\n"
        "run: {threads: 1}\n"
        f"teacher: {{model: 'openai-compatible:oracle@{url}/v1', k: 2}}\n"
    )
    return spec


def _wait(pred, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kill_9_mid_training_resumes_without_repeated_teacher_calls(servers, tmp_path, kolm_home):
    truth = {r["input"]: r["output"] for r in toy_examples()}
    oracle = Oracle(truth, sorted(set(truth.values())), p_correct=0.9, p_malformed=0.0)
    url = oracle.start()
    try:
        server = servers().start()
        key = server.tenant("acme")
        spec = _teacher_task(tmp_path / "task", url)
        from kolm.service.client import upload_list
        from kolm.spec import load_spec

        client = Client(server.url, key)
        job = client.submit(upload_list(load_spec(spec)), "kolm.yaml", {}, TEACHER_KEY)["id"]
        _wait(lambda: list(server.data.rglob("checkpoint.pt")), 900, "the first checkpoint")
        server.kill()  # kill -9 mid-training
        asked = oracle.requests
        assert not (server.data / "tenants" / "acme" / "artifacts" / job).exists()
        server.start()  # the key's sealing secret died with the process: the job waits for it
        _wait(lambda: client.job(job)["state"] == "needs_key", 60, "needs_key")
        r = client.http.get(f"/v1/jobs/{job}/artifact")
        assert r.status_code == 404
        client.request("POST", f"/v1/jobs/{job}/key", headers={"X-Kolm-Teacher-Key": TEACHER_KEY})
        _wait(lambda: client.job(job)["state"] in ("succeeded", "failed"), 1200, "the job's end")
        done = client.job(job)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2
        out = client.download(job, "toy.kolm", tmp_path / "toy.kolm", artifact=True)
        from kolm.artifact import open_artifact
        from kolm.keys import KeyStore

        train = open_artifact(out, KeyStore(server.data)).manifest["metrics"]["train"]
        assert train["resumed_from_step"] == 20 and train["steps"] == 24
        assert max(oracle._attempts.values()) == 1  # no teacher request was made twice
        assert oracle.requests > asked  # only the teacher baseline came after the restart
        assert oracle.auth_seen == {f"Bearer {TEACHER_KEY}"}
        events = client.http.get(f"/v1/jobs/{job}/events").text
        assert '"stage": "train"' in events and '"loss"' in events and '"usd_total"' in events
        server.kill(signal.SIGTERM)
        blobs = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
        assert TEACHER_KEY.encode() not in blobs and key.encode() not in blobs
    finally:
        oracle.stop()


@pytest.mark.slow
def test_remote_gate_failure_exits_8_like_local_and_brings_the_report(servers, tmp_path, kolm_home):
    server = servers().start()
    key = server.tenant("acme")
    spec = write_toy_task(tmp_path / "task", steps=2, extra="gate: 0.99\nrun: {threads: 1}\n")
    local = run_cli("compile", str(spec), "--out", str(tmp_path / "l.kolm"), "-q")
    remote = _remote(server, key, spec, tmp_path / "r.kolm", kolm_home)
    assert local.returncode == remote.returncode == 8, remote.stderr
    assert "not shipped" in remote.stderr
    assert (tmp_path / "r.report.html").is_file() and not (tmp_path / "r.kolm").exists()
