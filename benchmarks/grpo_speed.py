"""GRPO steps on clinc150's 150-intent prompts: every prompt run whole (TRL's own way)
against the shared instruction run once, side by side in one run.

    python benchmarks/grpo_speed.py --base smollm2-135m-instruct --steps 4
    python benchmarks/grpo_speed.py --base gemma3-270m --steps 4 \
        --adapter c150-gemma-b8-lr1/.kolm-work/clinc150/*/adapter.pt

A GRPO step samples 4 answers to each of 2 training inputs (8 a step) and scores them
with the verifier, then computes every answer's log-probabilities with gradients. Each
prompt opens with the same ~650-token instruction and has ~20 tokens of its own, so
nearly all the work is the instruction, done 8 times for the samples and 8 times for
the log-probabilities. Two ways, each from the same starting adapter, the same seed:
- `whole`: TRL's own sampling and log-probabilities: every prompt run whole,
  left-padded, in passes of at most 2,048 tokens (2 rows of ~700);
- `shared`: kolm's `align.grpo`: samples from `train.generate_ids` and log-probabilities
  from `train.completion_logps`, the instruction run once per generation batch and per
  pass, and a pass holding every row that fits beside one copy of it.
Before training, both ways' log-probabilities of the same 8 prompts and answers (each
label, then end-of-turn) are compared; they must agree to float noise. Printed: seconds
a step per way, the speed-up, rows per pass, mean reward and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(base_name: str, steps: int, threads: int, adapter: Path | None) -> dict:
    import dataclasses

    import torch

    from kolm import align
    from kolm import train as T
    from kolm.compiler import prepare
    from kolm.spec import load_spec

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import clinc150

    data = next(p for p in clinc150.CANDIDATES if p.is_file())
    folder = Path(tempfile.mkdtemp(prefix="kolm-grpo-speed-"))
    spec = load_spec(clinc150.build_task(data, folder, 10, 4, 190, base=base_name))
    spec = spec.on_its_base()[0]
    p = prepare(spec)
    cfg = dataclasses.replace(spec.train, threads=threads, preference_steps=steps)
    max_new = 16

    def model():
        if adapter is None:
            (_, _), tok, m, _ = T._setup(p.base.gguf, p.fmt, spec.description, p.train, cfg, None)
            return m, tok
        return T.load_adapter(p.base.gguf, cfg, adapter)

    m, tok = model()
    out = {
        "base": base_name,
        "adapter": str(adapter) if adapter else None,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "max_logp_difference": _logp_difference(m, tok, p),
    }
    for way in ("whole", "shared"):
        if way == "shared":
            m, tok = model()
        torch.manual_seed(cfg.seed)
        t = time.perf_counter()
        res = align.grpo(
            m, tok, p.fmt, spec.description, p.train, p.verifier.passing, cfg,
            folder / way, max_new, progress=True, shared=way == "shared",
        )  # fmt: skip
        seconds = time.perf_counter() - t
        out[f"{way}_seconds_per_step"] = round(seconds / res.steps, 1)
        out[f"{way}_rows_per_pass"] = res.hyper["rows_per_pass"]
        out[f"{way}_mean_reward_first_last"] = res.hyper.get("mean_reward_first_last")
        if way == "shared":
            out["shared_instruction_tokens"] = res.hyper["shared_instruction_tokens"]
        print(json.dumps({way: out[f"{way}_seconds_per_step"]}), flush=True)
    out["shared_vs_whole"] = round(
        out["whole_seconds_per_step"] / out["shared_seconds_per_step"], 2
    )
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def _logp_difference(model, tok, p) -> float:
    """Largest |log-prob| difference between a whole, left-padded forward pass and
    `train.completion_logps` on 8 training prompts answered with their labels."""
    import torch

    from kolm import train as T

    rows = p.train[:8]
    prompts = T.prompt_ids(tok, p.fmt, p.spec.description, [e.input for e in rows])
    answers = [T.answer_ids(tok, p.fmt, e.output) for e in rows]
    width, limit = max(map(len, prompts)), max(map(len, answers))
    pad = tok.pad_token_id
    ids = torch.tensor(
        [[pad] * (width - len(q)) + q + a + [pad] * (limit - len(a))
         for q, a in zip(prompts, answers, strict=True)]
    )  # fmt: skip
    mask = torch.tensor(
        [[0] * (width - len(q)) + [1] * (len(q) + len(a)) + [0] * (limit - len(a))
         for q, a in zip(prompts, answers, strict=True)]
    )  # fmt: skip
    with torch.no_grad():
        fast, _ = T.completion_logps(model, ids, mask, limit)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, width - 1 : -1]
        whole = torch.log_softmax(logits.float(), -1).gather(2, ids[:, width:, None])[..., 0]
    keep = mask[:, width:].bool()
    return float((fast - whole)[keep].abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps per way")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adapter", type=Path, help="an SFT adapter.pt from a compile's work folder")
    args = ap.parse_args()
    out = measure(args.base, args.steps, args.threads, args.adapter)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
