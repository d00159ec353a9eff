"""The policy server under abuse: oversized and hostile requests cost little and do not hurt other clients.

The server runs in its own process (a tiny policy, logging to a file), so that its memory and its log are
measured alone. Issue 12 found that one 3.7 MB request of 300,000 unknown keys cost ~10 s, stalled every
other client (p99 8 s), grew the server by 0.7 GB and its log by 135 MB under repetition.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from actionprior.inference.client import PolicyClient
from actionprior.inference.protocol import encode
from actionprior.inference.server import RateLimitedLog

ROOT = Path(__file__).resolve().parents[1]
IMG = 16

_SERVER = """
import logging, sys
import numpy as np
from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec
from actionprior.inference.base import BasePolicy
from actionprior.inference.observation import ObservationSpec
from actionprior.inference.server import PolicyServer

logging.basicConfig(filename=sys.argv[1], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


class Tiny(BasePolicy):
    def __init__(self):
        spec = EmbodimentSpec("arm3", ("a", "b", "c"), ("x", "y"), "delta", 10.0, cameras=("front",))
        super().__init__(ObservationSpec(EmbodimentRegistry([spec]), ("front",), 16), 1, history_len=2)

    def predict_chunk(self, observation, history):
        return np.full((1, 2), observation["state"].sum(), np.float32)


server = PolicyServer(Tiny(), port=0)
print(server.port, flush=True)
server.serve_forever()
"""


def _obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "embodiment": "arm3",
        "state": rng.normal(size=3).astype(np.float32),
        "images": {"front": rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8)},
        "instruction": "lift the cube",
    }


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024


@pytest.fixture
def server_process(tmp_path: Path):
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(log)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        yield proc, f"ws://127.0.0.1:{port}", log
    finally:
        proc.kill()
        proc.wait()


def _unknown_keys_request(n: int = 300_000) -> bytes:
    observation = {**_obs(), **{f"k{i}": i for i in range(n)}}
    return encode({"type": "act", "observation": observation})


def _hostile_payloads() -> dict[str, bytes]:
    deep = b"\x81\xa1k" * 5000 + b"\xc0"  # {"k": {"k": ... }} 5000 levels
    wide_list = msgpack.packb({"type": "act", "observation": list(range(100_000))})
    many_maps = msgpack.packb({"type": "act", "observation": [[{}] * 200] * 200})
    forged_shape = msgpack.packb(
        {"type": "act", "observation": {"__nd__": True, "dtype": "<f4", "shape": [2**62, 4], "data": b""}}
    )
    long_key = msgpack.packb({"type": "act", "x" * 1_000_000: 1})
    return {
        "deep": deep,
        "wide_list": wide_list,
        "many_maps": many_maps,
        "forged_shape": forged_shape,
        "long_key": long_key,
    }


def test_oversized_request_is_refused_fast_with_a_short_error(server_process) -> None:
    proc, url, log = server_process
    payload = _unknown_keys_request()
    assert 3_000_000 < len(payload) < 4_000_000  # the 3.7 MB request of the issue
    with PolicyClient(url) as client:
        start = time.perf_counter()
        reply = client.send_raw(payload)
        elapsed = time.perf_counter() - start
        assert reply["ok"] is False and "max_map_len" in reply["error"], reply
        assert len(reply["error"]) < 600 and "k123," not in reply["error"]
        assert elapsed < 1.0, f"the server took {elapsed:.2f} s to refuse the request"
        for name, hostile in _hostile_payloads().items():
            reply = client.send_raw(hostile)
            assert reply["ok"] is False and len(reply["error"]) < 600, (name, reply)
        # ... and it keeps serving this very connection
        assert client.act(_obs()).shape == (2,)


def test_abuse_keeps_other_clients_fast_memory_flat_and_log_small(server_process) -> None:
    proc, url, log = server_process
    payload = _unknown_keys_request()
    with PolicyClient(url) as warm:  # first requests import and allocate what serving needs
        for t in range(20):
            warm.act(_obs(t))
    rss_before = _rss_mb(proc.pid)

    abuse_replies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def abuse() -> None:
        with PolicyClient(url) as abuser:
            while not stop.is_set():
                start = time.perf_counter()
                reply = abuser.send_raw(payload)
                abuse_replies.append(time.perf_counter() - start)
                errors.append(reply.get("error", ""))

    threads = [threading.Thread(target=abuse, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    latencies = []
    with PolicyClient(url) as client:
        deadline = time.monotonic() + 4.0
        t = 0
        while time.monotonic() < deadline or len(abuse_replies) < 20:
            start = time.perf_counter()
            client.act(_obs(t))
            latencies.append(time.perf_counter() - start)
            t += 1
            if time.monotonic() > deadline + 60:
                break
    stop.set()
    for thread in threads:
        thread.join(30)

    p99 = float(np.percentile(latencies, 99))
    rss_after = _rss_mb(proc.pid)
    peak = _rss_mb(proc.pid, "VmHWM")
    log_bytes = log.stat().st_size
    print(
        f"\nabuse: {len(abuse_replies)} requests of {len(payload) / 1e6:.1f} MB with 300k keys, "
        f"median refusal {np.median(abuse_replies) * 1e3:.1f} ms; other client {len(latencies)} requests, "
        f"p50 {np.median(latencies) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms; server RSS {rss_before:.0f} -> "
        f"{rss_after:.0f} MB (peak {peak:.0f}); log {log_bytes} bytes"
    )
    assert len(abuse_replies) >= 20 and all(e and len(e) < 600 for e in errors)
    assert p99 < 1.0, f"p99 latency of a well-behaved client under abuse: {p99:.3f} s"
    assert rss_after - rss_before < 64, f"server memory grew from {rss_before:.0f} to {rss_after:.0f} MB"
    assert peak - rss_before < 256, f"server memory peaked at {peak:.0f} MB (from {rss_before:.0f})"
    assert log_bytes < 64 * 1024, f"server log grew to {log_bytes} bytes"
    text = log.read_text()
    rejected = text.count("rejected request")
    assert 1 <= rejected <= 2 * RateLimitedLog(None).per_interval, f"{rejected} rejections logged"
    assert "k123," not in text and "connection open" not in text


def test_rate_limited_log_counts_what_it_drops(caplog) -> None:
    import logging

    limiter = RateLimitedLog(logging.getLogger("abuse-test"), per_interval=3, interval_s=0.2)
    with caplog.at_level(logging.INFO, logger="abuse-test"):
        emitted = [limiter.warning(f"rejected request: {'x' * 10_000} {i}") for i in range(50)]
        time.sleep(0.25)
        limiter.warning("rejected request: after the window")
    assert emitted.count(True) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all(len(line) < 400 for line in lines)
    assert lines[-1].endswith("(47 similar messages suppressed)")
