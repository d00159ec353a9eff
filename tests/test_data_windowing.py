"""Windows cut at time t: chunk, history, masks at both episode ends and dim padding."""

from __future__ import annotations

import numpy as np
import pytest

from actionprior.data.windowing import cut_window, cut_windows, gather_windows, pad_episode


def _episode(length: int = 5, ds: int = 2, da: int = 1) -> tuple[np.ndarray, np.ndarray]:
    state = np.arange(length * ds, dtype=np.float32).reshape(length, ds) + 1
    action = -np.arange(length * da, dtype=np.float32).reshape(length, da) - 1
    return state, action


def test_window_inside_the_episode_is_the_plain_slices() -> None:
    state, action = _episode(10)
    w = cut_window(state, action, t=4, chunk_len=3, history_len=2, state_width=2, action_width=1)
    np.testing.assert_array_equal(w["state"], state[4:7])
    np.testing.assert_array_equal(w["action"], action[4:7])
    np.testing.assert_array_equal(w["history_state"], state[2:4])
    np.testing.assert_array_equal(w["history_action"], action[2:4])
    assert w["step_mask"].all() and w["history_mask"].all()


def test_window_past_the_end_is_zero_padded_and_masked() -> None:
    state, action = _episode(5)
    w = cut_window(state, action, t=3, chunk_len=4, history_len=2, state_width=3, action_width=2)
    assert w["step_mask"].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(w["state"][:2, :2], state[3:5])
    assert (w["state"][2:] == 0).all() and (w["action"][2:] == 0).all()
    # padded feature columns are zero everywhere
    assert (w["state"][:, 2] == 0).all() and (w["action"][:, 1] == 0).all()
    assert w["state"].shape == (4, 3) and w["action"].shape == (4, 2)


def test_history_before_the_start_is_zero_padded_and_masked() -> None:
    state, action = _episode(5)
    w = cut_window(state, action, t=1, chunk_len=2, history_len=3, state_width=2, action_width=1)
    assert w["history_mask"].tolist() == [False, False, True]
    assert (w["history_state"][:2] == 0).all()
    np.testing.assert_array_equal(w["history_state"][2], state[0])
    np.testing.assert_array_equal(w["history_action"][2], action[0])


def test_zero_history_and_single_step_episode() -> None:
    state, action = _episode(1)
    w = cut_window(state, action, t=0, chunk_len=3, history_len=0, state_width=2, action_width=1)
    assert w["history_state"].shape == (0, 2) and w["history_mask"].shape == (0,)
    assert w["step_mask"].tolist() == [True, False, False]


def test_vectorised_windows_equal_single_windows() -> None:
    rng = np.random.default_rng(0)
    state, action = rng.normal(size=(13, 4)).astype(np.float32), rng.normal(size=(13, 3)).astype(np.float32)
    starts = np.array([0, 5, 12, 12, 7])
    many = cut_windows(state, action, starts, 4, 3, 6, 5)
    for i, t in enumerate(starts):
        one = cut_window(state, action, int(t), 4, 3, 6, 5)
        for key, value in one.items():
            np.testing.assert_array_equal(many[key][i], value, err_msg=key)


def test_gather_across_episodes_of_different_embodiments() -> None:
    a = pad_episode(*_episode(4, 2, 1), chunk_len=2, history_len=1, state_width=3, action_width=2)
    b = pad_episode(*_episode(6, 3, 2), chunk_len=2, history_len=1, state_width=3, action_width=2)
    w = gather_windows([a, b, a], np.array([3, 0, 0]))
    assert w["state"].shape == (3, 2, 3) and w["history_action"].shape == (3, 1, 2)
    assert w["step_mask"].tolist() == [[True, False], [True, True], [True, True]]
    assert w["history_mask"].tolist() == [[True], [False], [False]]


def test_out_of_range_start_and_overwide_data_are_refused() -> None:
    state, action = _episode(5)
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        cut_window(state, action, t=5, chunk_len=2, history_len=1, state_width=2, action_width=1)
    with pytest.raises(ValueError, match="more than the padded width 1"):
        cut_window(state, action, t=0, chunk_len=2, history_len=1, state_width=1, action_width=1)


def test_registry_dim_masks() -> None:
    from actionprior.data.synthetic import synthetic_registry

    registry = synthetic_registry()  # state dims 6, 9, 11; action dims 4, 7, 8
    masks = registry.dim_masks("action")
    assert masks.shape == (3, 8) and masks.sum(1).tolist() == [4, 7, 8]
    assert masks[0].tolist() == [True] * 4 + [False] * 4
    assert registry.dim_masks("state").sum(1).tolist() == [6, 9, 11]
