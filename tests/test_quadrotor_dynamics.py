"""Quadrotor dynamics, parameters and the RAPTOR observation: physics sanity, batching, sampler,
and a step-for-step cross-check against the L2F simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robolearn.robots.quadrotor import raptor_observation
from sims.quadrotor.dynamics import (
    MOTORS,
    OMEGA,
    POSITION,
    QUATERNION,
    VELOCITY,
    QuadrotorDynamics,
    initial_state,
)
from sims.quadrotor.params import (
    GRAVITY,
    PRESETS,
    QuadrotorParams,
    preset,
    sample_params,
)


@pytest.mark.parametrize("name", PRESETS)
def test_hover_command_balances_gravity(name: str) -> None:
    params = preset(name, dtype=torch.float64)
    dynamics = QuadrotorDynamics(params)
    hover = params.hover_command()
    state = initial_state(1, dtype=torch.float64)
    state[:, MOTORS] = hover
    action = 2 * hover - 1
    for _ in range(100):  # 1 s
        state = dynamics.step(state, action)
    assert state[0, POSITION].abs().max() < 1e-6
    assert state[0, VELOCITY].abs().max() < 1e-6


def test_crazyflie_hover_throttle_and_thrust_to_weight() -> None:
    # The thrust curve gives ~0.806 (not the 0.726 stated in L2F's file) and T/W ~1.47.
    params = preset("crazyflie", dtype=torch.float64)
    assert params.hover_command()[0, 0].item() == pytest.approx(0.806, abs=2e-3)
    assert params.thrust_to_weight.item() == pytest.approx(1.47, abs=0.01)
    assert preset("x500").thrust_to_weight.item() == pytest.approx(3.25, abs=0.01)


def test_free_fall_with_motors_off() -> None:
    dynamics = QuadrotorDynamics(preset("x500", dtype=torch.float64))  # c0 = 0: no idle thrust
    state = initial_state(1, dtype=torch.float64)
    action = -torch.ones(1, 4, dtype=torch.float64)
    for _ in range(50):
        state = dynamics.step(state, action)
    t = 0.5
    assert state[0, 2].item() == pytest.approx(-0.5 * GRAVITY * t**2, rel=1e-9)
    assert state[0, 9].item() == pytest.approx(-GRAVITY * t, rel=1e-9)
    assert state[0, OMEGA].abs().max() == 0


def test_yaw_torque_spins_about_z_only() -> None:
    params = preset("crazyflie", dtype=torch.float64)
    dynamics = QuadrotorDynamics(params)
    hover = params.hover_command()[0, 0].item()
    # More on the +z-yaw motors (back-right, front-left), less on the others: net thrust
    # slightly off the weight, no roll or pitch torque, a positive yaw torque.
    u = torch.tensor(
        [[hover - 0.05, hover + 0.05, hover - 0.05, hover + 0.05]], dtype=torch.float64
    )
    state = initial_state(1, dtype=torch.float64)
    state[:, MOTORS] = u
    for _ in range(50):
        state = dynamics.step(state, 2 * u - 1)
        q = state[0, QUATERNION]
        assert q.norm().item() == pytest.approx(1.0, abs=1e-12)
    assert state[0, 12].item() > 1.0
    assert state[0, 10:12].abs().max() < 1e-9
    assert state[0, 4:6].abs().max() < 1e-9  # quaternion x, y stay 0: a pure yaw rotation
    assert state[0, 0:2].abs().max() < 1e-9


def test_quaternion_stays_unit_under_random_actions() -> None:
    params = sample_params(64, seed=1, dtype=torch.float64)
    dynamics = QuadrotorDynamics(params)
    state = initial_state(64, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        action = torch.rand(64, 4, generator=gen, dtype=torch.float64) * 2 - 1
        state = dynamics.step(state, action)
    norms = state[:, QUATERNION].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(64, dtype=torch.float64), atol=1e-12, rtol=0)


def test_batched_matches_single() -> None:
    params = sample_params(16, seed=3)
    batched = QuadrotorDynamics(params)
    gen = torch.Generator().manual_seed(0)
    state = initial_state(16)
    state[:, MOTORS] = torch.rand(16, 4, generator=gen)
    state[:, OMEGA] = torch.rand(16, 3, generator=gen) - 0.5
    actions = torch.rand(20, 16, 4, generator=gen) * 2 - 1
    force = torch.rand(16, 3, generator=gen) * 0.01
    singles = [QuadrotorDynamics(params.select([i])) for i in range(16)]
    single_states = [state[i : i + 1].clone() for i in range(16)]
    for action in actions:
        state = batched.step(state, action, force)
        for i in range(16):
            single_states[i] = singles[i].step(
                single_states[i], action[i : i + 1], force[i : i + 1]
            )
    torch.testing.assert_close(state, torch.cat(single_states), atol=0, rtol=0)


def test_sampler_ranges_and_determinism() -> None:
    params = sample_params(2000, seed=0, dtype=torch.float64)
    tw = params.thrust_to_weight
    assert tw.min() >= 1.5 - 1e-9 and tw.max() <= 5.0 + 1e-9
    assert params.mass.min() >= 0.02 and params.mass.max() <= 5.0
    # Uniform in the cube root of mass: the median mass is the cube of the mid size (~0.63 kg).
    mid = ((0.02 ** (1 / 3) + 5 ** (1 / 3)) / 2) ** 3
    assert params.mass.median().item() == pytest.approx(mid, rel=0.15)
    f_max = params.max_thrust[:, 0]
    torque_to_inertia = params.arm_length * f_max / params.inertia[:, 0]
    assert torque_to_inertia.min() >= 40 - 1e-6 and torque_to_inertia.max() <= 1200 + 1e-6
    assert params.torque_constant.min() >= 0.005 and params.torque_constant.max() <= 0.05
    assert params.tau_rise.min() >= 0.03 and params.tau_rise.max() <= 0.10
    assert params.tau_fall.min() >= 0.03 and params.tau_fall.max() <= 0.30
    bound = 0.3 * (tw - 1).clamp(min=0) * tw * params.mass / 3
    assert (params.disturbance_std <= bound + 1e-12).all() and (params.disturbance_std >= 0).all()
    # Geometric scale is cbrt(m / m_CF) times a size deviation factor around 1/1.1.
    scale = params.arm_length / (0.028 * 2**0.5) / (params.mass / 0.0306) ** (1 / 3)
    assert 0.6 < scale.min() and scale.max() < 1.4
    again = sample_params(2000, seed=0, dtype=torch.float64)
    for name in QuadrotorParams.__dataclass_fields__:
        torch.testing.assert_close(getattr(params, name), getattr(again, name), atol=0, rtol=0)
    assert not torch.equal(sample_params(2000, seed=1).mass, params.mass.float())


def test_raptor_observation_contract() -> None:
    p = np.array([0.1, -0.7, 2.0])
    rotation = np.arange(9.0).reshape(3, 3)
    v = np.array([1.5, -0.2, -3.0])
    omega = np.array([0.1, 0.2, 0.3])
    prev = np.array([-1.5, 0.0, 0.5, 2.0])
    obs = raptor_observation(p, rotation, v, omega, prev)
    expected = [0.1, -0.5, 0.5, *range(9), 1.0, -0.2, -1.0, 0.1, 0.2, 0.3, -1.5, 0.0, 0.5, 2.0]
    np.testing.assert_allclose(obs, expected)
    unclipped = raptor_observation(
        p, rotation, v, omega, prev, clip_position=None, clip_velocity=None
    )
    np.testing.assert_allclose(unclipped[:3], p)
    np.testing.assert_allclose(unclipped[12:15], v)
    batch = [np.stack([x, x]) for x in (p, rotation, v, omega, prev)]
    np.testing.assert_allclose(raptor_observation(*batch), np.stack([expected, expected]))
    tensors = [torch.as_tensor(x, dtype=torch.float32) for x in batch]
    out = raptor_observation(*tensors)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 22)
    np.testing.assert_allclose(out.numpy(), np.stack([expected, expected]), rtol=1e-6)


def test_matches_l2f_step_for_step() -> None:
    l2f = pytest.importorskip("l2f")
    device, env, params, rng = l2f.Device(), l2f.Environment(), l2f.Parameters(), l2f.Rng()
    state, next_state = l2f.State(), l2f.State()
    l2f.initialize_environment(device, env)
    l2f.initialize_rng(device, rng, 0)
    l2f.initial_parameters(device, env, params)
    l2f.initial_state(device, env, params, state)
    dyn = json.loads(l2f.parameters_to_json(device, env, params))["dynamics"]

    def t(x: object) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float64)[None]

    # The JSON prints J with 6 decimals; J_inv keeps the inertia's precision.
    ours = QuadrotorParams(
        mass=t(dyn["mass"]),
        inertia=t(1 / np.diag(np.array(dyn["J_inv"]))),
        rotor_positions=t(dyn["rotor_positions"]),
        thrust_coefficients=t(dyn["rotor_thrust_coefficients"]),
        torque_constant=t(dyn["rotor_torque_constants"][0]),
        tau_rise=t(dyn["rotor_time_constants_rising"][0]),
        tau_fall=t(dyn["rotor_time_constants_falling"][0]),
        disturbance_std=t(0.0),
    )
    np.testing.assert_allclose(dyn["rotor_torque_directions"], [[0, 0, -1], [0, 0, 1]] * 2)
    q = np.array([0.9, 0.1, 0.2, 0.3])
    x = np.concatenate([[0.1, 0.2, 0.3], q / np.linalg.norm(q), [0.3, -0.2, 0.1], [1, 2, 3]])
    x = np.concatenate([x, [0.5, 0.6, 0.7, 0.8]])
    state.position, state.orientation = x[:3], x[3:7]
    state.linear_velocity, state.angular_velocity, state.rpm = x[7:10], x[10:13], x[13:]
    dynamics = QuadrotorDynamics(ours)
    ours_state = torch.tensor(x)[None]
    for action in ([0.1, 0.2, -0.3, 0.9], [-1.0, 1.0, 0.0, 0.5], [0.6, 0.6, 0.6, 0.6]):
        l2f.step(device, env, params, state, action, next_state, rng)
        ours_state = dynamics.step(ours_state, torch.tensor([action], dtype=torch.float64))
        theirs = np.concatenate(
            [
                next_state.position,
                next_state.orientation,
                next_state.linear_velocity,
                next_state.angular_velocity,
                next_state.rpm,
            ]
        )
        # l2f computes in float32: agree to float32 precision relative to |x| ~ 5.
        np.testing.assert_allclose(ours_state[0].numpy(), theirs, atol=3e-5, rtol=1e-5)
        state.assign(next_state)
