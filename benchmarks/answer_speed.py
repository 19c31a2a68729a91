"""PyTorch greedy answers to clinc150's 150-intent prompts: whole prompts against the
shared instruction run once, side by side in one run.

    python benchmarks/answer_speed.py --base gemma3-270m --n 96
    python benchmarks/answer_speed.py --base smollm2-135m-instruct --n 96
    python benchmarks/answer_speed.py --base gemma3-270m --n 96 \
        --adapter c150-gemma-b8-lr1/.kolm-work/clinc150/*/adapter.pt

The compile answers every training input with the SFT student to find the preference
stages' on-policy pairs (`align.student_pairs`) and every sampled held-out input for the
llama.cpp/PyTorch agreement check, both through `train.greedy_outputs`. Its prompts open
with the same ~655-token instruction. Two ways, on the same prompts:
- `whole`: every prompt run whole, as a sliding-window base (Gemma 3, window 512) did
  until 2026-12-06, because padding after a shared prefix counts inside the window;
- `shared`: today's path: the instruction's keys/values computed once and copied into
  each batch; on a sliding-window base, each batch holds prompts of one length (no pads).
The base answers unless `--adapter` names an SFT adapter a compile saved (`adapter.pt`
in its work folder; a trained student stops at its label, the base runs to the token
limit). Printed: seconds and prompts/s per way, the speed-up, the mean batch, and
whether the answers are identical (they must be).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(base_name: str, n: int, batch: int, threads: int, adapter: Path | None) -> dict:
    import dataclasses

    import torch

    from kolm import train as T
    from kolm.basemodel import resolve
    from kolm.data import load_examples, split_heldout
    from kolm.prompt import format_from_gguf
    from kolm.spec import load_spec

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import clinc150

    data = next(p for p in clinc150.CANDIDATES if p.is_file())
    folder = Path(tempfile.mkdtemp(prefix="kolm-answer-speed-"))
    spec = load_spec(clinc150.build_task(data, folder, 10, 4, 190, base=base_name))
    base = resolve(spec.base)
    rows, _ = split_heldout(load_examples(spec.examples), spec.heldout_fraction, spec.seed)
    rows = rows[:n]
    cfg = dataclasses.replace(spec.on_its_base()[0].train, threads=threads)
    fmt = format_from_gguf(base.gguf)
    if adapter is None:
        (_, _), tok, model, _ = T._setup(base.gguf, fmt, spec.description, rows, cfg, None)
    else:
        model, tok = T.load_adapter(base.gguf, cfg, adapter)
    model.eval()
    prompts = T.prompt_ids(tok, fmt, spec.description, [r.input for r in rows])
    max_new = 16
    start, batches = T.greedy_plan(model, prompts, max_new, batch)
    out = {
        "base": base_name,
        "adapter": str(adapter) if adapter else None,
        "threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        "shared_prefix_tokens": start,
        "same_length_batches": bool(start) and T.pads_must_go(model, prompts, max_new),
        "mean_batch": round(len(prompts) / len(batches), 2),
    }
    answers = {}
    for way in ("whole", "shared"):
        keep = T.MIN_SHARED_PREFIX
        if way == "whole":
            T.MIN_SHARED_PREFIX = 10**9
        try:
            t = time.perf_counter()
            answers[way] = T.greedy_outputs(model, tok, prompts, max_new, batch=batch, bar=way)
            seconds = time.perf_counter() - t
        finally:
            T.MIN_SHARED_PREFIX = keep
        out[f"{way}_seconds"] = round(seconds, 1)
        out[f"{way}_prompts_per_s"] = round(len(prompts) / seconds, 2)
    out["shared_vs_whole"] = round(out["whole_seconds"] / out["shared_seconds"], 2)
    out["identical_answers"] = answers["whole"] == answers["shared"]
    out["differing_answers"] = sum(
        a != b for a, b in zip(answers["whole"], answers["shared"], strict=True)
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="gemma3-270m")
    ap.add_argument("--n", type=int, default=96, help="training prompts to answer")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adapter", type=Path, help="an SFT adapter.pt from a compile's work folder")
    args = ap.parse_args()
    out = measure(args.base, args.n, args.batch, args.threads, args.adapter)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
