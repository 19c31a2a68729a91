"""What one batched evaluation costs per token, by the model's quantization.

    .venv/bin/python benchmarks/batch_cost.py A.kolm [--kinds adapter q8_0 q4_0] [--threads 1]

Drafting pays off only when evaluating n tokens in one llama.cpp call costs much
less than n one-token calls. For the artifact's model (`adapter`: base + LoRA as
shipped) and for merged builds of it (`q8_0`, `q4_0`, `f16`, written by
`kolm.merge`), this times one evaluation of n = 1, 2, 4, 8, 13 tokens after a
prompt, with logits at every position (as the drafting loop asks), median of
`--repeats` runs with the sizes interleaved, and prints the cost per token
relative to a one-token step: 1.0 means batching saves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SIZES = (1, 2, 4, 8, 13)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--kinds", nargs="+", default=["adapter", "q8_0", "q4_0"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    from kolm.artifact import open_artifact
    from kolm.runner import adapter_path

    art = open_artifact(args.artifact)
    base, adapter = art.materialize("base.gguf"), adapter_path(art)
    rows = [json.loads(x) for x in art.read_text("heldout.jsonl").splitlines() if x.strip()]
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f} at start")
    print("| model | " + " | ".join(f"{n} tok ms" for n in SIZES) + " | per token, ×1-token |")
    print("| --- |" + " ---: |" * (len(SIZES) + 1))
    for kind in args.kinds:
        model, lora = (base, adapter) if kind == "adapter" else (_merged(base, adapter, kind), None)
        ms = _curve(model, lora, args.threads, rows[0]["input"], args.repeats)
        ratio = ", ".join(f"{ms[n] / ms[1] / n:.2f}" for n in SIZES[1:])
        cells = " | ".join(f"{ms[n]:.1f}" for n in SIZES)
        print(f"| {kind} | {cells} | {ratio} |")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


def _merged(base: Path, adapter: Path | None, kind: str) -> Path:
    from kolm.merge import merge_gguf

    out = Path(tempfile.mkdtemp(prefix="kolm-bench-")) / f"merged-{kind}.gguf"
    merge_gguf(base, adapter, out, kind, threads=1)
    return out


def _curve(model: Path, lora: Path | None, threads: int, text: str, repeats: int) -> dict:
    from llama_cpp import Llama

    from kolm.decompose.draft import Pieces, _State

    llm = Llama(
        model_path=str(model),
        lora_path=str(lora) if lora else None,
        n_ctx=1024,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        verbose=False,
    )
    prompt = llm.tokenize(text.encode("utf-8"), add_bos=False)
    times: dict[int, list[float]] = {n: [] for n in SIZES}
    for _ in range(repeats):
        for n in SIZES:
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            llm.n_tokens = 0
            s = _State(llm, prompt, 64, set(), [], Pieces(llm))
            s._decode(prompt, 1)
            t0 = time.perf_counter()
            s._decode((prompt * 2)[:n], n)
            times[n].append(1000 * (time.perf_counter() - t0))
    llm.close()
    return {n: statistics.median(t) for n, t in times.items()}


if __name__ == "__main__":
    main()
