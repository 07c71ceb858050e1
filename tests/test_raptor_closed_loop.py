"""The released RAPTOR policy flies our simulator as the reference re-run says it should.

This checks the whole quadrotor contract at once: dynamics, presets, the 22-D observation,
motor order and the action mapping. The reference (raptor.md §11) measured, with its own numpy
L2F: Crazyflie cold start peak dip 0.149 m at 0.39 s and a ~5 cm steady offset; x500 peak
0.041 m and 0.022 m steady.
"""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.algos.raptor import ReleasedRaptorPolicy
from robolearn.envs import make_env


def cold_start(preset: str) -> tuple[np.ndarray, bool]:
    env = make_env("robolearn/Quadrotor-v0", params=preset, init="motors_off", disturbance=False)
    policy = ReleasedRaptorPolicy()
    obs, _ = env.reset(seed=0)
    policy.reset(1)
    errors, terminated = [], False
    for _ in range(500):
        obs, _, terminated, truncated, info = env.step(policy.act(obs[None])[0])
        errors.append(info["position_error"])
        if terminated or truncated:
            break
    return np.asarray(errors), terminated


@pytest.mark.parametrize(
    ("preset", "peak", "steady"), [("crazyflie", 0.149, 0.05), ("x500", 0.041, 0.022)]
)
def test_released_policy_cold_start_matches_reference(preset, peak, steady):
    errors, terminated = cold_start(preset)
    assert not terminated and len(errors) == 500
    assert errors.max() == pytest.approx(peak, rel=0.25)
    assert errors[-100:].mean() == pytest.approx(steady, rel=0.3)
