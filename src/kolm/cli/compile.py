"""Commands that build: compile, label, eval, roi, and the teacher cache."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kolm.cli.app import cli
from kolm.cli.common import (
    _accuracy_line,
    _adapter_rows,
    _floor_line,
    _k_line,
    _ladder_rows,
    _precision_rows,
    _table,
    _torch_agreement,
    base_option,
    no_recipes_option,
    quiet_option,
    threads_option,
)


@cli.command("compile")
@click.argument("spec_or_task", metavar="SPEC | TASK")
@click.option(
    "--examples",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="One-command form: a folder of JSONL/CSV/TSV/text examples (and unlabeled/).",
)
@click.option("--base", help="One-command form: base model name or .gguf path.")
@click.option("--name", help="One-command form: task name (default: the folder's name).")
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), help="Artifact to write (default: NAME.kolm)."
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    help="Cache folder (default: .kolm-work/NAME beside the spec, or here for the one-liner).",
)
@click.option(
    "--no-embed-base", is_flag=True, help="Store only the base model's name, sha256 and size."
)
@click.option("--steps", type=int, help="Override train.steps.")
@click.option("--teacher", help="Override teacher.model (provider:model).")
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path),
    help="Teacher cache file (default: in the kolm cache dir).",
)
@click.option("--force", is_flag=True, help="Ship even below the gate (marked in the manifest).")
@click.option(
    "--drift",
    "drift_path",
    type=click.Path(exists=True, path_type=Path),
    help="A drift file whose inputs the teacher labels too.",
)
@click.option(
    "--remote",
    metavar="URL",
    help="Compile on a `kolm server` (key: $KOLM_API_KEY or `kolm login URL`).",
)
@click.option(
    "--quantize",
    type=click.Choice(["adapter", "f16", "q8_0", "q4_0", "q4_k"]),
    help="Override quantize: `adapter` (default: base as shipped + adapter) or the adapter "
    "merged into one model at f16, q8_0, q4_0 or q4_k.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as one JSON object, not a table."
)
@quiet_option
def compile_cmd(
    spec_or_task: str,
    examples: Path | None,
    base: str | None,
    name: str | None,
    out: Path | None,
    work_dir: Path | None,
    no_embed_base: bool,
    steps: int | None,
    teacher: str | None,
    cache_path: Path | None,
    force: bool,
    drift_path: Path | None,
    remote: str | None,
    quantize: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Compile SPEC (a kolm.yaml) — or TASK, a description, with --examples DIR — into a
    signed .kolm file.

    The one-command form reads DIR, says what it found and how it read each file,
    writes the equivalent spec to WORK_DIR/spec/kolm.yaml (see `kolm init`) and
    compiles that. Below the ship gate (K-score, see docs/k-score.md) it writes only
    the report and exits 8, unless --force."""
    from kolm.api import compile as compile_api

    if remote:
        local_only = {
            "--work-dir": work_dir,
            "--cache": cache_path,
            "--drift": drift_path,
            "--teacher": teacher if examples is None else None,  # the one-liner writes it
            "--no-embed-base": no_embed_base,
            "--quantize": quantize,
        }
        if any(local_only.values()):
            used = ", ".join(k for k, v in local_only.items() if v)
            raise click.UsageError(f"{used}: not with --remote (edit the spec instead)")

    if examples is None and not Path(spec_or_task).is_file():
        raise click.UsageError(
            f"spec file not found: {spec_or_task!r} (to compile from a task description, "
            "give --examples DIR)"
        )
    if examples is None and (base or name):
        raise click.UsageError("--base and --name are for the one-command form (--examples)")
    result = compile_api(
        spec_or_task,
        examples=examples,
        out=out,
        name=name,
        base=base,
        teacher=teacher,
        steps=steps,
        quantize=quantize,
        remote=remote,
        work_dir=work_dir,
        embed_base=not no_embed_base,
        cache=cache_path,
        force=force,
        drift_inputs=_drift_inputs(drift_path),
        progress=not quiet,
        log=lambda m: click.echo(m, err=True),
    )
    if as_json:
        click.echo(json.dumps(_compile_summary(result), indent=1))
    else:
        _print_compile_summary(result)


def _compile_summary(result) -> dict:
    """What `compile --json` prints: where the artifact is, its id, and the manifest's
    metrics and K-score as recorded."""
    return {
        "artifact": str(result.artifact),
        "artifact_id": result.artifact_id,
        "bytes": result.artifact.stat().st_size,
        "report": str(result.report),
        "cached_training": result.cached_training,
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "kscore": result.manifest["kscore"],
        "metrics": result.manifest["metrics"],
    }


@cli.command("init")
@click.argument(
    "folder", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--task", "description", help="What the model should do (its instruction).")
@click.option("--base", help="Base model name or .gguf path.")
@click.option("--teacher", help="Teacher (provider:model) for the unlabeled inputs.")
@click.option("--name", help="Task name (default: the folder's name).")
@click.option(
    "--spec-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Where kolm.yaml and examples.jsonl are written.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing kolm.yaml.")
def init_cmd(
    folder: Path,
    description: str | None,
    base: str | None,
    teacher: str | None,
    name: str | None,
    spec_dir: Path,
    force: bool,
) -> None:
    """Write a commented kolm.yaml (and examples.jsonl) from the examples in FOLDER.

    The same reading as `kolm compile "TASK" --examples FOLDER`: compiling the spec
    written here gives the same artifact."""
    from kolm.api import quick_spec
    from kolm.quickstart import task_name

    if (spec_dir / "kolm.yaml").exists() and not force:
        raise click.UsageError(f"{spec_dir / 'kolm.yaml'} exists: pass --force to overwrite it")
    spec = quick_spec(
        description or PLACEHOLDER_TASK,
        folder,
        spec_dir,
        name=name or task_name(folder.resolve().name),
        base=base,
        teacher=teacher,
        log=click.echo,
    )
    click.echo(f"wrote {spec} and {spec.parent / 'examples.jsonl'}")
    if description is None:
        click.echo("edit its description (the instruction the model follows), then:")
    click.echo(f"  kolm compile {spec}")


PLACEHOLDER_TASK = "Describe the task here: the instruction the model follows."


@cli.command("label")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="JSONL of verified pairs to write (inputs left without a label are not written).",
)
@click.option("--teacher", help="Override teacher.model (provider:model).")
@click.option("--k", type=int, help="Override teacher.k (samples per input).")
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    help="Override teacher.min_agreement: the share of the k samples the winning answer "
    "needs; inputs below it are left unlabeled (e.g. 0.5 drops single-vote labels at k=8).",
)
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Teacher cache file.")
@quiet_option
def label_cmd(
    spec: Path,
    out: Path,
    teacher: str | None,
    k: int | None,
    min_agreement: float | None,
    cache_path: Path | None,
    quiet: bool,
) -> None:
    """Label SPEC's unlabeled inputs with its teacher; write verified pairs to --out.

    Only inputs whose verified majority reaches teacher.min_agreement are written;
    the others are counted in the summary."""
    from kolm.compiler import prepare, run_distill
    from kolm.data import write_jsonl

    task = _load_task(spec, teacher=teacher, k=k, min_agreement=min_agreement)
    if task.teacher is None:
        raise click.UsageError(
            "the spec has no teacher: add `teacher: provider:model` or pass --teacher"
        )
    prepared = prepare(task)
    for warning in prepared.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    report = run_distill(prepared, cache_path, progress=not quiet)
    tmp = out.with_name(out.name + ".partial")
    write_jsonl(tmp, [x.to_dict() for x in report.accepted])
    tmp.replace(out)
    rows = _distill_rows(report.summary()) + [
        ("min agreement", f"{task.teacher.min_agreement:.0%} of k"),
        ("written", f"{len(report.accepted)} pairs to {out}"),
    ]
    click.echo(_table(rows, ("label summary", "")))


def _drift_inputs(path: Path | None) -> list[str]:
    if path is None:
        return []
    from kolm.drift import DriftStore

    return DriftStore(path).inputs()


def _load_task(spec: Path, **overrides):
    from kolm.api import load_task

    return load_task(spec, **overrides)


def _distill_rows(d: dict) -> list[tuple[str, str]]:
    rules = ", ".join(f"{k} {v}" for k, v in d["rejected_by_rule"].items()) or "none"
    rows = [
        ("teacher / k", f"{d['teacher']} / {d['k']}"),
        (
            "inputs labeled",
            f"{d['labeled']} of {d['inputs']} ({d['unlabeled']} without a verified answer)",
        ),
        ("sample acceptance rate", f"{d['acceptance_rate']:.1%}"),
        ("mean agreement", f"{d['mean_agreement']:.1%} ({d['ties']} ties)"),
        ("rejected samples by rule", rules),
        ("calls / cache hits", f"{d['calls']} / {d['cache_hits']}"),
        ("tokens in / out", f"{d['prompt_tokens']} / {d['completion_tokens']}"),
        ("teacher cost", f"${d['usd']:.4f}"),
    ]
    if d["budget_stopped"]:
        rows.append(("budget", f"stopped: {d['budget_stopped']}"))
    return rows


def _corpus_rows(r: dict | None) -> list[tuple[str, str]]:
    """The corpus line and one line per skipped or failed file (never dropped silently)."""
    if not r:
        return []
    indexed = sum(f["status"] == "indexed" for f in r["sources"])
    rows = [
        (
            "corpus",
            f"{indexed} of {len(r['sources'])} files, {r['chunks']} chunks, "
            f"top {r['k']} ({r['mode']}) per prompt",
        )
    ]
    rows += [
        (f"  skipped {f['path']}", f"{f['status']}: {f['reason']}")
        for f in r["sources"]
        if f["status"] != "indexed"
    ]
    return rows


def _train_rows(t: dict) -> list[tuple[str, str]]:
    """Training throughput, and the preference stage when there was one."""
    from kolm.report import per_base_rows, train_speed

    rows = per_base_rows(t)
    if "tokens_per_second" in t:
        rows.append(("train tokens/s", train_speed(t)))
    pref = t.get("preference")
    if pref:
        done = pref.get("skipped") or f"{pref['steps']} steps on {pref['pairs']} pairs"
        rows.append((f"preference stage ({pref['method']})", done))
    return rows


def _print_compile_summary(result) -> None:
    m = result.manifest["metrics"]
    size = result.artifact.stat().st_size
    rows = _distill_rows(result.distill) if result.distill else []
    floor = _floor_line(m)  # label tasks: the TF-IDF baseline on the same split
    rows += _corpus_rows(result.manifest.get("recall"))
    rows += [
        ("held-out examples", str(m["heldout_examples"])),
        ("student accuracy", _accuracy_line(m["student"])),
        *([("TF-IDF floor", floor)] if floor else []),
        ("untrained base accuracy", f"{m['base']['accuracy']:.1%}"),
        (f"teacher accuracy ({m['teacher']['source']})", f"{m['teacher']['accuracy']:.1%}"),
        (
            "student / teacher agreement",
            "n/a (no teacher)"
            if m["student_teacher_agreement"] is None
            else f"{m['student_teacher_agreement']:.1%}",
        ),
        ("verifier pass rate (coverage)", f"{m['student']['verifier_pass_rate']:.1%}"),
        ("llama.cpp / PyTorch agreement", _torch_agreement(m)),
        (
            "student latency p50 / p95",
            f"{m['student']['latency_p50_s'] * 1000:.0f} / {m['student']['latency_p95_s'] * 1000:.0f} ms",
        ),
        (
            "train steps / final loss",
            f"{m['train']['steps']} / {m['train']['final_loss']}"
            + (" (cached)" if result.cached_training else ""),
        ),
        *_train_rows(m["train"]),
        (
            "time " + "/".join(result.timings),
            " / ".join(f"{v:.0f}s" for v in result.timings.values()),
        ),
        *_precision_rows(result.manifest.get("precision")),
        *_adapter_rows(result.manifest),
        ("artifact", f"{result.artifact} ({size / 1e6:.1f} MB)"),
        ("artifact id", result.artifact_id[:16]),
        *_ladder_rows(result.manifest),
        ("K-score", _k_line(result.manifest)),
        ("report", str(result.report)),
    ]
    click.echo(_table(rows, ("compile summary", "")))


@cli.group("cache")
def cache_group() -> None:
    """Inspect, export or prune the teacher cache (every paid answer, kept)."""


@cache_group.command("stats")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Cache file.")
def cache_stats(cache_path: Path | None) -> None:
    """Responses and tokens per provider and model."""
    from kolm.cache import TeacherCache

    cache = TeacherCache(cache_path)
    rows = [
        (
            f"{r['provider']}:{r['model']}",
            f"{r['responses']} responses, {r['prompt_tokens']} / "
            f"{r['completion_tokens']} tokens, {r['first']} .. {r['last']}",
        )
        for r in cache.stats()
    ]
    click.echo(_table(rows or [("(empty)", "")], (str(cache.path), "")))


@cache_group.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Cache file.")
def cache_export(out: Path, cache_path: Path | None) -> None:
    """Write every cached response to OUT as JSONL."""
    from kolm.cache import TeacherCache

    click.echo(f"exported {TeacherCache(cache_path).export(out)} responses to {out}")


@cache_group.command("prune")
@click.option("--model", help="Delete responses of this provider:model.")
@click.option("--before", help="Delete responses created before this ISO date (e.g. 2026-01-01).")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), help="Cache file.")
def cache_prune(model: str | None, before: str | None, cache_path: Path | None) -> None:
    """Delete cached responses (they will be paid for again if needed)."""
    from kolm.cache import TeacherCache

    click.echo(f"deleted {TeacherCache(cache_path).prune(model, before)} responses")


@cli.command("eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable metrics.")
@base_option
@threads_option
@quiet_option
@no_recipes_option
def eval_cmd(
    artifact: Path,
    data: Path,
    as_json: bool,
    base: Path | None,
    threads: int | None,
    quiet: bool,
    no_recipes: bool,
) -> None:
    """Evaluate ARTIFACT on labeled DATA (JSONL/CSV of input, output) with compile's metrics."""
    from kolm.runner import eval_artifact

    m = eval_artifact(
        artifact, data, base=base, progress=not quiet, threads=threads, recipes=not no_recipes
    )
    if as_json:
        click.echo(json.dumps({k: v for k, v in m.items() if k != "outputs"}, indent=1))
        return
    rows = [
        ("examples", str(m["n"])),
        ("accuracy", f"{m['accuracy']:.1%}"),
        ("exact match", f"{m['exact_match']:.1%}"),
        ("verifier pass rate", f"{m['verifier_pass_rate']:.1%}"),
        (
            "latency p50 / p95",
            f"{m['latency_p50_s'] * 1000:.0f} / {m['latency_p95_s'] * 1000:.0f} ms",
        ),
    ]
    if "macro_f1" in m:
        rows.insert(2, ("macro-F1", f"{m['macro_f1']:.1%}"))
        rows += [
            (
                f"  {c}",
                f"P {v['precision']:.0%}  R {v['recall']:.0%}  F1 {v['f1']:.0%}  n={v['support']}",
            )
            for c, v in m["per_class"].items()
        ]
    for f, v in m.get("field_accuracy", {}).items():
        rows.append((f"  field {f}", f"{v:.1%}"))
    if m.get("recipe_pack_note"):
        rows.append(("recipe pack", m["recipe_pack_note"]))
    click.echo(_table(rows, (f"eval {artifact} on {data}", "")))


@cli.command("roi")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--calls-per-month", type=float, required=True, help="Your monthly call volume.")
@click.option("--json", "as_json", is_flag=True)
def roi_cmd(artifact: Path, calls_per_month: float, as_json: bool) -> None:
    """Frontier vs compiled cost at your volume, from the figures measured at compile."""
    from kolm.artifact import open_artifact
    from kolm.kscore import roi

    m = open_artifact(artifact).manifest
    if "economics" not in m:
        raise click.UsageError("this artifact predates cost accounting; recompile it")
    r = roi(m["economics"], calls_per_month)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    be = (
        "never"
        if r["break_even_calls"] is None
        else f"{r['break_even_calls']:,.0f} calls (~{r['break_even_days']} days)"
    )
    rows = [
        ("calls per month", f"{calls_per_month:,.0f}"),
        ("frontier API per month", f"${r['frontier_usd_per_month']:,.2f}"),
        ("compiled model per month", f"${r['compiled_usd_per_month']:,.2f}"),
        ("saving per month", f"${r['saving_usd_per_month']:,.2f}"),
        ("compile cost (teacher calls)", f"${r['compile_usd']:,.4f}"),
        ("break-even", be),
    ]
    if r["teacher_source"] == "gold":
        rows.append(
            (
                "note",
                "no teacher was measured: its cost is the gate's configured teacher_usd_per_1k",
            )
        )
    click.echo(_table(rows, (f"roi {artifact}", "")))
