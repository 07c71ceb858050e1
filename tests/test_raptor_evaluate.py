"""The quadrotor evaluation protocol: sensible numbers for the released policy, ~0 survival for
a policy that switches the motors off, identical vehicles across compared policies, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robolearn.algos.raptor import ReleasedRaptorPolicy
from robolearn.algos.raptor.evaluate import (
    HELD_OUT_SEED,
    compare_quadrotor_policies,
    evaluate_quadrotor,
    px4_clip,
    thrust_to_weight_table,
)
from robolearn.policy import Policy


class MotorsOff(Policy):
    """Commands every motor to its minimum: every vehicle falls."""

    policy_type = "motors_off"

    def act(self, obs: np.ndarray) -> np.ndarray:
        return -np.ones((len(obs), 4), dtype=np.float32)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    out = tmp_path_factory.mktemp("released_eval")
    result = evaluate_quadrotor(
        ReleasedRaptorPolicy(),
        vehicles=20,
        presets=("crazyflie",),
        preset_episodes=5,
        progress=False,
        out_dir=out,
    )
    return result, out


@pytest.fixture(scope="module")
def comparison():
    return compare_quadrotor_policies(
        {"released": ReleasedRaptorPolicy(), "off": MotorsOff()},
        vehicles=8,
        seed=HELD_OUT_SEED + 100,
        presets=(),
        progress=False,
    )


def test_released_policy_flies_held_out_vehicles(released):
    result, _ = released
    held = result["held_out"]
    assert held["episodes"] == 20 and held["survival_rate"] >= 0.9
    # The re-run's median is 3.4 cm and p90 15.6 cm over 300 vehicles.
    assert 0.005 < held["final_error"]["median"] < 0.1
    assert held["final_error"]["p90"] < 0.3
    rows = held["per_vehicle"]
    assert [r["seed"] for r in rows] == list(range(HELD_OUT_SEED, HELD_OUT_SEED + 20))
    assert all((r["final_error"] is None) != r["survived"] for r in rows)
    # The thrust-to-weight bins partition the vehicles, survivors and errors alike.
    bins = held["by_thrust_to_weight"]
    assert [b["thrust_to_weight"] for b in bins] == ["< 2.5", "2.5-3", "3-4", ">= 4"]
    assert sum(b["episodes"] for b in bins) == 20
    assert sum(b["survived"] for b in bins) == held["survived"]
    agile = [r for r in rows if r["thrust_to_weight"] >= 4.0]
    assert bins[-1]["episodes"] == len(agile) > 0
    errors = [r["final_error"] for r in agile if r["survived"]]
    assert bins[-1]["final_error"]["median"] == pytest.approx(np.median(errors))


def test_released_policy_presets_cold_start_and_figure_eight(released):
    result, _ = released
    cf = result["presets"]["crazyflie"]
    # Reference cold start: peak dip 0.149 m at 0.39 s, ~5 cm steady offset.
    assert cf["cold_start"]["peak_error"] == pytest.approx(0.149, rel=0.25)
    assert cf["cold_start"]["peak_time"] == pytest.approx(0.39, abs=0.1)
    assert cf["survival_rate"] >= 0.8
    assert cf["figure_eight"]["survived"] and cf["figure_eight"]["rms"] < 0.3
    assert result["headline"]["crazyflie cold-start peak (cm)"] == pytest.approx(
        100 * cf["cold_start"]["peak_error"]
    )


def test_outputs_written(released):
    result, out = released
    for name in (
        "trajectories.png",
        "final_error_distribution.png",
        "error_over_time.png",
        "figure_eight.png",
        "trajectories.mp4",
        "vehicles.csv",
        "report.md",
    ):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["held_out"]["survived"] == result["held_out"]["survived"]
    assert len((out / "vehicles.csv").read_text().splitlines()) == 21
    assert "held-out survival" in (out / "report.md").read_text()


def test_motors_off_policy_crashes(comparison):
    held = comparison["results"]["off"]["held_out"]
    assert held["survival_rate"] == 0.0
    assert all(r["terminated_at"] is not None for r in held["per_vehicle"])


def test_compared_policies_meet_identical_vehicles_and_initial_states(comparison):
    ours, theirs = (
        comparison["results"][k]["held_out"]["per_vehicle"] for k in ("released", "off")
    )
    keys = ("seed", "mass", "arm_length", "thrust_to_weight", "initial_error")
    assert [[r[k] for k in keys] for r in ours] == [[r[k] for k in keys] for r in theirs]
    assert ours[0]["seed"] == HELD_OUT_SEED + 100
    # Different seeds are different vehicles, so the equality above is not vacuous.
    assert len({r["mass"] for r in ours}) == len(ours)
    table = comparison["table"]
    assert "| metric | released | off |" in table and "held-out survival (%)" in table
    by_tw = thrust_to_weight_table(comparison["results"])
    lines = by_tw.splitlines()
    assert lines[0] == "| thrust-to-weight | vehicles | released | off |"
    # The motors-off policy has no survivors, hence no error, in any bin.
    assert all(line.endswith(" | 0 |") for line in lines[2:]) and len(lines) == 6


def test_px4_clip_clips_only_position_and_velocity_errors():
    obs = np.full((2, 22), 5.0, dtype=np.float32)
    clipped = px4_clip(obs)
    assert np.all(clipped[:, :3] == 0.5) and np.all(clipped[:, 12:15] == 1.0)
    assert np.all(clipped[:, 3:12] == 5.0) and np.all(clipped[:, 15:] == 5.0)
    assert np.all(obs == 5.0)


def test_rejects_too_short_episodes():
    with pytest.raises(ValueError, match="episode_steps"):
        evaluate_quadrotor(MotorsOff(), vehicles=2, episode_steps=50, progress=False)
