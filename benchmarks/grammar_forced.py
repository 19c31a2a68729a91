"""How often a grammar forces the next token, and what finding out costs.

    .venv/bin/python benchmarks/grammar_forced.py A.kolm [--inputs 6]

Answers held-out inputs with `run.constrain` on (the verifier's grammar) and, at
every step, applies llama.cpp's grammar sampler to the whole vocabulary to count
the tokens it allows. A step where exactly one is allowed is a token the grammar
forces (a "free draft"); the time of those full-vocabulary applications is what
detecting one would cost at every step. The answers themselves are unchanged.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--inputs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import numpy as np

    from kolm.artifact import open_artifact
    from kolm.runner import load_student
    from kolm.runtime import Decoding

    art = open_artifact(args.artifact)
    dec = replace(Decoding(**art.read_json("config.json")["decoding"]), constrain=True)
    _, student = load_student(art, threads=args.threads, decoding=dec, recipes=False)
    c = student._constraint
    if c is None:
        raise SystemExit(f"{args.artifact}: its verifier has no labels or JSON Schema")
    counts = {"steps": 0, "forced": 0, "probe_s": 0.0}
    pick = c.pick

    def counting_pick(logits, best=None):
        t0 = time.perf_counter()
        c._all.copy_logits(logits)
        c._c.llama_sampler_apply(c._smpl, ctypes.byref(c._all.candidates))
        allowed = int(np.isfinite(c._all.candidates_data.logit).sum())
        counts["probe_s"] += time.perf_counter() - t0
        counts["steps"] += 1
        counts["forced"] += allowed == 1
        return pick(logits, best)

    c.pick = counting_pick
    rows = [json.loads(x) for x in art.read_text("heldout.jsonl").splitlines() if x.strip()]
    for r in rows[: args.inputs]:
        student.answer(r["input"])
    student.close()
    n = counts["steps"]
    print(
        f"{args.inputs} answers, {n} constrained steps: {counts['forced']} forced "
        f"({counts['forced'] / n:.1%}); one full-vocabulary grammar probe "
        f"{1000 * counts['probe_s'] / n:.1f} ms (load average {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
