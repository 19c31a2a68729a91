"""Recipe pack vs plain decoding (and llama-cpp-python's draft hook), side by side.

    .venv/bin/python benchmarks/recipes.py A.kolm [B.kolm ...] [--inputs 40] [--rounds 2]
        [--threads 1] [--hook] [--remine] [--merge q8_0] [--adapter f32] [--no-anchors]
        [--max-draft N] [--json]

For each artifact: its held-out inputs, answered in every mode by the same process
input by input, the order of the modes rotated from one input to the next, so all
modes share the llama.cpp build, the inputs and the machine's load at that moment.
Modes: `plain` (one token per step), `pack` (kolm's drafting loop, `decompose.draft`)
`noanchor` (with `--no-anchors`: the same pack without its value anchors), `long`
(with `--max-draft N`: the pack with a draft limit of N tokens instead of the default)
and, with `--hook`, `hook`: llama-cpp-python's own speculative decoding
(`Llama(draft_model=...)`) with a `LlamaDraftModel` backed by the same pack, in a
second `Llama` on the same model files. Per input the prompt alone (prompt + first
token, plain) is timed too, so decode tokens/s = (generated - 1) / (latency - prompt
time). Checks that every answer (and, for the two kolm modes, its confidence) is
byte-identical to plain decoding.

`--remine` mines the pack again from the artifact's own training outputs with this
kolm (for artifacts compiled before a change to mining). `--merge KIND` measures a
merged build instead: the artifact's adapter merged into its base at KIND (`q8_0`,
`q4_0`, `f16`) by `kolm.merge`, to show how the base's quantization changes what a
batched evaluation costs. `--adapter TYPE` measures the artifact's adapter rewritten
at TYPE (`f32`, as compiles before 2026-12-05 wrote it, or `q8_0`, as they write it now)
by `kolm.export`, to show which gives batched logits equal to one-token steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MODES = ("plain", "pack", "hook", "noanchor", "long")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--inputs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hook", action="store_true", help="Also time the LlamaDraftModel hook.")
    ap.add_argument("--remine", action="store_true", help="Mine the pack again with this kolm.")
    ap.add_argument("--merge", default=None, help="Measure a merged build at this precision.")
    ap.add_argument("--adapter", default=None, help="Measure the adapter rewritten at this type.")
    ap.add_argument(
        "--no-anchors",
        action="store_true",
        help="Also time the pack without its value anchors (mode `noanchor`).",
    )
    ap.add_argument(
        "--max-draft",
        type=int,
        default=None,
        help="Also time the pack with this draft limit (mode `long`).",
    )
    ap.add_argument("--json", dest="as_json", action="store_true")
    args = ap.parse_args()
    results = [measure(a, args) for a in args.artifacts]
    if args.as_json:
        print(json.dumps(results, indent=1))
    else:
        print(table(results))


def measure(path: Path, args) -> dict:
    from kolm.runner import load_pack, load_student

    art, student = load_student(path, threads=args.threads)
    pack = _remined(art) if args.remine else load_pack(art)
    if pack is None:
        raise SystemExit(f"{path} has no recipe pack")
    if not student.decoding.flash_attn:
        raise SystemExit(f"{path} was built without flash attention: it does not draft")
    if args.merge:
        student = _merged(art, student, pack, args.merge)
    elif args.adapter:
        student = _retyped(art, student, pack, args.adapter)
    note = student.draft_note  # the load-time probe's verdict on this model and machine
    student.pack = pack
    rows = [json.loads(x) for x in art.read_text("heldout.jsonl").splitlines() if x.strip()]
    inputs = [r["input"] for r in rows][: args.inputs]
    modes = ["plain", "pack", *(["hook"] if args.hook else [])]
    run = {"plain": _kolm(student, None), "pack": _kolm(student, pack)}
    if args.no_anchors:
        modes.append("noanchor")
        run["noanchor"] = _kolm(student, replace(pack, anchors={}))
    if args.max_draft:
        modes.append("long")
        run["long"] = _kolm(student, pack, args.max_draft)
    hook = _Hook(student, pack) if args.hook else None
    if hook:
        run["hook"] = hook
    stats = {m: _Acc() for m in modes}
    identical = {m: True for m in modes if m != "plain"}
    same_conf = 0
    assert modes[0] == "plain"
    for m in modes:
        run[m](inputs[0])  # warm-up
    for r in range(args.rounds):
        for i, text in enumerate(inputs):
            prompt_s = _prompt_time(student, text)
            k = (i + r) % len(modes)
            got = {m: run[m](text) for m in modes[k:] + modes[:k]}
            for m in modes:
                stats[m].add(got[m], got["plain"], prompt_s)
            for m in identical:
                identical[m] &= got[m].output == got["plain"].output
            same_conf += got["pack"].confidence == got["plain"].confidence
    if hook:
        hook.close()
    student.close()
    out = {
        "artifact": str(path),
        "task": art.manifest["task"]["name"],
        "output_kind": art.manifest["task"]["output_kind"],
        "model": f"merged {args.merge}"
        if args.merge
        else f"base + adapter ({args.adapter or _adapter_type(art)})",
        "remined": args.remine,
        "inputs": len(inputs),
        "rounds": args.rounds,
        "threads": args.threads,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "byte_identical": identical,
        "same_confidence": f"{same_conf}/{len(inputs) * args.rounds}",
        "draft_rows": student.max_rows,
        "draft_note": note,
        "pack_entries": pack.entries,
        "pack_bytes": len(pack.to_bytes()),
        **{m: stats[m].summary() for m in modes},
    }
    base = out["plain"]
    for m in modes[1:]:
        out[m]["decode_speedup"] = round(out[m]["decode_tok_s"] / base["decode_tok_s"], 3)
        out[m]["latency_speedup"] = round(base["latency_mean_ms"] / out[m]["latency_mean_ms"], 3)
    return out


class _Run:
    """One timed answer in one mode."""

    def __init__(self, output, confidence, generated, drafted, proposed, steps, secs):
        self.output, self.confidence = output, confidence
        self.generated, self.drafted, self.proposed = generated, drafted, proposed
        self.steps, self.secs = steps, secs


def _kolm(student, pack, max_draft=None):
    from kolm.decompose.mine import MAX_DRAFT

    def run(text: str) -> _Run:
        # The load-time check's cap stays in force through student.max_rows.
        student.pack, student.max_draft = pack, max_draft or MAX_DRAFT
        t0 = time.perf_counter()
        ans = student.answer(text)
        secs = time.perf_counter() - t0
        d = student.last_decode
        return _Run(ans.output, ans.confidence, d.generated, d.drafted, d.proposed, d.steps, secs)

    return run


class _Acc:
    def __init__(self):
        self.lat, self.decode_s, self.tokens = [], 0.0, 0
        self.drafted = self.proposed = self.generated = self.steps = 0

    def add(self, run: _Run, plain: _Run, prompt_s: float) -> None:
        self.lat.append(run.secs)
        self.decode_s += max(run.secs - prompt_s, 1e-6)
        generated = run.generated or plain.generated  # the hook reports no token counts
        self.tokens += generated - 1
        self.generated += generated
        self.drafted += run.drafted
        self.proposed += run.proposed
        self.steps += run.steps

    def summary(self) -> dict:
        return {
            "decode_tok_s": round(self.tokens / self.decode_s, 2),
            "latency_mean_ms": round(1000 * statistics.fmean(self.lat), 1),
            "latency_p50_ms": round(1000 * statistics.median(self.lat), 1),
            "drafted_share": round(self.drafted / self.generated, 4) if self.generated else 0,
            "acceptance": round(self.drafted / self.proposed, 4) if self.proposed else None,
            "steps_per_answer": round(self.steps / len(self.lat), 2) if self.steps else None,
            "generated_tokens": self.generated,
        }


def _prompt_time(student, text: str) -> float:
    """Prompt evaluation plus the first token, plain (what every mode pays before decoding)."""
    saved, student.decoding = student.decoding, replace(student.decoding, max_tokens=1)
    pack, student.pack = student.pack, None
    try:
        t0 = time.perf_counter()
        student.answer(text)
        return time.perf_counter() - t0
    finally:
        student.decoding, student.pack = saved, pack


def _remined(art):
    from kolm.decompose.mine import base_tokenizer, mine

    config = art.read_json("config.json")
    kind = config["output_kind"]
    rows = {
        name: [json.loads(x) for x in art.read_text(name).splitlines() if x.strip()]
        for name in ("train.jsonl", "heldout.jsonl")
    }
    train, held = rows["train.jsonl"], rows["heldout.jsonl"]
    tok = base_tokenizer(art.materialize("base.gguf"), config["prompt_format"]["eos"])
    return mine(
        [r["output"] for r in train],
        tok,
        labels=config.get("labels") or () if kind == "label" else (),
        json_keys=kind == "json",
        heldout=[r["output"] for r in held],
        inputs=[r["input"] for r in train],
        heldout_inputs=[r["input"] for r in held],
    )


def _merged(art, student, pack, kind: str):
    """A student on the artifact's adapter merged into its base at `kind`."""
    from kolm.merge import merge_gguf
    from kolm.runner import adapter_path
    from kolm.runtime import Student

    out = Path(tempfile.mkdtemp(prefix="kolm-bench-")) / f"merged-{kind}.gguf"
    merge_gguf(art.materialize("base.gguf"), adapter_path(art), out, kind, threads=1)
    merged = Student(out, None, student.fmt, student.instruction, student.decoding, pack=pack)
    student.close()
    return merged


def _retyped(art, student, pack, kind: str):
    """A student on the artifact's base with its adapter rewritten at `kind`."""
    from kolm.basemodel import gguf_metadata
    from kolm.export import read_lora, write_adapter
    from kolm.runner import adapter_path
    from kolm.runtime import Student

    base = art.materialize("base.gguf")
    arch = str(gguf_metadata(base, ("general.architecture",))["general.architecture"])
    out = Path(tempfile.mkdtemp(prefix="kolm-bench-")) / f"adapter-{kind}.gguf"
    alpha, pairs = read_lora(adapter_path(art))
    if write_adapter(pairs, arch, alpha, out, kind) != kind:
        raise SystemExit(f"this adapter cannot be written at {kind}")
    retyped = Student(base, out, student.fmt, student.instruction, student.decoding, pack=pack)
    student.close()
    return retyped


def _adapter_type(art) -> str:
    return (art.manifest.get("adapter") or {}).get("tensor_type", "f32")


class _Hook:
    """llama-cpp-python's draft_model hook with the pack as drafter (a second Llama)."""

    def __init__(self, student, pack):
        import numpy as np
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaDraftModel

        from kolm.decompose.draft import Pieces
        from kolm.decompose.mine import MAX_DRAFT, chain

        hook = self

        class PackDrafter(LlamaDraftModel):
            def __call__(self, input_ids, /, **kwargs):
                answer = [int(t) for t in input_ids[hook.prompt_len :]]
                text = b"".join(hook.pieces(t) for t in answer)
                draft = chain(
                    pack, answer, text, hook.pieces, MAX_DRAFT, hook.source, hook.pieces.tokenize
                )
                return np.array(draft, dtype=np.intc)

        s, d = student, student.decoding
        self.student, self.prompt_len, self.source = student, 0, b""
        self.llm = Llama(
            model_path=s._llm.model_path,
            lora_path=s._llm.lora_path,
            n_ctx=d.n_ctx,
            n_batch=d.n_batch,
            n_threads=d.threads,
            n_threads_batch=d.threads,
            flash_attn=True,
            draft_model=PackDrafter(),
            verbose=False,
        )
        self.pieces = Pieces(self.llm)

    def __call__(self, text: str) -> _Run:
        from llama_cpp import LogitsProcessorList

        s = self.student
        tokens = s.prompt_tokens(text)
        self.prompt_len, self.source = len(tokens), text.encode("utf-8")
        t0 = time.perf_counter()
        out = self.llm.create_completion(
            tokens,
            max_tokens=s.decoding.max_tokens,
            temperature=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            logits_processor=LogitsProcessorList([lambda _i, x: x]),
            stop=[s.fmt.eos],
        )
        secs = time.perf_counter() - t0
        return _Run(out["choices"][0]["text"].strip(), None, 0, 0, 0, 0, secs)

    def close(self) -> None:
        self.llm.close()


def table(results: list[dict]) -> str:
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}",
        "| task | model | threads | mode | decode tok/s | speedup | latency mean ms | "
        "steps/answer | acceptance | drafted share | same as plain | load |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        for m in MODES:
            if m not in r:
                continue
            x = r[m]
            same = "—" if m == "plain" else str(r["byte_identical"][m])
            if m == "pack":
                same += f" (conf {r['same_confidence']})"
            lines.append(
                f"| {r['task']} | {r['model']} | {r['threads']} | {m} | {x['decode_tok_s']} | "
                f"{x.get('decode_speedup', 1.0)}× | {x['latency_mean_ms']} | "
                f"{x['steps_per_answer'] or '—'} | {x['acceptance'] or '—'} | "
                f"{x['drafted_share']} | {same} | {r['load_avg_1m']} |"
            )
    lines += [f"{r['task']}: {r['draft_note']}" for r in results if r["draft_note"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
