"""Running a distributed rehearsal in a subprocess so that a hang fails the test instead of blocking CI."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest


def run_or_fail_on_hang(cmd: list[str], timeout_s: float, cwd: Path, env: dict[str, str], what: str) -> str:
    """Run ``cmd`` in its own process group; kill the whole group and fail if it outlives ``timeout_s``.

    Returns the combined stdout/stderr; a non-zero exit fails the test with the end of that output.
    """
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{what} hung for {timeout_s} s and was killed:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-4000:]}"
    return out
