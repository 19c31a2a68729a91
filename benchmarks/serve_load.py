"""Load on `kolm serve`: N requests at concurrency C on loopback; no errors, no lost receipts.

    .venv/bin/python benchmarks/serve_load.py [--artifact M.kolm] [--requests 1000] [--concurrency 16]

Without --artifact it compiles the toy task from tests/toy.py once (cached in
.kolm-work/bench). Starts the real CLI (`kolm serve`) as a subprocess, fires
the requests with httpx, then checks: every response 200, receipts counted =
requests, the receipt chain verifies. Then answers the same inputs through the
batch path (`Runner`, what `kolm run --input` uses, receipts on) in-process and
prints the throughput ratio serve / batch, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def toy_artifact() -> Path:
    from tests.toy import write_toy_task

    from kolm.compiler import compile_task
    from kolm.spec import load_spec

    root = REPO / ".kolm-work" / "bench"
    out = root / "toy.kolm"
    if not out.exists():
        spec = load_spec(write_toy_task(root / "task"))
        compile_task(spec, out)
    return out


def inputs(n: int) -> list[str]:
    from tests.toy import FRAMES, TOPICS

    things = [t for ts in TOPICS.values() for t in ts]
    return [FRAMES[i % len(FRAMES)].format(things[i % len(things)]) + f" ({i})" for i in range(n)]


async def fire(url: str, texts: list[str], concurrency: int, deadline_s: float):
    import httpx

    sem = asyncio.Semaphore(concurrency)
    codes, lat = [], []

    async def one(client, text):
        async with sem:
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/completions", json={"model": "toy", "prompt": text})
            lat.append(time.perf_counter() - t0)
            codes.append(r.status_code)
            return r.headers.get("x-kolm-receipt")

    async with httpx.AsyncClient(timeout=60) as client:
        return (
            await asyncio.wait_for(asyncio.gather(*(one(client, t) for t in texts)), deadline_s),
            codes,
            lat,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--threads", type=int, help="llama.cpp threads for serve and batch alike")
    ap.add_argument(
        "--deadline", type=float, default=900, help="seconds before the load run is abandoned"
    )
    args = ap.parse_args()
    artifact = args.artifact or toy_artifact()
    texts = inputs(args.requests)
    from kolm.receipts import ReceiptStore
    from kolm.runner import Runner

    with tempfile.TemporaryDirectory() as tmp:
        receipts = Path(tmp) / "serve.sqlite"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [
            str(REPO / ".venv/bin/kolm"),
            "serve",
            str(artifact),
            "--port",
            str(port),
            "--receipts",
            str(receipts),
            "--drift",
            str(Path(tmp) / "d.sqlite"),
            "--queue",
            str(4 * args.concurrency),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        t0 = time.perf_counter()
        ids, codes, lat = asyncio.run(fire(url, texts, args.concurrency, args.deadline))
        serve_s = time.perf_counter() - t0
        proc.terminate()
        proc.wait(timeout=30)
        store = ReceiptStore(receipts)
        chain = store.verify()
        lost = args.requests - store.count()
        runner = Runner(
            artifact, threads=args.threads, receipts=ReceiptStore(Path(tmp) / "batch.sqlite")
        )
        runner(texts[0])  # warm-up, as the server had
        t0 = time.perf_counter()
        for t in texts:
            runner(t)
        batch_s = time.perf_counter() - t0
        runner.close()
    errors = sum(c != 200 for c in codes)
    lat_ms = sorted(x * 1000 for x in lat)
    rows = [
        ("requests / concurrency", f"{args.requests} / {args.concurrency}"),
        ("errors (non-200)", str(errors)),
        ("receipts written / lost", f"{store.count()} / {lost}"),
        ("distinct receipt ids in responses", str(len(set(ids)))),
        (
            "receipt chain",
            "verifies" if chain.ok else f"BROKEN at {chain.first_broken}: {chain.problem}",
        ),
        (
            "serve latency p50 / p95",
            f"{statistics.median(lat_ms):.0f} / {lat_ms[int(0.95 * len(lat_ms)) - 1]:.0f} ms",
        ),
        ("serve throughput", f"{args.requests / serve_s:.2f} req/s ({serve_s:.1f} s)"),
        (
            "batch throughput (Runner, same inputs)",
            f"{args.requests / batch_s:.2f} req/s ({batch_s:.1f} s)",
        ),
        ("ratio serve / batch", f"{batch_s / serve_s:.2f}"),
    ]
    width = max(len(a) for a, _ in rows)
    print(f"machine: {os.cpu_count()} cores; artifact {artifact}")
    print("\n".join(f"{a:<{width}}  {b}" for a, b in rows))
    sys.exit(0 if errors == 0 and lost == 0 and chain.ok else 1)


def _wait_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("kolm serve did not come up")


if __name__ == "__main__":
    main()
