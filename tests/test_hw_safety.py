"""The safety layer and the joint-name mapping, without ROS: pure numpy checks."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from hw.joints import JointNameMap, MissingJointsError
from hw.safety import (
    CLIPPED,
    ESTOP,
    INVALID_ACTION,
    JOINT_LIMIT,
    JOINT_STEP,
    LOOP_STALL,
    WATCHDOG,
    WORKSPACE,
    ArmSafety,
    ArmSafetyConfig,
)
from robolearn.robots.panda import HOME_QPOS, JOINT_LOWER, JOINT_UPPER, ArmIK


@pytest.fixture
def safety(tmp_path) -> ArmSafety:
    return ArmSafety(ArmSafetyConfig(joint_margin=0.05), ArmIK(), log_path=tmp_path / "ev.jsonl")


@pytest.mark.parametrize(
    "action",
    [
        [np.nan, 0, 0, 0],
        [0, np.inf, 0, 0],
        [0, 0, -np.inf, 0],
        [1e308, 1e308, 0, 0.0 * np.nan],
        [0, 0, 0],
        [[0, 0, 0, 0]],
        "left",
    ],
)
def test_invalid_actions_are_rejected(safety, action):
    assert safety.check_action(action) is None
    assert [e.kind for e in safety.events] == [INVALID_ACTION]


def test_actions_are_clipped_and_clipping_is_recorded(safety):
    np.testing.assert_array_equal(safety.check_action([0.5, -1, 1, 0]), [0.5, -1, 1, 0])
    assert safety.events == []  # exactly at the bounds is not an intervention
    np.testing.assert_array_equal(safety.check_action([3.0, -2, 0, 0]), [1, -1, 0, 0])
    assert [e.kind for e in safety.events] == [CLIPPED]


def test_joint_targets_are_bounded_per_step_and_kept_inside_the_limits(safety):
    q = HOME_QPOS.copy()
    far = q + np.array([1.0, 0, 0, 0, 0, 0, 0])
    bounded = safety.bound_targets(q, far)
    assert bounded is not None and bounded[0] == pytest.approx(q[0] + 0.4)
    assert safety.events[-1].kind == JOINT_STEP

    # Joint 7 (which turns the hand about the TCP's axis) pushed past its upper limit stays
    # joint_margin inside it.
    q_limit = HOME_QPOS.copy()
    q_limit[6] = JOINT_UPPER[6] - 0.1
    target = q_limit.copy()
    target[6] = JOINT_UPPER[6] + 0.05
    bounded = safety.bound_targets(q_limit, target)
    assert bounded[6] == pytest.approx(JOINT_UPPER[6] - 0.05)
    assert safety.events[-1].kind == JOINT_LIMIT
    assert np.all(bounded >= JOINT_LOWER + 0.05 - 1e-12)


def test_targets_leaving_the_workspace_are_refused(safety):
    ik = ArmIK()
    q = HOME_QPOS.copy()
    # Shoulder lifted: the tool centre point rises above the workspace box.
    lifted = q.copy()
    lifted[1] -= 0.39
    assert ik.fk(lifted)[0][2] > safety.config.workspace_high[2]
    assert safety.bound_targets(lifted, lifted) is None
    assert safety.events[-1].kind == WORKSPACE
    assert safety.bound_targets(q, q) is not None


def test_watchdog_reports_stale_and_missing_topics(safety):
    assert safety.check_fresh([("/joint_states", 0.01), ("/object_pose", 0.2)]) is None
    reason = safety.check_fresh([("/joint_states", 0.4), ("/object_pose", math.inf)])
    assert reason.startswith("watchdog:")
    assert "/joint_states for 0.400 s" in reason and "/object_pose ever" in reason
    assert safety.events[-1].kind == WATCHDOG


def test_a_loop_gap_beyond_the_watchdog_timeout_is_a_loop_stall(safety):
    safety.check_loop_gap(0.05)  # one control period
    safety.check_loop_gap(0.25)  # the timeout itself
    assert safety.events == []
    safety.check_loop_gap(0.31)
    assert [e.kind for e in safety.events] == [LOOP_STALL]
    assert "no command for 0.310 s (timeout 0.25 s)" in safety.events[0].detail


def test_estop_latches_until_cleared_and_is_thread_safe(safety):
    threads = [threading.Thread(target=safety.trigger_estop, args=("test",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert safety.estop_reason == "test"
    assert [e.kind for e in safety.events] == [ESTOP]  # latched once
    safety.clear_estop()
    assert safety.estop_reason is None


def test_every_event_is_appended_to_the_log_file(safety):
    safety.step_index = 7
    safety.check_action([np.nan] * 4)
    safety.check_action([2.0, 0, 0, 0])
    lines = [json.loads(line) for line in safety.log_path.read_text().splitlines()]
    assert [(e["kind"], e["step"]) for e in lines] == [(INVALID_ACTION, 7), (CLIPPED, 7)]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="watchdog_timeout"):
        ArmSafetyConfig(watchdog_timeout=0)
    with pytest.raises(ValueError, match="workspace_low"):
        ArmSafetyConfig(workspace_low=(1.0, 0.0, 0.0), workspace_high=(0.5, 1.0, 1.0))


def test_joint_map_picks_by_name_in_any_order_ignoring_extra_joints():
    joint_map = JointNameMap(["a", "b", "c"])
    names = ["conveyor", "c", "a", "wrist_camera", "b"]
    np.testing.assert_array_equal(joint_map.pick(names, [9, 3, 1, 8, 2]), [1, 2, 3])
    # A new order is looked up afresh (the cache is per name list).
    np.testing.assert_array_equal(joint_map.pick(["b", "a", "c"], [2, 1, 3]), [1, 2, 3])
    with pytest.raises(MissingJointsError, match=r"lacks joints \['c'\]"):
        joint_map.pick(["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="3 joint names but 2 values"):
        joint_map.pick(["a", "b", "c"], [1, 2])
