"""Wire format and policy server, driven by the real client over loopback with a deterministic policy."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec
from actionprior.inference.base import BasePolicy, History
from actionprior.inference.client import PolicyClient, PolicyServerError
from actionprior.inference.observation import ObservationError, ObservationSpec
from actionprior.inference.protocol import PROTOCOL_VERSION, ProtocolError, decode, encode
from actionprior.inference.server import PolicyServer

IMG = 16


def _registry() -> EmbodimentRegistry:
    return EmbodimentRegistry(
        [
            EmbodimentSpec("arm3", ("a", "b", "c"), ("x", "y"), "delta", 10.0, cameras=("front",)),
            EmbodimentSpec(
                "arm5", tuple("abcde"), ("x", "y", "z", "g"), "joint", 10.0, cameras=("front", "wrist")
            ),
        ]
    )


class AffinePolicy(BasePolicy):
    """Chunk = state-dependent ramp plus the history length, so queue and history both show in actions."""

    def __init__(self, replan_every: int = 2, chunk_len: int = 4):
        self.chunk_len = chunk_len
        super().__init__(ObservationSpec(_registry(), ("front", "wrist"), IMG), replan_every, history_len=3)

    def predict_chunk(self, observation, history: History) -> np.ndarray:
        dim = self.obs_spec.registry[observation["embodiment"]].action_dim
        base = observation["state"].sum() + 100.0 * len(history)
        return (base + np.arange(self.chunk_len)[:, None] * np.ones(dim)).astype(np.float32)


def _obs(emb: str = "arm3", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dim = 3 if emb == "arm3" else 5
    cams = ("front",) if emb == "arm3" else ("front", "wrist")
    return {
        "embodiment": emb,
        "state": rng.normal(size=dim).astype(np.float32),
        "images": {c: rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8) for c in cams},
        "instruction": "lift the cube",
    }


def test_array_round_trip_preserves_dtype_shape_and_values() -> None:
    msg = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([[1, 2]], dtype=np.uint8),
        "c": np.zeros((0, 3), np.int64),
        "d": [np.float64(2.5), "text", {"nested": np.array([True, False])}],
    }
    out = decode(encode(msg))
    for key in ("a", "b", "c"):
        assert out[key].dtype == msg[key].dtype and out[key].shape == msg[key].shape
        np.testing.assert_array_equal(out[key], msg[key])
    assert out["d"][0] == 2.5 and out["d"][1] == "text"
    np.testing.assert_array_equal(out["d"][2]["nested"], [True, False])
    out["a"][0, 0] = -1  # decoded arrays are writable copies


def test_protocol_refuses_object_arrays_bad_sizes_and_garbage() -> None:
    with pytest.raises(ProtocolError, match="only numeric"):
        encode({"x": np.array(["a", None], dtype=object)})
    forged = msgpack.packb({"__nd__": True, "dtype": "<f4", "shape": [4], "data": b"\0" * 8})
    with pytest.raises(ProtocolError, match="needs 16 bytes, got 8"):
        decode(forged)
    forged_obj = msgpack.packb({"__nd__": True, "dtype": "|O", "shape": [1], "data": b"\0" * 8})
    with pytest.raises(ProtocolError, match="not allowed"):
        decode(forged_obj)
    with pytest.raises(ProtocolError, match="not a valid msgpack"):
        decode(b"\xc1\xff\x00garbage")
    with pytest.raises(ProtocolError, match="exceeds the limit of 10 bytes"):
        decode(encode({"x": np.zeros(100)}), max_bytes=10)


def test_policy_queue_replans_every_n_and_keeps_history() -> None:
    policy = AffinePolicy(replan_every=2, chunk_len=4)
    obs = _obs()
    s = float(obs["state"].sum())
    got = [policy.act(obs)[0] for _ in range(5)]
    # steps 0,1 from the chunk planned with empty history; 2,3 after 2 steps of history; 4 with 3 (capped).
    np.testing.assert_allclose(got, [s, s + 1, s + 200, s + 201, s + 300], rtol=1e-6)
    states, actions = policy.history.recent()
    assert len(states) == len(actions) == 3 and actions[-1, 0] == pytest.approx(s + 300)
    policy.reset()
    assert policy.act(obs)[0] == pytest.approx(s)
    with pytest.raises(ObservationError, match="embodiment changed from 'arm3' to 'arm5'"):
        policy.act(_obs("arm5"))


@pytest.fixture(scope="module")
def server():
    with PolicyServer(AffinePolicy(), port=0, max_message_bytes=64 * 1024) as srv:
        yield srv


def test_server_actions_equal_in_process_policy(server: PolicyServer) -> None:
    local = AffinePolicy()
    with PolicyClient(server.url) as client:
        info = client.info()
        assert info["embodiments"]["arm5"]["cameras"] == ["front", "wrist"] and info["image_size"] == IMG
        for emb in ("arm3", "arm5"):
            client.reset()
            local.reset()
            for t in range(5):
                obs = _obs(emb, seed=t)
                remote = client.act(obs)
                assert remote.dtype == np.float32
                np.testing.assert_array_equal(remote, local.act(obs))
                assert client.last_inference_ms > 0 and client.last_replanned == (t % 2 == 0)


def _bad_observations() -> list[tuple[dict, str]]:
    cases = []
    o = _obs()
    o["state"] = np.zeros(4, np.float32)
    cases.append((o, r"must have shape \(3,\)"))
    o = _obs()
    o["state"] = o["state"].astype(np.int32)
    cases.append((o, "must be a float array"))
    o = _obs()
    del o["instruction"]
    cases.append((o, r"missing keys \['instruction'\]"))
    o = _obs()
    o["images"]["front"] = o["images"]["front"].astype(np.float32)
    cases.append((o, "image 'front' must have dtype uint8"))
    o = _obs()
    o["images"]["front"] = np.zeros((IMG, IMG + 1), np.uint8)  # frames of any size, but RGB
    cases.append((o, r"image 'front' must be uint8 \[h, w, 3\] \(rgb\), got shape \(16, 17\)"))
    o = _obs("arm5")
    del o["images"]["wrist"]
    cases.append((o, r"missing \['wrist'\]"))
    o = _obs()
    o["embodiment"] = "hexapod"
    cases.append((o, "unknown embodiment 'hexapod'"))
    o = _obs()
    o["state"][1] = np.nan
    cases.append((o, r"non-finite values at dims \[1\]"))
    return cases


def test_server_answers_malformed_requests_with_errors_and_keeps_serving(server: PolicyServer) -> None:
    with PolicyClient(server.url) as client:
        for obs, pattern in _bad_observations():
            with pytest.raises(PolicyServerError, match=pattern):
                client.act(obs)
        reply = client.send_raw(
            encode({"type": "act", "observation": _obs(), "pad": np.zeros(70_000, np.uint8)})
        )
        assert not reply["ok"] and "exceeds the limit of 65536 bytes" in reply["error"]
        reply = client.send_raw(b"\xc1 definitely not msgpack")
        assert not reply["ok"] and "not a valid msgpack" in reply["error"]
        reply = client.send_raw(encode({"type": "fly", "version": PROTOCOL_VERSION}))
        assert not reply["ok"] and "unknown request type 'fly'" in reply["error"]
        reply = client.send_raw(encode({"type": "act", "version": PROTOCOL_VERSION}))
        assert not reply["ok"] and "needs an 'observation'" in reply["error"]
        # the same connection still works after every kind of error
        assert client.act(_obs()).shape == (2,)
    # a payload beyond the transport's hard cap closes that connection only; new clients are served
    with PolicyClient(server.url, max_message_bytes=4 << 20) as big:
        big._ws.send(encode({"pad": np.zeros(1_300_000, np.uint8)}))
        with pytest.raises(ConnectionClosed) as closed:
            big._ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # "message too big"
    with PolicyClient(server.url) as client:
        assert client.act(_obs("arm5")).shape == (4,)


def test_client_reports_unreachable_server() -> None:
    with pytest.raises(ConnectionError, match="cannot reach the policy server"):
        PolicyClient("ws://127.0.0.1:1", timeout=2)


def test_server_refuses_clients_beyond_max_connections_and_frees_the_slot() -> None:
    with PolicyServer(AffinePolicy(), port=0, max_connections=2) as srv:
        first, second = PolicyClient(srv.url), PolicyClient(srv.url)
        assert first.act(_obs()).shape == (2,) and second.act(_obs()).shape == (2,)
        with (
            PolicyClient(srv.url) as third,
            pytest.raises(PolicyServerError, match="closed the connection: server busy: 2 clients connected"),
        ):
            third.info()
        first.close()
        # the slot is released once the server has seen the close (its handler thread ends)
        for _ in range(100):
            try:
                with PolicyClient(srv.url) as again:
                    assert again.act(_obs("arm5")).shape == (4,)
                break
            except PolicyServerError:
                time.sleep(0.05)
        else:
            raise AssertionError("a closed client's slot was never released")
        assert second.act(_obs()).shape == (2,)
        second.close()
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        PolicyServer(AffinePolicy(), port=0, max_connections=0)
