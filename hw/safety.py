"""The safety layer between a policy and a robot: pure numpy, so it is tested without ROS.

:class:`SafetyLayer` holds what every robot shares (action checks, the watchdog, the e-stop and
the event log); :class:`ArmSafety` and :class:`QuadrotorSafety` add each robot's bounds.
Every command the arm env sends passes :class:`ArmSafety` first:

* **invalid actions** (wrong shape, NaN, inf) are rejected: nothing derived from them is ever
  published, the arm holds, and (by default) the episode ends;
* **clipping**: actions to [-1, 1], joint targets to the limits less a margin, and the change
  of a joint target per control step;
* **workspace**: a joint target whose tool centre point leaves the workspace box is not sent
  (the arm holds instead);
* **watchdog**: observations older than a timeout end the episode after a hold command;
* **e-stop**: a latched stop (the env serves it as a ``std_srvs/Trigger`` service) that holds
  the arm and refuses to move until it is cleared;
* **loop stall**: a control loop that sent no command for longer than the watchdog timeout
  (the robot ran on its previous command meanwhile) is recorded; the episode goes on, as the
  stall is over by the time it is seen and a safe command then would only add a second jolt.

The quadrotor env's commands pass :class:`QuadrotorSafety`: invalid actions are rejected and
actions clipped as above, a position outside the workspace box or a stale odometry ends the
episode, and every abort (and the e-stop) switches to the configured safe command: ``cut``
(motors off) or ``land`` (a gentle open-loop descent, then off; see
:class:`QuadrotorSafetyConfig`).

Each event is a :class:`SafetyEvent`, logged through :mod:`logging` (logger ``hw.safety``),
appended to an optional JSON-lines file, and returned to the env, which puts it in ``info``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.robots.panda import JOINT_LOWER, JOINT_UPPER, WORKSPACE_HIGH, WORKSPACE_LOW, ArmIK

logger = logging.getLogger("hw.safety")

#: Event kinds, from least to most severe.
CLIPPED = "action_clipped"
JOINT_LIMIT = "joint_limit"
JOINT_STEP = "joint_step"
LOOP_STALL = "loop_stall"
WORKSPACE = "workspace"
INVALID_ACTION = "invalid_action"
WATCHDOG = "watchdog"
ESTOP = "estop"


@dataclasses.dataclass(frozen=True)
class ArmSafetyConfig:
    """Limits of the arm's safety layer.

    Attributes:
        watchdog_timeout: Seconds without a fresh joint state (or object pose, for tasks with
            an object) after which the arm holds and the episode ends.
        joint_margin: Joint targets are kept this far (rad) inside the joint limits (the IK
            already stops at the limits; a margin keeps a real arm off its hard stops, at the
            cost of reach the simulated arm has).
        max_joint_step: Largest change of a joint target per control step (rad).
        workspace_low: Lower corner (m, base frame) of the box the target TCP must stay in.
        workspace_high: Upper corner of that box.
        abort_on_invalid_action: End the episode on a NaN/inf/misshaped action (the arm holds
            either way); ``False`` holds for that step and carries on.
    """

    watchdog_timeout: float = 0.25
    joint_margin: float = 0.0
    max_joint_step: float = 0.4
    workspace_low: tuple[float, float, float] = tuple(float(x) - 0.03 for x in WORKSPACE_LOW)
    workspace_high: tuple[float, float, float] = tuple(float(x) + 0.03 for x in WORKSPACE_HIGH)
    abort_on_invalid_action: bool = True

    def __post_init__(self) -> None:
        for name in ("watchdog_timeout", "max_joint_step"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"safety.{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.joint_margin) and self.joint_margin >= 0):
            raise ValueError(f"safety.joint_margin must be >= 0, got {self.joint_margin!r}")
        low, high = np.asarray(self.workspace_low), np.asarray(self.workspace_high)
        if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
            raise ValueError(
                f"safety.workspace_low {self.workspace_low} must be 3 numbers below "
                f"safety.workspace_high {self.workspace_high}"
            )


@dataclasses.dataclass(frozen=True)
class SafetyEvent:
    """One safety intervention.

    Attributes:
        kind: One of the kinds above (``"watchdog"``, ``"invalid_action"``, ...).
        detail: What happened, in words, with the numbers.
        step: Control step of the episode (0 = the first step after reset).
        wall_time: Unix time of the event in seconds.
    """

    kind: str
    detail: str
    step: int
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SafetyLayer:
    """What every robot's safety layer shares: action checks, the watchdog, the e-stop and the
    record of every intervention.

    Args:
        action_dim: Size of a valid action.
        watchdog_timeout: Seconds after which a measurement is stale.
        log_path: Optional JSON-lines file every event is appended to.
    """

    def __init__(
        self, action_dim: int, watchdog_timeout: float, log_path: str | Path | None = None
    ) -> None:
        self.action_dim = action_dim
        self.watchdog_timeout = watchdog_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self.events: list[SafetyEvent] = []
        self.step_index = 0
        self._warned: set[str] = set()
        # The e-stop is set from a ROS service callback (another thread) and read by step().
        self._lock = threading.Lock()
        self._estop_reason: str | None = None

    # --- events -----------------------------------------------------------------------------

    def start_episode(self) -> None:
        """Restart the step count (and the once-per-episode warnings) for a new episode."""
        self.step_index = 0
        self._warned.clear()

    def record(self, kind: str, detail: str) -> SafetyEvent:
        """Keep an event and log it: errors (watchdog, e-stop, invalid actions) always, the
        bounding kinds as a warning once per kind and episode (then at debug level), since a
        policy leaning on a limit would trigger one every step."""
        event = SafetyEvent(kind, detail, self.step_index, time.time())
        if kind in (WATCHDOG, ESTOP, INVALID_ACTION):
            level = logging.ERROR
        else:
            level = logging.DEBUG if kind in self._warned else logging.WARNING
            self._warned.add(kind)
        logger.log(level, "safety %s at step %d: %s", kind, self.step_index, detail)
        with self._lock:
            self.events.append(event)
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(event.to_dict()) + "\n")
        return event

    def events_since(self, index: int) -> list[SafetyEvent]:
        """Events recorded after the first ``index`` ones."""
        with self._lock:
            return self.events[index:]

    # --- e-stop -----------------------------------------------------------------------------

    def trigger_estop(self, reason: str) -> None:
        """Latch the e-stop (thread-safe); the robot stays safe until :meth:`clear_estop`."""
        with self._lock:
            already = self._estop_reason is not None
            if not already:
                self._estop_reason = reason
        if not already:
            self.record(ESTOP, reason)

    def clear_estop(self) -> None:
        """Release a latched e-stop."""
        with self._lock:
            self._estop_reason = None

    @property
    def estop_reason(self) -> str | None:
        """Why the e-stop is latched, or ``None`` when it is not."""
        with self._lock:
            return self._estop_reason

    # --- checks -----------------------------------------------------------------------------

    def check_action(self, action: Any) -> np.ndarray | None:
        """The action clipped to [-1, 1], or ``None`` for a misshaped or non-finite one."""
        try:
            act = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            self.record(INVALID_ACTION, f"not a numeric array: {err}")
            return None
        if act.shape != (self.action_dim,):
            self.record(INVALID_ACTION, f"shape {act.shape}, expected ({self.action_dim},)")
            return None
        if not np.all(np.isfinite(act)):
            self.record(INVALID_ACTION, f"non-finite entries {act.tolist()}")
            return None
        clipped = np.clip(act, -1.0, 1.0)
        if np.any(np.abs(act - clipped) > 1e-6):
            self.record(CLIPPED, f"{act.round(4).tolist()} clipped to [-1, 1]")
        return clipped

    def check_fresh(self, ages: Sequence[tuple[str, float]]) -> str | None:
        """The watchdog: the abort reason if any ``(topic, age in s)`` is older than the
        timeout (the event is recorded), else ``None``."""
        timeout = self.watchdog_timeout
        stale = [(topic, age) for topic, age in ages if not age <= timeout]
        if not stale:
            return None
        reason = "no fresh message on " + ", ".join(
            f"{topic} for {age:.3f} s" if math.isfinite(age) else f"{topic} ever"
            for topic, age in stale
        )
        reason += f" (timeout {timeout:g} s)"
        self.record(WATCHDOG, reason)
        return f"watchdog: {reason}"

    def check_loop_gap(self, gap: float) -> None:
        """Record a loop stall when ``gap``, the seconds since the previous command (or the
        reset), exceeds the watchdog timeout: the bound the inputs are held to, held to the
        loop's own output. A 0.3 s stall early in a stand-in x500's flight took it 1.2 m off."""
        if gap > self.watchdog_timeout:
            self.record(
                LOOP_STALL,
                f"no command for {gap:.3f} s (timeout {self.watchdog_timeout:g} s): the robot "
                "ran on its previous command",
            )


class ArmSafety(SafetyLayer):
    """Checks and bounds the arm's commands; records every intervention.

    Args:
        config: The limits.
        ik: The IK layer whose forward kinematics checks the workspace.
        log_path: Optional JSON-lines file every event is appended to.
    """

    def __init__(
        self, config: ArmSafetyConfig, ik: ArmIK, log_path: str | Path | None = None
    ) -> None:
        super().__init__(ik.action_dim, config.watchdog_timeout, log_path)
        self.config = config
        self.ik = ik
        self._lower = JOINT_LOWER + config.joint_margin
        self._upper = JOINT_UPPER - config.joint_margin
        self._ws_low = np.asarray(config.workspace_low, dtype=np.float64)
        self._ws_high = np.asarray(config.workspace_high, dtype=np.float64)

    def bound_targets(self, q_now: np.ndarray, q_target: np.ndarray) -> np.ndarray | None:
        """Joint targets bounded per step and kept inside the limits; ``None`` when their tool
        centre point leaves the workspace box (the arm must hold instead)."""
        if not np.all(np.isfinite(q_target)):  # defensive: the IK never produces these
            self.record(INVALID_ACTION, f"non-finite joint targets {q_target.tolist()}")
            return None
        step = self.config.max_joint_step
        bounded = np.clip(q_target, q_now - step, q_now + step)
        if np.any(bounded != q_target):
            worst = int(np.argmax(np.abs(q_target - q_now)))
            self.record(
                JOINT_STEP,
                f"joint {worst + 1} target step {q_target[worst] - q_now[worst]:+.3f} rad "
                f"bounded to {step} rad",
            )
        limited = np.clip(bounded, self._lower, self._upper)
        if np.any(limited != bounded):
            joints = (np.flatnonzero(limited != bounded) + 1).tolist()
            self.record(
                JOINT_LIMIT,
                f"joints {joints} targets held {self.config.joint_margin} rad inside their limits",
            )
        tcp, _ = self.ik.fk(limited)
        if np.any(tcp < self._ws_low) or np.any(tcp > self._ws_high):
            self.record(
                WORKSPACE,
                f"target TCP {tcp.round(3).tolist()} outside the workspace "
                f"{self._ws_low.round(3).tolist()}..{self._ws_high.round(3).tolist()}; holding",
            )
            return None
        return limited


#: Safe commands of the quadrotor: motors off, or a gentle open-loop descent then motors off.
SAFE_COMMANDS = ("cut", "land")


@dataclasses.dataclass(frozen=True)
class QuadrotorSafetyConfig:
    """Limits of the quadrotor's safety layer.

    Attributes:
        watchdog_timeout: Seconds without a fresh odometry message after which the safe
            command goes out and the episode ends (PX4's own RAPTOR module allows 100 ms).
        safe_command: ``"cut"``: every motor at 0 (off) at once, the right call on the ground,
            in a net, or when a fall is safer than flight. ``"land"``: all four motors at the
            same setpoint giving ``land_thrust`` times the weight for ``land_duration`` s, then
            off. The descent is open loop (no attitude or position control, as the state
            estimate may be what failed), so it only descends gently from a near-level
            attitude: with 0.9 the vehicle accelerates down at about 1 m/s^2. On PX4 prefer
            the autopilot's own failsafe (Land mode on offboard loss) where it is available.
        land_thrust: Fraction of the weight the four motors carry during ``land`` (0..1).
        land_duration: Seconds of descent before the motors go off.
        workspace_low: Lower corner (m, world ENU, the odometry's frame converted) of the box
            the vehicle must stay in; leaving it aborts the episode with the safe command.
        workspace_high: Upper corner of that box.
        abort_on_invalid_action: End the episode on a NaN/inf/misshaped action; ``False``
            repeats the previous command for that step and carries on. Either way nothing
            derived from the invalid action is published.
    """

    watchdog_timeout: float = 0.1
    safe_command: str = "cut"
    land_thrust: float = 0.9
    land_duration: float = 2.0
    workspace_low: tuple[float, float, float] = (-10.0, -10.0, -10.0)
    workspace_high: tuple[float, float, float] = (10.0, 10.0, 10.0)
    abort_on_invalid_action: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.watchdog_timeout) and self.watchdog_timeout > 0):
            raise ValueError(
                f"safety.watchdog_timeout must be a positive number, got {self.watchdog_timeout!r}"
            )
        if self.safe_command not in SAFE_COMMANDS:
            raise ValueError(
                f"safety.safe_command must be one of {SAFE_COMMANDS}, got {self.safe_command!r}"
            )
        if not (math.isfinite(self.land_thrust) and 0 <= self.land_thrust <= 1):
            raise ValueError(f"safety.land_thrust must be in [0, 1], got {self.land_thrust!r}")
        if not (math.isfinite(self.land_duration) and self.land_duration >= 0):
            raise ValueError(f"safety.land_duration must be >= 0, got {self.land_duration!r}")
        low, high = np.asarray(self.workspace_low), np.asarray(self.workspace_high)
        if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
            raise ValueError(
                f"safety.workspace_low {self.workspace_low} must be 3 numbers below "
                f"safety.workspace_high {self.workspace_high}"
            )


class QuadrotorSafety(SafetyLayer):
    """Checks the quadrotor's actions and position; says what the safe command is.

    Args:
        config: The limits and the safe command.
        land_setpoint: Motor setpoint in [0, 1] giving ``config.land_thrust`` times the weight
            (the env computes it from the vehicle's thrust curve).
        log_path: Optional JSON-lines file every event is appended to.
    """

    def __init__(
        self,
        config: QuadrotorSafetyConfig,
        land_setpoint: float,
        log_path: str | Path | None = None,
    ) -> None:
        super().__init__(4, config.watchdog_timeout, log_path)
        self.config = config
        self.land_setpoint = float(np.clip(land_setpoint, 0.0, 1.0))
        self._ws_low = np.asarray(config.workspace_low, dtype=np.float64)
        self._ws_high = np.asarray(config.workspace_high, dtype=np.float64)

    def check_position(self, position: np.ndarray) -> str | None:
        """The abort reason if ``position`` (world ENU, m) left the workspace box (the event
        is recorded), else ``None``."""
        if np.all(position >= self._ws_low) and np.all(position <= self._ws_high):
            return None
        detail = (
            f"position {np.round(position, 3).tolist()} outside the workspace "
            f"{self._ws_low.tolist()}..{self._ws_high.tolist()}"
        )
        self.record(WORKSPACE, detail)
        return f"workspace: {detail}"

    def safe_setpoint(self, elapsed: float) -> np.ndarray:
        """The four motor setpoints of the safe command ``elapsed`` s after it began."""
        if self.config.safe_command == "land" and elapsed < self.config.land_duration:
            return np.full(4, self.land_setpoint)
        return np.zeros(4)
