"""Chunk execution (replan / ensemble / rtc under a simulated delay), RTC guided sampling and smoothness figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actionprior.data.synthetic import synthetic_registry
from actionprior.embodiments import EmbodimentRegistry, EmbodimentSpec
from actionprior.evaluation.smoothness import action_tv, boundary_jumps, rms_jerk, smoothness
from actionprior.inference.base import BasePolicy, History, RandomPolicy
from actionprior.inference.execution import ChunkExecutor, ExecutionConfig, ExecutionError
from actionprior.inference.observation import ObservationSpec
from actionprior.models.action_prior import ActionPrior, ActionPriorConfig
from actionprior.models.rtc import RTCGuide, guidance_weight, rtc_weights


def _spec() -> ObservationSpec:
    arm = EmbodimentSpec("arm", ("t", "x"), ("a",), "delta", 10.0, cameras=())
    return ObservationSpec(EmbodimentRegistry([arm]), (), None)


def _obs(step: int) -> dict:
    return {
        "embodiment": "arm",
        "state": np.array([step, 0.0], np.float32),
        "images": {},
        "instruction": "go",
    }


class StampPolicy(BasePolicy):
    """Chunk of the observation of step t: action i = 1000 * (number of chunks so far) + t + i, so an executed
    action tells which chunk it came from and which step it was planned for."""

    supports_guidance = True

    def __init__(self, chunk_len: int, replan_every: int, execution: ExecutionConfig | None = None):
        self.chunk_len = chunk_len
        self.guides: list = []
        super().__init__(_spec(), replan_every, execution=execution)

    def reset(self) -> None:
        super().reset()
        self.chunks = 0

    def predict_chunk(self, observation, history: History, guide=None) -> np.ndarray:
        self.guides.append(guide)
        t = observation["state"][0]
        chunk = 1000.0 * self.chunks + t + np.arange(self.chunk_len, dtype=np.float32)
        self.chunks += 1
        return chunk[:, None]


def _run(policy: BasePolicy, steps: int) -> tuple[list[float], list[int], list[int]]:
    actions, requests, switches = [], [], []
    for s in range(steps):
        actions.append(float(policy.act(_obs(s))[0]))
        if policy.last_replanned:
            requests.append(s)
        if policy.last_switched:
            switches.append(s)
    return actions, requests, switches


def test_replan_without_delay_executes_n_actions_then_replans() -> None:
    actions, requests, switches = _run(StampPolicy(chunk_len=6, replan_every=4), 10)
    assert requests == [0, 4, 8] and switches == [4, 8]
    assert actions == [0, 1, 2, 3, 1004, 1005, 1006, 1007, 2008, 2009]


def test_delayed_chunks_are_aligned_to_the_present_and_never_replayed() -> None:
    policy = StampPolicy(chunk_len=8, replan_every=4, execution=ExecutionConfig(delay_steps=2))
    actions, requests, switches = _run(policy, 14)
    # the first chunk is waited for; the chunk of step 4 takes over at step 6 with its action for step 6 ...
    assert requests == [0, 4, 8, 12] and switches == [6, 10]
    assert actions == [0, 1, 2, 3, 4, 5, 1006, 1007, 1008, 1009, 2010, 2011, 2012, 2013]
    # ... so that every executed action was planned for the step it ran at
    assert [a % 1000 for a in actions] == list(range(14))


def test_delay_longer_than_replan_every_requests_chunks_back_to_back() -> None:
    policy = StampPolicy(chunk_len=8, replan_every=1, execution=ExecutionConfig(delay_steps=3))
    _, requests, switches = _run(policy, 10)
    assert requests == [0, 1, 4, 7] and switches == [4, 7]


def test_ensemble_weights_match_a_hand_computed_case() -> None:
    """Chunks of 3 constant actions 0, 1, 2, 3 (one per step), m = 0.5: w_i = exp(-0.5 i), i = 0 the oldest."""

    class Constant(StampPolicy):
        def predict_chunk(self, observation, history, guide=None):
            self.chunks += 1
            return np.full((3, 1), self.chunks - 1, np.float32)

    policy = Constant(3, 1, ExecutionConfig("ensemble", ensemble_decay=0.5))
    actions, requests, switches = _run(policy, 4)
    w1, w2 = math.exp(-0.5), math.exp(-1.0)
    expected = [
        0.0,
        (0 + 1 * w1) / (1 + w1),
        (0 + 1 * w1 + 2 * w2) / (1 + w1 + w2),
        (1 + 2 * w1 + 3 * w2) / (1 + w1 + w2),  # the first chunk (steps 0-2) has run out
    ]
    np.testing.assert_allclose(actions, expected, rtol=1e-6)
    assert expected[1] == pytest.approx(0.3775407, abs=1e-7) and expected[2] == pytest.approx(
        0.6798433, abs=1e-7
    )
    assert requests == [0, 1, 2, 3] and switches == [1, 2, 3]
    # m = 0 averages uniformly
    uniform = Constant(3, 1, ExecutionConfig("ensemble", ensemble_decay=0.0))
    np.testing.assert_allclose(_run(uniform, 4)[0], [0, 0.5, 1.0, 2.0], rtol=1e-6)


def test_rtc_asks_to_continue_the_previous_chunk_with_the_delay_frozen() -> None:
    policy = StampPolicy(chunk_len=8, replan_every=4, execution=ExecutionConfig("rtc", delay_steps=2))
    _run(policy, 9)
    first, second, third = policy.guides
    assert first is None  # nothing to continue at the episode start
    np.testing.assert_array_equal(second.previous[:, 0], [4, 5, 6, 7])  # chunk 0's actions for steps 4..7
    assert second.frozen == 2
    np.testing.assert_array_equal(third.previous[:, 0], [1008, 1009, 1010, 1011])
    with pytest.raises(
        ValueError, match="RandomPolicy cannot execute 'rtc'.*use --execution replan or ensemble"
    ):
        RandomPolicy(_spec(), execution=ExecutionConfig("rtc"))


def test_execution_settings_and_coverage_are_checked() -> None:
    with pytest.raises(ValueError, match="execution mode must be one of"):
        ExecutionConfig("smooth")
    with pytest.raises(ValueError, match="delay_steps must be an integer >= 0"):
        ExecutionConfig(delay_steps=-1)
    from actionprior.inference.execution import check_coverage

    check_coverage(16, 8, 8)
    with pytest.raises(ValueError, match=r"need max\(replan_every, delay\) \+ delay <= 16"):
        check_coverage(16, 8, 9)
    executor = ChunkExecutor(4, ExecutionConfig(delay_steps=3))
    executor.add(np.zeros((4, 1)), 0)
    for _ in range(4):
        executor.next_action()
    executor.add(np.ones((4, 1)), 4)  # arrives at step 7: nothing covers steps 4-6
    with pytest.raises(ExecutionError, match=r"no action for step 4.*chunks of steps \[4\] have not arrived"):
        executor.next_action()


# ---------------------------------------------------------------------------------------------- RTC sampling
def _prior(chunk_len: int = 8) -> ActionPrior:
    torch.manual_seed(0)
    cfg = ActionPriorConfig.for_embodiments(
        synthetic_registry(), width=32, depth=2, heads=2, latent_dim=16, chunk_len=chunk_len, sample_steps=5
    )
    prior = ActionPrior(cfg).eval()
    with torch.no_grad():  # adaLN-Zero starts every block as the identity: perturb so that they all matter
        for param in prior.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return prior


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)


def test_rtc_weights_are_the_papers_soft_mask() -> None:
    w = rtc_weights(10, torch.tensor([2]), torch.tensor([6]))[0]
    c = np.array([4, 3, 2, 1]) / 5  # (overlap - i) / (overlap - frozen + 1) for i = 2..5
    expected = np.concatenate([[1, 1], c * np.expm1(c) / (math.e - 1), [0, 0, 0, 0]])
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    assert w[2].item() == pytest.approx(0.8 * (math.exp(0.8) - 1) / (math.e - 1))
    hard = rtc_weights(6, torch.tensor([2, 0]), torch.tensor([4, 4]), "hard")
    assert hard.tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert guidance_weight(0.0, 5.0) == 5.0 and guidance_weight(0.5, 5.0) == pytest.approx(2.0)
    assert guidance_weight(0.9, 5.0) == 5.0 and guidance_weight(0.5, 0.0) == 0.0


def test_rtc_without_guidance_or_frozen_steps_is_plain_sampling() -> None:
    prior = _prior()
    reg = synthetic_registry()
    ids = torch.arange(3) % len(reg)
    z = torch.randn(3, 16)
    target = torch.randn(3, 8, prior.config.max_action_dim)
    guide = RTCGuide(target, torch.zeros(3, dtype=torch.long), torch.full((3,), 5), max_guidance=0.0)
    with torch.inference_mode():  # as VLA.sample_actions calls it
        guided = prior.sample_rtc(z, ids, guide, generator=_gen())
    assert torch.equal(guided, prior.sample(z, ids, generator=_gen()))


def test_rtc_hard_mask_reproduces_the_frozen_prefix_exactly_and_is_deterministic() -> None:
    prior = _prior()
    reg = synthetic_registry()
    ids = torch.arange(3) % len(reg)
    z = torch.randn(3, 16)
    target = torch.randn(3, 8, prior.config.max_action_dim)
    frozen = torch.tensor([2, 0, 3])
    guide = RTCGuide(target, frozen, torch.tensor([5, 5, 6]), mask="hard")
    with torch.inference_mode():
        out = prior.sample_rtc(z, ids, guide, generator=_gen())
        again = prior.sample_rtc(z, ids, guide, generator=_gen())
    assert torch.equal(out, again)
    dims = prior.decoder.io.action_dim_mask(ids)
    for b, d in enumerate(frozen.tolist()):
        real = dims[b]
        assert torch.equal(out[b, :d][:, real], target[b, :d][:, real])
        assert not torch.equal(out[b, d : d + 1][:, real], target[b, d : d + 1][:, real])
    assert torch.all(out[~dims[:, None, :].expand_as(out)] == 0)  # padded dims stay zero
    assert all(p.grad is None for p in prior.parameters())  # guidance differentiates the chunk only


def test_rtc_soft_guidance_pulls_the_overlap_towards_the_previous_chunk() -> None:
    prior = _prior()
    reg = synthetic_registry()
    ids = torch.arange(4) % len(reg)
    z = torch.randn(4, 16)
    target = torch.randn(4, 8, prior.config.max_action_dim)
    dims = prior.decoder.io.action_dim_mask(ids)[:, None, :].float()
    overlap = torch.full((4,), 6)
    plain = prior.sample(z, ids, generator=_gen())
    guided = prior.sample_rtc(
        z, ids, RTCGuide(target, torch.zeros(4, dtype=torch.long), overlap), generator=_gen()
    )

    def gap(x: torch.Tensor) -> float:
        return float((((x - target) * dims)[:, :4] ** 2).sum())

    # no frozen step: only the guidance moves the first steps of the overlap, and it moves them a lot closer
    assert gap(guided) < 0.5 * gap(plain)
    # --no-rtc-vjp: the identity in place of the decoder's Jacobian pulls too, along another path
    identity = RTCGuide(target, torch.zeros(4, dtype=torch.long), overlap, vjp=False)
    approx = prior.sample_rtc(z, ids, identity, generator=_gen())
    assert gap(approx) < 0.5 * gap(plain) and not torch.allclose(approx, guided)
    with pytest.raises(ValueError, match=r"frozen \[3\] exceeds overlap \[2\]"):
        prior.sample_rtc(z[:1], ids[:1], RTCGuide(target[:1], torch.tensor([3]), torch.tensor([2])))


# ---------------------------------------------------------------------------------------------- smoothness
def test_jerk_of_a_known_polynomial_trajectory() -> None:
    t = np.arange(12, dtype=np.float64)
    cubic = np.stack([2.0 * t**3 - t**2 + 3 * t, -0.5 * t**3 + 4.0], axis=1)
    # the third difference of c t^3 is 6 c exactly; lower orders vanish
    assert rms_jerk(cubic) == pytest.approx(math.sqrt((12.0**2 + 3.0**2) / 2))
    assert rms_jerk(np.stack([t**2, -3 * t], axis=1)) == pytest.approx(0.0, abs=1e-9)
    assert rms_jerk(cubic[:3]) is None
    ramp = 0.5 * t[:, None]
    assert action_tv(ramp) == pytest.approx(0.5)
    step = np.concatenate([np.zeros((4, 2)), np.full((4, 2), [3.0, 4.0])])
    assert boundary_jumps(step, [4, 6, 0]) == [5.0, 0.0]
    figures = smoothness(step, [4])
    assert figures["max_boundary_jump"] == 5.0 and figures["action_tv"] == pytest.approx(7.0 / 7)
    assert smoothness(step, [])["max_boundary_jump"] is None


def test_steps_between_chunks_default_per_mode() -> None:
    from actionprior.inference.execution import default_replan_every

    assert [default_replan_every(m, 16) for m in ("replan", "ensemble", "rtc")] == [16, 1, 8]
    assert default_replan_every("rtc", 1) == 1


def test_execution_settings_repeat_the_rtc_maths_constants() -> None:
    """The torch-free execution settings and the guided sampler (a lower layer) agree on RTC's constants."""
    from actionprior.inference import execution
    from actionprior.models import rtc

    assert execution.MASK_KINDS == rtc.MASK_KINDS == ("soft", "hard")
    assert execution.DEFAULT_MAX_GUIDANCE == rtc.DEFAULT_MAX_GUIDANCE == 5.0
