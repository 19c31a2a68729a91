"""Align: a stage after SFT with TRL's trainers — preferences (DPO, ORPO, KTO, SimPO) or GRPO.

The stage continues the SFT LoRA on (prompt, chosen, rejected) pairs: the teacher's
verifier-rejected and outvoted samples (`preferences.jsonl`) and on-policy pairs (the
SFT student's own wrong answers on training inputs against the accepted answer).
Every prompt is tokenized by `train.encode`, exactly as SFT and the runtime build it,
and handed to TRL already tokenized, so TRL never re-tokenizes text (a user's text that
spells a control token stays plain text). DPO and KTO measure drift against the SFT
adapter itself (TRL copies it into a frozen `ref` adapter); ORPO and SimPO need no
reference.

GRPO needs no pairs: it samples several answers per training input from the student
itself and rewards each with the verifier (1 when it passes and equals the accepted
answer, `PARTIAL_REWARD` when it passes but differs, 0 when it fails). Sampling goes
through `_rollout`, which builds prompts with the same tokenizer path as SFT, so TRL
never templates or re-tokenizes text here either. No KL term (TRL's default, beta 0):
with a LoRA, TRL's reference would be the bare base, not the SFT adapter. The
instruction every prompt opens with runs once per generation batch and once per pass
(kolm.train's `generate_ids` and `completion_logps`), not once per sampled answer.

A step still averages `train.batch_size` pairs (or GRPO samples), but one pass holds at
most `PASS_TOKENS` tokens: long rows (a 150-label instruction makes a pair ~1,400 tokens)
are split into equal micro-batches whose gradients are accumulated into the same step,
and the pairwise stages recompute activations in the backward pass instead of keeping
them. Short rows (the shipped example's) run in one pass, as before.

This module knows TRL and the pair formats; it knows nothing of llama.cpp, the
artifact or the compile order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kolm.data import Example
from kolm.errors import TrainingError
from kolm.prompt import PromptFormat
from kolm.spec import TRAIN_METHODS as METHODS
from kolm.spec import TrainConfig


@dataclass(frozen=True)
class Pair:
    """One preference: for this input, `chosen` is better than `rejected`."""

    input: str
    chosen: str
    rejected: str
    source: str
    """`teacher` (a rejected or outvoted sample) or `student` (the SFT student's answer)."""


@dataclass
class AlignResult:
    """How the preference stage went (the model is trained in place)."""

    method: str
    pairs: int
    pairs_by_source: dict[str, int]
    steps: int
    seconds: float
    final_loss: float | None
    hyper: dict
    resumed_from: int = 0
    log: list = dataclasses.field(default_factory=list)
    """The trainer's log, one record a step (loss, grad_norm before clipping, ...)."""


def teacher_pairs(rows: Sequence[dict]) -> list[Pair]:
    """Pairs from `DistillReport.preference_pairs()` rows."""
    return [
        Pair(r["input"], r["chosen"], r["rejected"], "teacher")
        for r in rows
        if r["chosen"] != r["rejected"]
    ]


def student_pairs(
    model, tok, fmt, instruction, examples, normalize, contexts=None, max_new=16, progress=False
):
    """On-policy pairs: the SFT student's greedy answers that differ from the accepted one."""
    from kolm.train import greedy_outputs, prompt_ids

    prompts = prompt_ids(tok, fmt, instruction, [e.input for e in examples], contexts)
    answers = greedy_outputs(model, tok, prompts, max_new, bar="answers" if progress else None)
    return [
        Pair(e.input, e.output, a, "student")
        for e, a in zip(examples, answers, strict=True)
        if normalize(a) != normalize(e.output)
    ]


def align(
    model,
    tok,
    fmt: PromptFormat,
    instruction: str,
    pairs: Sequence[Pair],
    cfg: TrainConfig,
    folder: Path,
    progress: bool = True,
    contexts: dict[str, Sequence[str]] | None = None,
) -> AlignResult:
    """Run `cfg.method`'s TRL trainer on `pairs`, continuing the PEFT `model` in place.

    Checkpoints go to `folder` every 20 steps; a rerun resumes from the latest."""
    if cfg.method not in METHODS or cfg.method in ("sft", "grpo"):
        raise TrainingError(f"train.method {cfg.method!r} has no preference stage")
    _quiet()
    rows = _tokenized(tok, fmt, instruction, pairs, cfg, contexts)
    steps = preference_steps(cfg, len(pairs))
    trainer, hyper = _trainer(cfg, model, tok, rows, folder, steps, progress)
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.source] = counts.get(p.source, 0) + 1
    return _train(trainer, model, folder, progress, cfg.method, len(pairs), counts, hyper)


def _train(trainer, model, folder, progress, method, n, counts, hyper) -> AlignResult:
    """Train (resuming from the latest checkpoint in `folder`) and say how it went."""
    _silence(trainer, progress)
    ckpt = _latest_checkpoint(folder)
    t = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    model.eval()
    history = trainer.state.log_history
    losses = [x["loss"] for x in history if "loss" in x]
    rewards = [x["reward"] for x in history if "reward" in x]
    if rewards:
        hyper["mean_reward_first_last"] = [round(rewards[0], 4), round(rewards[-1], 4)]
    zero_std = [x["frac_reward_zero_std"] for x in history if "frac_reward_zero_std" in x]
    if zero_std:
        # a group whose samples all earn the same reward has no advantage, so no gradient:
        # a mean reward of 1.0 at both ends can hide steps that did learn
        hyper["groups_with_signal"] = round(1 - sum(zero_std) / len(zero_std), 4)
    return AlignResult(
        method,
        n,
        counts,
        int(out.global_step),
        time.perf_counter() - t,
        round(losses[-1], 4) if losses else None,
        hyper,
        int(ckpt.name.split("-")[-1]) if ckpt else 0,
        history,
    )


STAGE_VERSION = 3
"""Part of the stage's cache key: raised when the same inputs would train differently
(3: long rows are micro-batched, which changes the last bits of a step)."""
GRPO_VERSION = 2
"""GRPO's own part of that key (2: samples and log-probabilities with the instruction
run once, which draws other samples and holds more rows a pass)."""


def stage_version(method: str) -> int | list[int]:
    """The version part of a stage's cache key for `method`."""
    return [STAGE_VERSION, GRPO_VERSION] if method == "grpo" else STAGE_VERSION


PASS_TOKENS = 2048
"""Most tokens one forward/backward pass of a stage holds. One DPO step over 2 pairs of
~700-token rows (CLINC150's 150-label instruction; 4 sequences) peaked at 10.1 GB RSS in
one pass; 8 pairs a step would have needed ~37 GB (docs/benchmarks.md)."""
MAX_PAIR_PASSES = 3
"""A preference stage sees each pair at most this many times: on the shipped example
40 DPO steps over its 3 pairs (≈107 passes) took held-out accuracy from 76.6% to 57.8%."""


def micro_batch(
    batch: int, row_tokens: int, least: int = 1, budget: int | None = None, rows: int = 0
) -> int:
    """Rows per pass: the largest divisor of `batch` whose rows of `row_tokens` tokens fit
    in `budget` (default `PASS_TOKENS`); when none does, the smallest divisor of at least
    `least` rows (KTO compares rows within a pass).

    When a step takes several passes and `rows` (the stage's dataset size) is given, the
    passes also divide the last, partial step of each pass over the data, so every pass
    of a step holds the same number of rows and their mean is the step's mean."""
    budget = PASS_TOKENS if budget is None else budget
    if batch * row_tokens <= budget:
        return batch  # one pass a step, whatever the last step holds
    least = min(least, batch)
    pools = [batch]
    if rows % batch:
        pools.insert(0, math.gcd(batch, rows % batch))
    for pool in pools:
        divisors = [m for m in range(least, pool + 1) if pool % m == 0]
        if divisors:
            break
    fits = [m for m in divisors if m * row_tokens <= budget]
    return max(fits) if fits else min(divisors)


KTO_LEAST_ROWS = 4
"""Rows a KTO pass holds at least: TRL estimates the KL term from the rows of one pass
(each paired with another pair's answer), and 2 rows would be one pair's."""


def _passes(common: dict, hyper: dict, batch: int, rows: int, checkpoint: bool) -> None:
    """Split each step of `batch` rows into passes of `rows` (gradients accumulated), with
    activation checkpointing when `checkpoint` and the rows did not fit in one pass."""
    common["per_device_train_batch_size"] = rows
    common["gradient_accumulation_steps"] = batch // rows
    hyper["rows_per_pass"] = rows
    if rows < batch and checkpoint:
        common["gradient_checkpointing"] = True
        common["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
        hyper["activation_checkpointing"] = True


def preference_steps(cfg: TrainConfig, pairs: int) -> int:
    """`train.preference_steps`, cut to `MAX_PAIR_PASSES` passes over the pairs."""
    return max(1, min(cfg.preference_steps, -(-MAX_PAIR_PASSES * pairs // cfg.batch_size)))


PARTIAL_REWARD = 0.1
"""GRPO's reward for an answer the verifier accepts that is not the accepted answer."""
GRPO_GENERATIONS = 4
"""Answers sampled per input and compared with each other (GRPO's group size)."""


def grpo(
    model,
    tok,
    fmt: PromptFormat,
    instruction: str,
    examples: Sequence[Example],
    check: Callable[[str], str | None],
    cfg: TrainConfig,
    folder: Path,
    max_new: int,
    progress: bool = True,
    contexts: dict[str, Sequence[str]] | None = None,
    shared: bool = True,
) -> AlignResult:
    """GRPO on the training inputs, continuing the PEFT `model` in place.

    `check(text)` is the verifier: the normalized answer, or None when it fails.
    Checkpoints go to `folder` every 20 steps; a rerun resumes from the latest.

    With `shared` (always, but in `benchmarks/grpo_speed.py`), the instruction every
    prompt opens with runs once per generation batch and once per pass, not once per
    sampled answer: samples come from `train.generate_ids` and log-probabilities from
    `train.completion_logps`, each row computed unpadded. A pass then holds as many
    rows as fit in `PASS_TOKENS` beside one copy of the instruction."""
    from datasets import Dataset
    from trl import GRPOConfig

    from kolm.train import loss_prefix

    _quiet()
    accepted = {e.input: check(e.output) for e in examples}

    def reward(prompts, completions, **_) -> list[float]:
        out = []
        for x, text in zip(prompts, completions, strict=True):
            got = check(text.strip())
            out.append(0.0 if got is None else 1.0 if got == accepted[x] else PARTIAL_REWARD)
        return out

    common = _common_args(cfg, folder, cfg.preference_steps, progress)
    del common["max_length"]
    group = min(GRPO_GENERATIONS, cfg.batch_size)
    batch = max(group, cfg.batch_size - cfg.batch_size % group)
    hyper = {}
    prompts = _prompts(tok, fmt, instruction, [e.input for e in examples], contexts)
    longest = max(len(r) for r in prompts)
    head = loss_prefix(model, prompts) if shared else 0  # computed once per pass
    # one generation batch a step: no partial step
    rows = micro_batch(batch, longest - head + max_new, budget=max(PASS_TOKENS - head, 0))
    # no activation checkpointing: under it the student's samples were garbage (see above)
    _passes(common, hyper, batch, rows, checkpoint=False)
    args = GRPOConfig(
        **common,
        num_generations=group,
        max_completion_length=max_new,
        temperature=1.0,
        beta=0.0,
        shuffle_dataset=True,
    )
    hyper |= {
        "method": "grpo",
        "steps": cfg.preference_steps,
        "learning_rate": cfg.preference_learning_rate,
        "batch_size": batch,
        "num_generations": group,
        "temperature": 1.0,
        "beta": 0.0,
        "reward": f"verifier: 1 accepted answer, {PARTIAL_REWARD} other passing answer, 0 failing",
        "shared_instruction_tokens": head,
    }
    data = Dataset.from_list([{"prompt": e.input} for e in examples])
    rollout = _rollout(tok, fmt, instruction, contexts, max_new, shared)
    trainer = _grpo_trainer(shared)(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=data,
        processing_class=tok,
        rollout_func=rollout,
    )
    hyper["mean_reward_first_last"] = None
    n = len(examples)
    return _train(trainer, model, folder, progress, "grpo", n, {"inputs": n}, hyper)


def _prompts(tok, fmt, instruction, inputs: Sequence[str], contexts) -> list[list[int]]:
    """Each input's prompt token ids, with its retrieved chunks, exactly as SFT builds them."""
    from kolm.train import prompt_ids

    ctx = [contexts.get(x, ()) for x in inputs] if contexts else None
    return prompt_ids(tok, fmt, instruction, inputs, ctx)


def _rollout(tok, fmt, instruction, contexts, max_new: int, shared: bool = True):
    """TRL's `rollout_func`: sample one answer per prompt (TRL repeats each input once per
    generation), prompts tokenized exactly as SFT and the runtime build them. With
    `shared`, the instruction the prompts open with runs once for the whole generation
    batch (`train.generate_ids`); without, every prompt runs whole, left-padded."""

    def rollout(prompts: list[str], trainer) -> dict:
        from kolm.train import generate_ids

        ids = _prompts(tok, fmt, instruction, prompts, contexts)
        sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
        completions = generate_ids(
            trainer.model, tok, ids, max_new, len(ids), share_prefix=shared, **sampling
        )
        return {"prompt_ids": ids, "completion_ids": completions, "logprobs": None}

    return rollout


def _grpo_trainer(shared: bool):
    """TRL's GRPO trainer; with `shared`, its log-probabilities come from
    `train.completion_logps` (each row unpadded, the shared instruction run once)."""
    from trl import GRPOTrainer

    if not shared:
        return GRPOTrainer

    class SharedPrefixGRPO(GRPOTrainer):
        def _get_per_token_logps_and_entropies(
            self,
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            batch_size=None,
            compute_entropy=False,
            compute_aux_loss=False,
            **media,
        ):
            # kolm samples at temperature 1 with no entropy bonus; anything else is TRL's
            bonus = self.entropy_coef != 0.0 or self.use_adaptive_entropy
            other = compute_aux_loss or bonus or self.temperature != 1.0
            if other or any(v is not None for v in media.values()):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size,
                    compute_entropy, compute_aux_loss, **media,
                )  # fmt: skip
            import torch

            from kolm.train import completion_logps

            size = batch_size or input_ids.size(0)
            logps, ents = [], []
            for i in range(0, input_ids.size(0), size):
                lp, ent = completion_logps(
                    model,
                    input_ids[i : i + size],
                    attention_mask[i : i + size],
                    logits_to_keep,
                    entropy=compute_entropy,
                )
                logps.append(lp)
                ents.append(ent)
            entropies = torch.cat(ents) if compute_entropy else None
            return torch.cat(logps), entropies, None

    return SharedPrefixGRPO


def _tokenized(tok, fmt, instruction, pairs, cfg: TrainConfig, contexts) -> list[dict]:
    """prompt/chosen/rejected token ids, prompts built and cut exactly as SFT builds them."""
    from kolm.train import encode

    ctx = [contexts.get(p.input, ()) for p in pairs] if contexts else None
    chosen, _ = encode(
        tok, fmt, instruction, [Example(p.input, p.chosen) for p in pairs], cfg.max_seq_len, ctx
    )
    rejected, _ = encode(
        tok, fmt, instruction, [Example(p.input, p.rejected) for p in pairs], cfg.max_seq_len, ctx
    )
    rows = []
    for c, r in zip(chosen, rejected, strict=True):
        prompt = c.ids[: c.n_prompt]
        rows.append(
            {
                "prompt_ids": prompt,
                "chosen_ids": c.ids[c.n_prompt :],
                "rejected_ids": r.ids[r.n_prompt :][: cfg.max_seq_len - len(prompt)],
            }
        )
    return rows


def _common_args(cfg: TrainConfig, folder: Path, steps: int, progress: bool) -> dict:
    return {
        "output_dir": str(folder),
        "max_steps": steps,
        "per_device_train_batch_size": cfg.batch_size,
        "learning_rate": cfg.preference_learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": max(1, steps // 10),
        "max_grad_norm": 1.0,
        "weight_decay": 0.0,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 20,
        "save_total_limit": 1,
        "report_to": [],
        "use_cpu": True,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "disable_tqdm": not progress,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "bf16": False,
        "fp16": False,
        "max_length": cfg.max_seq_len,
        # TRL turns it on by default; for a small model it only recomputes, and under it
        # GRPO's sampling (use_cache off in train mode) gave garbage after the first token
        "gradient_checkpointing": False,
    }


def _trainer(cfg: TrainConfig, model, tok, rows, folder, steps, progress):
    """The TRL trainer for `cfg.method`, over already-tokenized rows, and its hyper-parameters."""
    from datasets import Dataset

    common = _common_args(cfg, folder, steps, progress)
    hyper = {
        "method": cfg.method,
        "steps": steps,
        "learning_rate": cfg.preference_learning_rate,
        "beta": cfg.beta,
        "batch_size": cfg.batch_size,
    }
    longest = max(
        len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows
    )
    # KTO trains on each answer as a row of its own and estimates its KL term within a
    # pass (two pairs at least); DPO, ORPO and SimPO run a pair's two answers together
    kto = cfg.method == "kto"
    n = 2 * len(rows) if kto else len(rows)
    least = KTO_LEAST_ROWS if kto else 1
    per_row = longest if kto else 2 * longest
    micro = micro_batch(cfg.batch_size, per_row, least, rows=n)
    _passes(common, hyper, cfg.batch_size, micro, checkpoint=True)
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        cls = _pretokenized(DPOTrainer)
        args = DPOConfig(**common, beta=cfg.beta, loss_type=["sigmoid"])
        return cls(
            model, None, args, train_dataset=Dataset.from_list(rows), processing_class=tok
        ), hyper
    if cfg.method == "kto":
        from trl import KTOConfig, KTOTrainer

        cls = _pretokenized(KTOTrainer)
        unpaired = [
            {"prompt_ids": r["prompt_ids"], "completion_ids": r[k], "label": k == "chosen_ids"}
            for r in rows
            for k in ("chosen_ids", "rejected_ids")
        ]
        args = KTOConfig(**common, beta=cfg.beta)
        data = Dataset.from_list(unpaired)
        return cls(model, None, args, train_dataset=data, processing_class=tok), hyper
    if cfg.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**common, beta=cfg.beta)
        return _rowwise(ORPOTrainer)(model, args, Dataset.from_list(rows), tok), hyper
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(**common, beta=cfg.beta, loss_type="simpo", cpo_alpha=0.0)
    hyper |= {"loss_type": "simpo", "simpo_gamma": args.simpo_gamma}
    return _rowwise(CPOTrainer)(model, args, Dataset.from_list(rows), tok), hyper


def _pretokenized(cls):
    """A DPO/KTO trainer subclass that takes the dataset as already tokenized."""

    class Pretokenized(cls):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if getattr(self, "calculate_KL", False):  # KTO's mismatched pairs

                def rotate(batch):
                    # rows come as (chosen, rejected) of each pair in turn: shift by a
                    # whole pair, so a row's KL answer was written for another input
                    ids = batch["completion_ids"]
                    k = 2 if len(ids) >= 4 else 1
                    batch["KL_completion_ids"] = ids[-k:] + ids[:-k]
                    return batch

                dataset = dataset.map(rotate, batched=True, batch_size=None)
            return dataset

    return Pretokenized


def _rowwise(cls):
    """A CPO/ORPO trainer subclass whose `tokenize_row` reads the ids already in the row."""

    class Pretokenized(cls):
        def __init__(self, model, args, dataset, tok):
            super().__init__(model=model, args=args, train_dataset=dataset, processing_class=tok)

        def tokenize_row(self, feature, model=None) -> dict:
            prompt = list(feature["prompt_ids"])
            batch = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for k in ("chosen", "rejected"):
                ids = prompt + list(feature[f"{k}_ids"])
                batch[f"{k}_input_ids"] = ids
                batch[f"{k}_attention_mask"] = [1] * len(ids)
                batch[f"{k}_labels"] = [-100] * len(prompt) + ids[len(prompt) :]
            return batch

    return Pretokenized


def _silence(trainer, progress: bool) -> None:
    """No per-step log dicts on stdout; a progress bar only when asked for."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_bar_callback())


def _bar_callback():
    from transformers.trainer_callback import ProgressCallback

    class Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # the bar only; the losses stay in the trainer's log history

    return Bar()


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def _quiet() -> None:
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO/CPO live in trl.experimental
    for name in ("trl", "transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
