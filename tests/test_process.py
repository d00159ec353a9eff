"""Spawned workers end when the process that started them is killed (no orphaned rollout workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from actionprior.process import parent_is_alive

PARENT = textwrap.dedent(
    """
    import multiprocessing as mp, sys, time

    def child(ready):
        from actionprior.process import exit_with_parent
        exit_with_parent(poll_seconds=0.05)
        open(ready, "w").close()
        time.sleep(600)

    if __name__ == "__main__":
        p = mp.get_context("spawn").Process(target=child, args=(sys.argv[1],))
        p.start()
        print(p.pid, flush=True)
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited, which is what matters here
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_parent_is_alive_compares_the_parent_id():
    assert parent_is_alive(os.getppid())
    assert not parent_is_alive(os.getppid() + 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_worker_exits_when_its_parent_is_killed(tmp_path, sig):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, str(script), str(ready)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:  # the watch is running
            time.sleep(0.05)
        assert ready.exists() and _alive(child)
        parent.send_signal(sig)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), f"worker {child} outlived its killed parent"
    finally:
        parent.kill()
