"""A compile killed mid-training resumes from its checkpoint instead of starting over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from kolm.artifact import open_artifact

from .toy import write_toy_task


def test_sigkilled_compile_resumes_from_the_training_checkpoint(tmp_path, kolm_home):
    spec = write_toy_task(tmp_path / "task", steps=24)
    out = tmp_path / "toy.kolm"
    cmd = [
        sys.executable,
        "-c",
        "from kolm.cli import main; main()",
        "compile",
        str(spec),
        "--out",
        str(out),
        "-q",
        "--force",  # this tests resuming, not the gate: 24 steps may not pass it
    ]
    env = {**os.environ, "KOLM_HOME": str(kolm_home)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1800  # a loaded machine loads the base slowly
    while (
        not list(tmp_path.rglob("checkpoint.pt")) and time.time() < deadline and proc.poll() is None
    ):
        time.sleep(0.2)
    assert proc.poll() is None, "compile ended before its first checkpoint"
    assert list(tmp_path.rglob("checkpoint.pt")), "no checkpoint within the deadline"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    train = open_artifact(out).manifest["metrics"]["train"]
    assert train["resumed_from_step"] == 20 and train["steps"] == 24
