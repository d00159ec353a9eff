"""The policy server with a real checkpoint Policy, driven by the real client over loopback."""

from __future__ import annotations

import numpy as np
import pytest
from policy_builders import HISTORY, IMAGE, raw_observation, write_tiny_checkpoint

from actionprior.inference.client import PolicyClient, PolicyServerError
from actionprior.inference.execution import ExecutionConfig
from actionprior.inference.policy import Policy
from actionprior.inference.protocol import PROTOCOL_VERSION, encode
from actionprior.inference.server import PolicyServer, build_parser


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def test_served_actions_equal_in_process_policy_and_errors_are_clean(ckpt) -> None:
    served = Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, replan_every=2)
    local = Policy.from_checkpoint(ckpt, image_size=IMAGE, history_len=HISTORY, replan_every=2)
    with (
        PolicyServer(served, port=0, max_message_bytes=256 * 1024) as server,
        PolicyClient(server.url) as client,
    ):
        assert client.info()["normalization_fingerprint"] == local.normalizer.fingerprint
        for emb in ("synth_arm4", "synth_arm8"):
            client.reset()
            local.reset()
            for t in range(4):
                obs = raw_observation(emb, seed=t)
                np.testing.assert_array_equal(client.act(obs), local.act(obs))
                assert client.last_replanned == (t % 2 == 0)
                assert client.last_inference_ms >= client.last_model_ms > 0 or not client.last_replanned
        # malformed: wrong state shape, wrong image dtype, missing key, oversized payload
        bad = raw_observation("synth_arm4")
        bad["state"] = bad["state"][:-1]
        with pytest.raises(
            PolicyServerError, match=r"'state' for embodiment 'synth_arm4' must have shape \(6,\)"
        ):
            client.act(bad)
        bad = raw_observation("synth_arm4")
        bad["images"]["scene"] = bad["images"]["scene"].astype(np.int16)
        with pytest.raises(PolicyServerError, match="image 'scene' must have dtype uint8, got int16"):
            client.act(bad)
        bad = raw_observation("synth_arm4")
        del bad["embodiment"]
        with pytest.raises(PolicyServerError, match=r"missing keys \['embodiment'\]"):
            client.act(bad)
        huge = raw_observation("synth_arm4")
        huge["images"]["scene"] = np.zeros((300, 300, 3), np.uint8)
        with pytest.raises(PolicyServerError, match="exceeds the limit of 262144 bytes"):
            client.act(huge)
        reply = client.send_raw(
            encode({"type": "act", "observation": "not a mapping", "version": PROTOCOL_VERSION})
        )
        assert reply == {"ok": False, "error": reply["error"], "version": PROTOCOL_VERSION}
        assert "must be a mapping" in reply["error"]
        # still serving, and the episode state survived the rejected requests
        client.reset()
        local.reset()
        obs = raw_observation("synth_arm7", seed=9)
        np.testing.assert_array_equal(client.act(obs), local.act(obs))


def test_serve_cli_defaults_to_loopback() -> None:
    args = build_parser().parse_args(["--ckpt", "x.ckpt"])
    assert args.host == "127.0.0.1" and args.port == 8765


def test_served_rtc_and_ensemble_equal_the_in_process_policy(ckpt) -> None:
    """rtc through an asynchronous client with a fixed delay (the server guides each chunk with the one it sent
    before) and ensemble through per-step requests give the in-process policy's actions exactly."""
    options = dict(image_size=IMAGE, history_len=HISTORY, replan_every=2)
    rtc = ExecutionConfig("rtc", delay_steps=1)
    local = Policy.from_checkpoint(ckpt, **options, execution=rtc)
    served = Policy.from_checkpoint(ckpt, **options, execution=ExecutionConfig("rtc"))
    with (
        PolicyServer(served, port=0, max_message_bytes=256 * 1024) as server,
        PolicyClient(server.url, asynchronous=True, delay_steps=1) as client,
    ):
        assert client.info()["execution"]["mode"] == "rtc"
        client.reset()
        remote = [client.act(raw_observation("synth_arm4", seed=t)) for t in range(7)]
        expected = [local.act(raw_observation("synth_arm4", seed=t)) for t in range(7)]
        np.testing.assert_array_equal(np.stack(remote), np.stack(expected))
    # the guidance changed the chunks: replan with the same delay executes other actions
    plain = Policy.from_checkpoint(ckpt, **options, execution=ExecutionConfig(delay_steps=1))
    replanned = [plain.act(raw_observation("synth_arm4", seed=t)) for t in range(7)]
    np.testing.assert_array_equal(replanned[:3], expected[:3])  # the first chunk is not guided
    assert not np.allclose(np.stack(replanned[3:]), np.stack(expected[3:]))

    ensemble = ExecutionConfig("ensemble", ensemble_decay=0.3)
    options["replan_every"] = 1
    local = Policy.from_checkpoint(ckpt, **options, execution=ensemble)
    with (
        PolicyServer(Policy.from_checkpoint(ckpt, **options, execution=ensemble), port=0) as server,
        PolicyClient(server.url) as client,
    ):
        for t in range(5):
            obs = raw_observation("synth_arm8", seed=t)
            np.testing.assert_array_equal(client.act(obs), local.act(obs))
            assert client.last_switched == (t > 0)
        units = client.normalize_action("synth_arm8", np.ones((2, 8), np.float32))
        np.testing.assert_allclose(units, local.normalize_action("synth_arm8", np.ones((2, 8))), rtol=1e-6)
