"""Peak memory of a preference stage over long rows: one pass a step vs passes of PASS_TOKENS.

    .venv/bin/python benchmarks/preference_memory.py --work c150-b8                 # as kolm runs it
    .venv/bin/python benchmarks/preference_memory.py --work c150-b8 --one-pass      # before: one pass
    .venv/bin/python benchmarks/preference_memory.py --work c150-b8 --repeat 4      # 4x the pairs
    .venv/bin/python benchmarks/preference_memory.py --work c150-b8 --base gemma3-270m --method orpo

`--work` is a folder `benchmarks/clinc150.py --methods dpo` compiled in: its SFT adapter
and the SFT student's wrong answers (`student-pairs-*.json`, kept beside the adapter) are
reused, and only the stage runs, in this process, with its resident memory read from
/proc every 0.2 s. `--one-pass` sets `kolm.align.PASS_TOKENS` so high that every step is
one pass (what kolm did before passes existed); `--repeat N` trains on the pairs N times
over, as a teacher's rejected samples would add pairs. `--base NAME` runs the stage on
another registered base with a fresh (untrained) adapter over the same pairs: a stage's
memory depends on the shapes of the model and the rows, not on the adapter's values, so
this measures a larger vocabulary without training that base first. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path


def rss_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True, help="a clinc150.py work folder")
    ap.add_argument("--method", default="dpo", choices=["dpo", "orpo", "kto", "simpo"])
    ap.add_argument("--repeat", type=int, default=1, help="train on the pairs N times over")
    ap.add_argument("--one-pass", action="store_true", help="one pass a step (before)")
    ap.add_argument("--base", help="another registered base, with a fresh adapter")
    args = ap.parse_args()

    from kolm import align
    from kolm.basemodel import resolve
    from kolm.prompt import format_from_gguf
    from kolm.spec import load_spec
    from kolm.train import load_adapter, lora_model

    found = sorted(args.work.glob(".kolm-work/*/*/student-pairs-*.json"))
    if not found:
        raise SystemExit(
            f"no student-pairs-*.json under {args.work}/.kolm-work: run "
            f"benchmarks/clinc150.py --work {args.work} --methods {args.method} first"
        )
    pairs_file = found[0]
    spec = load_spec(args.work / "kolm.yaml")
    cfg = dataclasses.replace(spec.train, method=args.method)
    base = resolve(args.base or spec.base, args.work)
    fmt = format_from_gguf(base.gguf)
    pairs = [align.Pair(**r) for r in json.loads(pairs_file.read_text())] * args.repeat
    if args.one_pass:
        align.PASS_TOKENS = 10**9

    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_gb())
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    if args.base:
        model, tok, _ = lora_model(base.gguf, cfg)
    else:
        model, tok = load_adapter(base.gguf, cfg, pairs_file.parent / "adapter.pt")
    loaded = rss_gb()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = align.align(
            model, tok, fmt, spec.description, pairs, cfg, Path(d) / "ckpt", progress=False
        )
    seconds = time.perf_counter() - t
    print(
        json.dumps(
            {
                "method": args.method,
                "base": base.name,
                "pairs": len(pairs),
                "steps": res.steps,
                "rows_per_pass": res.hyper["rows_per_pass"],
                "activation_checkpointing": res.hyper.get("activation_checkpointing", False),
                "rss_after_load_gb": round(loaded, 2),
                "peak_rss_gb": round(max(peak[0], rss_gb()), 2),
                "stage_seconds": round(seconds, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
