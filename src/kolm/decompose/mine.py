"""Mining: from accepted outputs to a recipe pack.

Each accepted output (gold or teacher-labelled) is tokenized with the base
model's own tokenizer and followed by the end-of-answer token. For every
position the miner counts what came next after three kinds of context: the
exact answer prefix, the last k tokens (k = 1..order), and, for JSON outputs,
the last k tokens under the most recent object key, and, for JSON outputs, the
token that ended each key's string value (the skeleton's closer). A context is
kept only when every observation agreed and it was seen at least `min_support`
times.
The verifier's closed label set is added as a token trie (a label's remaining
tokens are certain once its prefix is unique). Redundant entries (a shorter
context already says the same) are dropped, and the pack's expected share of
drafted tokens is measured by replaying drafting over the outputs. With the
inputs, it also measures whether answers copy from them, and finds each key's
value anchors: input strings always followed by that key's value where they
occurred once (`_anchors`).

It knows tokens and counting. It does not know the model's weights, so a pack
can only propose: `draft` checks every proposal against the model.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kolm.decompose.pack import (
    MAX_ANCHOR_BYTES,
    MAX_ANCHORS,
    START,
    Pack,
    anchored_value,
    copy_continuation,
    json_key,
    json_objects,
    open_value,
)

ORDER = 4
MIN_SUPPORT = 2
MAX_PREFIX = 16
MAX_DRAFT = 24
"""Most tokens one step proposes: with value anchors a JSON answer drafts in ~4 steps of
~14 tokens at 24 (6.4 steps at 12), 7-8% faster at 2 threads (docs/benchmarks.md)."""


@dataclass(frozen=True)
class Tokenizer:
    """The three things mining needs from the base model's tokenizer."""

    tokenize: Callable[[str], list[int]]
    """Plain text (never special tokens) to token ids."""
    piece: Callable[[int], bytes]
    """One token id to its bytes."""
    eos: int
    """The end-of-turn token every answer ends with."""


def base_tokenizer(gguf: Path, eos_text: str) -> Tokenizer:
    """The base GGUF's tokenizer through llama.cpp (vocabulary only, no weights)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    eos = llm.tokenize(eos_text.encode(), add_bos=False, special=True)
    if len(eos) != 1:
        eos = [llm.token_eos()]
    pieces: dict[int, bytes] = {}

    def piece(t: int) -> bytes:
        if t not in pieces:
            pieces[t] = llm.detokenize([t])
        return pieces[t]

    return Tokenizer(
        tokenize=lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False),
        piece=piece,
        eos=eos[0],
    )


def answer_tokens(outputs: Sequence[str], tok: Tokenizer) -> list[list[int]]:
    """Each output as the model writes it: its tokens, then end-of-answer."""
    return [tok.tokenize(o) + [tok.eos] for o in outputs]


def mine(
    outputs: Sequence[str],
    tok: Tokenizer,
    *,
    labels: Sequence[str] = (),
    json_keys: bool = False,
    heldout: Sequence[str] = (),
    inputs: Sequence[str] = (),
    heldout_inputs: Sequence[str] = (),
    order: int = ORDER,
    min_support: int = MIN_SUPPORT,
    max_prefix: int = MAX_PREFIX,
) -> Pack:
    """A pack from accepted outputs; `heldout` outputs only measure it.

    With `inputs` (one per output) mining also measures whether answers copy from
    their inputs, and turns copying on when it drafts more than the tables alone."""
    seqs = answer_tokens(outputs, tok)
    prefix, ngrams, keyed, closers = _count(seqs, tok.piece, order, max_prefix, json_keys)
    pack = Pack(
        eos=tok.eos,
        order=order,
        max_prefix=max_prefix,
        json_keys=json_keys,
        prefix=_certain(prefix, min_support),
        ngrams=_certain(ngrams, min_support),
        keyed=_certain(keyed, min_support),
        closers=_certain(closers, min_support),
        value_bytes=_value_bytes(outputs) if json_keys else {},
    )
    _add_label_trie(pack, answer_tokens(labels, tok), max_prefix)
    pack = _pruned(pack, tok.piece)
    train_share = replay_share(pack, seqs, tok.piece)
    if inputs and json_keys:
        copying = replace(pack, copy_input=True, anchors=_anchors(inputs, outputs, min_support))
        share = replay_share(copying, seqs, tok.piece, sources=inputs, tokenize=tok.tokenize)
        if share > train_share + 0.02:
            pack, train_share = copying, share
    stats = {
        "sequences": len(seqs),
        "tokens": sum(map(len, seqs)),
        "entries": {
            "prefix": len(pack.prefix),
            "ngram": len(pack.ngrams),
            "keyed": len(pack.keyed),
            "closers": len(pack.closers),
            "anchors": sum(map(len, pack.anchors.values())),
        },
        "labels": len(labels),
        "min_support": min_support,
        "max_draft": MAX_DRAFT,
        "copy_input": pack.copy_input,
        "train_drafted_share": round(train_share, 4),
    }
    if heldout:
        sources = heldout_inputs if pack.copy_input else ()
        share = replay_share(
            pack, answer_tokens(heldout, tok), tok.piece, sources=sources, tokenize=tok.tokenize
        )
        stats["heldout_drafted_share"] = round(share, 4)
    stats["expected_hit_rate"] = stats.get("heldout_drafted_share", stats["train_drafted_share"])
    return replace(pack, stats=stats)


def _count(seqs, piece, order: int, max_prefix: int, json_keys: bool):
    prefix: dict = defaultdict(Counter)
    ngrams: dict = defaultdict(Counter)
    keyed: dict = defaultdict(Counter)
    closers: dict = defaultdict(Counter)
    for seq in seqs:
        text = b""
        for i, nxt in enumerate(seq):
            if i <= max_prefix:
                prefix[tuple(seq[:i])][nxt] += 1
            key = json_key(text) if json_keys else ""
            if key and b'"' in piece(nxt) and open_value(text):
                closers[key][nxt] += 1
            for k in range(1, min(order, i) + 1):
                ctx = tuple(seq[i - k : i])
                ngrams[ctx][nxt] += 1
                if key:
                    keyed[(key, ctx)][nxt] += 1
            text += piece(nxt)
    return prefix, ngrams, keyed, closers


def _value_bytes(outputs: Sequence[str]) -> dict[str, bytes]:
    """Per top-level key, the sorted bytes its string values used in the outputs."""
    seen: dict[str, set[int]] = defaultdict(set)
    for value in json_objects(outputs):
        for k, v in value.items():
            if isinstance(v, str):
                seen[k].update(v.encode("utf-8"))
    return {k: bytes(sorted(v)) for k, v in seen.items() if v}


def _anchors(
    inputs: Sequence[str], outputs: Sequence[str], min_support: int
) -> dict[str, tuple[bytes, ...]]:
    """Per key, the input byte strings (up to MAX_ANCHOR_BYTES, `START` marking the
    input's start) after which that key's string value began in every input where the
    string occurred exactly once, seen at least `min_support` (and 3) times; most
    supported first. Only keys whose value is in at least half the inputs get any.

    A candidate is any string that ended right before a copied value; it is then
    checked against every input, so one input where it occurs once but the value does
    not follow (or the value is not copied at all) rules it out."""
    pairs = []
    for source, out in zip(inputs, outputs, strict=True):
        try:
            value = json.loads(out)
        except ValueError:
            continue
        if isinstance(value, dict):
            pairs.append((START + source.encode("utf-8"), value))
    need = max(min_support, 3)
    # An anchor can only cover an input whose value it preceded, so a candidate that
    # fewer than `need` inputs produced can never be kept: count producers first,
    # which keeps the check below from growing with inputs x candidates.
    producers: dict[str, Counter] = defaultdict(Counter)
    for hay, obj in pairs:
        for k, v in obj.items():
            v = v.encode("utf-8") if isinstance(v, str) else b""
            found: set[bytes] = set()
            at = hay.find(v, 1) if len(v) >= 2 else -1
            while at > 0:
                found.update(hay[at - n : at] for n in range(1, min(MAX_ANCHOR_BYTES, at) + 1))
                at = hay.find(v, at + 1)
            producers[k].update(found)
    out: dict[str, tuple[bytes, ...]] = {}
    for k, counts in sorted(producers.items()):
        if 2 * sum(1 for hay, obj in pairs if _copied(obj.get(k), hay)) < len(pairs):
            continue  # the key's value is mostly not in its input (a normalized field)
        cands = {a for a, n in counts.items() if n >= need}
        cover: dict[bytes, set[int]] = defaultdict(set)
        ruled_out: set[bytes] = set()
        for i, (hay, obj) in enumerate(pairs):
            v = obj.get(k)
            v = v.encode("utf-8") if isinstance(v, str) else None
            for a in cands - ruled_out:
                at = hay.find(a)
                if at < 0 or hay.find(a, at + 1) >= 0:
                    continue  # absent, or not unique: an anchor is used only when unique
                if v and hay.startswith(v, at + len(a)):
                    cover[a].add(i)
                else:
                    ruled_out.add(a)
        kept = [a for a in cands - ruled_out if len(cover[a]) >= need]
        kept.sort(key=lambda a: (-len(cover[a]), len(a), a))
        if kept:
            out[k] = tuple(_covering(kept, cover)[:MAX_ANCHORS])
    return out


def _copied(value, hay: bytes) -> bool:
    return isinstance(value, str) and len(value) >= 2 and value.encode("utf-8") in hay


def _covering(anchors: list[bytes], cover: dict[bytes, set[int]]) -> list[bytes]:
    """The anchors, in order, that each answer some input no earlier one answers: at
    run time the first anchor found once in the input wins, and every kept anchor
    was right wherever it was found once."""
    kept: list[bytes] = []
    seen: set[int] = set()
    for a in anchors:
        if not cover[a] <= seen:
            kept.append(a)
            seen |= cover[a]
    return kept


def _certain(table: dict, min_support: int) -> dict:
    """Contexts whose every observation agreed, seen often enough."""
    out = {}
    for ctx, counts in table.items():
        if len(counts) == 1:
            ((tok, n),) = counts.items()
            if n >= min_support:
                out[ctx] = tok
    return out


def _add_label_trie(pack: Pack, label_seqs: list[list[int]], max_prefix: int) -> None:
    """The closed label set: a prefix shared by labels that agree on the next token."""
    nexts: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for seq in label_seqs:
        for i in range(min(len(seq), max_prefix + 1)):
            nexts[tuple(seq[:i])].add(seq[i])
    for ctx, toks in nexts.items():
        if len(toks) == 1:
            pack.prefix.setdefault(ctx, next(iter(toks)))


def _pruned(pack: Pack, piece) -> Pack:
    """Drop entries a less specific context already answers the same way."""
    ngrams = {c: t for c, t in pack.ngrams.items() if len(c) < 2 or pack.ngrams.get(c[1:]) != t}
    keyed = {
        (k, c): t
        for (k, c), t in pack.keyed.items()
        if pack.ngrams.get(c) != t and (len(c) < 2 or pack.keyed.get((k, c[1:])) != t)
    }
    bare = replace(pack, prefix={}, ngrams=ngrams, keyed=keyed)
    prefix = {}
    for ctx, t in pack.prefix.items():
        key = json_key(b"".join(piece(x) for x in ctx)) if pack.json_keys else None
        if bare.next_token(ctx, key) != t:
            prefix[ctx] = t
    return replace(pack, prefix=prefix, ngrams=ngrams, keyed=keyed)


def chain(
    pack: Pack,
    answer: list[int],
    text: bytes,
    piece,
    limit: int,
    source: bytes = b"",
    tokenize=None,
) -> list[int]:
    """Follow the pack from `answer` for up to `limit` tokens (stops after end-of-answer).

    Where the pack is unsure and it copies inputs, one span of `source` (the input
    text) that continues the open string value is drafted, tokenized by `tokenize`;
    right after that span, the key's closer (when the pack has one) ends the value."""
    out: list[int] = []
    ctx = list(answer)
    can_copy = bool(pack.copy_input and source and tokenize)
    copied: str | None = None  # the key whose value was copied (one span per value)
    closable = False
    while len(out) < limit:
        key = json_key(text) if pack.json_keys else None
        t = pack.next_token(ctx, key)
        if t is None:
            toks: list[int] = []
            if closable:
                toks = [pack.closers[key]] if key in pack.closers and open_value(text) else []
            elif can_copy and copied != key:
                copied = key
                allowed = pack.value_bytes.get(key)
                span = copy_continuation(text, source, allowed=allowed)
                if not span and key in pack.anchors and text.endswith(b'"') and open_value(text):
                    span = anchored_value(source, pack.anchors[key], allowed=allowed)
                toks = tokenize(span.decode("utf-8", "ignore")) if span else []
            closable = bool(toks) and not closable
            if not toks:
                break
            toks = toks[: limit - len(out)]
            if pack.eos in toks:  # a (crafted) closer that ends the answer: nothing follows
                out += toks[: toks.index(pack.eos) + 1]
                break
            out += toks
            ctx += toks
            text += b"".join(piece(x) for x in toks)
            continue
        closable = False
        out.append(t)
        if t == pack.eos:
            break
        ctx.append(t)
        text += piece(t)
    return out


def replay_share(
    pack: Pack,
    seqs: list[list[int]],
    piece,
    max_draft: int = MAX_DRAFT,
    sources: Sequence[str] = (),
    tokenize=None,
) -> float:
    """Share of tokens drafted and accepted if the model wrote exactly these sequences.

    Mirrors `draft.decode`: each step drafts a chain, keeps its agreeing prefix, and
    then takes one token from the model. `sources` are the inputs, for copying."""
    drafted = total = 0
    for n, seq in enumerate(seqs):
        source = sources[n].encode("utf-8") if sources else b""
        i, text = 0, b""
        while i < len(seq):
            limit = min(max_draft, len(seq) - i)
            d = chain(pack, seq[:i], text, piece, limit, source, tokenize)
            a = 0
            while a < len(d) and d[a] == seq[i + a]:
                a += 1
            drafted += a
            step = a + (1 if i + a < len(seq) else 0)
            text += b"".join(piece(x) for x in seq[i : i + step])
            i += step
        total += len(seq)
    return drafted / total if total else 0.0
