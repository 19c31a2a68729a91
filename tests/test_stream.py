"""Streaming serve: server-sent events as OpenAI's SDK reads them, receipts written at the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from kolm.receipts import ReceiptStore
from kolm.runtime import TextDeltas

from .conftest import run_cli
from .test_serve import _free_port, server  # noqa: F401  (the in-process server fixture)


def test_text_deltas_send_whole_characters_and_add_up_to_the_stripped_answer():
    sent: list[str] = []
    d = TextDeltas(sent.append)
    answer = "  héllo 😀 wörld \n".encode()
    for n in range(1, len(answer) + 1):  # one byte at a time: characters split everywhere
        d.feed(answer[:n])
    d.finish(answer.decode().strip())
    assert "".join(sent) == "héllo 😀 wörld"
    assert all("\ufffd" not in s for s in sent)
    assert sent[-1] == ""  # trailing whitespace was held back, never sent
    assert not any(s.startswith(" ") for s in sent[:3])


@pytest.fixture
def serve_process(compiled, env, tmp_path):
    """A real `kolm serve` subprocess on loopback."""
    port, receipts = _free_port(), tmp_path / "receipts.sqlite"
    cmd = [sys.executable, "-c", "from kolm.cli import main; main()", "serve"]
    cmd += [str(compiled["out"]), "--port", str(port), "--threads", "1"]
    cmd += ["--receipts", str(receipts)]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    yield url, receipts
    proc.terminate()
    proc.wait(timeout=30)


def test_the_openai_streaming_client_reads_chat_and_completion_streams(serve_process):
    import openai

    url, receipts = serve_process
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    ask = [{"role": "user", "content": "Tell me about the violin"}]
    chunks = list(
        client.chat.completions.create(
            model="toy", messages=ask, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1
    plain = client.chat.completions.with_raw_response.create(model="toy", messages=ask)
    assert content == plain.parse().choices[0].message.content == "delta"
    store = ReceiptStore(receipts)
    streamed = store.get(final[0].model_extra["kolm_receipt"])
    assert streamed.output == "delta" and streamed.incomplete is None
    assert final[0].model_extra["kolm_path"] == "student"
    texts = client.completions.create(model="toy", prompt="heavy rain", stream=True)
    assert "".join(c.choices[0].text for c in texts) == "charlie"
    assert store.count() == 3 and store.verify().ok


def test_stream_errors_before_the_first_token_are_still_4xx(serve_process):
    url, _ = serve_process
    body = {"model": "toy", "stream": True, "prompt": "x " * 2000}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400 and "too long" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/completions", json={**body, "stream_options": {"x": 1}})
    assert r.status_code == 400 and "stream_options" in r.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_leaves_an_incomplete_receipt(server, tmp_path):  # noqa: F811
    url, store = server()
    runner = server.worker.runner
    left = threading.Event()
    real_answer = runner.answer

    def answer(text, on_delta=None):  # the real model; later tokens wait until the client left
        calls = []

        def gated(piece: str) -> None:
            calls.append(piece)
            if len(calls) > 1:
                left.wait(30)
            on_delta(piece)

        return real_answer(text, on_delta=gated)

    runner.answer = answer
    port = int(url.rsplit(":", 1)[1])
    ask = {"model": "toy", "messages": [{"role": "user", "content": "heavy rain"}]}
    body = json.dumps({**ask, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        got = b""
        while b"data:" not in got:
            got += sock.recv(4096)
        assert b"200 OK" in got and b"text/event-stream" in got
    time.sleep(0.5)  # the server sees the connection close
    left.set()
    deadline = time.time() + 60
    while store.count() < 1 and time.time() < deadline:
        time.sleep(0.1)
    r = store.list(1)[0]
    assert r.incomplete is True
    runner.answer = real_answer
    done = httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=60)
    assert done.status_code == 200 and done.json()["choices"][0]["message"]["content"] == r.output
    assert store.get(done.headers["x-kolm-receipt"]).incomplete is None
    verified = run_cli("receipts", "verify", "--receipts", str(store.path))
    assert verified.returncode == 0, verified.stderr
