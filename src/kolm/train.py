"""Train: a LoRA adapter with PEFT on the base model loaded in PyTorch.

transformers reads the base GGUF (`gguf_file=`) and dequantizes it; the adapter
trains on (prompt, answer) pairs with the loss on the answer tokens only. A
checkpoint is written every few steps so an interrupted compile resumes. This
module knows PyTorch and PEFT; it knows nothing of llama.cpp or the artifact.

Three things keep CPU training cheap without changing what is learned: batches are
built from examples of similar length (so few pad tokens are computed), the
instruction every prompt opens with runs once per batch instead of once per row
(its keys/values shared, gradients flowing through it), and the output layer (a
49k-word vocabulary for SmolLM2) runs only at the answer positions that carry a
loss, not at every prompt position.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kolm.data import Example
from kolm.errors import TrainingError
from kolm.progress import emit
from kolm.prompt import PromptFormat, Tokenize, token_ids
from kolm.spec import TrainConfig

CHECKPOINT_EVERY = 20
BUCKET_BATCHES = 8
"""Length bucketing sorts this many batches' worth of shuffled examples at a time."""


@dataclass
class Encoded:
    ids: list[int]
    n_prompt: int


@dataclass
class TrainResult:
    """A trained PEFT model and how training went."""

    model: object
    tokenizer: object
    losses: list[float]
    steps: int
    seconds: float
    tokens_per_second: float
    device: str
    truncated: int
    resumed_from: int
    padded_share: float = 0.0
    """Share of the computed token positions that were padding."""
    threads: int = 0
    batch_size: int = 0
    """Examples per step."""


def pick_device(setting: str) -> str:
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "train.device is 'cuda' but no CUDA device is available", hint="use auto"
        )
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def load_base(gguf: Path, device: str = "cpu"):
    """Load tokenizer and fp32 model from a GGUF file (dequantized by transformers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as e:
        raise TrainingError(f"transformers could not load {gguf}: {e}") from None
    # transformers marks GGUF-loaded models as quantized, but the weights are plain fp32.
    model.hf_quantizer = None
    model.is_quantized = False  # or transformers' Trainer (TRL) refuses to train it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


def hf_tokenize(tok) -> Tokenize:
    """A `tokenize(text, special)` over a transformers tokenizer.

    With special=False, text that spells a control token (`<|im_end|>`) stays plain text."""

    def tokenize(text: str, special: bool) -> list[int]:
        return tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    return tokenize


def encode(
    tok,
    fmt: PromptFormat,
    instruction: str,
    examples: Sequence[Example],
    max_len: int,
    contexts: Sequence[Sequence[str]] | None = None,
) -> tuple[list[Encoded], int]:
    """Tokenize each pair; cut over-long prompts in the middle (keeping the instruction).

    `contexts[i]` are the retrieved chunks shown with example i (none by default)."""
    tokenize = hf_tokenize(tok)
    prefix_len = len(token_ids(fmt.prefix_segments(instruction), tokenize))
    out, truncated = [], 0
    for i, e in enumerate(examples):
        context = contexts[i] if contexts is not None else ()
        prompt = token_ids(fmt.segments(instruction, e.input, context), tokenize)
        answer = answer_ids(tok, fmt, e.output)
        room = max_len - len(answer)
        if len(prompt) > room:
            truncated += 1
            keep_tail = max(room - prefix_len, 1)
            prompt = prompt[:prefix_len] + prompt[-keep_tail:]
        out.append(Encoded(prompt + answer, len(prompt)))
    return out, truncated


def answer_ids(tok, fmt: PromptFormat, output: str) -> list[int]:
    """A training answer's tokens: the output as plain text, then end-of-turn."""
    return token_ids(fmt.answer_segments(output), hf_tokenize(tok))


def count_steps(cfg: TrainConfig, n_examples: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * n_examples / cfg.batch_size))


def train_lora(
    base_gguf: Path,
    fmt: PromptFormat,
    instruction: str,
    examples: Sequence[Example],
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    contexts: Sequence[Sequence[str]] | None = None,
) -> TrainResult:
    """Train an adapter; resume from `checkpoint_dir` when it holds a checkpoint.

    `contexts[i]` are the retrieved chunks that ground example i's prompt."""
    import torch

    (data, truncated), tok, model, device = _setup(
        base_gguf, fmt, instruction, examples, cfg, contexts
    )
    steps = count_steps(cfg, len(data))
    params = [p for p in model.parameters() if p.requires_grad]
    # a compile hands over its base's own rate (TaskSpec.on_its_base); a config built
    # without one and passed here directly trains at the default for a .gguf path
    opt = torch.optim.AdamW(params, lr=cfg.rate_for(str(base_gguf)), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps))
    start = _resume(checkpoint_dir, model, opt, sched)
    lengths = [len(x.ids) for x in data]
    batches = _bucketed_batches(lengths, cfg.batch_size, steps, cfg.seed)
    losses, n_tokens, n_computed, n_pads, t0 = [], 0, 0, 0, time.perf_counter()
    model.train()
    bar = _bar(steps, start, progress)
    for step in range(start, steps):
        ids, mask, labels = _collate([data[i] for i in batches[step]], tok.pad_token_id, device)
        path = loss_path(model, ids, mask, labels)
        computed, pads = computed_positions(*path, mask)
        loss = answer_loss(model, ids, mask, labels, path=path)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {step + 1}", hint="lower train.learning_rate"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        n_tokens += int(mask.sum())
        n_computed += computed
        n_pads += pads
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
        emit("train", step=step + 1, steps=steps, loss=round(losses[-1], 4))
        if checkpoint_dir and (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            _save_checkpoint(checkpoint_dir, model, opt, sched, step + 1)
    bar.close()
    model.eval()
    secs = time.perf_counter() - t0
    return TrainResult(
        model,
        tok,
        losses,
        steps,
        secs,
        n_tokens / max(secs, 1e-9),
        device,
        truncated,
        start,
        padded_share=n_pads / max(n_computed, 1),
        threads=torch.get_num_threads(),
        batch_size=cfg.batch_size,
    )


def _setup(base_gguf, fmt, instruction, examples, cfg: TrainConfig, contexts):
    """Threads, seed, base + fresh LoRA, encoded data: everything before the first step."""
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    model, tok, device = lora_model(base_gguf, cfg)
    data = encode(tok, fmt, instruction, examples, cfg.max_seq_len, contexts)
    return data, tok, model, device


def lora_model(base_gguf: Path, cfg: TrainConfig):
    """Threads and seed set; the base with a fresh LoRA; (model, tokenizer, device)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(cfg.threads or default_threads())
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, tok = load_base(base_gguf, device)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    return model, tok, device


def save_adapter_state(model, path: Path) -> None:
    """The trained LoRA weights (PEFT state dict), for a later stage to continue from."""
    import torch
    from peft import get_peft_model_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.save(get_peft_model_state_dict(model), path)


def load_adapter(base_gguf: Path, cfg: TrainConfig, path: Path):
    """The base with the LoRA saved by `save_adapter_state`; (model, tokenizer)."""
    import torch
    from peft import set_peft_model_state_dict

    if not path.is_file():
        raise TrainingError(
            f"the SFT adapter state {path} is missing", hint="delete the work folder and recompile"
        )
    model, tok, _ = lora_model(base_gguf, cfg)
    set_peft_model_state_dict(model, torch.load(path, weights_only=True))
    return model, tok


def default_threads() -> int:
    """torch threads when train.threads is 0: every core (see docs/benchmarks.md)."""
    import os

    return max(1, len(os.sched_getaffinity(0)))


SHARED_PREFIX_ARCHS = {"llama", "gemma3_text"}
"""Model types whose shared-prefix path is tested equal to the plain forward pass
(`gemma3_text` with its sliding-window and full-attention layers mixed)."""
MIN_SHARED_PREFIX = 8


def answer_loss(model, ids, mask, labels, pack: bool = True, path: tuple[str, int] | None = None):
    """Mean next-token loss over the answer tokens; the same value and gradients as the
    model's own loss, computed with less work.

    The output layer runs only where a label is, not at every prompt position. When the
    rows of a batch open with the same tokens (the instruction every prompt starts with),
    that prefix runs once, not once per row: the batch is packed into one sequence (the
    prefix, then each row's own tokens, no padding) or, when that sequence would be
    longer than `PACK_MAX_TOKENS`, the prefix's keys/values are copied into every row
    (`pack=False` always takes that path). `path` is `loss_path`'s answer when the
    caller already has it."""
    import torch.nn.functional as F

    path, start = path or loss_path(model, ids, mask, labels, pack)
    if path == "full":
        return _full_loss(model, ids, mask, labels)
    logits, target = answer_logits(model, ids, mask, labels, path=(path, start))
    return F.cross_entropy(logits.float(), target)


def answer_logits(model, ids, mask, labels, pack: bool = True, path: tuple[str, int] | None = None):
    """(logits, labels): the output layer at every position whose next token carries a
    label, and those labels, row by row and in order within a row, computed as
    `answer_loss` computes them (the shared prefix run once, gradients flowing through
    it). Each row holds its tokens first, then its padding."""
    inner = model.get_base_model()
    path, start = path or loss_path(model, ids, mask, labels, pack)
    target = labels[:, 1:]
    keep = target != -100
    if path == "full":
        logits = model(input_ids=ids, attention_mask=mask).logits
        return logits[:, :-1][keep], target[keep]
    if path == "packed":
        return _packed_logits(inner, ids, mask, labels, start)
    if path == "prefix":
        hidden = _hidden_after_prefix(inner.model, ids, mask, start)
    else:
        hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = keep[:, start:]
    return inner.lm_head(hidden[:, :-1][keep]), target[:, start:][keep]


def completion_logps(model, ids, mask, n_completion: int, entropy: bool = False):
    """Log-probabilities of each row's completion tokens, for GRPO's loss.

    `ids` holds prompts (left-padded) then completions (right-padded), `mask` marks the
    real tokens and the last `n_completion` columns are the completions. Returns
    (log-probs, entropies or None), each rows × `n_completion`, zero past a
    completion's end.

    Each row is computed unpadded, as llama.cpp or a one-row forward pass sees it: the
    rows are laid out again, real tokens first, and go through `answer_logits`, so the
    instruction every prompt opens with runs once (the rows packed into one sequence,
    or its keys/values copied into each row) instead of once per row, and the output
    layer runs only at completion positions."""
    import torch
    import torch.nn.functional as F

    rows, width = ids.shape
    first = width - n_completion
    real = mask.bool()
    n_prompt = real[:, :first].sum(dim=1).tolist()
    n_done = real[:, first:].sum(dim=1).tolist()
    for r in range(rows):
        if not n_prompt[r]:
            raise TrainingError("a completion has no prompt before it")
        if not bool(real[r, first : first + n_done[r]].all()):
            raise TrainingError("a completion has padding before its last token")
    # a row whose completion is all masked has nothing to score; left in, it would end
    # the shared prefix at its first token (no label there) for the whole pass
    scored = [r for r in range(rows) if n_done[r]] or list(range(rows))
    own = [ids[r][real[r]] for r in scored]
    longest = max(len(o) for o in own)
    laid = torch.zeros((len(own), longest), dtype=ids.dtype, device=ids.device)
    laid_mask = torch.zeros((len(own), longest), dtype=mask.dtype, device=ids.device)
    labels = torch.full_like(laid, -100)
    for i, (r, o) in enumerate(zip(scored, own, strict=True)):
        laid[i, : len(o)] = o
        laid_mask[i, : len(o)] = 1
        labels[i, n_prompt[r] : len(o)] = o[n_prompt[r] :]
    logits, target = answer_logits(model, laid, laid_mask, labels)
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, target[:, None])[:, 0]
    out = torch.zeros((rows, n_completion), dtype=picked.dtype, device=ids.device)
    spread = None
    if entropy:
        with torch.no_grad():
            spread = -(logp.exp() * logp).sum(dim=-1)
    ent = torch.zeros_like(out) if entropy else None
    at = 0
    for r in scored:
        n = n_done[r]
        out[r, :n] = picked[at : at + n]
        if ent is not None:
            ent[r, :n] = spread[at : at + n]
        at += n
    return out, ent


def loss_path(model, ids, mask, labels, pack: bool = True) -> tuple[str, int]:
    """How `answer_loss` computes a batch, and the shared prefix it runs once:
    `packed`, `prefix` (batched, the prefix's cache copied into every row), `rows` (plain
    batch, output layer at answer positions only) or `full` (the model's own loss)."""
    inner = model.get_base_model()
    if getattr(inner.config, "final_logit_softcapping", None):
        return "full", 0
    start = shared_prefix(ids, labels) if inner.config.model_type in SHARED_PREFIX_ARCHS else 0
    if start < MIN_SHARED_PREFIX:
        return "rows", 0
    packed, (rows, width) = packed_length(mask, start), mask.shape
    # the packed mask is boolean: sdpa honours it, eager attention would add it as 0/1
    sdpa = getattr(inner.config, "_attn_implementation", "sdpa") == "sdpa"
    fits = packed <= PACK_MAX_TOKENS and packed * packed <= PACK_AREA * rows * width * width
    if pack and sdpa and fits:
        return "packed", start
    return "prefix", start


def computed_positions(path: str, start: int, mask) -> tuple[int, int]:
    """(positions the model computes for a batch, how many of them are padding)."""
    rows, width = mask.shape
    real = int(mask.sum())
    if path == "packed":
        return packed_length(mask, start), 0
    if path == "prefix":
        return start + rows * (width - start), rows * width - real
    return rows * width, rows * width - real


def shared_prefix(ids, labels) -> int:
    """Leading positions every row shares whose outputs no loss needs (before the last
    prompt token of the shortest prompt)."""
    same = (ids == ids[:1]).all(dim=0).long().cumprod(dim=0).sum().item()
    first_label = (labels != -100).long().argmax(dim=1).min().item()
    return int(min(same, first_label - 1))


PACK_MAX_TOKENS = 2048
"""Longest packed sequence `answer_loss` builds; a batch that would pack longer takes
the batched shared-prefix path (its attention is quadratic in the packed length)."""
PACK_AREA = 2
"""A batch is packed only while the packed attention (packed length squared) is at most
this many times the batched one (rows × width squared): packing pays where a long
shared instruction dominates (short rows), not for long rows, where one long
sequence's attention costs more than the rows' own (8 rows of 240 tokens after a
62-token instruction, one forward + backward on 2 threads: 18–21 s packed, 14–15 s
batched; rows of 100 tokens: even)."""


def packed_length(mask, start: int) -> int:
    """Tokens in the packed sequence: the shared prefix once, then every row's own tokens."""
    return int(start + (mask.sum(dim=1) - start).clamp(min=0).sum().item())


def _packed_logits(inner, ids, mask, labels, start: int):
    """`answer_logits` with the batch packed into one sequence: the shared prefix once,
    then each row's own tokens (no padding). A row's tokens see the prefix and their own
    row, causally, at the positions they hold in the unpacked batch; a sliding-window
    layer's window counts those positions. The same values and gradients as the batched
    forward pass, without copying the prefix's keys/values into every row."""
    import torch

    lengths = mask.sum(dim=1).tolist()
    pieces, positions, owners = [ids[0, :start]], [torch.arange(start)], [torch.full((start,), -1)]
    picks, targets, offset = [], [], start
    for row, n in enumerate(lengths):
        pieces.append(ids[row, start:n])
        positions.append(torch.arange(start, n))
        owners.append(torch.full((n - start,), row))
        nxt = labels[row, start + 1 : n]  # what positions start..n-2 predict
        at = (nxt != -100).nonzero().flatten()
        picks.append(offset + at)
        targets.append(nxt[at])
        offset += n - start
    device = ids.device
    seq = torch.cat(pieces)[None]
    pos = torch.cat(positions).to(device)
    owner = torch.cat(owners).to(device)
    causal = pos[:, None] >= pos[None, :]
    visible = causal & ((owner[:, None] == owner[None, :]) | (owner[None, :] == -1))
    attention = visible[None, None]
    window = getattr(inner.config, "sliding_window", None)
    if window and "sliding_attention" in (getattr(inner.config, "layer_types", None) or ()):
        near = pos[None, :] > pos[:, None] - window
        attention = {"full_attention": attention, "sliding_attention": (visible & near)[None, None]}
    hidden = inner.model(input_ids=seq, attention_mask=attention, position_ids=pos[None])
    logits = inner.lm_head(hidden.last_hidden_state[0, torch.cat(picks).to(device)])
    return logits, torch.cat(targets)


def _hidden_after_prefix(body, ids, mask, start: int):
    """Hidden states of positions start.. with the shared prefix run once (batch 1) and its
    key/value cache repeated over the batch; autograd flows through the shared prefix."""
    prefix = body(input_ids=ids[:1, :start], attention_mask=mask[:1, :start], use_cache=True)
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    out = body(input_ids=ids[:, start:], attention_mask=mask, past_key_values=cache, use_cache=True)
    return out.last_hidden_state


def _full_loss(model, ids, mask, labels):
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def greedy_outputs(
    model,
    tok,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch: int = 8,
    bar: str | None = None,
) -> list[str]:
    """PyTorch greedy answers to prompts given as token ids (from `prompt_ids`), for
    checking that llama.cpp agrees with the trained model (`generate_ids`, decoded)."""
    ids = generate_ids(model, tok, prompts, max_new_tokens, batch, bar, do_sample=False)
    return [text.strip() for text in tok.batch_decode(ids, skip_special_tokens=True)]


def generate_ids(
    model,
    tok,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch: int = 8,
    bar: str | None = None,
    share_prefix: bool = True,
    **sampling,
) -> list[list[int]]:
    """The new tokens `model.generate` gives each prompt (token ids, from `prompt_ids`),
    through its first end-of-sequence token; `sampling` goes to `generate` (greedy
    answers, or GRPO's samples). `share_prefix=False` runs every prompt whole, left-padded
    (TRL's own way, which `benchmarks/grpo_speed.py` measures against).

    The instruction every prompt opens with is run once, not once per prompt: its
    keys/values are computed for the shared prefix and copied into each batch, and
    each row's own tokens follow after its padding (masked, positions counted past
    the pads), so only the rows' own tokens and the answers are computed per batch
    (for clinc150's 150-label instruction, 655 of a prompt's ~670 tokens on SmolLM2).
    Where a sliding window would count those pads (`pads_must_go`), a batch holds only
    rows of one length, so it has none. Answers come back in the prompts' order. `bar`
    names a progress bar over the prompts (none when None)."""
    import copy

    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad, eos = tok.pad_token_id, tok.eos_token_id
    if share_prefix:
        start, groups = greedy_plan(model, prompts, max_new_tokens, batch)
    else:
        start, groups = 0, answer_batches([len(p) for p in prompts], batch, False)
    head_ids = list(prompts[0][:start]) if prompts else []
    prefix_cache = None
    if start:
        with torch.no_grad():
            head = torch.tensor([head_ids], dtype=torch.long, device=device)
            # the output layer at one position only: its logits are not used
            prefix_cache = model(input_ids=head, use_cache=True, logits_to_keep=1).past_key_values
    outs: list[list[int]] = [[] for _ in prompts]
    shown = tqdm(total=len(prompts), desc=bar, unit="input", disable=bar is None, leave=True)
    for group in groups:
        rows = [list(prompts[i][start:]) for i in group]
        width = max(len(r) for r in rows)
        ids = [head_ids + [pad] * (width - len(r)) + r for r in rows]
        mask = [[1] * start + [0] * (width - len(r)) + [1] * len(r) for r in rows]
        extra = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(rows))
            extra["past_key_values"] = cache
        with torch.no_grad():
            gen = model.generate(
                input_ids=torch.tensor(ids, dtype=torch.long, device=device),
                attention_mask=torch.tensor(mask, device=device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                **sampling,
                **extra,
            )
        for i, new in zip(group, gen[:, start + width :].tolist(), strict=True):
            outs[i] = new[: new.index(eos) + 1] if eos in new else new
        shown.update(len(rows))
    shown.close()
    return outs


def greedy_plan(
    model, prompts: Sequence[list[int]], max_new_tokens: int, batch: int
) -> tuple[int, list[list[int]]]:
    """The leading tokens `greedy_outputs` runs once (`greedy_prefix`) and its batches,
    as indices of the prompts (`answer_batches`)."""
    start = greedy_prefix(model, prompts)
    same_length = bool(start) and pads_must_go(model, prompts, max_new_tokens)
    return start, answer_batches([len(p) - start for p in prompts], batch, same_length)


def loss_prefix(model, prompts: Sequence[list[int]]) -> int:
    """How many leading tokens `answer_logits` runs once for a batch of rows opening with
    these prompts (0: none, as under a final logit softcap, where it runs whole rows)."""
    if getattr(_inner(model).config, "final_logit_softcapping", None):
        return 0
    return greedy_prefix(model, prompts)


def greedy_prefix(model, prompts: Sequence[list[int]]) -> int:
    """How many leading tokens `greedy_outputs` runs once for all prompts (0: none)."""
    start = _common_prefix(prompts)
    if start < MIN_SHARED_PREFIX or _model_type(model) not in SHARED_PREFIX_ARCHS:
        return 0
    return start


def pads_must_go(model, prompts: Sequence[list[int]], max_new_tokens: int) -> bool:
    """Whether a batch after the shared prefix must hold no padding.

    Each row's padding sits between the shared prefix and the row's own tokens. A
    sliding-window layer counts its window in positions of the batch, pads included,
    so once a sequence can outgrow the window (Gemma 3's 512 tokens against clinc150's
    ~663-token prompts) a pad would push real tokens out of it."""
    window = getattr(_inner(model).config, "sliding_window", None)
    return bool(window) and max(len(p) for p in prompts) + max_new_tokens > window


def answer_batches(lengths: Sequence[int], size: int, same_length: bool) -> list[list[int]]:
    """Indices of the prompts in each batch of `greedy_outputs`: runs of `size` in order,
    or, with `same_length`, runs of `size` among the prompts of each length (in the order
    each length first appears), so no batch needs padding."""
    if not same_length:
        return [list(range(i, min(i + size, len(lengths)))) for i in range(0, len(lengths), size)]
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    return [idx[j : j + size] for idx in by_length.values() for j in range(0, len(idx), size)]


def _common_prefix(prompts: Sequence[list[int]]) -> int:
    """Leading tokens every prompt shares, leaving each prompt at least one token of its own."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((j for j in range(n) if p[j] != first[j]), n)
    return max(n, 0)


def _inner(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _model_type(model) -> str | None:
    return getattr(_inner(model).config, "model_type", None)


def prompt_ids(
    tok, fmt: PromptFormat, instruction: str, inputs: Sequence[str], contexts=None
) -> list[list[int]]:
    """Prompt token ids built exactly as training and the runtime build them."""
    tokenize = hf_tokenize(tok)
    return [
        token_ids(fmt.segments(instruction, x, contexts[i] if contexts else ()), tokenize)
        for i, x in enumerate(inputs)
    ]


def _schedule(steps: int):
    warm = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.05, (steps - step) / max(1, steps - warm))

    return factor


def _batches(n: int, size: int, steps: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out: list[list[int]] = []
    order: list[int] = []
    while len(out) < steps:
        if len(order) < size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        out.append(order[:size])
        order = order[size:]
    return out


def _bucketed_batches(lengths: list[int], size: int, steps: int, seed: int) -> list[list[int]]:
    """Batches of similar length: each epoch is shuffled, cut into windows of BUCKET_BATCHES
    batches, each window sorted by length and cut into batches, and the batches shuffled.
    An epoch's last batch may be short; no batch holds an example twice."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    window = size * BUCKET_BATCHES
    while len(out) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        epoch = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
            epoch += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        rng.shuffle(epoch)
        out += epoch
    return out[:steps]


def _collate(items: list[Encoded], pad_id: int, device: str):
    import torch

    width = max(len(x.ids) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, x in enumerate(items):
        n = len(x.ids)
        ids[row, :n] = torch.tensor(x.ids)
        mask[row, :n] = 1
        labels[row, x.n_prompt : n] = torch.tensor(x.ids[x.n_prompt :])
    return ids.to(device), mask.to(device), labels.to(device)


def _bar(total: int, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=start, desc="train", unit="step", disable=not enabled, leave=True
    )


def _save_checkpoint(folder: Path, model, opt, sched, step: int) -> None:
    import torch
    from peft import get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "checkpoint.pt.partial"
    warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
    torch.save(
        {
            "step": step,
            "adapter": get_peft_model_state_dict(model),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        },
        tmp,
    )
    tmp.replace(folder / "checkpoint.pt")


def _resume(folder: Path | None, model, opt, sched) -> int:
    if folder is None or not (folder / "checkpoint.pt").is_file():
        return 0
    import torch
    from peft import set_peft_model_state_dict

    try:
        state = torch.load(folder / "checkpoint.pt", weights_only=True)
        set_peft_model_state_dict(model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except Exception:
        return 0  # an unreadable checkpoint only costs the steps it saved
    return int(state["step"])
