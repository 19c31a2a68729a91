"""Streaming serve: time to first token with `stream: true` vs total latency without it.

    .venv/bin/python benchmarks/stream.py ARTIFACT.kolm [--requests 24] [--threads 1]

Starts the real CLI (`kolm serve`) as a subprocess on loopback and sends the
artifact's held-out inputs one at a time (no concurrency), each twice: streamed
(time to the first content chunk, and to `[DONE]`) and not streamed (time to the
whole response). Prints p50/p95 of each and checks the streamed text equals the
plain answer. Receipts go to a temporary file; the chain must verify at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def heldout_inputs(artifact: Path, n: int) -> list[str]:
    with zipfile.ZipFile(artifact) as z:
        name = next(x for x in z.namelist() if x.endswith("heldout.jsonl"))
        rows = [json.loads(x) for x in z.read(name).decode().splitlines() if x.strip()]
    return [r["input"] for r in rows][:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: Path, threads: int, receipts: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "kolm.cli", "serve", str(artifact), "--port", str(port)]
    cmd += ["--threads", str(threads), "--receipts", str(receipts)]
    proc = subprocess.Popen(cmd, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("kolm serve did not start")


def streamed(client, url: str, model: str, text: str) -> tuple[float, float, str]:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
    t0, first, parts = time.perf_counter(), None, []
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:])["choices"]
            piece = choices[0]["delta"].get("content") if choices else None
            if piece:
                first = first or time.perf_counter() - t0
                parts.append(piece)
    return first or float("nan"), time.perf_counter() - t0, "".join(parts)


def plain(client, url: str, model: str, text: str) -> tuple[float, str]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/chat/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()["choices"][0]["message"]["content"]


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import httpx

    texts = heldout_inputs(args.artifact, args.requests)
    tmp = Path(tempfile.mkdtemp())
    proc, url = start_server(args.artifact, args.threads, tmp / "receipts.sqlite")
    try:
        with httpx.Client(timeout=300) as client:
            model = client.get(f"{url}/v1/models").json()["data"][0]["id"]
            plain(client, url, model, texts[0])  # warm-up
            ttft, s_total, p_total, same = [], [], [], 0
            for text in texts:
                first, total, s_text = streamed(client, url, model, text)
                p_lat, p_text = plain(client, url, model, text)
                ttft.append(first)
                s_total.append(total)
                p_total.append(p_lat)
                same += s_text == p_text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from kolm.receipts import ReceiptStore

    store = ReceiptStore(tmp / "receipts.sqlite")
    ms = lambda xs, q: f"{1000 * pct(xs, q):.0f}"  # noqa: E731
    print(f"requests: {len(texts)} streamed + {len(texts)} plain, one at a time")
    print(f"streamed: time to first token p50 {ms(ttft, 50)} ms, p95 {ms(ttft, 95)} ms")
    print(f"streamed: total p50 {ms(s_total, 50)} ms; plain: total p50 {ms(p_total, 50)} ms")
    print(f"p95 plain total {ms(p_total, 95)} ms")
    print(f"streamed text == plain answer: {same}/{len(texts)}")
    print(f"receipts: {store.count()} (warm-up included), chain ok: {store.verify().ok}")


if __name__ == "__main__":
    main()
