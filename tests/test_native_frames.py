"""Camera frames at their native size: the batch contract fits them with the checkpoint's image contract, in
process and through the server, exactly as a pre-fitted frame; another aspect ratio than training's gives one
warning line, not a refusal."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from policy_builders import HISTORY, raw_observation, write_tiny_checkpoint

from actionprior.data.errors import DataError
from actionprior.data.images import ImageFit, fit_image, image_fit_of_manifests
from actionprior.inference.client import PolicyClient
from actionprior.inference.policy import Policy, PolicyCheckpointError
from actionprior.inference.server import PolicyServer

SIZE = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny checkpoint whose actions depend on the images: an untrained decoder's adaLN-zero modulations
    ignore z' (so any image would give the same actions); here they are random."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("native") / "tiny.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("model.head.decoder.") and value.is_floating_point() and not value.any():
            value.copy_(0.2 * torch.randn(value.shape, generator=g))
    torch.save(checkpoint, path)
    return path


def _camera_frame(seed: int, h: int = 480, w: int = 640) -> np.ndarray:
    """A smooth 480x640 scene (gradients and a disc), so that fitting changes pixels visibly but not randomly."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((y - h * (0.3 + 0.05 * seed)) ** 2 + (x - w * 0.6) ** 2) < (h / 6) ** 2
    rgb = np.stack([x / w * 255, y / h * 255, np.where(disc, 255.0, 40.0 * seed % 255)], axis=-1)
    return rgb.astype(np.uint8)


def _episode(fit: ImageFit | None) -> list[dict]:
    out = []
    for t in range(5):
        obs = raw_observation("synth_arm4", seed=t)
        native = _camera_frame(t)
        obs["images"] = {
            "scene": native if fit is None else fit(native),
            "wrist": np.full((SIZE, SIZE, 3), 7 * t, np.uint8),  # already at the model's size
        }
        out.append(obs)
    return out


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _actions(policy, episode: list[dict]) -> np.ndarray:
    policy.reset()
    return np.stack([policy.act(obs) for obs in episode])


def test_a_native_frame_gives_the_actions_of_the_prefitted_one_and_one_warning_line(ckpt, caplog) -> None:
    policy = Policy.from_checkpoint(ckpt, image_size=SIZE, history_len=HISTORY, replan_every=2, seed=1)
    assert policy.image_fit == ImageFit(SIZE)  # a checkpoint without an image contract: pad, area filter
    with caplog.at_level(logging.WARNING, logger="actionprior.inference.policy"):
        native = _actions(policy, _episode(None))
        prefitted = _actions(policy, _episode(ImageFit(SIZE)))
    np.testing.assert_array_equal(native, prefitted)
    assert _warnings(caplog) == [
        "camera 'scene': 640x480 frames (aspect 1.33) are fitted by pad to 64x64, but the model was trained on "
        "square frames (aspect 1.00); objects appear at other places than in training"
    ]
    # The fit is part of what the model sees: a crop of the same frames gives other actions.
    assert not np.array_equal(native, _actions(policy, _episode(ImageFit(SIZE, "crop"))))
    # The server takes native frames too, and answers exactly what the in-process policy does.
    served = Policy.from_checkpoint(ckpt, image_size=SIZE, history_len=HISTORY, replan_every=2, seed=1)
    with PolicyServer(served, port=0) as server, PolicyClient(server.url) as client:
        np.testing.assert_array_equal(_actions(client, _episode(None)), native)


def test_the_recorded_image_contract_is_applied_and_checked(ckpt, tmp_path, caplog) -> None:
    checkpoint = torch.load(ckpt, weights_only=True)
    contract = ImageFit(SIZE, "crop", "area", {"scene": (480, 640)})
    checkpoint["actionprior"]["vla"]["image"] = contract.to_dict()
    path = tmp_path / "crop.ckpt"
    torch.save(checkpoint, path)
    policy = Policy.from_checkpoint(path, image_size=SIZE, history_len=HISTORY, seed=1)
    assert policy.image_fit == contract
    with caplog.at_level(logging.WARNING, logger="actionprior.inference.policy"):
        native = _actions(policy, _episode(None))
    assert _warnings(caplog) == []  # the camera's native aspect ratio is the one it was trained on
    np.testing.assert_array_equal(native, _actions(policy, _episode(contract)))
    np.testing.assert_array_equal(
        contract(_camera_frame(0)), fit_image(_camera_frame(0), SIZE, "crop", "area")
    )

    checkpoint["actionprior"]["vla"]["image"] = {"size": SIZE, "resize": "stretch"}
    torch.save(checkpoint, path)
    with pytest.raises(
        PolicyCheckpointError, match=r"crop.ckpt: vla.image: invalid image contract: resize must be"
    ):
        Policy.from_checkpoint(path, image_size=SIZE, history_len=HISTORY)


def test_datasets_must_agree_on_their_fit(tmp_path) -> None:
    imported = {"import": {"image": {"size": 64, "resize": "crop", "source_sizes": {"top": [480, 640]}}}}
    collected: dict = {}
    fit = image_fit_of_manifests([("a", imported), ("b", collected)], 32)
    assert fit == ImageFit(32, "crop", "area", {"top": (480, 640)})
    padded = {"import": {"image": {"size": 64, "resize": "pad"}}}
    with pytest.raises(
        DataError, match=r"the datasets fitted their frames differently \({'a': 'crop', 'c': 'pad'}\)"
    ):
        image_fit_of_manifests([("a", imported), ("c", padded)], 32)
    broken = {"import": {"image": {"resize": "pad", "source_sizes": {"top": [480, -1]}}}}
    with pytest.raises(
        DataError, match=r"d/manifest.json: import.image.source_sizes\['top'\] must be \[height, width\]"
    ):
        image_fit_of_manifests([("d", broken)], 32)
