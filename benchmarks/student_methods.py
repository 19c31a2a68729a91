"""SFT vs SFT + a preference stage on the shipped example: same split, same seed.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/student_methods.py --methods sft,dpo
    python benchmarks/student_methods.py --methods sft,kto --base gemma3-270m --work gemma-methods

Compiles examples/support-tickets once per `train.method` into one work folder, so
the SFT stage is trained once and every preference method continues the same SFT
adapter. Prints, per method: held-out accuracy (llama.cpp), the TF-IDF floor on the
same split, K, the preference stage's pairs and seconds, and the compile's wall time.
`--batch-size 8 --learning-rate 0.002` trains as the example did before 2026-12-06,
when the figures in docs/benchmarks.md were taken (on Gemma too: the example then set
its rate, which a base's own default does not replace).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(
    method: str,
    work: Path,
    out_dir: Path,
    steps: int | None,
    base: str | None,
    settings: dict | None = None,
) -> dict:
    from kolm.compiler import compile_task
    from kolm.spec import load_spec

    spec = load_spec(REPO / "examples/support-tickets/kolm.yaml")
    changes = {"method": method, **(settings or {})}
    if steps:
        changes["preference_steps"] = steps
    train = spec.train.with_settings(**changes)
    spec = dataclasses.replace(spec, train=train, **({"base": base} if base else {}))
    t = time.perf_counter()
    r = compile_task(spec, out_dir / f"tickets-{method}.kolm", work_dir=work, force=True)
    m = r.manifest["metrics"]
    pref = m["train"].get("preference", {})
    return {
        "method": method,
        "base": spec.base,
        "accuracy": m["student"]["accuracy"],
        "floor": m["floor"]["accuracy"],
        "K": r.manifest["kscore"]["K"],
        "sft_tokens_per_s": m["train"]["tokens_per_second"],
        "sft_seconds": m["train"]["seconds"],
        "pairs": pref.get("pairs_by_source"),
        "pref_steps": pref.get("steps"),
        "pref_seconds": pref.get("seconds"),
        "agreement": m["llamacpp_torch_agreement"],
        "wall_s": round(time.perf_counter() - t, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="sft,dpo")
    ap.add_argument("--preference-steps", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("student-methods-work"))
    ap.add_argument("--base", help="a registered base name (default: the example's)")
    ap.add_argument("--batch-size", type=int, help="train.batch_size (default: the example's)")
    ap.add_argument(
        "--learning-rate", type=float, help="train.learning_rate (default: the base's own)"
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    settings = {"batch_size": args.batch_size, "learning_rate": args.learning_rate}
    settings = {k: v for k, v in settings.items() if v is not None}
    for method in args.methods.split(","):
        row = run(method, args.work, args.work, args.preference_steps, args.base, settings)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
