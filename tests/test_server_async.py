"""Asynchronous inference over the websocket protocol: whole chunks in the background, aligned to the present
step; the versioned protocol; execution modes through the server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from websockets.sync.server import serve

from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec
from actionprior.inference.base import BasePolicy, History
from actionprior.inference.client import PolicyClient, PolicyServerError
from actionprior.inference.execution import ExecutionConfig
from actionprior.inference.observation import ObservationSpec
from actionprior.inference.protocol import PROTOCOL_VERSION, encode
from actionprior.inference.server import PolicyServer


def _spec() -> ObservationSpec:
    arm = EmbodimentSpec("arm", ("t", "x"), ("a",), "delta", 10.0, cameras=())
    return ObservationSpec(EmbodimentRegistry([arm]), (), None)


def _obs(step: int, x: float = 0.0) -> dict:
    return {"embodiment": "arm", "state": np.array([step, x], np.float32), "images": {}, "instruction": "go"}


class SlowStepPolicy(BasePolicy):
    """Chunk of the observation of step t: actions t, t+1, ... (so an action names the step it was planned for),
    computed in ``delay_s`` seconds; plus 1000 x the history length, so the history shows in the actions."""

    def __init__(
        self, delay_s: float = 0.0, chunk_len: int = 16, replan_every: int = 4, history_len: int = 0
    ):
        self.delay_s, self.chunk_len = delay_s, chunk_len
        super().__init__(_spec(), replan_every, history_len=history_len)

    def describe(self) -> dict:
        return {**super().describe(), "chunk_len": self.chunk_len}  # as Policy says it

    def predict_chunk(self, observation, history: History, guide=None) -> np.ndarray:
        time.sleep(self.delay_s)
        t = observation["state"][0]
        return (t + 1000.0 * len(history) + np.arange(self.chunk_len, dtype=np.float32))[:, None]


def test_async_client_never_replays_an_old_action_under_a_slow_server() -> None:
    with (
        PolicyServer(SlowStepPolicy(delay_s=0.05), port=0) as server,
        PolicyClient(server.url, asynchronous=True) as client,
    ):
        for episode in range(2):
            client.reset()
            actions, delays, fast_acts = [], [], 0
            for step in range(60):
                start = time.perf_counter()
                actions.append(float(client.act(_obs(step))[0]))
                if client.last_replanned and time.perf_counter() - start < 0.025:
                    fast_acts += 1  # asked for a chunk and returned before the server could answer
                delays.append(client.last_delay_steps)
                time.sleep(0.005)
            # every executed action is the one planned for its step: late chunks are aligned, never replayed
            assert actions == list(range(60)), episode
            assert max(delays) >= 2 and fast_acts >= 3  # chunks did arrive late, while the client kept acting


def test_async_client_with_a_fixed_delay_equals_the_in_process_policy_with_that_delay() -> None:
    """The chunk requested at step t is used from step t + 2 on; the history travels with the requests."""
    config = ExecutionConfig(delay_steps=2)
    local = SlowStepPolicy(chunk_len=8, replan_every=3, history_len=2)
    local.execution = config
    with (
        PolicyServer(SlowStepPolicy(chunk_len=8, replan_every=3, history_len=2), port=0) as server,
        PolicyClient(server.url, asynchronous=True, delay_steps=2) as client,
    ):
        for _ in range(2):
            client.reset()
            local.reset()
            remote = [float(client.act(_obs(s, x=0.5 * s))[0]) for s in range(20)]
            expected = [float(local.act(_obs(s, x=0.5 * s))[0]) for s in range(20)]
            assert remote == expected
            assert (
                remote[:5] == [0, 1, 2, 3, 4] and remote[5] == 2005
            )  # chunk of step 3 from step 5, 2 past steps
        with pytest.raises(ValueError, match=r"need max\(replan_every, delay\) \+ delay <= 8"):
            PolicyClient(server.url, asynchronous=True, delay_steps=6).close()


def test_server_refuses_another_protocol_version_in_one_line() -> None:
    with PolicyServer(SlowStepPolicy(), port=0) as server, PolicyClient(server.url) as client:
        old = client.send_raw(
            encode({"type": "act", "observation": _obs(0)})
        )  # a client from before versions
        assert old["ok"] is False and "\n" not in old["error"]
        assert "speaks protocol version 2 and the request carries no version" in old["error"]
        assert "update actionprior on the client" in old["error"]
        other = client.send_raw(encode({"type": "info", "version": 1}))
        assert other["ok"] is False and other["error"].startswith("protocol version 1 is not supported")
        assert client.act(_obs(0)).shape == (1,)  # the connection still serves current clients


def test_client_refuses_a_server_of_another_protocol_version_in_one_line() -> None:
    """An older server answers without a version field."""

    def old_server(ws) -> None:
        for _ in ws:
            ws.send(encode({"ok": True, "info": {}}))

    with serve(old_server, "127.0.0.1", 0) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        port = srv.socket.getsockname()[1]
        with PolicyClient(f"ws://127.0.0.1:{port}") as client, pytest.raises(PolicyServerError) as err:
            client.info()
        srv.shutdown()
    message = str(err.value)
    assert "\n" not in message and "speaks protocol no version (an older actionprior)" in message
    assert f"this client version {PROTOCOL_VERSION}" in message


def test_chunk_requests_are_validated() -> None:
    with PolicyServer(SlowStepPolicy(), port=0) as server, PolicyClient(server.url) as client:

        def chunk(**fields) -> dict:
            return client.send_raw(encode({"type": "chunk", "version": PROTOCOL_VERSION, **fields}))

        good = chunk(observation=_obs(3), step=3)
        assert good["ok"] and good["start_step"] == 3 and good["chunk"].shape == (16, 1)
        assert "'step' must be an integer" in chunk(observation=_obs(4), step=-1)["error"]
        assert "needs an integer 'step'" in chunk(observation=_obs(4))["error"]
        assert "steps must not go back" in chunk(observation=_obs(2), step=2)["error"]
        bad = {"states": np.zeros((2, 3), np.float32), "actions": np.zeros((2, 1), np.float32)}
        assert "must be [k, 2] / [k, 1]" in chunk(observation=_obs(5), step=5, executed=bad)["error"]
        assert (
            "exactly 'states' and 'actions'" in chunk(observation=_obs(5), step=5, executed={"x": 1})["error"]
        )
