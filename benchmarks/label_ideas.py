"""Two ideas for a label task's accuracy, measured before either is built into kolm.

    OMP_NUM_THREADS=1 python benchmarks/label_ideas.py --work label-ideas-work
    OMP_NUM_THREADS=1 python benchmarks/label_ideas.py --work label-ideas-work --base gemma3-270m --skip-demos

(`--skip-plain` runs only the demonstrations compile; `--batch-size 8 --learning-rate
0.002` trains as the example did before 2026-12-06, when the figures in
docs/benchmarks.md were taken.)

On the shipped example (examples/support-tickets, its own split and seed):

1. **Neighbours as demonstrations.** Every input, in training and held-out alike, is
   shown with its `--demos` nearest *training* examples (all-MiniLM-L6-v2 cosine,
   the row itself excluded) and their labels. The task is rewritten with those
   inputs (the split is by position and label, so it is unchanged) and compiled.
2. **The student times the floor.** The plain compile's student scores every label
   in full (sum of its tokens' log-probabilities, PyTorch, adapter as trained); the
   TF-IDF floor gives its class probabilities; the product (no weight fitted on the
   held-out rows) picks the label.

Prints held-out accuracy for: the plain student (llama.cpp, and PyTorch scoring every
label in full), the floor, either-correct by the PyTorch scores (an upper bound for
any combination) with the rows only one of them gets right, the product, the
neighbours on their own (is the label among them; a similarity-weighted vote), and
the demonstrations compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples/support-tickets"


def _split(spec, examples=None):
    from kolm.data import load_examples, split_heldout

    examples = load_examples(spec.examples) if examples is None else examples
    return split_heldout(examples, spec.heldout_fraction, spec.seed)


def demos_task(k: int, folder: Path) -> tuple[Path, dict]:
    """A copy of the shipped task whose inputs carry their k nearest training examples,
    and how good the neighbours of the held-out rows are on their own."""
    import numpy as np

    from kolm.data import load_examples
    from kolm.recall.embed import Embedder
    from kolm.spec import load_spec

    spec = load_spec(TASK / "kolm.yaml")
    examples = load_examples(spec.examples)
    train, held = _split(spec, examples)
    in_held = {id(e) for e in held}
    covered = voted = 0
    in_train = {id(e) for e in train}
    assert len(in_train) == len(train) and len(train) < len(examples)
    vecs = np.array(Embedder().encode([e.input for e in examples]), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    train_rows = [i for i, e in enumerate(examples) if id(e) in in_train]
    folder.mkdir(parents=True, exist_ok=True)
    for f in TASK.iterdir():
        if f.name != spec.examples.name:
            shutil.copy(f, folder / f.name)
    with open(folder / spec.examples.name, "w") as out:
        for i, e in enumerate(examples):
            sims = vecs[train_rows] @ vecs[i]
            ranked = [j for j in np.argsort(-sims) if train_rows[j] != i][:k]
            near = [train_rows[j] for j in ranked]
            if (
                id(e) in in_held
            ):  # the neighbours alone: is the label there, and does a vote find it
                covered += e.output in {examples[j].output for j in near}
                votes: dict[str, float] = {}
                for j in ranked:
                    label = examples[train_rows[j]].output
                    votes[label] = votes.get(label, 0.0) + float(sims[j])
                voted += max(votes, key=votes.__getitem__) == e.output
            shown = "\n".join(
                f"- {examples[j].input} => {examples[j].output}" for j in reversed(near)
            )
            text = f"Similar past tickets and their queues:\n{shown}\nTicket: {e.input}"
            out.write(json.dumps({"input": text, "output": e.output}) + "\n")
    n = len(held)
    return folder / "kolm.yaml", {
        "label_among_neighbours": covered / n,
        "neighbour_vote": voted / n,
    }


def compile_one(
    spec_path: Path, base: str | None, work: Path, out: Path, settings: dict | None = None
) -> dict:
    from kolm.compiler import compile_task
    from kolm.spec import load_spec

    spec = load_spec(spec_path)
    if base:
        spec = dataclasses.replace(spec, base=base)
    if settings:
        spec = dataclasses.replace(spec, train=spec.train.with_settings(**settings))
    t = time.perf_counter()
    r = compile_task(spec, out, work_dir=work, force=True)
    m = r.manifest["metrics"]
    return {
        "accuracy": m["student"]["accuracy"],
        "floor": m["floor"]["accuracy"],
        "K": r.manifest["kscore"]["K"],
        "train_s": m["train"]["seconds"],
        "wall_s": round(time.perf_counter() - t, 1),
        "spec": spec,
    }


def label_logprobs(spec, work: Path) -> tuple[list[str], list[list[float]], list[str]]:
    """Every held-out input's log-probability of each label in full, from the trained adapter."""
    from tickets_cv import label_scores  # benchmarks/ is on the path when run as a script

    from kolm.basemodel import resolve
    from kolm.prompt import format_from_gguf
    from kolm.train import load_adapter, prompt_ids

    train, held = _split(spec)
    base = resolve(spec.base, spec.spec_path.parent)
    fmt = format_from_gguf(base.gguf)
    adapters = sorted(work.rglob("adapter.pt"))
    assert len(adapters) == 1, f"one training stage expected in {work}, found {adapters}"
    adapter = adapters[0]
    model, tok = load_adapter(base.gguf, spec.on_its_base()[0].train, adapter)
    model.eval()
    labels = sorted({e.output for e in train})
    prompts = prompt_ids(tok, fmt, spec.description, [e.input for e in held])
    return labels, label_scores(model, tok, fmt, prompts, labels), [e.output for e in held]


def product_with_floor(spec, work: Path) -> dict:
    import numpy as np

    from kolm.floor import unfitted_model

    labels, rows, gold = label_logprobs(spec, work)
    train, held = _split(spec)
    floor = unfitted_model()  # the floor itself, kept for its class probabilities
    floor.fit([e.input for e in train], [e.output for e in train])
    assert list(floor.classes_) == labels
    f = np.log(floor.predict_proba([e.input for e in held]))
    s = np.array(rows)
    s -= np.logaddexp.reduce(s, axis=1, keepdims=True)
    g = np.array([labels.index(y) for y in gold])
    student, fl = s.argmax(1) == g, f.argmax(1) == g
    return {
        "student_full_label": float(student.mean()),
        "floor": float(fl.mean()),
        "either": float((student | fl).mean()),
        "both_right": int((student & fl).sum()),
        "only_student": int((student & ~fl).sum()),
        "only_floor": int((~student & fl).sum()),
        "product": float(((s + f).argmax(1) == g).mean()),
        "n": len(g),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("label-ideas-work"))
    ap.add_argument("--base", default=None, help="registered base (default: the example's)")
    ap.add_argument("--demos", type=int, default=4)
    ap.add_argument("--skip-demos", action="store_true")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--batch-size", type=int, help="train.batch_size (default: the example's)")
    ap.add_argument(
        "--learning-rate", type=float, help="train.learning_rate (default: the base's own)"
    )
    args = ap.parse_args()
    settings = {"batch_size": args.batch_size, "learning_rate": args.learning_rate}
    settings = {k: v for k, v in settings.items() if v is not None}
    args.work.mkdir(parents=True, exist_ok=True)
    tag = args.base or "default"
    if not args.skip_plain:
        work = args.work / f"plain-{tag}"
        plain = compile_one(
            TASK / "kolm.yaml", args.base, work, args.work / f"plain-{tag}.kolm", settings
        )
        combo = product_with_floor(plain["spec"], work)
        print(json.dumps({"plain": {k: v for k, v in plain.items() if k != "spec"}, **combo}))
    if not args.skip_demos:
        spec_path, near = demos_task(args.demos, args.work / f"demos{args.demos}-task")
        demos = compile_one(
            spec_path,
            args.base,
            args.work / f"demos-{tag}",
            args.work / f"demos-{tag}.kolm",
            settings,
        )
        shown = {k: v for k, v in demos.items() if k != "spec"}
        print(json.dumps({"demos": args.demos, **near, **shown}))


if __name__ == "__main__":
    main()
