"""Registry: push / pull throughput against a loopback OCI registry, beside copying the file.

    .venv/bin/python benchmarks/registry.py [--mb 108.2] [--repeats 3] [--json]

Starts Debian's `docker-registry` (CNCF distribution) on a free loopback port
with a temp storage folder, and synthesizes a signed artifact the size of the
shipped example's (108.2 MB: a random 98.4 MB `base.gguf` and a 9.8 MB adapter,
both stored, signed with a throwaway key). Then, in one run, each repeated:
copying the file (`shutil.copyfile`), `publish` to a fresh repository (the blob
is uploaded), `publish` again (HEAD finds the blob: only manifests travel), and
`pull` (download + digest check + the full `open_artifact` verification + the
atomic move), plus `open_artifact` alone to show what verification costs, and
one bare blob PUT and GET of the same bytes (the registry and HTTP alone).
Medians, MB/s, and each time as a ratio to the copy's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=108.2, help="Artifact size in MB.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        sys.exit("no registry binary: apt-get install -y docker-registry")
    with tempfile.TemporaryDirectory(prefix="kolm-registry-bench-") as tmp:
        root = Path(tmp)
        os.environ["KOLM_HOME"] = str(root / "home")
        art = _artifact(root, args.mb)
        host, proc = _start(binary, root)
        try:
            rows = _measure(art, host, root, args.repeats)
        finally:
            proc.terminate()
            proc.wait(10)
    _report(rows, art_size=int(args.mb * 1e6), as_json=args.json, repeats=args.repeats)


def _artifact(root: Path, mb: float) -> Path:
    from kolm.artifact import minimal_manifest, write_artifact
    from kolm.keys import KeyStore

    parts = {}
    adapter = int(9.8e6)
    for name, size in (("base.gguf", int(mb * 1e6) - adapter), ("adapter.gguf", adapter)):
        (root / name).write_bytes(os.urandom(size))
        parts[name] = root / name
    out = root / "bench.kolm"
    write_artifact(out, parts, minimal_manifest("bench"), KeyStore())
    return out


def _start(binary: str, root: Path) -> tuple[str, subprocess.Popen]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: {host}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            httpx.get(f"http://{host}/v2/", timeout=1)
            return host, proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    sys.exit("the registry did not start")


STEPS = ("copy", "push", "push again", "pull", "verify", "blob PUT only", "blob GET only")


def _measure(art: Path, host: str, root: Path, repeats: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {k: [] for k in STEPS}
    for i in range(repeats):
        for k, v in _round(art, f"{host}/bench/run{i}:v1", root).items():
            rows[k].append(v)
    return rows


def _round(art: Path, ref: str, root: Path) -> dict[str, float]:
    """One of each step; the copy and the pulled file are removed afterwards."""
    from kolm.artifact import open_artifact
    from kolm.registry import publish, pull

    copy, pulled = root / "copy.kolm", root / "pulled.kolm"
    times = {"copy": _timed(shutil.copyfile, art, copy)}
    times["push"] = _timed(lambda: _check(publish(art, ref).uploaded))
    times["push again"] = _timed(lambda: _check(not publish(art, ref).uploaded))
    times["pull"] = _timed(pull, ref, pulled)
    times["verify"] = _timed(open_artifact, pulled)
    times["blob PUT only"], times["blob GET only"] = _blob_only(
        art, ref.replace("/bench/", "/raw/"), root
    )
    if pulled.read_bytes() != art.read_bytes():
        sys.exit("pulled file differs from the pushed one")
    copy.unlink()
    pulled.unlink()
    return times


def _blob_only(art: Path, ref: str, root: Path) -> tuple[float, float]:
    """The registry alone: one blob PUT and GET of the file, no verification or pre-hash."""
    from kolm.registry.artifacts import _chunks, _file_digest
    from kolm.registry.client import Client
    from kolm.registry.refs import parse_ref

    digest, size = _file_digest(art), art.stat().st_size
    with Client(parse_ref(ref)) as c:
        put = _timed(
            lambda: _check(c.push_blob(digest, size, lambda: _chunks(art, size, False, "")))
        )
        with open(root / "raw.bin", "wb") as f:
            get = _timed(c.fetch_blob, digest, size, f)
    (root / "raw.bin").unlink()
    return put, get


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _check(ok: bool) -> None:
    if not ok:
        sys.exit("unexpected upload behaviour (blob skipped / sent when it should not be)")


def _report(rows: dict[str, list[float]], art_size: int, as_json: bool, repeats: int) -> None:
    med = {k: statistics.median(v) for k, v in rows.items()}
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_1min": round(os.getloadavg()[0], 2),
        "artifact_mb": round(art_size / 1e6, 1),
        "repeats": repeats,
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "mb_per_s": {k: round(art_size / 1e6 / v, 1) for k, v in med.items()},
        "ratio_to_copy": {k: round(v / med["copy"], 2) for k, v in med.items()},
    }
    if as_json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['artifact_mb']} MB artifact, median of {repeats}, load {out['load_1min']}")
    print(f"{'step':<14} {'seconds':>8} {'MB/s':>8} {'x copy':>8}")
    for k in rows:
        print(
            f"{k:<12} {out['seconds'][k]:>8.3f} {out['mb_per_s'][k]:>8.1f} "
            f"{out['ratio_to_copy'][k]:>8.2f}"
        )


if __name__ == "__main__":
    main()
