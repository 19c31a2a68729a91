"""`kolm server` on the toy task: jobs per hour with 1 and 2 workers, and queue overhead.

    .venv/bin/python benchmarks/service.py [--jobs 2] [--steps 8] [--workers 1 2]

Writes the toy task from tests/toy.py, compiles it once in-process (time from start to
the first training step, and in all), then for each worker count starts the real
`kolm server --workers W` on loopback, submits `--jobs` identical jobs at once over
HTTP and waits for all of them. Reports jobs/hour (jobs / wall time from the first
submit to the last end) and, per job, submit → first training step (from the job's
event stream); the first job's (it waits for no other) minus the local start → first
step is the service's queue overhead.
Every compile uses 1 thread (torch and llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))


def task(folder: Path, steps: int) -> Path:
    from tests.toy import write_toy_task

    return write_toy_task(folder, steps=steps, extra="run: {threads: 1}\ngate: 0\n")


def local(spec_path: Path, out: Path) -> dict:
    from kolm.compiler import compile_task
    from kolm.progress import listening
    from kolm.spec import load_spec

    first: list[float] = []
    t0 = time.perf_counter()
    with listening(lambda e: first or e["stage"] != "train" or first.append(time.perf_counter())):
        compile_task(load_spec(spec_path), out, progress=False, log=lambda m: None)
    return {"first_step_s": first[0] - t0, "total_s": time.perf_counter() - t0}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service(root: Path, spec_path: Path, workers: int, jobs: int) -> dict:
    import httpx

    from kolm.service.client import Client, upload_list
    from kolm.spec import load_spec

    data, port = root / f"data-w{workers}", _port()
    kolm = [sys.executable, "-c", "from kolm.cli import main; main()"]
    env = {**os.environ, "KOLM_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}
    key = subprocess.run(
        [*kolm, "server", "tenants", "add", "bench", "--data", str(data), "--max-jobs", "99"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = subprocess.Popen(
        [*kolm, "server", "--data", str(data), "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(url + "/v1/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = Client(url, key)
        files = upload_list(load_spec(spec_path))
        submitted = {}
        t0 = time.time()
        for _ in range(jobs):
            submitted[client.submit(files, spec_path.name, {}, None)["id"]] = time.time()
        while any(client.job(j)["state"] not in ("succeeded", "failed") for j in submitted):
            time.sleep(1)
        ends = [client.job(j)["updated"] for j in submitted]
        overhead = [_first_step(client, j) - t for j, t in submitted.items()]
        states = [client.job(j)["state"] for j in submitted]
    finally:
        proc.terminate()
        proc.wait()
    wall = max(ends) - t0
    return {
        "workers": workers,
        "jobs": jobs,
        "states": states,
        "wall_s": round(wall, 1),
        "jobs_per_hour": round(jobs * 3600 / wall, 1),
        "submit_to_first_step_s": [round(x, 1) for x in overhead],
    }


def _first_step(client, job_id: str) -> float:
    for line in client.http.get(f"/v1/jobs/{job_id}/events").text.splitlines():
        if line.startswith("data: ") and '"stage": "train"' in line:
            return json.loads(line[6:])["t"]
    raise RuntimeError(f"job {job_id} has no training step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kolm-bench-service-"))
    os.environ["KOLM_HOME"] = str(root / "home")
    spec_path = task(root / "task", args.steps)
    base = local(spec_path, root / "local.kolm")
    print(json.dumps({"local": {k: round(v, 1) for k, v in base.items()}}), flush=True)
    for w in args.workers:
        r = service(root, spec_path, w, args.jobs)
        r["queue_overhead_s"] = round(min(r["submit_to_first_step_s"]) - base["first_step_s"], 1)
        r["local_jobs_per_hour"] = round(3600 / base["total_s"], 1)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
