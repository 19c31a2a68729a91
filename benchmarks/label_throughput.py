"""Labeling throughput against the loopback teacher with injected latency.

    .venv/bin/python benchmarks/label_throughput.py [--latency 0.3] [--samples 384]

For each concurrency c, labels (waves x c) / k inputs with k samples each through
the real OpenAI SDK against a local server (its own process) that sleeps `latency`
seconds per request, and prints samples/s next to the limit c / latency and their
ratio. Every row has the same number of waves; nothing is cached between rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kolm.cache import TeacherCache  # noqa: E402
from kolm.data import load_examples  # noqa: E402
from kolm.distill import distill  # noqa: E402
from kolm.spec import TeacherConfig  # noqa: E402
from kolm.verifier import synthesize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--waves", type=int, default=48, help="requests per row = waves x concurrency")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--concurrency", default="1,4,16,64")
    args = ap.parse_args()
    examples = load_examples(REPO / "examples/support-tickets/tickets.jsonl")
    truth = {e.input: e.output for e in examples}
    verifier = synthesize([e.output for e in examples])
    url, server = _serve_in_child(truth, args.latency)
    import openai  # noqa: F401  (import cost is not labeling throughput)

    os.environ.setdefault("KOLM_OPENAI_COMPATIBLE_API_KEY", "benchmark")
    print(f"latency {args.latency * 1000:.0f} ms, k={args.k}, machine: {os.cpu_count()} cores")
    print(
        f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'samples/s':>9} {'limit c/lat':>11} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for c in (int(x) for x in args.concurrency.split(",")):
            n_inputs = max(1, args.waves * c // args.k)
            inputs = [f"{examples[i % len(examples)].input} (#{i})" for i in range(n_inputs)]
            cfg = TeacherConfig(model=f"openai-compatible:oracle@{url}/v1", k=args.k, concurrency=c)
            cache = TeacherCache(Path(tmp) / f"c{c}.sqlite")
            t0 = time.perf_counter()
            report = asyncio.run(
                distill(
                    inputs,
                    "Route the ticket.",
                    examples[200:],
                    verifier,
                    cfg,
                    cache,
                    progress=False,
                )
            )
            secs = time.perf_counter() - t0
            rate = report.calls / secs
            limit = c / args.latency
            print(
                f"{c:>11} {report.calls:>8} {secs:>8.2f} {rate:>9.1f} {limit:>11.1f} {rate / limit:>6.2f}"
            )
    server.terminate()


def _serve_in_child(truth: dict, latency: float):
    """Run the fake teacher in its own process, so its CPU is not charged to kolm's client."""
    import multiprocessing as mp

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_child, args=(child, truth, latency), daemon=True)
    proc.start()
    return parent.recv(), proc


def _child(conn, truth: dict, latency: float) -> None:
    import threading

    sys.path.insert(0, str(REPO))
    from tests.oracle import Oracle

    oracle = Oracle(truth, sorted(set(truth.values())), latency_s=latency)
    conn.send(oracle.start())
    threading.Event().wait()


if __name__ == "__main__":
    main()
