"""The shipped example's student and floor under k-fold cross-validation.

    .venv/bin/python benchmarks/tickets_cv.py                       # 5 folds, the shipped settings
    .venv/bin/python benchmarks/tickets_cv.py --set batch_size=8    # the example's setting until 2026-12-06
    .venv/bin/python benchmarks/tickets_cv.py --instruction-file benchmarks/tickets_described.txt
    .venv/bin/python benchmarks/tickets_cv.py --base gemma3-270m --rows-out gemma-rows.jsonl
    .venv/bin/python benchmarks/tickets_cv.py --set lora_dropout=0.1
    .venv/bin/python benchmarks/tickets_cv.py --rows-out rows.jsonl --label-scores
    .venv/bin/python benchmarks/tickets_cv.py --hard-negatives dpo
    .venv/bin/python benchmarks/tickets_cv.py --base gemma3-270m --grpo
    .venv/bin/python benchmarks/tickets_cv.py --soup 3 --only 0 --rows-out soup-rows.jsonl
    .venv/bin/python benchmarks/tickets_cv.py --soup 3 --same-init --only 0
    .venv/bin/python benchmarks/tickets_cv.py --neftune 5 --rows-out nef5-rows.jsonl
    .venv/bin/python benchmarks/tickets_cv.py --compare b8-rows.jsonl b4-rows.jsonl

The compile scores the student on one split: 64 held-out rows, where one row is 1.6
points and a 95% interval is about ±10 points wide. This scores every one of the 323
examples once instead: the rows are cut into `--folds` stratified folds (seed 0), and for
each fold a student is trained on the others with the shipped example's `train`
settings, plus the spec's `train.per_base` entry for the base as a compile applies it
and then the command line's (the same code the compile runs: `kolm.train.train_lora`), and the TF-IDF floor
is fitted on the same rows (`kolm.floor`). The student's answers are greedy PyTorch
decoding of the trained adapter, which agreed with llama.cpp on 64/64 held-out rows of
this task (docs/benchmarks.md), so the figure is the one a compile would print.

Prints a JSON line per fold, then the totals: student and floor accuracy over all rows
(the student's with its 95% Wilson interval), the per-fold paired difference (mean and
standard deviation), the rows only one of them gets right and the exact McNemar p-value.
`benchmarks/tickets_described.txt` is an instruction that defines each queue. `--set`
changes any other train setting; `--rows-out` keeps every row's answer (JSON lines), and
with `--label-scores` each label's log-probability under the student and the floor's
class probabilities, for comparing two runs row by row or combining student and floor.
`--hard-negatives METHOD` adds a preference stage after SFT (`kolm.align`, the compile's
code) with a pair for every training row: its label against the wrong label the SFT
student scores highest on it. `--grpo` adds the compile's GRPO stage after SFT instead.
`--soup N` trains N students that differ only in their seed and scores one
model holding the mean of their LoRA updates; each seed's answers are kept beside it,
with their majority vote (`--same-init`: the seed changes the order of the batches,
not the LoRA initialisation). `--neftune ALPHA` adds NEFTune noise to the input
embeddings in training.
`--compare A B` trains nothing: it reads two `--rows-out` files of the same folds and
prints each one's accuracy per fold, the rows only one of them gets right and the exact
McNemar p-value (B against A).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples/support-tickets/kolm.yaml"


def folds(examples: list, k: int, seed: int) -> list[list[int]]:
    """Stratified folds: each label's rows shuffled, then dealt round-robin."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[e.output].append(i)
    out: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for label in sorted(by_label):
        rows = by_label[label][:]
        rng.shuffle(rows)
        for i in rows:
            out[dealt % k].append(i)
            dealt += 1
    return out


def label_scores(model, tok, fmt, prompts: list, labels: list[str]) -> list[list[float]]:
    """Each prompt's log-probability of each label in full (its tokens, then end-of-turn),
    the labels of one prompt run as one right-padded batch."""
    import torch

    from kolm.train import answer_ids

    answers = [answer_ids(tok, fmt, label) for label in labels]
    out = []
    with torch.no_grad():
        for p in prompts:
            width = len(p) + max(map(len, answers))
            ids = torch.zeros((len(answers), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, a in enumerate(answers):
                ids[k, : len(p) + len(a)] = torch.tensor(p + a)
                mask[k, : len(p) + len(a)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            row = []
            for k, a in enumerate(answers):
                logp = logits[k, len(p) - 1 : len(p) - 1 + len(a)].log_softmax(-1)
                row.append(sum(logp[j, t].item() for j, t in enumerate(a)))
            out.append(row)
    return out


def hard_negatives(model, tok, fmt, instruction: str, train: list, labels: list[str]) -> list:
    """A pair for every training row: its label against the wrong label the student scores
    highest on that input (the student is right on nearly all of them, so its own wrong
    answers give almost no pairs)."""
    from kolm.align import Pair
    from kolm.train import prompt_ids

    prompts = prompt_ids(tok, fmt, instruction, [e.input for e in train])
    out = []
    for e, row in zip(train, label_scores(model, tok, fmt, prompts, labels), strict=True):
        wrong = max((s, lab) for s, lab in zip(row, labels, strict=True) if lab != e.output)
        out.append(Pair(e.input, e.output, wrong[1], "student"))
    return out


def held_prompts(tok, fmt, instruction: str, train: list, held: list) -> tuple[list, int]:
    """(the held-out rows' prompts as token ids, the answer length greedy decoding allows:
    the longest training answer + 8 tokens)."""
    from kolm.train import answer_ids, prompt_ids

    max_new = max(len(answer_ids(tok, fmt, e.output)) for e in train) + 8
    return prompt_ids(tok, fmt, instruction, [e.input for e in held]), max_new


def soup(
    base, fmt, instruction: str, train: list, held: list, cfg, n: int, same_init: bool = False
) -> tuple:
    """`n` students trained alike but for the seed (`cfg.seed`, `cfg.seed + 1`, ...), and
    one model whose weights are the base plus the mean of their LoRA updates (a uniform
    soup; the same as one LoRA of n times the rank). `same_init`: the seed changes only
    the order of the batches, and every student starts from the same LoRA initialisation.
    (the soup as a plain model, the tokenizer, each seed's greedy answers, the students'
    training seconds and steps, summed)."""
    from unittest import mock

    import torch

    import kolm.train
    from kolm.train import greedy_outputs, train_lora

    batches = kolm.train._bucketed_batches
    mean: dict[str, torch.Tensor] = {}
    answers, secs, steps = [], 0.0, 0
    for j in range(n):

        def order(lengths, size, n_steps, seed, j=j):
            return batches(lengths, size, n_steps, seed + j)

        c = cfg if same_init else dataclasses.replace(cfg, seed=cfg.seed + j)
        with mock.patch.object(kolm.train, "_bucketed_batches", order if same_init else batches):
            res = train_lora(base.gguf, fmt, instruction, train, c, None, progress=False)
        tok, model = res.tokenizer, res.model
        secs, steps = secs + res.seconds, steps + res.steps
        answers.append(
            greedy_outputs(model, tok, *held_prompts(tok, fmt, instruction, train, held))
        )
        with torch.no_grad():
            own = {  # PEFT's module name -> this student's update to its weight
                name: mod.get_delta_weight("default")
                for name, mod in model.named_modules()
                if "default" in getattr(mod, "lora_A", {})
            }
            for name, d in own.items():
                mean[name] = mean[name] + d / n if name in mean else d / n
    with torch.no_grad():
        merged = model.merge_and_unload()  # the base plus the last student's update
        for name, mod in merged.named_modules():
            key = "base_model.model." + name
            if key in mean:
                mod.weight += mean[key] - own[key]
    merged.eval()
    return merged, tok, answers, secs, steps


def neftune(alpha: float, fmt, instruction: str, train: list):
    """A patch for `kolm.train.lora_model` that adds NEFTune noise (Jain et al. 2023) to
    the input embeddings while the model trains: uniform in ±alpha / sqrt(L × width), L
    the training rows' mean length in tokens (a row's own length, also when the batch
    is packed into one sequence). Evaluation (`model.eval()`) adds none."""
    from unittest import mock

    import kolm.train
    from kolm.train import answer_ids, prompt_ids

    plain = kolm.train.lora_model

    def lora_model(base_gguf, cfg):
        import torch

        model, tok, device = plain(base_gguf, cfg)
        prompts = prompt_ids(tok, fmt, instruction, [e.input for e in train])
        n = sum(
            len(p) + len(answer_ids(tok, fmt, e.output))
            for p, e in zip(prompts, train, strict=True)
        )
        embed = model.get_input_embeddings()
        scale = alpha / math.sqrt(n / len(train) * embed.weight.shape[1])

        def noise(module, args, out):
            if not module.training:
                return out
            return out + torch.empty_like(out).uniform_(-scale, scale)

        embed.register_forward_hook(noise)
        return model, tok, device

    return mock.patch.object(kolm.train, "lora_model", lora_model)


def run_fold(
    spec, base, fmt, instruction: str, train: list, held: list, scores: bool = False,
    hard: str | None = None, work: Path | None = None, grpo: bool = False, n_soup: int = 0,
    same_init: bool = False, nef: float = 0.0,
) -> dict:  # fmt: skip
    from kolm.floor import label_floor
    from kolm.train import greedy_outputs, train_lora

    t = time.perf_counter()
    seeds: list = []
    if n_soup:
        model, tok, seeds, secs, steps = soup(
            base, fmt, instruction, train, held, spec.train, n_soup, same_init
        )
        result = argparse.Namespace(
            model=model, tokenizer=tok, seconds=secs, steps=steps, tokens_per_second=0.0
        )
    elif nef:
        with neftune(nef, fmt, instruction, train):
            result = train_lora(
                base.gguf, fmt, instruction, train, spec.train, None, progress=False
            )
    else:
        result = train_lora(base.gguf, fmt, instruction, train, spec.train, None, progress=False)
    tok = result.tokenizer
    prompts, max_new = held_prompts(tok, fmt, instruction, train, held)
    stage: dict = {}
    if grpo:
        from kolm.align import grpo as run_grpo
        from kolm.verifier import synthesize

        check = synthesize([e.output for e in train]).passing
        ts = time.perf_counter()
        cfg = dataclasses.replace(spec.train, method="grpo")
        with tempfile.TemporaryDirectory(dir=work) as folder:
            res = run_grpo(
                result.model, tok, fmt, instruction, train, check, cfg, Path(folder), max_new, False
            )
        stage = {
            "stage": "grpo",
            "stage_steps": res.steps,
            "stage_s": round(time.perf_counter() - ts, 1),
            "rewards": [round(x["reward"], 3) for x in res.log if "reward" in x],
        }
    elif hard:
        from kolm.align import align

        labels = sorted({e.output for e in train})
        ts = time.perf_counter()
        pairs = hard_negatives(result.model, tok, fmt, instruction, train, labels)
        cfg = dataclasses.replace(spec.train, method=hard)
        with tempfile.TemporaryDirectory(dir=work) as folder:
            res = align(result.model, tok, fmt, instruction, pairs, cfg, Path(folder), False)
        stage = {
            "stage": hard,
            "pairs": res.pairs,
            "stage_steps": res.steps,
            "stage_s": round(time.perf_counter() - ts, 1),
            "stage_final_loss": res.final_loss,
        }
    answers = greedy_outputs(result.model, tok, prompts, max_new)
    pairs = lambda rows: [(e.input, e.output) for e in rows]  # noqa: E731
    floor = label_floor(pairs(train), pairs(held), sorted({e.output for e in train}))
    gold = [e.output for e in held]
    labels = sorted({e.output for e in train})
    extra: list[dict] = [{} for _ in held]
    if scores:
        from kolm.floor import unfitted_model

        clf = unfitted_model()
        clf.fit([e.input for e in train], [e.output for e in train])
        probs = clf.predict_proba([e.input for e in held])
        logps = label_scores(result.model, tok, fmt, prompts, labels)
        extra = [
            {
                "student_logp": dict(zip(labels, lp, strict=True)),
                "floor_p": dict(zip(list(clf.classes_), map(float, pr), strict=True)),
            }
            for lp, pr in zip(logps, probs, strict=True)
        ]
    student = [a.strip().lower() == g for a, g in zip(answers, gold, strict=True)]
    paired = floor.against(student)
    if seeds:
        stage = {
            "seed_students": [
                sum(a.strip().lower() == g for a, g in zip(s, gold, strict=True)) for s in seeds
            ]
        }
        votes = []
        for x, *each in zip(extra, *seeds, strict=True):
            x["seeds"] = [a.strip().lower() for a in each]
            top, count = Counter(x["seeds"]).most_common(1)[0]
            votes.append(top if count > 1 else x["seeds"][0])  # no majority: seed 0's
        stage["seed_vote"] = sum(v == g for v, g in zip(votes, gold, strict=True))
        stage["seed_any"] = sum(g in x["seeds"] for x, g in zip(extra, gold, strict=True))
    return {
        "rows": [
            {"input": e.input, "gold": g, "student": a.strip().lower(), "floor": bool(f), **x}
            for e, g, a, f, x in zip(held, gold, answers, floor.correct, extra, strict=True)
        ],
        "n": len(held),
        "student": sum(student),
        "floor": sum(floor.correct),
        "only_student": paired["only_student"],
        "only_floor": paired["only_floor"],
        "not_a_label": sum(
            a.strip().lower() not in set(gold) | {e.output for e in train} for a in answers
        ),
        "train_steps": result.steps,
        "train_s": round(result.seconds, 1),
        "tokens_per_s": round(result.tokens_per_second, 1),
        "seconds": round(time.perf_counter() - t, 1),
        **stage,
    }


def compare(a_path: Path, b_path: Path, only: list[int] | None = None) -> dict:
    """Two runs' rows files, row by row: the same folds must hold the same rows.

    `only`: compare these folds alone (a run stopped early against a whole one)."""
    from kolm.evaluate import paired_p_value

    def load(path: Path) -> dict[tuple, list[bool]]:
        out: dict[tuple, list[bool]] = defaultdict(list)
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if only is not None and r["fold"] not in only:
                    continue
                # scored as run_fold scores it: the stripped, lowered answer is the label
                out[r["fold"], r["input"], r["gold"]].append(r["student"] == r["gold"])
        return out

    a, b = load(a_path), load(b_path)
    if {k: len(v) for k, v in a.items()} != {k: len(v) for k, v in b.items()}:
        raise SystemExit(
            f"{a_path} and {b_path} do not hold the same rows: compare runs of the same "
            "--folds, --seed and --only (with --compare, --only picks the folds to compare)"
        )
    gained = lost = 0
    per_fold: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in sorted(a):
        for x, y in zip(a[key], b[key], strict=True):
            gained += y and not x
            lost += x and not y
            per_fold[key[0]][0] += x
            per_fold[key[0]][1] += y
            per_fold[key[0]][2] += 1
    n = sum(f[2] for f in per_fold.values())
    if n == 0:
        raise SystemExit(f"{a_path} and {b_path} hold no rows in the folds chosen (--only)")
    return {
        "a": str(a_path),
        "b": str(b_path),
        "rows": n,
        "a_accuracy": round(sum(f[0] for f in per_fold.values()) / n, 4),
        "b_accuracy": round(sum(f[1] for f in per_fold.values()) / n, 4),
        "a_per_fold": [per_fold[f][0] for f in sorted(per_fold)],
        "b_per_fold": [per_fold[f][1] for f in sorted(per_fold)],
        "rows_per_fold": [per_fold[f][2] for f in sorted(per_fold)],
        "only_b": gained,
        "only_a": lost,
        "paired_p_value": round(paired_p_value(gained, lost), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="train nothing: compare two --rows-out files row by row",
    )
    ap.add_argument("--spec", type=Path, default=TASK)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--instruction-file", type=Path, help="replace the task description")
    ap.add_argument("--epochs", type=float)
    ap.add_argument("--learning-rate", type=float)
    ap.add_argument("--base", help="a registered base name instead of the spec's")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other train setting, e.g. --set lora_dropout=0.1 (repeatable)",
    )
    ap.add_argument("--only", type=int, nargs="*", help="run only these folds (0-based)")
    ap.add_argument("--rows-out", type=Path, help="write every row's answers here (JSON lines)")
    ap.add_argument(
        "--label-scores",
        action="store_true",
        help="with --rows-out: also each label's log-probability under the student and the "
        "floor's class probabilities",
    )
    stages = ap.add_mutually_exclusive_group()
    stages.add_argument(
        "--hard-negatives",
        metavar="METHOD",
        choices=("dpo", "orpo", "kto", "simpo"),
        help="after SFT, a preference stage with a pair for every training row: its label "
        "against the wrong label the student scores highest",
    )
    stages.add_argument(
        "--grpo",
        action="store_true",
        help="after SFT, a GRPO stage with the verifier as reward (kolm.align.grpo)",
    )
    stages.add_argument(
        "--soup",
        type=int,
        metavar="N",
        help="train N students (seeds seed..seed+N-1) and score the mean of their LoRA "
        "updates; each seed's answers are kept too",
    )
    ap.add_argument(
        "--same-init",
        action="store_true",
        help="with --soup: every student starts from the same LoRA initialisation; the seed "
        "changes only the order of the batches",
    )
    stages.add_argument(
        "--neftune",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="NEFTune: noise of this alpha on the input embeddings while training (5 is usual)",
    )
    args = ap.parse_args()
    if args.same_init and not args.soup:
        ap.error("--same-init needs --soup N")
    if args.compare:
        print(json.dumps(compare(*args.compare, only=args.only)))
        return

    from kolm.basemodel import resolve
    from kolm.data import load_examples
    from kolm.prompt import format_from_gguf
    from kolm.spec import load_spec

    spec = load_spec(args.spec)
    if args.base:
        spec = dataclasses.replace(spec, base=args.base)
    spec, _ = spec.on_its_base()  # the base's `train.per_base` entry, as compile applies it
    changes = {}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.learning_rate is not None:
        changes["learning_rate"] = args.learning_rate
    for item in args.set:
        field, _, value = item.partition("=")
        current = getattr(spec.train, field)
        changes[field] = type(current)(value) if current is not None else int(value)
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **changes))
    instruction = (
        args.instruction_file.read_text().strip() if args.instruction_file else spec.description
    )
    base = resolve(spec.base, spec.spec_path.parent)
    fmt = format_from_gguf(base.gguf)
    examples = load_examples(spec.examples)
    parts = folds(examples, args.folds, args.seed)
    rows = []
    work = args.rows_out.parent if args.rows_out else None
    for f, held_idx in enumerate(parts):
        if args.only and f not in args.only:
            continue
        held_set = set(held_idx)
        train = [e for i, e in enumerate(examples) if i not in held_set]
        random.Random(args.seed + f).shuffle(train)
        held = [examples[i] for i in held_idx]
        res = run_fold(
            spec, base, fmt, instruction, train, held, args.label_scores, args.hard_negatives, work,
            args.grpo, args.soup or 0, args.same_init, args.neftune,
        )  # fmt: skip
        row = {"fold": f, **res}
        answers = row.pop("rows")
        if args.rows_out:
            with args.rows_out.open("a") as fh:
                fh.writelines(json.dumps({"fold": f, **a}) + "\n" for a in answers)
        rows.append(row)
        print(json.dumps(row), flush=True)
    from kolm.evaluate import paired_p_value, wilson_interval

    n = sum(r["n"] for r in rows)
    right = sum(r["student"] for r in rows)
    diffs = [(r["student"] - r["floor"]) / r["n"] for r in rows]
    summary = {
        "base": spec.base,
        "instruction": str(args.instruction_file or "the spec's"),
        "epochs": spec.train.epochs,
        "learning_rate": spec.train.learning_rate,
        "set": args.set,
        "hard_negatives": args.hard_negatives,
        "grpo": args.grpo,
        "soup": args.soup,
        "same_init": args.same_init,
        "neftune": args.neftune,
        "seed_accuracy": [
            round(sum(r["seed_students"][j] for r in rows) / n, 4) for j in range(args.soup)
        ]
        if args.soup
        else None,
        "seed_vote_accuracy": round(sum(r["seed_vote"] for r in rows) / n, 4)
        if args.soup
        else None,
        "rows": n,
        "student_accuracy": round(right / n, 4),
        "floor_accuracy": round(sum(r["floor"] for r in rows) / n, 4),
        "student_minus_floor_per_fold_mean": round(statistics.mean(diffs), 4),
        "student_minus_floor_per_fold_sd": round(statistics.stdev(diffs), 4)
        if len(diffs) > 1
        else None,
        "student_per_fold": [round(r["student"] / r["n"], 4) for r in rows],
        "student_ci95": [round(x, 4) for x in wilson_interval(right, n)],
        "only_student": sum(r["only_student"] for r in rows),
        "only_floor": sum(r["only_floor"] for r in rows),
        "paired_p_value": round(
            paired_p_value(
                sum(r["only_student"] for r in rows), sum(r["only_floor"] for r in rows)
            ),
            4,
        ),
        "not_a_label": sum(r["not_a_label"] for r in rows),
        "train_seconds": round(sum(r["train_s"] for r in rows), 1),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
