"""Verifier: deterministic checks on outputs, synthesized from the seed examples.

From the seed outputs it infers the output kind — a closed label set, JSON (with
an inferred JSON Schema), a number, or free text with a shape — and builds rules.
Users add a regex, allowed labels, a JSON Schema file, or Python checks
registered under the `kolm.verifiers` entry point group. A verifier is plain
data (`to_dict`/`from_dict`), so the artifact stores it and `run` applies the
same rules. It also normalizes outputs, so votes and comparisons agree on what
"the same answer" means. It knows nothing about teachers or models.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kolm.errors import SpecError

VERSION = 1
# A field's values become an enum when few distinct values each repeat.
_ENUM_MAX = 12


@dataclass(frozen=True)
class Check:
    """The verdict on one output."""

    ok: bool
    normalized: str
    """Canonical form used for voting and matching (the label, canonical JSON, ...)."""
    failed: str | None = None
    """The first rule that rejected the output."""


@dataclass(frozen=True)
class Verifier:
    """Rules as data: `kind` plus the rule list, applied in order."""

    kind: str
    """`label`, `json`, `number` or `text`."""
    rules: tuple[dict, ...] = ()
    labels: tuple[str, ...] = ()
    schema: dict | None = None
    _functions: dict[str, Callable[[str], object]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def check(self, output: str) -> Check:
        text = output.strip()
        norm, failed = self._normalize(text)
        if failed:
            return Check(False, norm, failed)
        for rule in self.rules:
            failed = self._apply(rule, text, norm)
            if failed:
                return Check(False, norm, failed)
        return Check(True, norm)

    def passing(self, output: str) -> str | None:
        """The normalized output when it passes, else None (GRPO's reward check)."""
        c = self.check(output)
        return c.normalized if c.ok else None

    def _normalize(self, text: str) -> tuple[str, str | None]:
        if self.kind == "label":
            key = _label_key(text)
            for label in self.labels:
                if _label_key(label) == key:
                    return label, None
            return text, "label: not one of the allowed labels"
        if self.kind == "json":
            try:
                value = json.loads(_strip_fence(text))
            except ValueError:
                return text, "json: not valid JSON"
            return json.dumps(value, sort_keys=True, ensure_ascii=False), None
        if self.kind == "number":
            try:
                value = float(text.replace(",", ""))
            except ValueError:
                return text, "number: not a number"
            if not math.isfinite(value):
                return text, "number: not finite"
            return _canonical_number(value), None
        return re.sub(r"\s+", " ", text), None

    def _apply(self, rule: dict, text: str, norm: str) -> str | None:
        kind = rule["rule"]
        if kind == "json_schema":
            import jsonschema

            try:
                jsonschema.validate(json.loads(norm), rule["schema"])
            except jsonschema.ValidationError as e:
                path = "/".join(str(p) for p in e.absolute_path) or "(root)"
                return f"json_schema: {path}: {e.validator}"
            return None
        if kind == "regex":
            return None if re.fullmatch(rule["pattern"], text, re.DOTALL) else "regex: no match"
        if kind == "max_length":
            return None if len(text) <= rule["chars"] else "max_length: too long"
        if kind == "single_line":
            return None if "\n" not in text else "single_line: has line breaks"
        if kind == "non_empty":
            return None if text else "non_empty: empty output"
        if kind == "function":
            return self._call(rule["name"], text)
        raise SpecError([f"verifier: unknown rule {kind!r} (made by a newer kolm?)"])

    def _call(self, name: str, text: str) -> str | None:
        fn = self._functions.get(name) or _entry_point(name)
        verdict = fn(text)
        if verdict is True or verdict is None:
            return None
        return f"function {name}: {verdict if isinstance(verdict, str) else 'rejected'}"

    def to_dict(self) -> dict:
        return {
            "version": VERSION,
            "kind": self.kind,
            "labels": list(self.labels),
            "rules": [dict(r) for r in self.rules],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Verifier:
        if d.get("version", 1) > VERSION:
            raise SpecError(["verifier: made by a newer kolm; upgrade kolm to read it"])
        rules = tuple(d["rules"])
        schema = next((r["schema"] for r in rules if r["rule"] == "json_schema"), None)
        return cls(kind=d["kind"], rules=rules, labels=tuple(d.get("labels", ())), schema=schema)

    def describe(self) -> str:
        names = [r["rule"] for r in self.rules]
        extra = f" ({len(self.labels)} labels)" if self.labels else ""
        return f"{self.kind}{extra}; rules: {', '.join(names) or 'none'}"


def synthesize(
    outputs: Sequence[str],
    labels: Sequence[str] = (),
    regex: str | None = None,
    json_schema: Path | None = None,
    functions: Sequence[str] = (),
) -> Verifier:
    """Infer the output kind and rules from seed outputs, plus the user's own checks."""
    from kolm.data import is_label_task

    outputs = [o.strip() for o in outputs]
    rules: list[dict] = [{"rule": "non_empty"}]
    schema = None
    if json_schema is not None:
        schema = _read_schema(json_schema)
        kind = "json"
    elif labels or is_label_task(outputs):
        kind = "label"
    elif outputs and all(_is_json_container(o) for o in outputs):
        kind = "json"
        schema = infer_schema([json.loads(_strip_fence(o)) for o in outputs])
    elif outputs and all(_is_number(o) for o in outputs):
        kind = "number"
    else:
        kind = "text"
        if all("\n" not in o for o in outputs):
            rules.append({"rule": "single_line"})
        rules.append({"rule": "max_length", "chars": 2 * max(map(len, outputs), default=100) + 20})
    if schema is not None:
        rules.append({"rule": "json_schema", "schema": schema})
    if regex:
        rules.append({"rule": "regex", "pattern": regex})
    rules += [{"rule": "function", "name": n} for n in functions]
    allowed = tuple(sorted(set(labels) | (set(outputs) if kind == "label" else set())))
    return Verifier(kind=kind, rules=tuple(rules), labels=allowed, schema=schema)


LABEL_MIN_PER_CLASS = 3
"""Examples per class, on average, before repeated short outputs are read as a label set."""


def label_shortfall(verifier: Verifier, outputs: Sequence[str]) -> str | None:
    """Why short, repeated outputs were not read as labels, naming the classes too small.

    Outputs become a closed label set only when each label repeats (`data.is_label_task`);
    with one or two examples per class the task silently becomes free text, which
    checks far less. None when the outputs do not look like labels or already are."""
    if verifier.kind != "text":
        return None
    outputs = [o.strip() for o in outputs]
    counts = Counter(outputs)
    short = all(len(o) <= 64 and "\n" not in o and len(o.split()) <= 4 for o in counts)
    repeats = max(counts.values(), default=0) >= 2
    one_word = all(len(o.split()) == 1 and not _is_number(o) for o in counts)
    if not outputs or not short or not (repeats or one_word):
        return None
    small = sorted((n, o) for o, n in counts.items() if n < LABEL_MIN_PER_CLASS)
    names = ", ".join(f"{o!r} ({n})" for n, o in small[:12])
    more = f" and {len(small) - 12} more" if len(small) > 12 else ""
    return (
        f"the outputs look like labels but {len(small)} of {len(counts)} classes have fewer "
        f"than {LABEL_MIN_PER_CLASS} examples: {names}{more}; kolm checks them as free text. "
        "Add examples for those classes, or list the labels under verifier.labels"
    )


def check_seeds(verifier: Verifier, outputs: Sequence[str]) -> None:
    """A verifier that rejects a seed output is wrong: say which and why."""
    problems = []
    for i, out in enumerate(outputs, 1):
        c = verifier.check(out)
        if not c.ok:
            problems.append(f"example {i}: output {out[:60]!r} fails {c.failed}")
    if problems:
        raise SpecError(
            problems[:20]
            + [
                "the verifier must accept every seed output: fix the examples or the verifier section"
            ],
            source="verifier",
        )


def infer_schema(values: Sequence[object]) -> dict:
    """A JSON Schema that every value satisfies: types, required keys, repeated enums."""
    types = {_json_type(v) for v in values}
    if types == {"object"}:
        objs = [v for v in values if isinstance(v, dict)]
        keys = sorted({k for o in objs for k in o})
        props = {k: infer_schema([o[k] for o in objs if k in o]) for k in keys}
        required = [k for k in keys if all(k in o for o in objs)]
        return {
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }
    if types == {"array"}:
        items = [x for v in values if isinstance(v, list) for x in v]
        return {"type": "array", "items": infer_schema(items)} if items else {"type": "array"}
    if types == {"string"}:
        schema: dict = {"type": "string"}
        counts = Counter(values)
        if len(values) >= 4 and len(counts) <= _ENUM_MAX and min(counts.values()) >= 2:
            schema["enum"] = sorted(counts)
        return schema
    if types <= {"integer", "number"} and types:
        return {"type": "integer" if types == {"integer"} else "number"}
    if len(types) == 1:
        return {"type": types.pop()}
    return {"type": sorted(types)} if types else {}


def _json_type(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _label_key(text: str) -> str:
    return text.strip().strip("\"'`*. ").lower()


def _strip_fence(text: str) -> str:
    m = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text.strip(), re.DOTALL)
    return m.group(1) if m else text


def _is_json_container(text: str) -> bool:
    try:
        return isinstance(json.loads(_strip_fence(text)), dict | list)
    except ValueError:
        return False


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text.replace(",", "")))
    except ValueError:
        return False


def _canonical_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _read_schema(path: Path) -> dict:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecError([f"verifier.json_schema {path}: cannot read a JSON Schema ({e})"]) from None
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise SpecError(
            [f"verifier.json_schema {path}: not a valid JSON Schema ({e.message})"]
        ) from None
    return schema


def _entry_point(name: str) -> Callable[[str], object]:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="kolm.verifiers") if ep.name == name]
    if not found:
        raise SpecError(
            [f"verifier function {name!r} is not installed (entry point group kolm.verifiers)"],
            source="verifier",
        )
    return found[0].load()
