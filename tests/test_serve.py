"""Running like a system of record: receipts, replay, drift, fallback, and the HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from kolm.drift import DriftStore
from kolm.receipts import ReceiptStore
from kolm.runner import Runner, replay
from kolm.verifier import synthesize

from .conftest import run_cli
from .oracle import Oracle


def test_run_writes_a_receipt_and_replay_reproduces_it(compiled, env, tmp_path):
    receipts = tmp_path / "r.sqlite"
    r = run_cli(
        "run",
        str(compiled["out"]),
        "Tell me about the cello",
        "--json",
        "--receipts",
        str(receipts),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["output"] == "delta" and row["path"] == "student" and row["verified"] is True
    store = ReceiptStore(receipts)
    rec = store.get(row["receipt"][:12])
    assert rec.artifact_id == open_id(compiled) and rec.input == "Tell me about the cello"
    assert rec.settings["decoding"]["threads"] >= 1 and rec.settings["llama_cpp"]
    again = run_cli("replay", row["receipt"][:12], "--receipts", str(receipts), env=env)
    assert again.returncode == 0 and "REPRODUCED" in again.stdout
    listed = run_cli("receipts", "list", "--receipts", str(receipts), env=env)
    assert row["receipt"][:16] in listed.stdout
    ok = run_cli("receipts", "verify", "--receipts", str(receipts), env=env)
    assert ok.returncode == 0 and "1 receipts, chain intact" in ok.stdout


def open_id(compiled) -> str:
    from kolm.artifact import open_artifact

    return open_artifact(compiled["out"]).id


def test_replay_of_hash_only_receipts_needs_the_right_input(compiled, env, tmp_path):
    store = ReceiptStore(tmp_path / "r.sqlite", store_io=False)
    runner = Runner(compiled["out"], receipts=store)
    try:
        rec_id = runner("a basket of peaches").receipt
    finally:
        runner.close()
    with pytest.raises(Exception, match="kept only hashes"):
        replay(rec_id, store)
    with pytest.raises(Exception, match="not the one this receipt recorded"):
        replay(rec_id, store, text="a basket of plums")
    assert replay(rec_id, store, text="a basket of peaches").reproduced


def test_replay_says_when_it_drafted_differently_from_the_receipt(
    compiled, env, tmp_path, monkeypatch
):
    """A receipt written with the recipe pack, replayed where the load-time check turns
    the pack off, says so: the answer then came from the plain decoding path."""
    import kolm.decompose.draft as draft

    store = ReceiptStore(tmp_path / "r.sqlite")
    runner = Runner(compiled["out"], receipts=store)
    try:
        assert runner.settings["recipe_pack"] is True
        rec_id = runner("a basket of peaches").receipt
    finally:
        runner.close()
    same = replay(rec_id, store)
    assert same.reproduced and same.drafting_differs == ""
    monkeypatch.setenv("KOLM_CACHE", str(tmp_path / "fresh-cache"))  # no cached verdict
    monkeypatch.setattr(draft, "invariant_rows", lambda llm, state, tokens: 1)
    other = replay(rec_id, store)
    assert other.reproduced  # the toy student's answer is far from a tie
    assert "answered with the recipe pack and the replay without it" in other.drafting_differs
    assert "differ from one-token steps" in other.drafting_differs


def test_verifier_failures_and_low_confidence_are_logged_as_drift(compiled, env, tmp_path):
    drift = DriftStore(tmp_path / "d.sqlite")
    runner = Runner(compiled["out"], drift=drift, receipts=ReceiptStore(tmp_path / "r.sqlite"))
    try:
        sure = runner("my bicycle")
        assert sure.drift is None and sure.confidence > 0.3
        runner.verifier = synthesize(
            ["north", "south"] * 3
        )  # a stricter rule set the student cannot meet
        failed = runner("my bicycle")
        runner.min_confidence = 1.01
        runner.verifier = synthesize(["alpha", "bravo", "charlie", "delta"] * 2)
        unsure = runner("drums")
    finally:
        runner.close()
    assert unsure.drift and unsure.verified is True
    entries = drift.entries()
    assert [e.input for e in entries] == ["my bicycle", "drums"]
    assert entries[0].reason.startswith("verifier: label") and entries[1].reason.startswith(
        "low_confidence"
    )
    assert failed.verified is False and entries[0].receipt == failed.receipt
    exported = tmp_path / "drift.jsonl"
    r = run_cli("drift", "export", str(exported), "--drift", str(tmp_path / "d.sqlite"), env=env)
    assert r.returncode == 0 and len(exported.read_text().splitlines()) == 2


def test_fallback_answers_drifting_inputs_and_the_receipt_says_so(
    compiled, env, tmp_path, monkeypatch
):
    monkeypatch.setenv("KOLM_OPENAI_COMPATIBLE_API_KEY", "sk-local")
    oracle = Oracle({"my bicycle": "north"}, ["north", "south"], p_correct=1.0)
    url = oracle.start()
    store = ReceiptStore(tmp_path / "r.sqlite")
    runner = Runner(compiled["out"], receipts=store, fallback=f"openai-compatible:oracle@{url}/v1")
    try:
        assert (
            runner("my bicycle").path == "student" and oracle.requests == 0
        )  # sure and valid: no network
        strict = synthesize(["north", "south"] * 3)
        runner.verifier = strict
        r = runner("my bicycle")
    finally:
        runner.close()
        oracle.stop()
    assert oracle.requests == 1
    assert (
        r.path == "fallback:openai-compatible:oracle" and r.output == "north" and r.verified is True
    )
    assert store.get(r.receipt[:12]).path == r.path
    with pytest.raises(Exception, match="only the student's answers replay"):
        replay(r.receipt, store)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(compiled, env, tmp_path):
    """A real uvicorn server on loopback, serving the compiled toy artifact."""
    import uvicorn

    from kolm.serve import Worker, make_app

    servers = []

    def start(queue_size: int = 64, api_key: str | None = None, **app_kw):
        store = ReceiptStore(tmp_path / f"r{len(servers)}.sqlite")
        worker = Worker(Runner(compiled["out"], receipts=store, threads=1), queue_size)
        port = _free_port()
        app = make_app(worker, "toy", api_key, **app_kw)
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        threading.Thread(target=srv.run, daemon=True).start()
        deadline = time.time() + 30
        while not srv.started and time.time() < deadline:
            time.sleep(0.05)
        servers.append((srv, worker))
        start.worker = worker
        return f"http://127.0.0.1:{port}", store

    yield start
    for srv, worker in servers:
        srv.should_exit = True
        worker.close()


def test_the_official_openai_client_works_unmodified(server):
    import openai

    url, store = server()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["toy"]
    raw = client.chat.completions.with_raw_response.create(
        model="toy", messages=[{"role": "user", "content": "Tell me about the violin"}]
    )
    chat = raw.parse()
    assert chat.choices[0].message.content == "delta"
    receipt = raw.headers["x-kolm-receipt"]
    assert store.get(receipt[:12]).output == "delta"
    comp = client.completions.create(model="toy", prompt="heavy rain")
    assert comp.choices[0].text == "charlie"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert store.count() == 2 and store.verify().ok
    assert "kolm_requests_total" in httpx.get(f"{url}/metrics").text
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_bad_requests_get_4xx(server):
    url, _ = server(api_key="s3cret")
    auth = {"authorization": "Bearer s3cret"}
    assert (
        httpx.post(f"{url}/v1/chat/completions", json={"model": "toy", "messages": []}).status_code
        == 401
    )
    assert (
        httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers=auth).status_code
        == 400
    )
    assert (
        httpx.post(
            f"{url}/v1/chat/completions", json={"model": "toy", "messages": []}, headers=auth
        ).status_code
        == 400
    )
    huge = {"model": "toy", "messages": [{"role": "user", "content": "x" * 20000}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=huge, headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "input_too_long"
    assert (
        httpx.post(
            f"{url}/v1/completions",
            json={"model": "toy", "prompt": "a", "stream": "yes"},
            headers=auth,
        ).status_code
        == 400
    )


def test_a_full_queue_answers_503_and_loses_no_receipt(server):
    url, store = server(queue_size=1)

    async def burst():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        f"{url}/v1/completions",
                        json={"model": "toy", "prompt": f"a ripe mango {i}"},
                    )
                    for i in range(12)
                )
            )

    codes = [r.status_code for r in asyncio.run(burst())]
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
    assert store.count() == codes.count(200) and store.verify().ok


def test_hostile_headers_and_parts_get_4xx_and_every_status_is_counted(server):
    url, _ = server(api_key="s3cret")
    auth = {"authorization": "Bearer s3cret"}
    chat = f"{url}/v1/chat/completions"
    ok_body = {"model": "toy", "messages": [{"role": "user", "content": "heavy rain"}]}
    for value in ("Bearer ключ".encode(), b"Bearer s3cr\xe9t", b"\xff\xfe"):
        assert httpx.post(chat, json=ok_body, headers={"authorization": value}).status_code == 401
    parts = [
        [{"type": "text", "text": 5}],
        [{"type": "text", "text": ["heavy rain"]}],
        [{"type": "image_url", "image_url": {"url": "x"}}],
        ["heavy rain"],
    ]
    for content in parts:
        body = {"model": "toy", "messages": [{"role": "user", "content": content}]}
        r = httpx.post(chat, json=body, headers=auth)
        assert r.status_code == 400 and "part 0" in r.json()["error"]["message"], r.text
    good = [{"type": "text", "text": "heavy "}, {"type": "text", "text": "rain"}]
    body = {"model": "toy", "messages": [{"role": "user", "content": good}]}
    assert httpx.post(chat, json=body, headers=auth).json()["choices"][0]["message"]["content"]
    assert httpx.get(f"{url}/metrics").status_code == 401  # the key guards the metrics too
    metrics = httpx.get(f"{url}/metrics", headers=auth).text
    assert 'kolm_requests_total{status="401"} 4' in metrics  # 3 posts + the bare /metrics
    assert 'kolm_requests_total{status="400"} 4' in metrics
    assert 'kolm_requests_total{status="500"}' not in metrics


def test_unsupported_fields_are_refused_by_name_and_usage_counts_tokens(server):
    url, _ = server()
    msg = [{"role": "user", "content": "Tell me about the violin"}]
    chat = f"{url}/v1/chat/completions"
    for field, value in [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("response_format", {"type": "json_object"}),
        ("frobnicate", 1),
    ]:
        r = httpx.post(chat, json={"model": "toy", "messages": msg, field: value})
        assert r.status_code == 400, (field, r.text)
        assert (
            repr(field) in r.json()["error"]["message"]
            or f"{field}=" in r.json()["error"]["message"]
        )
        assert r.json()["error"]["code"] == "unsupported_field"
    r = httpx.post(chat, json={"model": "toy", "messages": msg, "n": 1, "logprobs": False})
    assert r.status_code == 200 and "x-kolm-ignored" not in r.headers
    r = httpx.post(chat, json={"model": "toy", "messages": msg, "temperature": 0.7, "seed": 3})
    assert r.status_code == 200 and r.headers["x-kolm-ignored"] == "seed,temperature"
    usage = r.json()["usage"]
    student = server.worker.runner.student
    assert usage["prompt_tokens"] == len(student.prompt_tokens("Tell me about the violin")) > 5
    assert usage["completion_tokens"] >= student.count_tokens("delta")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    comp = httpx.post(f"{url}/v1/completions", json={"model": "toy", "prompt": ["heavy rain"]})
    assert comp.status_code == 200 and comp.json()["choices"][0]["text"] == "charlie"
    two = httpx.post(f"{url}/v1/completions", json={"model": "toy", "prompt": ["a", "b"]})
    assert two.status_code == 400


def test_big_bodies_get_413_before_they_are_read(server):
    url, store = server(max_body_bytes=64 * 1024)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 200000000\r\n\r\n" + b"{" * 1000
        )
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head

    def chunks():  # no content-length: counted while streaming
        for _ in range(32):
            yield b" " * 8192

    r = httpx.post(f"{url}/v1/completions", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    small = httpx.post(f"{url}/v1/completions", json={"model": "toy", "prompt": "snow"})
    assert small.status_code == 200 and store.count() == 1
    assert 'kolm_requests_total{status="413"} 2' in httpx.get(f"{url}/metrics").text


def test_kolm_serve_reads_the_key_from_a_file_and_warns_about_it_in_argv(compiled, env, tmp_path):
    import os
    import subprocess
    import sys

    key_file = tmp_path / "key"
    key_file.write_text("from-file-key\n")

    def serve(*args: str) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        cmd = [
            sys.executable,
            "-c",
            "from kolm.cli import main; main()",
            "serve",
            str(compiled["out"]),
            "--port",
            str(port),
            "--threads",
            "1",
            "--receipts",
            str(tmp_path / "r.sqlite"),
            *args,
        ]
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                return proc, url
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise AssertionError(proc.stderr.read())

    proc, url = serve("--api-key-file", str(key_file))
    try:
        assert httpx.get(f"{url}/metrics").status_code == 401
        ok = httpx.get(f"{url}/metrics", headers={"authorization": "Bearer from-file-key"})
        assert ok.status_code == 200 and "kolm_requests_total" in ok.text
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert "1 llama.cpp threads" in err and "warning" not in err
    proc, url = serve("--api-key", "in-argv")
    proc.terminate()
    err = proc.communicate(timeout=30)[1]
    assert "visible to every user in `ps`" in err
