"""Recipe pack vs plain decoding: decode tokens/s, latency, acceptance, byte identity.

    .venv/bin/python benchmarks/recipes.py A.kolm [B.kolm ...] [--inputs 40] [--rounds 2] [--hook]

For each artifact: its held-out inputs, answered by ONE loaded student whose pack
is switched on and off input by input (alternating which goes first), so both
modes share the process, the llama.cpp context, the inputs and the machine's
load at that moment. Per input it also times the prompt alone (prompt + first
token, plain), so decode tokens/s = (generated - 1) / (latency - prompt time).
Checks that every answer and its confidence are byte-identical in both modes.
`--hook` also measures llama-cpp-python's own speculative hook
(`Llama(draft_model=...)`, a LlamaDraftModel backed by the same pack) on the
same inputs. llama.cpp runs on 1 thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--inputs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hook", action="store_true", help="Also time the LlamaDraftModel hook.")
    ap.add_argument("--json", dest="as_json", action="store_true")
    args = ap.parse_args()
    results = [
        measure(a, args.inputs, args.rounds, args.threads, args.hook) for a in args.artifacts
    ]
    if args.as_json:
        print(json.dumps(results, indent=1))
    else:
        print(table(results))


def measure(path: Path, n: int, rounds: int, threads: int, hook: bool) -> dict:
    from kolm.runner import load_student

    art, student = load_student(path, threads=threads)
    pack = student.pack
    if pack is None:
        raise SystemExit(f"{path} has no recipe pack (or was built without flash attention)")
    rows = [json.loads(x) for x in art.read_text("heldout.jsonl").splitlines() if x.strip()]
    inputs = [r["input"] for r in rows][:n]
    stats = {"plain": _Acc(), "pack": _Acc()}
    identical = True
    same_conf = 0
    student.answer(inputs[0])  # warm-up
    for r in range(rounds):
        for i, text in enumerate(inputs):
            prompt_s = _prompt_time(student, text)
            order = ("plain", "pack") if (i + r) % 2 == 0 else ("pack", "plain")
            got = {}
            for mode in order:
                student.pack = pack if mode == "pack" else None
                got[mode] = _timed(student, text)
                stats[mode].add(got[mode], prompt_s)
            a, b = got["plain"][0], got["pack"][0]
            identical &= (a.output, a.completion_tokens) == (b.output, b.completion_tokens)
            same_conf += a.confidence == b.confidence
    student.pack = pack
    out = {
        "artifact": str(path),
        "task": art.manifest["task"]["name"],
        "output_kind": art.manifest["task"]["output_kind"],
        "inputs": len(inputs),
        "rounds": rounds,
        "threads": threads,
        "byte_identical": identical,
        "same_confidence": f"{same_conf}/{len(inputs) * rounds}",
        "pack_entries": pack.entries,
        "pack_bytes": len(pack.to_bytes()),
        "plain": stats["plain"].summary(),
        "pack": stats["pack"].summary(),
    }
    out["decode_speedup"] = round(out["pack"]["decode_tok_s"] / out["plain"]["decode_tok_s"], 3)
    out["latency_speedup"] = round(
        out["plain"]["latency_mean_ms"] / out["pack"]["latency_mean_ms"], 3
    )
    if hook:
        out["hook"] = _hook(student, pack, inputs, stats)
    student.close()
    return out


class _Acc:
    def __init__(self):
        self.lat, self.decode_s, self.tokens = [], 0.0, 0
        self.drafted = self.proposed = self.generated = 0

    def add(self, timed, prompt_s: float) -> None:
        ans, dec, secs = timed
        self.lat.append(secs)
        self.decode_s += max(secs - prompt_s, 1e-6)
        self.tokens += dec.generated - 1
        self.generated += dec.generated
        self.drafted += dec.drafted
        self.proposed += dec.proposed

    def summary(self) -> dict:
        return {
            "decode_tok_s": round(self.tokens / self.decode_s, 2),
            "latency_mean_ms": round(1000 * statistics.fmean(self.lat), 1),
            "latency_p50_ms": round(1000 * statistics.median(self.lat), 1),
            "drafted_share": round(self.drafted / self.generated, 4) if self.generated else 0,
            "acceptance": round(self.drafted / self.proposed, 4) if self.proposed else None,
            "generated_tokens": self.generated,
        }


def _timed(student, text: str):
    """(answer, decode record, seconds) for one input in the student's current mode."""
    t0 = time.perf_counter()
    ans = student.answer(text)
    return ans, student.last_decode, time.perf_counter() - t0


def _prompt_time(student, text: str) -> float:
    """Prompt evaluation plus the first token, plain (what both modes pay before decoding)."""
    saved, student.decoding = student.decoding, replace(student.decoding, max_tokens=1)
    pack, student.pack = student.pack, None
    try:
        t0 = time.perf_counter()
        student.answer(text)
        return time.perf_counter() - t0
    finally:
        student.decoding, student.pack = saved, pack


def _hook(student, pack, inputs: list[str], stats: dict) -> dict:
    """llama-cpp-python's draft_model hook with the pack as drafter, same inputs."""
    import numpy as np
    from llama_cpp import Llama, LogitsProcessorList
    from llama_cpp.llama_speculative import LlamaDraftModel

    from kolm.decompose.draft import Pieces
    from kolm.decompose.mine import MAX_DRAFT, chain

    class PackDrafter(LlamaDraftModel):
        prompt_len = 0

        def __call__(self, input_ids, /, **kwargs):
            answer = [int(t) for t in input_ids[self.prompt_len :]]
            text = b"".join(pieces(t) for t in answer)
            return np.array(chain(pack, answer, text, pieces, MAX_DRAFT), dtype=np.intc)

    drafter = PackDrafter()
    llm0 = student._llm
    llm = Llama(
        model_path=llm0.model_path,
        lora_path=llm0.lora_path,
        n_ctx=student.decoding.n_ctx,
        n_threads=student.decoding.threads,
        n_threads_batch=student.decoding.threads,
        flash_attn=True,
        draft_model=drafter,
        verbose=False,
    )
    pieces = Pieces(llm)
    lat, same = [], True
    for text in inputs:
        tokens = student.prompt_tokens(text)
        drafter.prompt_len = len(tokens)
        t0 = time.perf_counter()
        out = llm.create_completion(
            tokens,
            max_tokens=student.decoding.max_tokens,
            temperature=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            logits_processor=LogitsProcessorList([lambda _i, x: x]),
            stop=[student.fmt.eos],
        )
        lat.append(time.perf_counter() - t0)
        plain = student.answer(text).output
        same &= out["choices"][0]["text"].strip() == plain
    llm.close()
    mine_mean = statistics.fmean(stats["pack"].lat)
    return {
        "latency_mean_ms": round(1000 * statistics.fmean(lat), 1),
        "byte_identical_outputs": same,
        "vs_own_loop": round(statistics.fmean(lat) / mine_mean, 3),
        "note": "generate() reuses the KV cache's common prefix with the previous prompt",
    }


def table(results: list[dict]) -> str:
    lines = [
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; python {platform.python_version()}",
        "| task | kind | inputs×rounds | plain tok/s | pack tok/s | decode speedup | latency plain / pack (mean ms) | acceptance | drafted share | identical |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        p, k = r["plain"], r["pack"]
        lines.append(
            f"| {r['task']} | {r['output_kind']} | {r['inputs']}×{r['rounds']} | {p['decode_tok_s']} | "
            f"{k['decode_tok_s']} | **{r['decode_speedup']}×** | {p['latency_mean_ms']} / "
            f"{k['latency_mean_ms']} | {k['acceptance']} | {k['drafted_share']} | {r['byte_identical']} |"
        )
        if "hook" in r:
            h = r["hook"]
            lines.append(
                f"| {r['task']} via LlamaDraftModel hook | | {r['inputs']} | | | | {h['latency_mean_ms']} "
                f"(×{h['vs_own_loop']} of own loop) | | | {h['byte_identical_outputs']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
