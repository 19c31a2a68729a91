"""The task spec (`kolm.yaml`): typed, validated once, every problem reported at once.

This module knows the shape of a spec and how to check it. It does not read the
example files' contents (that is `data`) or locate base models (that is `basemodel`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kolm.errors import SpecError

DEFAULT_BASE = "smollm2-135m-instruct"
QUANTIZE_CHOICES = ("adapter", "f16", "q8_0", "q4_0", "q4_k")
"""`adapter`, or the merged precisions `merge` builds."""
TRAIN_METHODS = ("sft", "dpo", "orpo", "kto", "simpo", "grpo")
"""`train.method`: SFT alone, or SFT then a preference stage or GRPO (kolm.align)."""
PREFERENCE_FIELDS = ("method", "preference_steps", "preference_learning_rate", "beta")
"""TrainConfig fields the SFT stage does not depend on (its cache key leaves them out)."""
PER_BASE = "per_base"
"""The TrainConfig field that holds other fields' values for one base (never trained on)."""
FROM_SPEC = "train.per_base"
"""Where a base's own settings came from when the spec's `train.per_base` wrote them."""
BASE_DEFAULT = "kolm's default for this base"
"""Where a base's learning rate came from when the spec set none and kolm's default for
that base is not the plain one (`kolm.basemodel.learning_rate_scale`)."""
DEFAULT_LEARNING_RATE = 2e-3
"""The learning rate of a spec that sets none, on a base whose scale is 1 (SmolLM2)."""
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    """How the LoRA adapter is trained."""

    epochs: float = 3.0
    """Passes over the training examples; ignored when `steps` is set."""
    steps: int | None = None
    """Optimizer steps; overrides `epochs` when given."""
    batch_size: int = 8
    """Examples per optimizer step."""
    learning_rate: float | None = None
    """Peak AdamW learning rate (linear warm-up over 10% of steps, then linear decay).
    Unset: kolm's default for the base, 0.002 times the base's `learning_rate_scale`
    (0.002 for SmolLM2 and any `.gguf` path, 0.001 for Gemma 3 270M)."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA alpha; the update is scaled by alpha / r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps training deterministic."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    """Linear layers that get an adapter (Hugging Face names)."""
    max_seq_len: int = 256
    """Longest prompt + answer in tokens; longer prompts are cut from the left of the input."""
    seed: int = 0
    """Seed for data order and adapter initialisation."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu` or `cuda`."""
    threads: int = 0
    """CPU threads for torch; 0 uses every core."""
    method: str = "sft"
    """`sft`, or SFT then a preference stage on rejected answers: `dpo`, `orpo`, `kto`,
    `simpo`; or SFT then `grpo` with the verifier as reward (TRL's trainers; see
    docs/benchmarks.md for how they compare here)."""
    preference_steps: int = 40
    """Optimizer steps of the preference or GRPO stage (ignored for `sft`); a preference
    stage stops sooner when that would show each pair more than 3 times."""
    preference_learning_rate: float = 2e-4
    """Peak learning rate of the preference stage."""
    beta: float = 0.1
    """Preference strength (DPO/KTO: KL penalty; ORPO: odds-ratio weight; SimPO: reward scale)."""
    per_base: dict | None = field(default=None, hash=False)
    """Settings for one base only, over the ones above: `{base: {field: value}}`, keyed
    by a registered base name or by the path `base:` or a `ladder:` entry gives (a
    `.gguf` file or a folder). Under `base: auto` each rung trains with its own entry,
    e.g. `per_base: {gemma3-270m: {batch_size: 8}}`; a rung climbed to that no entry
    names gets kolm's default for it (`kolm.ladder.rung_spec`)."""

    def settings(self) -> dict[str, Any]:
        """The fields training reads, as a JSON-ready dict (`per_base` left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != PER_BASE}

    def for_base(self, base: str, where: Path | None = None) -> tuple[TrainConfig, dict]:
        """The settings a compile on `base` trains with, and the `per_base` entry that
        changed them ({} when none names this base). `where` is the spec's folder, for
        keys that are paths."""
        entry = self.entry_for(base, where)
        cfg = dataclasses.replace(self, **entry, per_base=None)
        return dataclasses.replace(cfg, learning_rate=cfg.rate_for(base)), dict(entry)

    def entry_for(self, base: str, where: Path | None = None) -> dict:
        """The `per_base` entry that names `base` ({} when none does)."""
        return next((v for k, v in (self.per_base or {}).items() if same_base(k, base, where)), {})

    def rate_for(self, base: str) -> float:
        """The learning rate training on `base` uses: the one set, or kolm's default for
        that base (`DEFAULT_LEARNING_RATE` times its `learning_rate_scale`)."""
        if self.learning_rate is not None:
            return self.learning_rate
        from kolm.basemodel import learning_rate_scale

        return DEFAULT_LEARNING_RATE * learning_rate_scale(base)

    def with_settings(self, **changes: Any) -> TrainConfig:
        """These settings on every base: set in `train` and taken out of each `per_base`
        entry, so an override from the command line or a job's options wins over every
        entry (the ladder's own default for a base scales the learning rate it is given)."""
        if self.per_base is None:
            return dataclasses.replace(self, **changes)
        entries = {
            k: {f: v for f, v in e.items() if f not in changes} if isinstance(e, dict) else e
            for k, e in self.per_base.items()
        }
        entries = {k: e for k, e in entries.items() if e != {}}
        return dataclasses.replace(self, **changes, per_base=entries)

    def check(self) -> list[str]:
        problems = []
        if self.method not in TRAIN_METHODS:
            problems.append(f"train.method must be one of {', '.join(TRAIN_METHODS)}")
        if self.preference_steps < 1:
            problems.append("train.preference_steps must be at least 1")
        if not 0 < self.preference_learning_rate < 1:
            problems.append("train.preference_learning_rate must be between 0 and 1")
        if self.beta <= 0:
            problems.append("train.beta must be positive")
        if self.steps is not None and self.steps < 1:
            problems.append("train.steps must be at least 1")
        if self.epochs <= 0:
            problems.append("train.epochs must be positive")
        for name in ("batch_size", "lora_rank", "max_seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name} must be at least 1")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            problems.append("train.learning_rate must be between 0 and 1")
        if not 0 <= self.lora_dropout < 1:
            problems.append("train.lora_dropout must be in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append("train.device must be one of auto, cpu, cuda")
        if not self.target_modules:
            problems.append("train.target_modules must name at least one layer")
        return problems + self._check_per_base()

    def _check_per_base(self) -> list[str]:
        """Each entry a mapping of known settings whose values pass `train`'s own checks.
        (Whether each key names a base of the spec is `TaskSpec.check`'s to say.)"""
        if self.per_base is None:
            return []
        if not isinstance(self.per_base, dict):
            return ["train.per_base must be a mapping of bases to train settings"]
        names = [f.name for f in dataclasses.fields(self) if f.name != PER_BASE]
        problems = []
        for key, entry in self.per_base.items():
            at = _entry_name(key)
            if not isinstance(entry, dict) or not entry:
                problems.append(
                    f"{at} must be a mapping of train settings, e.g. {{learning_rate: 0.001}}"
                )
                continue
            unknown = [n for n in entry if n not in names]
            problems += [f"unknown key {at}.{n!r}; known keys: {', '.join(names)}" for n in unknown]
            if unknown:
                continue
            if "learning_rate" in entry and entry["learning_rate"] is None:
                problems.append(
                    f"{at}.learning_rate must be a number; leave it out to train at the "
                    "`train` block's rate (kolm's default for the base when that sets none)"
                )
                continue
            merged = dataclasses.replace(self, **entry, per_base=None).check()
            problems += [  # every message names one field: report those the entry sets
                m.replace("train.", f"{at}.", 1)
                for m in merged
                if m.split()[0].removeprefix("train.") in entry
            ]
        return problems


@dataclass(frozen=True)
class RunConfig:
    """Decoding settings recorded in the artifact and used by `kolm run`."""

    max_tokens: int | None = None
    """Longest answer in tokens; by default the longest training answer plus a margin."""
    n_ctx: int = 1024
    """llama.cpp context size."""
    threads: int = 0
    """llama.cpp threads; 0 uses the default (every core but one; `runtime.default_threads`)."""
    constrain: bool | None = None
    """Constrain outputs with a llama.cpp grammar from the verifier (its closed label
    set or JSON Schema), so the student can emit only outputs of that shape. Unset: on
    for a closed label set (an answer that is not a label is always wrong), off for
    JSON (a grammar there costs time at each step and cannot save an answer cut by
    `max_tokens`); `true` or `false` decides for either."""

    def check(self) -> list[str]:
        problems = []
        if self.max_tokens is not None and self.max_tokens < 1:
            problems.append("run.max_tokens must be at least 1")
        if self.n_ctx < 64:
            problems.append("run.n_ctx must be at least 64")
        return problems


@dataclass(frozen=True)
class GateConfig:
    """When a compiled model may ship (see docs/k-score.md)."""

    min_k: float = 0.70
    """Minimum K-score; below it compile writes no .kolm unless --force."""
    min_accuracy: float | None = None
    """Optional floor on held-out accuracy, checked as well as K."""
    beat_floor: bool = False
    """Label tasks: fail the gate when the student's held-out accuracy is below the
    TF-IDF + logistic-regression floor on the same split (under `base: auto`, the
    ladder then climbs past a rung that a classical classifier beats)."""
    teacher_latency_s: float = 1.0
    """Teacher latency per call when no teacher is measured (gold labels stand in)."""
    teacher_usd_per_1k: float = 1.0
    """Teacher cost per 1,000 calls when no teacher is measured."""
    hardware_usd_per_hour: float = 0.0
    """What the machine running the student costs; 0 counts only marginal cost."""

    def check(self) -> list[str]:
        problems = []
        if not 0 <= self.min_k <= 1:
            problems.append("gate.min_k must be between 0 and 1")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            problems.append("gate.min_accuracy must be between 0 and 1")
        if (
            self.teacher_latency_s <= 0
            or self.teacher_usd_per_1k < 0
            or self.hardware_usd_per_hour < 0
        ):
            problems.append("gate.teacher_latency_s must be positive; costs cannot be negative")
        return problems


@dataclass(frozen=True)
class TeacherConfig:
    """Who labels the unlabeled inputs, and how hard to try."""

    model: str
    """`provider:model`, e.g. `openai:<model>`, `anthropic:<model>`,
    `openai-compatible:<model>@<base_url>`, `local:<path.gguf or base name>`."""
    k: int = 8
    """Samples asked per input; the verified majority wins."""
    temperature: float = 0.8
    """Sampling temperature for the k samples (must be > 0 when k > 1)."""
    max_tokens: int = 256
    """Longest teacher answer in tokens."""
    shots: int = 8
    """Seed examples shown to the teacher as demonstrations (training split only)."""
    concurrency: int = 16
    """Requests in flight at once."""
    timeout_s: float = 60.0
    """Per-request timeout in seconds."""
    max_retries: int = 6
    """Retries per request on timeouts, 429 and 5xx (exponential backoff with jitter)."""
    max_usd: float | None = None
    """Stop asking once this much has been spent in this run (cache hits are free)."""
    max_calls: int | None = None
    """Stop asking after this many calls in this run."""
    min_agreement: float = 0.0
    """Winners backed by a smaller share of the k samples are set aside, not trained on."""
    prices: dict | None = None
    """USD per million tokens, `{model: [input, output]}`; overrides the built-in table."""

    def check(self) -> list[str]:
        problems = []
        if ":" not in self.model:
            problems.append("teacher.model must look like provider:model (e.g. openai:<model>)")
        if self.k < 1:
            problems.append("teacher.k must be at least 1")
        if self.k > 1 and self.temperature <= 0:
            problems.append("teacher.temperature must be > 0 when teacher.k > 1")
        for name in ("max_tokens", "concurrency"):
            if getattr(self, name) < 1:
                problems.append(f"teacher.{name} must be at least 1")
        if self.shots < 0 or self.max_retries < 0:
            problems.append("teacher.shots and teacher.max_retries cannot be negative")
        if self.timeout_s <= 0:
            problems.append("teacher.timeout_s must be positive")
        if self.max_usd is not None and self.max_usd < 0:
            problems.append("teacher.max_usd cannot be negative")
        if self.max_calls is not None and self.max_calls < 0:
            problems.append("teacher.max_calls cannot be negative")
        if not 0 <= self.min_agreement <= 1:
            problems.append("teacher.min_agreement must be in [0, 1]")
        for model, price in (self.prices or {}).items():
            if not (
                isinstance(price, list)
                and len(price) == 2
                and all(isinstance(x, int | float) for x in price)
            ):
                problems.append(
                    f"teacher.prices.{model} must be [input_usd_per_mtok, output_usd_per_mtok]"
                )
        return problems


@dataclass(frozen=True)
class VerifierConfig:
    """Checks added to the verifier synthesized from the seed outputs."""

    labels: tuple[str, ...] = ()
    """Allowed outputs (a closed label set), in addition to any inferred."""
    regex: str | None = None
    """Every output must fully match this regular expression."""
    json_schema: Path | None = None
    """A JSON Schema file every output must satisfy (outputs are then JSON)."""
    functions: tuple[str, ...] = ()
    """Names of checks registered under the `kolm.verifiers` entry point group."""

    def check(self) -> list[str]:
        import re

        problems = []
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                problems.append(f"verifier.regex does not compile: {e}")
        if self.json_schema is not None and not self.json_schema.is_file():
            problems.append(f"verifier.json_schema: file not found: {self.json_schema}")
        return problems


@dataclass(frozen=True)
class RecallConfig:
    """How the corpus is indexed and how many chunks ground each prompt."""

    k: int = 3
    """Chunks retrieved for every prompt (teacher, training, evaluation and run)."""
    mode: str = "hybrid"
    """`hybrid` (vectors + keywords, reciprocal-rank fusion), `vector` or `keyword`."""
    chunk_chars: int = 400
    """Longest chunk in characters; k chunks must fit in n_ctx and train.max_seq_len."""
    overlap_chars: int = 60
    """Characters of one chunk repeated at the start of the next."""
    embedder: str = "all-MiniLM-L6-v2"
    """A packaged embedder name, or the path of a local sentence-transformers folder."""

    def check(self) -> list[str]:
        problems = []
        if self.k < 1:
            problems.append("recall.k must be at least 1")
        if self.mode not in ("hybrid", "vector", "keyword"):
            problems.append("recall.mode must be one of hybrid, vector, keyword")
        if self.chunk_chars < 50:
            problems.append("recall.chunk_chars must be at least 50")
        if not 0 <= self.overlap_chars < self.chunk_chars:
            problems.append("recall.overlap_chars must be in [0, chunk_chars)")
        return problems


@dataclass(frozen=True)
class TaskSpec:
    """A task to compile: what to do, from which examples, on which base."""

    name: str
    """Short identifier of the task; used in file names and the manifest."""
    description: str
    """The instruction, given to the model as its system prompt."""
    examples: Path
    """Labeled examples: JSONL with `input`/`output` fields, or CSV with those columns."""
    base: str = DEFAULT_BASE
    """Base model: a registered name, a local `.gguf` file, or a local Hugging Face folder."""
    unlabeled: Path | None = None
    """Optional inputs without outputs (one per line, or JSONL with `input`)."""
    heldout_fraction: float = 0.2
    """Share of the examples kept out of training for evaluation."""
    seed: int = 0
    """Seed for the held-out split."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The ship gate; `gate: 0.7` is short for `gate: {min_k: 0.7}`."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training settings."""
    run: RunConfig = field(default_factory=RunConfig)
    """Decoding settings."""
    teacher: TeacherConfig | None = None
    """Optional teacher that labels `unlabeled` inputs (k samples, verified majority)."""
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    """Extra checks for outputs, on top of those inferred from the examples."""
    corpus: tuple[str, ...] = ()
    """Documents that ground every prompt: folders, globs or files (relative to the spec).
    `corpus: docs/` is short for `corpus: [docs/]`."""
    recall: RecallConfig = field(default_factory=RecallConfig)
    """Retrieval settings, used when `corpus` is set."""
    quantize: str = "adapter"
    """Precision of the shipped model: `adapter` (the base as shipped + a separate LoRA
    adapter), or the adapter merged into one model at `f16`, `q8_0`, `q4_0` or `q4_k`."""
    ladder: tuple[str, ...] = ()
    """With `base: auto`, bases (names or .gguf paths, smallest first) tried after the
    registered ladder when every earlier rung fails the gate (see kolm.ladder)."""
    spec_path: Path | None = None
    """Where the spec was read from (set by `load_spec`)."""

    @property
    def folder(self) -> Path | None:
        """The spec file's folder, which relative paths in it start from; None for a
        spec built in code."""
        return self.spec_path.parent if self.spec_path else None

    def check(self) -> list[str]:
        problems = []
        if not self.name.strip():
            problems.append("name must not be empty")
        elif not all(c.isalnum() or c in "-_." for c in self.name):
            problems.append(f"name {self.name!r} may only hold letters, digits, '-', '_' and '.'")
        if not self.description.strip():
            problems.append(
                "description must not be empty: it is the instruction the model follows"
            )
        if not 0 < self.heldout_fraction < 1:
            problems.append("heldout_fraction must be between 0 and 1 (e.g. 0.2)")
        for label, path in (("examples", self.examples), ("unlabeled", self.unlabeled)):
            if path is not None and not path.is_file():
                problems.append(f"{label}: file not found: {path}")
        if self.teacher is not None:
            problems += self.teacher.check()
        problems += self.gate.check()
        if self.corpus:
            problems += self.recall.check() + self._check_corpus()
        if self.quantize not in QUANTIZE_CHOICES:
            problems.append(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}")
        problems += self.train.check() + self._check_per_base_keys()
        return problems + self.run.check() + self.verifier.check()

    def _check_per_base_keys(self) -> list[str]:
        """Each `train.per_base` key names a registered base, or the same file or folder
        as `base:` or a `ladder:` entry; no base is named twice."""
        from kolm.basemodel import known_bases

        where = self.folder
        ours = [b for b in (self.base, *self.ladder) if b != "auto"]
        problems, seen = [], []
        for key in self.train.per_base or {}:
            if not isinstance(key, str) or not key.strip():
                problems.append(f"train.per_base: {key!r} is not a base name or path")
                continue
            twin = next((k for k in seen if same_base(k, key, where)), None)
            seen.append(key)
            if twin is not None:
                problems.append(
                    f"train.per_base names one base twice: {twin!r} and {key!r}; keep one"
                )
            elif key.lower() not in known_bases() and not any(
                same_base(key, b, where) for b in ours
            ):
                problems.append(
                    f"{_entry_name(key)} names no base of this spec: it is not a registered "
                    f"base ({', '.join(known_bases())}), nor the file or folder of `base:` or "
                    "a `ladder:` entry; correct it or remove the entry"
                )
        return problems

    def on_its_base(self) -> tuple[TaskSpec, dict]:
        """This spec with the `train.per_base` entry for its own base applied, and that
        entry ({} when there is none)."""
        where = self.folder
        train, entry = self.train.for_base(self.base, where)
        return dataclasses.replace(self, train=train), entry

    def own_settings(self, source: str = FROM_SPEC) -> tuple[TaskSpec, dict, str]:
        """`on_its_base`, with what a compile records as this base's own settings and
        where they came from: the `per_base` entry (written by `source`), and kolm's
        default learning rate for the base when the spec set no rate and that default
        is not the plain one (`BASE_DEFAULT`)."""
        from kolm.basemodel import learning_rate_scale

        spec, entry = self.on_its_base()
        if (
            self.train.learning_rate is None
            and "learning_rate" not in entry
            and learning_rate_scale(self.base) != 1.0
        ):
            source = BASE_DEFAULT if not entry else f"{source}; learning_rate: {BASE_DEFAULT}"
            entry = {**entry, "learning_rate": spec.train.learning_rate}
        return spec, entry, source

    def _check_corpus(self) -> list[str]:
        from kolm.errors import RecallError
        from kolm.recall.index import collect

        base = self.folder or Path.cwd()
        try:
            collect(self.corpus, base)
        except RecallError as e:
            return [e.message]
        return []


def load_spec(path: str | Path, **overrides: Any) -> TaskSpec:
    """Read and validate a spec file; raise SpecError listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError([f"spec file not found: {path}"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([f"cannot read {path}: {e}"], source=str(path)) from None
    except yaml.YAMLError as e:
        raise SpecError([f"not valid YAML: {e}"], source=str(path)) from None
    if not isinstance(raw, dict):
        raise SpecError(["the spec must be a YAML mapping of keys to values"], source=str(path))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    problems: list[str] = []
    spec = _build(TaskSpec, raw, "", path.parent, problems)
    if spec is not None:
        spec = dataclasses.replace(spec, spec_path=path.resolve())
        problems += spec.check()
    if problems:
        raise SpecError(problems, source=str(path))
    assert spec is not None
    return spec


def _registered(name: str) -> bool:
    from kolm.basemodel import known_bases

    return name.lower() in known_bases()


def _entry_name(key: object) -> str:
    """How a problem names a `train.per_base` entry: by name, or a path in brackets."""
    return f"train.per_base.{key}" if _registered(str(key)) else f"train.per_base[{key}]"


def same_base(key: str, base: str, where: Path | None) -> bool:
    """Whether a `train.per_base` key names `base`: the same registered name (any case),
    or the same file or folder once both are made absolute against the spec's folder."""
    if _registered(key) or _registered(base):
        return key.lower() == base.lower()
    root = where or Path.cwd()
    return (root / Path(key).expanduser()).resolve() == (root / Path(base).expanduser()).resolve()


def describe_settings(entry: dict) -> str:
    """`learning_rate 0.001, target_modules q_proj v_proj`: an entry for a log line."""
    return ", ".join(
        f"{k} {' '.join(map(str, v)) if isinstance(v, list | tuple) else v}"
        for k, v in entry.items()
    )


def _per_base(raw: dict, base_dir: Path, problems: list[str]) -> dict:
    """`train.per_base` as read: each entry's values coerced to their fields' types (a
    `1e-3` string becomes a float). An entry with a value of the wrong type is reported
    here and left out; everything else is `TrainConfig.check`'s and `TaskSpec.check`'s."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            out[key] = entry
            continue
        values, ok = {}, True
        for name, value in entry.items():
            if name == PER_BASE or name not in hints:
                values[name] = value  # reported as an unknown key
                continue
            good, value = _coerce(
                value, hints[name], f"{_entry_name(key)}.{name}", base_dir, problems
            )
            ok = ok and good
            values[name] = value
        if ok:
            out[key] = values
    return out


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """A JSON-ready view of the spec (paths as strings)."""

    def convert(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(dataclasses.asdict(spec))


def _build(cls: type, raw: dict, prefix: str, base_dir: Path, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "spec_path"}
    for key in raw:
        if key not in fields:
            problems.append(f"unknown key {prefix}{key!r}; known keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in raw:
            if required:
                problems.append(f"missing required key {prefix}{name!r}: {_doc(cls, name)}")
            continue
        ok, value = _coerce(raw[name], hints[name], f"{prefix}{name}", base_dir, problems)
        if ok:
            values[name] = value
    if any(
        n not in values
        and fields[n].default is dataclasses.MISSING
        and fields[n].default_factory is dataclasses.MISSING
        for n in fields
    ):
        return None
    try:
        return cls(**values)
    except TypeError as e:  # pragma: no cover - guarded by the checks above
        problems.append(str(e))
        return None


def _coerce(value: Any, hint: Any, where: str, base_dir: Path, problems: list[str]):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return True, None
        hint = args[0]
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if hint is TeacherConfig and isinstance(value, str):
            value = {"model": value}  # `teacher: provider:model` shorthand
        if hint is GateConfig and isinstance(value, int | float) and not isinstance(value, bool):
            value = {"min_k": value}  # `gate: 0.7` shorthand
        if not isinstance(value, dict):
            problems.append(f"{where} must be a mapping")
            return False, None
        built = _build(hint, value, f"{where}.", base_dir, problems)
        if hint is TrainConfig and isinstance(built, TrainConfig) and built.per_base:
            built = dataclasses.replace(
                built, per_base=_per_base(built.per_base, base_dir, problems)
            )
        return built is not None, built
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where} must be a mapping")
            return False, None
        return True, value
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where} must be a file path")
            return False, None
        return True, (base_dir / value).resolve()
    if origin is tuple:
        if where == "corpus" and isinstance(value, str):
            value = [value]  # `corpus: docs/` shorthand
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            problems.append(f"{where} must be a list of strings")
            return False, None
        return True, tuple(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return True, float(value)
    if hint is float and isinstance(value, str):
        try:
            return True, float(value)
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return True, value
    problems.append(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return False, None


def _doc(cls: type, name: str) -> str:
    docs = {
        "name": "a short identifier of the task",
        "description": "the instruction the model follows",
        "examples": "path to a JSONL or CSV file of input/output examples",
    }
    return docs.get(name, "see docs")
