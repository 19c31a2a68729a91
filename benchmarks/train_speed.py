"""Training throughput on the shipped example, old loop vs new, interleaved step by step.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/train_speed.py --steps 12 --threads 1,2

One model (SmolLM2-135M + a fresh LoRA) trains on the support-tickets training split.
Steps alternate between `legacy` (the loop before this benchmark: shuffled batches,
output-layer logits at every position) and `fast` (today's default: length-bucketed
batches, logits only at the answer positions), so both see the same machine load.
Each step is forward + backward + AdamW. Printed: real (non-pad) tokens/s per variant,
the share of computed positions that were padding, and fast/legacy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kolm.basemodel import resolve
from kolm.data import load_examples, split_heldout
from kolm.prompt import format_from_gguf
from kolm.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def measure(threads: int, steps: int) -> dict:
    import dataclasses

    import torch

    from kolm import train as T

    spec = load_spec(ROOT / "examples/support-tickets/kolm.yaml")
    base = resolve(spec.base)
    rows, _ = split_heldout(load_examples(spec.examples), spec.heldout_fraction, spec.seed)
    cfg = dataclasses.replace(spec.train, threads=threads)
    (data, _), tok, model, dev = T._setup(
        base.gguf, format_from_gguf(base.gguf), spec.description, rows, cfg, None
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    lengths = [len(x.ids) for x in data]
    plans = {
        "legacy": (T._batches(len(data), cfg.batch_size, steps, 0), T._full_loss),
        "fast": (T._bucketed_batches(lengths, cfg.batch_size, steps, 0), T.answer_loss),
    }
    stats = {name: {"seconds": 0.0, "real": 0, "computed": 0} for name in plans}
    model.train()
    for step in range(steps):
        for name, (batches, loss_fn) in plans.items():
            ids, mask, labels = T._collate([data[i] for i in batches[step]], tok.pad_token_id, dev)
            t = time.perf_counter()
            loss_fn(model, ids, mask, labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            s = stats[name]
            s["seconds"] += time.perf_counter() - t
            s["real"] += int(mask.sum())
            s["computed"] += mask.numel()
    out = {"threads": torch.get_num_threads(), "steps": steps}
    for name, s in stats.items():
        out[f"{name}_tok_s"] = round(s["real"] / s["seconds"], 1)
        out[f"{name}_padded_share"] = round(1 - s["real"] / s["computed"], 3)
    out["speedup"] = round(out["fast_tok_s"] / out["legacy_tok_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", default="1")
    args = ap.parse_args()
    for threads in [int(x) for x in args.threads.split(",")]:
        print(json.dumps(measure(threads, args.steps)), flush=True)


if __name__ == "__main__":
    main()
