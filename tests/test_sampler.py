"""SequenceSampler windows and padding (Diffusion Policy semantics) and episode splits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robolearn.data import SequenceSampler, split_episodes


def reference_windows(lengths, horizon, pad_before, pad_after, mask=None):
    """Per-window loop over Diffusion Policy's definition: buffer/sample index ranges, then
    edge padding by repeating the first/last loaded frame."""
    out = []
    start = 0
    for ep, length in enumerate(lengths):
        if mask is None or mask[ep]:
            for rel in range(-pad_before, length - horizon + pad_after + 1):
                buf_start = max(rel, 0) + start
                buf_end = min(rel + horizon, length) + start
                s_start = buf_start - (rel + start)
                s_end = horizon - ((rel + horizon + start) - buf_end)
                rows = list(range(buf_start, buf_end))
                rows = [rows[0]] * s_start + rows + [rows[-1]] * (horizon - s_end)
                out.append(((buf_start, buf_end, s_start, s_end), rows))
        start += length
    return out


def test_hand_computed_padding() -> None:
    data = {"x": np.arange(8) * 10}
    sampler = SequenceSampler(data, np.array([3, 8]), horizon=4, pad_before=1, pad_after=2)
    windows = [sampler[i]["x"] // 10 for i in range(len(sampler))]
    expected = [
        [0, 0, 1, 2], [0, 1, 2, 2], [1, 2, 2, 2],                                # episode 0
        [3, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [5, 6, 7, 7], [6, 7, 7, 7],    # episode 1
    ]  # fmt: skip
    assert len(sampler) == 8
    np.testing.assert_array_equal(windows, expected)
    np.testing.assert_array_equal(sampler.indices[0], [0, 3, 1, 4])
    np.testing.assert_array_equal(sampler.indices[7], [6, 8, 0, 2])
    np.testing.assert_array_equal(sampler.window_episodes, [0, 0, 0, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_configs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, size=7)
    horizon = int(rng.integers(1, 17))
    pad_before, pad_after = (int(v) for v in rng.integers(0, horizon, size=2))
    mask = rng.random(7) < 0.7
    ends = np.cumsum(lengths)
    data = {"x": np.arange(ends[-1]), "img": rng.integers(0, 255, (ends[-1], 2, 2), np.uint8)}
    sampler = SequenceSampler(data, ends, horizon, pad_before, pad_after, episode_mask=mask)
    ref = reference_windows(lengths, horizon, pad_before, pad_after, mask)
    assert len(sampler) == len(ref)
    if ref:
        np.testing.assert_array_equal(sampler.indices, [r[0] for r in ref])
        batch = sampler.windows(np.arange(len(ref)))
        np.testing.assert_array_equal(batch["x"], [r[1] for r in ref])
        np.testing.assert_array_equal(batch["img"], data["img"][np.array([r[1] for r in ref])])


def test_windows_stay_inside_episodes_and_respect_mask() -> None:
    lengths = np.array([9, 17, 2, 30, 12])
    ends = np.cumsum(lengths)
    episode_id = np.repeat(np.arange(5), lengths)
    mask = np.array([True, False, True, True, False])
    sampler = SequenceSampler({"ep": episode_id}, ends, horizon=16, pad_before=1, pad_after=7,
                              episode_mask=mask)  # fmt: skip
    batch = sampler.sample(512, np.random.default_rng(0))["ep"]
    assert batch.shape == (512, 16)
    assert np.all(batch == batch[:, :1]), "a window crosses an episode boundary"
    assert set(np.unique(batch)) <= {0, 2, 3}
    assert set(np.unique(batch)) == {0, 3}  # episode 2 (length 2) is too short for horizon 16
    with pytest.raises(ValueError, match="episode_mask"):
        SequenceSampler({"ep": episode_id}, ends, horizon=4, episode_mask=mask[:3])


def test_key_first_k_and_sampling_shapes() -> None:
    n = 50
    data = {
        "obs": np.arange(n * 3, dtype=np.float32).reshape(n, 3),
        "action": np.arange(n * 2, dtype=np.float32).reshape(n, 2),
    }
    sampler = SequenceSampler(
        data, np.array([20, 50]), horizon=8, pad_before=1, pad_after=3, key_first_k={"obs": 2}
    )
    full = SequenceSampler(data, np.array([20, 50]), horizon=8, pad_before=1, pad_after=3)
    idx = np.arange(len(sampler))
    part, ref = sampler.windows(idx), full.windows(idx)
    np.testing.assert_array_equal(part["obs"][:, :2], ref["obs"][:, :2])
    assert np.isnan(part["obs"][:, 2:]).all()
    np.testing.assert_array_equal(part["action"], ref["action"])

    a = sampler.sample(32, np.random.default_rng(7))
    b = sampler.sample(32, np.random.default_rng(7))
    assert a["action"].shape == (32, 8, 2) and a["obs"].shape == (32, 8, 3)
    np.testing.assert_array_equal(a["action"], b["action"])
    with pytest.raises(IndexError):
        sampler[len(sampler)]


def test_sampling_speed_low_dim() -> None:
    rng = np.random.default_rng(0)
    ends = np.cumsum(np.full(200, 100))
    data = {k: rng.standard_normal((20000, d)).astype(np.float32) for k, d in [("a", 7), ("s", 20)]}
    sampler = SequenceSampler(data, ends, horizon=16, pad_before=1, pad_after=7)
    sampler.sample(256, rng)
    start = time.perf_counter()
    for _ in range(40):
        sampler.sample(256, rng)
    rate = 40 * 256 / (time.perf_counter() - start)
    assert rate >= 20_000, f"{rate:.0f} windows/s"


def test_split_episodes() -> None:
    train, val = split_episodes(100, 0.1, seed=3)
    assert train.dtype == bool and val.sum() == 10 and train.sum() == 90
    assert not np.any(train & val)
    again_train, again_val = split_episodes(100, 0.1, seed=3)
    np.testing.assert_array_equal(val, again_val)
    assert not np.array_equal(val, split_episodes(100, 0.1, seed=4)[1])
    train, val = split_episodes(206, 0.02, seed=42, max_train_episodes=90)
    assert train.sum() == 90 and val.sum() == 4 and not np.any(train & val)
    train, val = split_episodes(1, 0.5, seed=0)
    assert train.tolist() == [True] and val.tolist() == [False]
    train, val = split_episodes(5, 0.0, seed=0)
    assert train.all() and not val.any()
