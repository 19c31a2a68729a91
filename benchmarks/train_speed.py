"""Training throughput, three loops interleaved step by step.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/train_speed.py --steps 12 --threads 1,2
    python benchmarks/train_speed.py --task clinc150 --batch 8,32 --steps 4 --threads 2

One model (SmolLM2-135M + a fresh LoRA) trains on the support-tickets training split
(or, with `--task clinc150`, the 150-intent task of benchmarks/clinc150.py, whose
instruction is ~670 tokens). Steps rotate between
- `legacy`: the loop before any of this (shuffled batches, output-layer logits at
  every position, the whole prompt run for every row);
- `prefix`: length-bucketed batches, logits only at answer positions, the shared
  instruction run once and its keys/values copied into every row (the default until
  2026-12-05);
- `packed`: today's default, the same with the batch packed into one sequence (the
  instruction once, then each row's own tokens, no padding),
so all three see the same machine load. Each step is forward + backward + AdamW.
Printed: real (non-pad) tokens/s per variant, the share of computed positions that
were padding, and each variant's speed over legacy.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from kolm.basemodel import resolve
from kolm.data import load_examples, split_heldout
from kolm.prompt import format_from_gguf
from kolm.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def _spec(task: str):
    if task == "tickets":
        return load_spec(ROOT / "examples/support-tickets/kolm.yaml")
    import sys
    import tempfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import clinc150

    data = next(p for p in clinc150.CANDIDATES if p.is_file())
    folder = Path(tempfile.mkdtemp(prefix="kolm-train-speed-"))
    return load_spec(clinc150.build_task(data, folder, 10, 4, 190))


def measure(task: str, threads: int, batch: int, steps: int) -> dict:
    import dataclasses

    import torch

    from kolm import train as T

    spec = _spec(task)
    base = resolve(spec.base)
    rows, _ = split_heldout(load_examples(spec.examples), spec.heldout_fraction, spec.seed)
    cfg = dataclasses.replace(spec.on_its_base()[0].train, threads=threads, batch_size=batch)
    (data, _), tok, model, dev = T._setup(
        base.gguf, format_from_gguf(base.gguf), spec.description, rows, cfg, None
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    lengths = [len(x.ids) for x in data]
    bucketed = T._bucketed_batches(lengths, cfg.batch_size, steps, 0)
    plans = {
        "legacy": (T._batches(len(data), cfg.batch_size, steps, 0), T._full_loss),
        "prefix": (bucketed, functools.partial(T.answer_loss, pack=False)),
        "packed": (bucketed, T.answer_loss),
    }
    stats = {name: {"seconds": 0.0, "real": 0, "computed": 0, "pads": 0} for name in plans}
    model.train()
    for step in range(steps):
        for name, (batches, loss_fn) in plans.items():
            ids, mask, labels = T._collate([data[i] for i in batches[step]], tok.pad_token_id, dev)
            path, start = T.loss_path(model, ids, mask, labels, pack=name == "packed")
            if name == "legacy":
                path, start = "full", 0
            computed, pads = T.computed_positions(path, start, mask)
            t = time.perf_counter()
            loss_fn(model, ids, mask, labels).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            s = stats[name]
            s["seconds"] += time.perf_counter() - t
            s["real"] += int(mask.sum())
            s["computed"] += computed
            s["pads"] += pads
    out = {"task": task, "threads": torch.get_num_threads(), "batch": batch, "steps": steps}
    for name, s in stats.items():
        out[f"{name}_tok_s"] = round(s["real"] / s["seconds"], 1)
        out[f"{name}_padded_share"] = round(s["pads"] / s["computed"], 3)
    for name in ("prefix", "packed"):
        out[f"{name}_vs_legacy"] = round(out[f"{name}_tok_s"] / out["legacy_tok_s"], 2)
    out["packed_vs_prefix"] = round(out["packed_tok_s"] / out["prefix_tok_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--batch", default="8", help="batch sizes, comma-separated")
    ap.add_argument("--task", choices=("tickets", "clinc150"), default="tickets")
    args = ap.parse_args()
    for threads in [int(x) for x in args.threads.split(",")]:
        for batch in [int(x) for x in args.batch.split(",")]:
            print(json.dumps(measure(args.task, threads, batch, args.steps)), flush=True)


if __name__ == "__main__":
    main()
