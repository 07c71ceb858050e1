"""The stand-in quadrotor's pieces without ROS: the PyBullet vehicle against the training
dynamics, the episode sampling, the env's reward, and the quadrotor safety layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hw.quadrotor_env import teacher_reward
from hw.safety import ESTOP, WORKSPACE, QuadrotorSafety, QuadrotorSafetyConfig
from sims.quadrotor import env as sim_env
from sims.quadrotor.dynamics import QuadrotorDynamics
from sims.quadrotor.params import preset


def test_standin_episodes_start_where_the_simulated_ones_of_their_seeds_start():
    from hw.standin_quadrotor import sample_initial_state

    for vehicle in ("crazyflie", "x500"):
        env = sim_env.QuadrotorEnv(params=vehicle)
        for seed in (0, 7):
            env.reset(seed=seed)
            np.testing.assert_array_equal(
                sample_initial_state(vehicle, "raptor", seed), env.batch.state[0].double().numpy()
            )


@pytest.mark.parametrize("vehicle", ["crazyflie", "x500"])
def test_pybullet_vehicle_follows_the_training_dynamics(vehicle):
    """Open loop from a tumbling state under random motor commands: another integrator, the
    same vehicle (state within a few percent after 0.5 s)."""
    pytest.importorskip("pybullet", reason="the stand-in hardware needs the `ros` extra")
    from sims.pybullet.quadrotor import PyBulletQuadrotor, Vehicle

    quad = PyBulletQuadrotor(Vehicle.from_preset(vehicle))
    try:
        state = np.zeros(17)
        state[3:7] = np.array([0.95, 0.1, 0.2, -0.1]) / np.linalg.norm([0.95, 0.1, 0.2, -0.1])
        state[7:10], state[10:13], state[13:] = [0.3, -0.2, 0.1], [0.5, -0.3, 0.8], 0.5
        quad.reset(state)
        dynamics = QuadrotorDynamics(preset(vehicle, dtype=torch.float64))
        x = torch.as_tensor(state)[None]
        rng = np.random.default_rng(0)
        for _ in range(50):
            action = rng.uniform(-0.2, 0.6, 4)
            quad.set_command((action + 1) / 2)
            quad.step(4)
            x = dynamics.step(x, torch.as_tensor(action)[None])
        ours, l2f = quad.state(), x[0].numpy()
        np.testing.assert_allclose(ours[13:], l2f[13:], atol=1e-3)  # the motor lag
        np.testing.assert_allclose(ours[:13], l2f[:13], atol=0.03 * np.abs(l2f[:13]).max())
    finally:
        quad.close()


def test_parameter_offsets_change_the_vehicle():
    from sims.pybullet.quadrotor import QuadrotorPhysics, Vehicle

    nominal = Vehicle.from_preset("x500")
    heavy = Vehicle.from_preset("x500", QuadrotorPhysics(mass_scale=1.2, tau_scale=2.0))
    assert nominal.setpoint_for_thrust(1.0) == pytest.approx(0.554966, abs=1e-6)
    assert heavy.setpoint_for_thrust(1.0) == pytest.approx(0.554966 * np.sqrt(1.2), abs=1e-6)
    assert heavy.tau_rise == pytest.approx(2 * nominal.tau_rise)
    with pytest.raises(ValueError, match="thrust_scale must be a positive number"):
        QuadrotorPhysics(thrust_scale=0.0)
    with pytest.raises(ValueError, match="vehicle must be one of"):
        Vehicle.from_preset("tello")


def test_reward_and_termination_match_the_simulator():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.normal(size=4)
        state = np.concatenate([rng.normal(0, 0.5, 3), q / np.linalg.norm(q), rng.normal(0, 2, 6)])
        p_err = state[:3] - rng.normal(0, 0.1, 3)
        d_action = float(rng.uniform(0, 2))
        for on_velocity in (True, False):
            ours = teacher_reward(state, p_err, d_action, 0.8, on_velocity)
            reward, terminated = sim_env.teacher_reward(
                torch.as_tensor(np.concatenate([state, np.zeros(4)]))[None],
                torch.as_tensor(p_err)[None],
                torch.tensor([d_action], dtype=torch.float64),
                torch.tensor([[0.8]], dtype=torch.float64),
                on_velocity,
            )
            assert ours[1] == bool(terminated[0])
            assert ours[0] == pytest.approx(float(reward[0]), abs=1e-12)


def test_quadrotor_safety_layer(tmp_path):
    config = QuadrotorSafetyConfig(
        safe_command="land", land_duration=1.0, workspace_low=(-1, -1, 0), workspace_high=(1, 1, 2)
    )
    safety = QuadrotorSafety(config, land_setpoint=0.52, log_path=tmp_path / "events.jsonl")
    np.testing.assert_array_equal(safety.safe_setpoint(0.5), [0.52] * 4)
    np.testing.assert_array_equal(safety.safe_setpoint(1.0), [0.0] * 4)  # landed: motors off
    assert safety.check_position(np.array([0.5, -0.5, 1.0])) is None
    reason = safety.check_position(np.array([0.5, -0.5, -0.1]))
    assert reason.startswith("workspace: position [0.5, -0.5, -0.1] outside")
    assert safety.check_action([0.5, 2.0, -1, 0]) == pytest.approx([0.5, 1, -1, 0])
    assert safety.check_action([0.5, np.nan, 0, 0]) is None
    assert safety.check_action([0.5, 0.5, 0.5]) is None
    safety.trigger_estop("test")
    kinds = [json.loads(line)["kind"] for line in safety.log_path.read_text().splitlines()]
    assert kinds == [WORKSPACE, "action_clipped", "invalid_action", "invalid_action", ESTOP]
    cut = QuadrotorSafety(QuadrotorSafetyConfig(), land_setpoint=0.52)
    np.testing.assert_array_equal(cut.safe_setpoint(0.0), [0.0] * 4)


def test_quadrotor_safety_config_rejects_bad_values():
    with pytest.raises(ValueError, match="safe_command must be one of"):
        QuadrotorSafetyConfig(safe_command="hover")
    with pytest.raises(ValueError, match="land_thrust must be in"):
        QuadrotorSafetyConfig(land_thrust=1.5)
    with pytest.raises(ValueError, match="workspace_low"):
        QuadrotorSafetyConfig(workspace_low=(0, 0, 3), workspace_high=(1, 1, 2))
    with pytest.raises(ValueError, match="watchdog_timeout"):
        QuadrotorSafetyConfig(watchdog_timeout=-1)


def test_standin_config_rejects_bad_values():
    from hw.standin_quadrotor import StandInQuadrotorConfig

    with pytest.raises(ValueError, match="standin.frame must be one of"):
        StandInQuadrotorConfig(frame="nwu")
    with pytest.raises(ValueError, match="physics_hz 250 must be a multiple"):
        StandInQuadrotorConfig(physics_hz=250)
    with pytest.raises(ValueError, match=r"unknown stand-in config keys \['mass'\]"):
        StandInQuadrotorConfig.from_mapping({"mass": 2.0})
