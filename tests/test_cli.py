"""The CLI: clear errors with the right exit codes, nothing half-written, fast verify/inspect."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO, run_cli, write_jsonl


def test_help_on_every_command():
    for args in ([], ["compile"], ["run"], ["verify"], ["inspect"], ["keys"]):
        r = run_cli(*args, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, args


def test_malformed_spec_exits_2_and_writes_nothing(tmp_path):
    spec = tmp_path / "kolm.yaml"
    spec.write_text("name: t\nexamples: none.jsonl\nbogus: 1\n")
    r = run_cli("compile", str(spec), "--out", str(tmp_path / "t.kolm"), cwd=tmp_path)
    assert r.returncode == 2
    assert "missing required key 'description'" in r.stderr and "unknown key 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "t.kolm").exists() and not (tmp_path / ".kolm-work").exists()


def test_bad_examples_are_listed_with_line_numbers(tmp_path):
    (tmp_path / "ex.jsonl").write_text(
        '{"input": "a", "output": "x"}\n{"input": "a", "output": "x"}\n{oops\n'
    )
    (tmp_path / "kolm.yaml").write_text("name: t\ndescription: d\nexamples: ex.jsonl\n")
    r = run_cli("compile", str(tmp_path / "kolm.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "line 2: duplicate input" in r.stderr and "line 3: not valid JSON" in r.stderr
    assert not list(tmp_path.glob("*.kolm"))


def test_unknown_base_exits_3_with_the_known_names(tmp_path):
    write_jsonl(
        tmp_path / "ex.jsonl", [{"input": f"q{i}", "output": "ab"[i % 2]} for i in range(8)]
    )
    (tmp_path / "kolm.yaml").write_text(
        "name: t\ndescription: d\nexamples: ex.jsonl\nbase: no-such-model\n"
    )
    r = run_cli("compile", str(tmp_path / "kolm.yaml"), cwd=tmp_path)
    assert r.returncode == 3
    assert "no-such-model" in r.stderr and "smollm2-135m-instruct" in r.stderr
    assert not list(tmp_path.glob("*.kolm"))


def test_run_on_missing_or_garbage_artifact(tmp_path):
    r = run_cli("run", str(tmp_path / "nope.kolm"), "hi")
    assert r.returncode == 4 and "no such artifact" in r.stderr
    (tmp_path / "junk.kolm").write_bytes(b"PK\x03\x04 not really a zip")
    r = run_cli("verify", str(tmp_path / "junk.kolm"))
    assert r.returncode == 4 and "corrupt or truncated" in r.stderr


def test_keys_show_export_trust_rotate(tmp_path, kolm_home):
    r = run_cli("keys", "export")
    assert r.returncode == 0 and r.stdout.startswith("kolm-ed25519 ")
    kid = r.stdout.split()[2]
    assert kid in run_cli("keys", "show").stdout
    rot = run_cli("keys", "rotate")
    assert rot.returncode == 0 and kid in rot.stdout
    shown = run_cli("keys", "show").stdout
    assert f"{kid}  own-retired" in shown
    (tmp_path / "bad.pub").write_text("hello")
    bad = run_cli("keys", "trust", str(tmp_path / "bad.pub"))
    assert bad.returncode == 1 and "not a kolm public key" in bad.stderr


def test_verify_and_inspect_do_not_import_torch():
    code = (
        "import sys\n"
        "from kolm import cli\n"
        "try:\n"
        "    cli.cli.main(['verify', '/nonexistent.kolm'], standalone_mode=False)\n"
        "except Exception:\n"
        "    pass\n"
        "try:\n"
        "    cli.cli.main(['inspect', '/nonexistent.kolm'], standalone_mode=False)\n"
        "except Exception:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'llama_cpp') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_threads_and_the_shared_options_are_offered_wherever_a_model_runs():
    for cmd in ("run", "serve", "eval", "replay"):
        r = run_cli(cmd, "--help")
        assert "--threads" in r.stdout and "--base" in r.stdout, cmd
    bad = run_cli("run", "x.kolm", "hi", "--threads", "0")
    assert bad.returncode == 2 and "--threads" in bad.stderr


def test_default_threads_leave_a_core_free():
    import os

    from kolm.runtime import Decoding, default_threads

    cores = len(os.sched_getaffinity(0))
    assert default_threads() == max(1, min(cores - 1, 8))
    assert Decoding().resolved().threads == default_threads()
    assert Decoding(threads=3).resolved().threads == 3


def test_base_given_for_an_embedded_base_is_checked_not_ignored(compiled, env, tmp_path):
    from kolm.basemodel import resolve

    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 64)
    r = run_cli(
        "run",
        str(compiled["out"]),
        "snow",
        "--base",
        str(other),
        "--threads",
        "1",
        "--receipts",
        str(tmp_path / "r.sqlite"),
        env=env,
    )
    assert r.returncode == 3 and "embeds its own base" in r.stderr and "drop --base" in r.stderr
    same = resolve("smollm2-135m-instruct").gguf  # the very file the artifact embeds
    ok = run_cli(
        "run",
        str(compiled["out"]),
        "snow",
        "--base",
        str(same),
        "--threads",
        "1",
        "--receipts",
        str(tmp_path / "r.sqlite"),
        env=env,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "charlie", ok.stderr
