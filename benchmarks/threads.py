"""llama.cpp threads vs latency, on an idle machine and beside one CPU-bound process.

    .venv/bin/python benchmarks/threads.py [--artifact M.kolm] [--threads 1 2] [--answers 5]

Without --artifact it compiles the toy task from tests/toy.py once (cached in
.kolm-work/bench). For each thread count it loads the artifact in a fresh
process (`kolm run --input`, receipts to a temporary file), answers --answers
inputs and reports the median and worst per-answer latency llama.cpp measured,
first with nothing else started ("idle"), then beside `python -c "while True:
pass"` ("busy"). A batch that takes longer than --timeout seconds is reported as
such. The load average is printed, because "idle" means only that this script
started nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
INPUTS = ["a ripe mango", "the bus", "heavy rain", "a piano", "snow", "my bicycle", "a drum"]


def toy_artifact() -> Path:
    from tests.toy import write_toy_task

    from kolm.compiler import compile_task
    from kolm.spec import load_spec

    root = REPO / ".kolm-work" / "bench"
    out = root / "toy.kolm"
    if not out.exists():
        compile_task(load_spec(write_toy_task(root / "task")), out)
    return out


def one_batch(artifact: Path, threads: int, n: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in.txt"
        inputs.write_text("\n".join((INPUTS * n)[:n]) + "\n")
        cmd = [
            sys.executable,
            "-m",
            "kolm.cli",
            "run",
            str(artifact),
            "--input",
            str(inputs),
            "--threads",
            str(threads),
            "--receipts",
            f"{tmp}/r.sqlite",
            "--drift",
            f"{tmp}/d.sqlite",
            "-q",
        ]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"threads": threads, "timeout": timeout}
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    lat = [json.loads(line)["latency_s"] for line in r.stdout.splitlines()]
    return {
        "threads": threads,
        "median_s": statistics.median(lat),
        "max_s": max(lat),
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--answers", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    artifact = args.artifact or toy_artifact()
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    print("| machine | threads | median answer | slowest answer | whole batch (load + answers) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label in ("idle", "busy"):
        spin = (
            subprocess.Popen([sys.executable, "-c", "while True: pass"])
            if label == "busy"
            else None
        )
        try:
            for t in args.threads:
                row = one_batch(artifact, t, args.answers, args.timeout)
                if "timeout" in row:
                    print(f"| {label} | {t} | — | — | > {args.timeout:.0f} s (stopped) |")
                else:
                    print(
                        f"| {label} | {t} | {row['median_s'] * 1000:.0f} ms | "
                        f"{row['max_s'] * 1000:.0f} ms | {row['wall_s']:.1f} s |",
                        flush=True,
                    )
        finally:
            if spin is not None:
                spin.kill()


if __name__ == "__main__":
    main()
