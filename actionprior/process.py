"""Worker processes that die with the process that started them.

Rollout and collection workers are started with ``spawn``. If their parent is killed (SIGKILL, or SIGTERM,
whose default action skips Python's clean-up), nothing tells a worker to stop: it finishes its episode, then
waits on a queue that nobody will ever fill, holding a core and a simulator forever. Each worker therefore
watches its parent from a daemon thread and exits as soon as it is gone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

POLL_SECONDS = 0.5


def parent_is_alive(parent_pid: int) -> bool:
    """True while ``parent_pid`` is still this process's parent (an orphan is re-parented to init or a
    subreaper, so its parent id changes)."""
    return os.getppid() == parent_pid


def exit_with_parent(poll_seconds: float = POLL_SECONDS) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit``) once its parent has gone.

    ``os._exit`` because the main thread may be inside a simulator step or blocked on a queue: a normal exit
    would wait for it. The code is 1, so a worker that outlives its parent never reports success.
    """
    # The parent's pid as multiprocessing recorded it at start: if the parent died while this worker was
    # still importing, os.getppid() would already name the new (adoptive) parent.
    started_by = mp.parent_process()
    parent = started_by.pid if started_by is not None and started_by.pid else os.getppid()

    def watch() -> None:
        while parent_is_alive(parent):
            time.sleep(poll_seconds)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
