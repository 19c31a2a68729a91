"""Reports: a self-contained HTML page and a Markdown twin for a compile.

Built from the manifest (signed numbers) plus the held-out rows and latencies.
Plots are drawn with matplotlib (imported only here) and embedded as PNG data
URIs, so the page needs no network. Knows presentation, not measurement.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from kolm.kscore import FORMULAS, NAMES, WEIGHTS, formula_of, shortfall
from kolm.spec import FROM_SPEC, describe_settings

MAX_ERRORS = 15


def write_reports(artifact: Path, manifest: dict, details: dict) -> Path:
    """Write `<artifact>.report.html` and `.report.md`; return the HTML path."""
    stem = artifact.with_name(artifact.name.removesuffix(".kolm"))
    html_path = stem.with_name(stem.name + ".report.html")
    md_path = stem.with_name(stem.name + ".report.md")
    sections = _sections(manifest, details)
    plots = _plots(manifest, details)
    html_path.write_text(_html(manifest, sections, plots), encoding="utf-8")
    md_path.write_text(_markdown(manifest, sections), encoding="utf-8")
    return html_path


def verdict(manifest: dict) -> str:
    g = manifest["gate"]
    if g["passed"]:
        return "PASSED"
    return "OVERRIDDEN (--force)" if g.get("overridden") else "BLOCKED"


def formula_label(kscore: dict) -> str:
    """How a recorded K was computed, in words (old manifests: the arithmetic mean)."""
    f = formula_of(kscore)
    return FORMULAS.get(f, f)


def floor_verdict(metrics: dict) -> str | None:
    """One line comparing the student with the classical floor, or None without a floor."""
    floor = metrics.get("floor")
    if not floor:
        return None
    student = metrics["student"]["accuracy"]
    gap = student - floor["accuracy"]
    if gap < 0:
        where = f"BELOW the floor by {-gap * 100:.1f} points: a TF-IDF classifier does better"
    elif gap == 0:
        where = "level with the floor"
    else:
        where = f"above the floor by {gap * 100:.1f} points"
    line = f"{floor['accuracy']:.1%} (macro-F1 {floor['macro_f1']:.1%}); the student's {student:.1%} is {where}"
    if "p_value" in floor:  # since 2026-12-05: the two compared row by row
        a, b, pv = floor["only_student"], floor["only_floor"], floor["p_value"]
        sure = "could be chance" if pv >= 0.05 else "unlikely to be chance"
        line += f" ({a} rows only the student gets right, {b} only the floor; p = {pv:.2f}, {sure})"
    return line


def accuracy_line(student: dict) -> str:
    """The student's accuracy with its count and 95% interval where the manifest has them."""
    out = f"{student['accuracy']:.1%}"
    if "accuracy_ci95" in student:
        lo, hi = student["accuracy_ci95"]
        out += f" ({student['correct']}/{student['n']}; 95% interval {lo:.1%}–{hi:.1%})"
    return out


def torch_agreement(met: dict) -> str:
    """The llama.cpp / PyTorch agreement, with the rows it covered when a sample."""
    rows, n = met.get("llamacpp_torch_agreement_rows"), met["heldout_examples"]
    on = f" (on {rows} of {n} held-out)" if rows is not None and rows < n else ""
    return f"{met['llamacpp_torch_agreement']:.1%}{on}"


def ladder_lines(manifest: dict) -> list[tuple[str, str]]:
    """(base, what happened) per rung `base: auto` tried, in order; [] without a ladder."""
    out = []
    for r in manifest.get("ladder") or []:
        if "skipped" in r:
            out.append((r["base"], f"skipped: {r['skipped']}"))
            continue
        what = "passed" if r["passed"] else "failed: " + "; ".join(r.get("reasons") or ["gate"])
        own = ""
        if r.get("per_base"):
            own = f" ({r.get('per_base_from', FROM_SPEC)}: {describe_settings(r['per_base'])})"
        out.append((r["base"], f"K {r['K']:.3f}, accuracy {r['accuracy']:.1%}, {what}{own}"))
    return out


def break_even_calls(econ: dict) -> float | None:
    saving = econ["teacher_usd_per_call"] - econ["student_usd_per_call"]
    if saving <= 0:
        return None
    return econ["compile_usd"] / saving


def _sections(m: dict, details: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables shared by both formats."""
    k = m["kscore"]
    inp = k["inputs"]
    raw = {
        "A": f"student {inp['student_accuracy']:.1%} / teacher {inp['teacher_accuracy']:.1%}",
        "S": f"{inp['size_bytes'] / 1e6:.1f} MB of a 3 GiB reference",
        "L": f"teacher {inp['teacher_latency_s'] * 1000:.0f} ms / student p50 {inp['student_latency_s'] * 1000:.0f} ms",
        "C": f"student ${inp['student_usd_per_call'] * 1000:.4f} / teacher ${inp['teacher_usd_per_call'] * 1000:.4f} per 1k calls",
        "V": f"{inp['coverage']:.1%} of student outputs pass the verifier",
    }
    comp = k["components"]
    ktable = [
        [
            f"{c} ({NAMES[c]})",
            f"{comp[c]:.3f}",
            f"{WEIGHTS[c]:.2f}",
            f"{shortfall(comp, c, formula_of(k)):.3f}",
            raw[c],
        ]
        for c in WEIGHTS
    ]
    ktable.append(["K", f"{k['K']:.3f}", "", f"gate {m['gate']['min_k']:.2f}", verdict(m)])
    ktable.append(["formula", formula_label(k), "", "", "costs: how much K would rise at 1.0"])
    met = m["metrics"]
    who = [("student", met["student"]), ("untrained base", met["base"])]
    rows = []
    for name, s in who:
        rows.append(
            [
                name,
                _pct(s["accuracy"]),
                _pct(s.get("macro_f1")),
                _pct(s["verifier_pass_rate"]),
                f"{s['latency_p50_s'] * 1000:.0f} / {s['latency_p95_s'] * 1000:.0f} ms",
            ]
        )
    floor = met.get("floor")
    if floor:
        rows.append(
            [
                "floor: TF-IDF + logistic regression",
                _pct(floor["accuracy"]),
                _pct(floor["macro_f1"]),
                "",
                "",
            ]
        )
    t = met["teacher"]
    rows.append(
        [f"teacher ({t['source']})", _pct(t["accuracy"]), "", "", f"{t['latency_s'] * 1000:.0f} ms"]
    )
    extra = [
        ["student / teacher agreement", _pct(met.get("student_teacher_agreement"))],
        ["llama.cpp / PyTorch agreement", torch_agreement(met)],
        ["held-out examples", str(met["heldout_examples"])],
        ["teacher baseline", t["note"]],
        *_train_rows(met.get("train", {})),
    ]
    econ = m["economics"]
    be = break_even_calls(econ)
    cost = [
        ["teacher cost per 1k calls", f"${econ['teacher_usd_per_call'] * 1000:.4f}"],
        [
            "student cost per 1k calls",
            f"${econ['student_usd_per_call'] * 1000:.4f} (hardware ${econ['hardware_usd_per_hour']}/h)",
        ],
        ["compile cost (teacher calls)", f"${econ['compile_usd']:.4f}"],
        [
            "break-even",
            "immediately"
            if be == 0
            else (f"after {be:,.0f} calls" if be else "never (student is not cheaper)"),
        ],
    ]
    sections = [
        ("K-score", ["component", "value", "weight", "costs", "from"], ktable),
        (
            "Metrics on the held-out set",
            ["model", "accuracy", "macro-F1", "verifier pass", "latency p50 / p95"],
            rows,
        ),
        ("Fidelity", ["measure", "value"], extra),
        *(
            [("Base ladder (`base: auto`)", ["base", "result"], [list(r) for r in ladder_lines(m)])]
            if m.get("ladder")
            else []
        ),
        ("Cost", ["measure", "value"], cost),
    ]
    per_class = met["student"].get("per_class")
    if per_class:
        sections.append(
            (
                "Per class (student)",
                ["label", "precision", "recall", "F1", "support"],
                [
                    [c, _pct(v["precision"]), _pct(v["recall"]), _pct(v["f1"]), str(v["support"])]
                    for c, v in per_class.items()
                ],
            )
        )
    fields = met["student"].get("field_accuracy")
    if fields:
        sections.append(
            (
                "Per field (student)",
                ["field", "accuracy"],
                [[f, _pct(v)] for f, v in fields.items()],
            )
        )
    errors = [r for r in details["heldout"] if not r["correct"]][:MAX_ERRORS]
    sections.append(
        (
            "Worst errors",
            ["input", "expected", "student", "verifier"],
            [
                [
                    r["input"],
                    r["expected"],
                    r["output"],
                    "pass" if r["verified"] else str(r["failed_rule"]),
                ]
                for r in errors
            ],
        )
    )
    if "distill" in m:
        d = m["distill"]
        sections.append(("Distill", ["measure", "value"], [[k_, str(v)] for k_, v in d.items()]))
    if "recall" in m:
        r = m["recall"]
        sections.append(
            (
                f"Corpus ({r['chunks']} chunks, {r['embedder']['name']}, k={r['k']} {r['mode']})",
                ["source", "kind", "status", "chunks", "reason"],
                [
                    [f["path"], f["kind"], f["status"], str(f["chunks"]), f["reason"]]
                    for f in r["sources"]
                ],
            )
        )
    return sections


def per_base_rows(t: dict) -> list[tuple[str, str]]:
    """A row per base whose own settings it trained with (`metrics.train.per_base`)."""
    source = t.get("per_base_from", FROM_SPEC)
    return [
        (f"settings for {base} ({source})", describe_settings(entry))
        for base, entry in (t.get("per_base") or {}).items()
    ]


def _train_rows(t: dict) -> list[list[str]]:
    """How the student was trained: method, throughput, the preference stage's settings."""
    rows = [["training method", t.get("method", "sft")], *map(list, per_base_rows(t))]
    if "tokens_per_second" in t:
        rows.append(["SFT tokens/s", train_speed(t)])
    pref = t.get("preference")
    if pref:
        keys = (
            "pairs",
            "pairs_by_source",
            "steps",
            "learning_rate",
            "beta",
            "loss_type",
            "rows_per_pass",
            "activation_checkpointing",
            "skipped",
        )
        rows.append(["preference stage", ", ".join(f"{k} {pref[k]}" for k in keys if k in pref)])
    return rows


def _pct(x) -> str:
    return "" if x is None else f"{x:.1%}"


def _plots(m: dict, details: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    comp = m["kscore"]["components"]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh([f"{c} {NAMES[c]}" for c in WEIGHTS], [comp[c] for c in WEIGHTS], color="#4c78a8")
    ax.set_xlim(0, 1)
    ax.set_title(f"K-score components (K = {m['kscore']['K']:.3f})")
    plots.append(("K-score components", _png(fig, plt)))
    conf = m["metrics"]["student"].get("confusion")
    if conf:
        n = len(conf["labels"])
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 + 0.55 * n), 1.2 + 0.5 * len(conf["rows"])))
        ax.imshow(conf["matrix"], cmap="Blues")
        ax.set_xticks(range(n), conf["labels"], rotation=45, ha="right")
        ax.set_yticks(range(len(conf["rows"])), conf["rows"])
        for i, row in enumerate(conf["matrix"]):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("expected")
        ax.set_title("Confusion (held-out)")
        plots.append(("Confusion matrix", _png(fig, plt)))
    fields = m["metrics"]["student"].get("field_accuracy")
    if fields:
        fig, ax = plt.subplots(figsize=(6, 0.8 + 0.35 * len(fields)))
        ax.barh(list(fields), list(fields.values()), color="#54a24b")
        ax.set_xlim(0, 1)
        ax.set_title("Per-field accuracy (student)")
        plots.append(("Per-field accuracy", _png(fig, plt)))
    lat = [x * 1000 for x in details.get("latencies_s", [])]
    if lat:
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.hist(lat, bins=min(30, max(5, len(lat) // 3)), color="#f58518")
        ax.set_xlabel("ms per answer (llama.cpp, after warm-up)")
        ax.set_title("Student latency")
        plots.append(("Latency histogram", _png(fig, plt)))
    return plots


def _png(fig, plt) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _html(m: dict, sections, plots) -> str:
    esc = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>kolm report: {esc(m['task']['name'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}.k{font-size:2em;font-weight:bold}</style>",
        "</head><body>",
        f"<h1>{esc(m['task']['name'])}</h1>",
        f"<p class='k' id='kscore'>K = {m['kscore']['K']:.3f} &mdash; {esc(verdict(m))}</p>",
        f"<p>{esc(m['task']['description'])}</p>",
        f"<p>Base {esc(m['base']['name'])}; created {esc(m['created_at'])}; kolm {esc(m['versions']['kolm'])}.</p>",
    ]
    for reason in m["gate"]["reasons"]:
        out.append(f"<p><strong>Gate:</strong> {esc(reason)}</p>")
    student = accuracy_line(m["metrics"]["student"])
    out.append(f"<p id='heldout'><strong>Student, held-out:</strong> {esc(student)}</p>")
    floor = floor_verdict(m["metrics"])
    if floor:
        out.append(f"<p id='floor'><strong>Floor:</strong> {esc(floor)}</p>")
    for title, header, rows in sections:
        out.append(
            f"<h2>{esc(title)}</h2><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in header)
            + "</tr>"
        )
        out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows]
        out.append("</table>")
    for title, data in plots:
        out.append(
            f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def _markdown(m: dict, sections) -> str:
    out = [
        f"# {m['task']['name']}",
        "",
        f"**K = {m['kscore']['K']:.3f} — {verdict(m)}**",
        "",
        m["task"]["description"],
        "",
    ]
    out += [f"- Gate: {r}" for r in m["gate"]["reasons"]]
    out.append(f"- Student, held-out: {accuracy_line(m['metrics']['student'])}")
    floor = floor_verdict(m["metrics"])
    if floor:
        out.append(f"- Floor: {floor}")
    for title, header, rows in sections:
        out += [
            "",
            f"## {title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
        ]
        out += [
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |"
            for r in rows
        ]
    out += [
        "",
        "Plots (confusion matrix, latency histogram, per-field bars) are in the HTML report.",
        "",
    ]
    return "\n".join(out)


def train_speed(t: dict) -> str:
    """Training tokens/s with threads and batch size (older manifests lack the batch)."""
    batch = f", batch {t['batch_size']}" if t.get("batch_size") else ""
    return f"{t['tokens_per_second']:.0f} ({t.get('threads', '?')} threads{batch})"
