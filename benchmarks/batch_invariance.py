"""Which batch sizes give one-token logits, by adapter type, and what the load-time check costs.

    .venv/bin/python benchmarks/batch_invariance.py A.kolm [--threads 1]

Drafting is lossless only where a batched evaluation gives every row the logits of
a one-token step. For the artifact's base alone, its adapter at F32 (as compiles
before 2026-12-05 wrote it) and at Q8_0 (as they write it now, by `kolm.export`),
this evaluates 63 probe tokens after the artifact's instruction one at a time and
then in one batch of each of `draft.PROBE_SIZES`, and prints which sizes matched
in every row (`draft.invariant_rows`, one size at a time). Then it times loading
the artifact's student as `kolm run` does: without the pack, with the pack and an
empty verdict cache (the check runs), and again with the verdict cached.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from kolm.artifact import open_artifact
    from kolm.basemodel import gguf_metadata
    from kolm.decompose.draft import PROBE_SIZES
    from kolm.export import read_lora, write_adapter
    from kolm.runner import adapter_path

    art = open_artifact(args.artifact)
    base, adapter = art.materialize("base.gguf"), adapter_path(art)
    if adapter is None:
        raise SystemExit(f"{args.artifact} is a merged build: it has no adapter to compare")
    arch = str(gguf_metadata(base, ("general.architecture",))["general.architecture"])
    alpha, pairs = read_lora(adapter)
    folder = Path(tempfile.mkdtemp(prefix="kolm-bench-"))
    models = [("base alone", None)]
    for kind in ("f32", "q8_0"):
        path = folder / f"adapter-{kind}.gguf"
        if write_adapter(pairs, arch, alpha, path, kind) != kind:
            raise SystemExit(f"this adapter cannot be written at {kind}")
        models.append((f"adapter at {kind}", path))
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f} at start")
    print("| model | " + " | ".join(f"{n} tok" for n in PROBE_SIZES) + " | lossless up to |")
    print("| --- |" + " :---: |" * (len(PROBE_SIZES) + 1))
    for name, lora in models:
        ok = _sizes(art, base, lora, args.threads)
        cells = " | ".join("yes" if ok[n] else "**no**" for n in PROBE_SIZES)
        upto = max([1] + [n for n in PROBE_SIZES if all(ok[m] for m in PROBE_SIZES if m <= n)])
        print(f"| {name} | {cells} | {upto} |")
    print()
    print("| load (the shipped artifact, as `kolm run`) | ms |")
    print("| --- | ---: |")
    for label, ms in _load_times(args.artifact, args.threads):
        print(f"| {label} | {ms:.0f} |")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


def _student(art, base, lora, threads, pack=None, cache=None):
    from kolm.prompt import PromptFormat
    from kolm.runtime import Decoding, Student

    config = art.read_json("config.json")
    decoding = replace(Decoding(**config["decoding"]), threads=threads)
    fmt = PromptFormat.from_dict(config["prompt_format"])
    return Student(base, lora, fmt, config["instruction"], decoding, pack, probe_cache=cache)


def _sizes(art, base, lora, threads) -> dict[int, bool]:
    """Per probe size: did one batch of that many tokens match one-token steps in every row?"""
    from kolm.decompose.draft import PROBE_SIZES, invariant_rows
    from kolm.runtime import PROBE_TEXT

    s = _student(art, base, lora, threads)
    try:
        probe = (s._tokenize(PROBE_TEXT, False) * 64)[: max(PROBE_SIZES)]
        return {n: invariant_rows(s._llm, s._state, probe, sizes=(n,)) == n for n in PROBE_SIZES}
    finally:
        s.close()


def _load_times(path: Path, threads: int) -> list[tuple[str, float]]:
    from kolm.runner import load_student

    cache = Path(tempfile.mkdtemp(prefix="kolm-bench-cache-"))
    os.environ["KOLM_CACHE"] = str(cache)  # an empty verdict cache for this process
    _, warm = load_student(path, threads=threads, recipes=False)  # page cache, part blobs
    warm.close()
    out = []
    for label, recipes in (
        ("without the pack", False),
        ("with the pack, first load (the check runs)", True),
        ("with the pack, verdict cached", True),
    ):
        t0 = time.perf_counter()
        _, student = load_student(path, threads=threads, recipes=recipes)
        out.append((label, 1000 * (time.perf_counter() - t0)))
        student.close()
    return out


if __name__ == "__main__":
    main()
