"""rosbag2 MCAP logs <-> EpisodeStore, without ROS: import bags (robolearn's deployment bags
or bags recorded elsewhere) into episodes, and export episodes as a bag.

Importers are per robot, behind one small interface (:class:`LogImporter`), picked from the
env id by :func:`importer_for`: the arm's (:class:`ArmLogImporter`) reads
``sensor_msgs/JointState`` (joints mapped by name, extra joints ignored), the object and goal
``geometry_msgs/PoseStamped`` and the commands (``trajectory_msgs/JointTrajectory`` or
``std_msgs/Float64MultiArray``); the quadrotor's (:class:`QuadrotorLogImporter`) reads
``nav_msgs/Odometry`` (ENU/FLU or NED/FRD, :mod:`hw.frames`) and the motor setpoints
(``std_msgs/Float32MultiArray``, policy or PX4 order), and builds the policy's observation with
the env's own function.

Two kinds of bag:

* **robolearn bags** (they hold :data:`~robolearn.data.rosbag.ACTION_TOPIC`): episodes come from
  the episode events, the steps from the logged actions, and each step's observation from the
  newest message of each topic logged at or before its action, which is exactly the message the
  policy saw (see :mod:`hw.arm_env`): the import reproduces the deployment's EpisodeStore;
* **foreign bags**: one episode, resampled onto the control rate on the header-stamp timeline
  of the joint states (positions and poses interpolated linearly), commands placed on that
  timeline through the median log-time-minus-stamp offset of the joint states, and each step's
  action recovered from the command in force over the step: the end-effector displacement of
  its joint targets (forward kinematics) over the IK's step size, and the gripper command.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hw.ros import stamp_to_ns
from robolearn.data.rosbag import (
    ACTION_TOPIC,
    ACTION_TYPE,
    CUSTOM_DATA_KEY,
    EPISODE_TOPIC,
    STRING_TYPE,
    BagMessage,
    BagWriter,
    action_message,
    bag_custom_data,
    read_bag,
    serialize,
    string_message,
    typestore,
)
from robolearn.data.store import EpisodeStore
from robolearn.robots.panda import (
    FINGER_JOINT_NAMES,
    GRIPPER_MAX_OPENING,
    JOINT_NAMES,
    PANDA_SPEC,
    PANDA_YAW_SPEC,
    ArmIK,
)

Episode = tuple[dict[str, np.ndarray], dict[str, Any]]
JOINT_STATE = "sensor_msgs/msg/JointState"
POSE = "geometry_msgs/msg/PoseStamped"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
FORWARD = "std_msgs/msg/Float64MultiArray"


class LogImporter(Protocol):
    """Turns a bag's messages into episodes of one robot's env (the extension point)."""

    def episodes(self, messages: Sequence[BagMessage]) -> Iterator[Episode]:
        """``(data, meta)`` of every episode, ready for ``EpisodeStore.add_episode``."""

    def store_attrs(self) -> dict[str, Any]:
        """Attributes of a store holding these episodes (env id, robot spec, spaces...)."""


def latest_at(times: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of the last of the sorted ``times`` at or before each query (-1 if none)."""
    return np.searchsorted(times, queries, side="right") - 1


def interpolate(times: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values`` (one row per time, sorted times) linearly interpolated at ``queries``,
    held constant beyond the ends."""
    t = (times - times[0]).astype(np.float64)
    q = (queries - times[0]).astype(np.float64)
    return np.stack([np.interp(q, t, values[:, j]) for j in range(values.shape[1])], axis=1)


def logged_episodes(
    decoded: Mapping[str, Any],
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, np.ndarray, np.ndarray]]:
    """The episodes of a robolearn bag, from its episode events and logged actions.

    ``decoded`` holds ``actions`` (``(log_ns, action)`` pairs) and ``events`` (``(log_ns,
    event)`` pairs). An episode runs from a start event to the next; its steps are the actions
    logged in between, cut at the end event's step count (a time limit outside the env ends an
    episode after its last action). Yields, per episode with at least one step, the start
    event, the end event (``None`` when the log ends mid-episode), the indices of its actions
    and their log times.
    """
    action_ns = np.array([t for t, _ in decoded["actions"]], dtype=np.int64)
    starts = [(t, e) for t, e in decoded["events"] if e.get("event") == "start"]
    ends = [(t, e) for t, e in decoded["events"] if e.get("event") == "end"]
    for i, (start_ns, start) in enumerate(starts):
        next_start = starts[i + 1][0] if i + 1 < len(starts) else math.inf
        end = next((e for t, e in ends if start_ns <= t < next_start), None)
        steps = np.flatnonzero((action_ns >= start_ns) & (action_ns < next_start))
        if end is not None:
            steps = steps[: end["steps"]]
        if len(steps):
            yield start, end, steps, action_ns[steps]


def episode_meta(
    start: Mapping[str, Any],
    end: Mapping[str, Any] | None,
    success: bool,
    source: str,
    rewards: np.ndarray,
) -> dict[str, Any]:
    """The store's per-episode metadata of a logged episode (see :func:`logged_episodes`)."""
    return {
        "seed": -1 if start.get("seed") is None else int(start["seed"]),
        "success": success,
        "source": source,
        "episode_return": float(np.sum(rewards, dtype=np.float64)),
        "abort_reason": end.get("abort_reason", "") if end else "the log ends mid-episode",
    }


class _Series:
    """One topic's decoded samples: log times, header stamps and value rows, in log order."""

    def __init__(self, log_ns: list[int], stamps: list[int], values: list[np.ndarray]) -> None:
        self.log_ns = np.asarray(log_ns, dtype=np.int64)
        self.stamps = np.asarray(stamps, dtype=np.int64)
        rows = np.asarray(values, dtype=np.float64)
        self.values = rows.reshape(len(values), -1) if values else np.zeros((0, 1))

    def __len__(self) -> int:
        return len(self.log_ns)

    def by_stamp(self) -> _Series:
        order = np.argsort(self.stamps, kind="stable")
        series = _Series([], [], [])
        series.log_ns, series.stamps, series.values = (
            self.log_ns[order],
            self.stamps[order],
            self.values[order],
        )
        return series


class ArmLogImporter:
    """Arm bags -> episodes of an arm task (``robolearn/Arm<Task>-v0`` spaces).

    Args:
        task: ``"reach"``, ``"push"`` or ``"pick_place"``.
        topics: :class:`~hw.arm_env.ArmTopics` fields (topic names in the bag).
        use_yaw: Five-dimensional actions with a yaw delta.
        pose_frames: Frame ids accepted on the pose topics (and the empty one), as in the env.
        source: Each episode's ``source`` metadata.
    """

    def __init__(
        self,
        task: str,
        topics: Mapping[str, Any] | None = None,
        use_yaw: bool = False,
        pose_frames: Sequence[str] = ("world", "panda_link0"),
        source: str = "bag",
    ) -> None:
        from hw.arm_env import CONTROLLERS, TASKS, ArmTopics

        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        self.task = task
        self.task_class = TASKS[task]
        self.topics = ArmTopics(**dict(topics or {}))
        self.command_topics = (
            [self.topics.command] if self.topics.command else list(CONTROLLERS.values())
        )
        self.use_yaw = use_yaw
        self.spec = PANDA_YAW_SPEC if use_yaw else PANDA_SPEC
        self.ik = ArmIK(use_yaw=use_yaw)
        self.pose_frames = tuple(pose_frames)
        self.source = source
        self.has_object = self.task_class.has_object
        self._pose_topics = {"goal_pos": self.topics.goal_pose}
        if self.has_object:
            self._pose_topics = {"object_pos": self.topics.object_pose, **self._pose_topics}

    def topic_names(self) -> list[str]:
        """Every topic this importer reads."""
        names = [self.topics.joint_states, *self._pose_topics.values(), *self.command_topics]
        if self.topics.gripper_command:
            names.append(self.topics.gripper_command)
        return [*names, ACTION_TOPIC, EPISODE_TOPIC]

    def store_attrs(self) -> dict[str, Any]:
        from hw import ARM_ENVS
        from sims.arm.env import action_space, observation_space

        hw_id = next(k for k, (task, _, _) in ARM_ENVS.items() if task == self.task)
        obs_space = observation_space(self.has_object)
        act = action_space(self.use_yaw)
        return {
            "env_id": ARM_ENVS[hw_id][1],
            "env_kwargs": {"use_yaw": self.use_yaw},
            "hw_env_id": hw_id,
            "robot_spec": self.spec.to_dict(),
            "control_hz": self.spec.control_hz,
            "observation_keys": list(obs_space.spaces),
            "observation_space": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                for k, v in obs_space.spaces.items()
            },
            "action_space": {"shape": list(act.shape), "dtype": str(act.dtype)},
        }

    # --- decoding ---------------------------------------------------------------------------

    def _decode(self, messages: Sequence[BagMessage]) -> dict[str, Any]:
        """Per topic: joint and pose series (unmappable messages skipped, as the env does),
        commands as joint targets, gripper openings, actions and episode events."""
        from hw.joints import JointNameMap, MissingJointsError

        joint_map = JointNameMap(JOINT_NAMES + FINGER_JOINT_NAMES)
        arm_map = JointNameMap(JOINT_NAMES)
        pose_keys = {topic: key for key, topic in self._pose_topics.items()}
        series: dict[str, tuple[list, list, list]] = {}
        commands: tuple[list, list, list] = ([], [], [])
        gripper: tuple[list, list, list] = ([], [], [])
        actions: list[tuple[int, np.ndarray]] = []
        events: list[tuple[int, dict[str, Any]]] = []

        def add(target: tuple[list, list, list], log_ns: int, stamp: int, value: Any) -> None:
            target[0].append(log_ns)
            target[1].append(stamp)
            target[2].append(np.asarray(value, dtype=np.float64))

        for m in messages:
            if m.topic == ACTION_TOPIC:
                actions.append((m.log_ns, np.asarray(m.decode().data, dtype=np.float32)))
            elif m.topic == EPISODE_TOPIC:
                events.append((m.log_ns, json.loads(m.decode().data)))
            elif m.topic == self.topics.joint_states and m.msgtype == JOINT_STATE:
                msg = m.decode()
                try:
                    q = joint_map.pick(list(msg.name), msg.position)
                except (MissingJointsError, ValueError):
                    continue
                add(
                    series.setdefault("joints", ([], [], [])),
                    m.log_ns,
                    stamp_to_ns(msg.header.stamp),
                    q,
                )
            elif m.topic in pose_keys and m.msgtype == POSE:
                msg = m.decode()
                if msg.header.frame_id and msg.header.frame_id not in self.pose_frames:
                    continue
                p = msg.pose.position
                key = pose_keys[m.topic]
                add(
                    series.setdefault(key, ([], [], [])),
                    m.log_ns,
                    stamp_to_ns(msg.header.stamp),
                    [p.x, p.y, p.z],
                )
            elif m.topic in self.command_topics:
                target = self._command_target(m, arm_map)
                if target is not None:
                    add(commands, m.log_ns, 0, target)
            elif m.topic == self.topics.gripper_command and m.msgtype == FORWARD:
                data = m.decode().data
                if len(data) == 2:
                    add(gripper, m.log_ns, 0, [float(data[0] + data[1])])
        missing = [
            topic
            for key, topic in (("joints", self.topics.joint_states), *self._pose_topics.items())
            if key not in series
        ]
        if missing:
            raise ValueError(
                f"the bag has no usable messages on {missing} (topics are set by "
                "hw.env.topics.*; poses must be in one of the frames "
                + f"{list(self.pose_frames)})"
            )
        return {
            "series": {k: _Series(*v) for k, v in series.items()},
            "commands": _Series(*commands),
            "gripper": _Series(*gripper),
            "actions": actions,
            "events": events,
        }

    def _command_target(self, m: BagMessage, arm_map: Any) -> np.ndarray | None:
        """Joint targets (7,) of a command message, or None when it has none."""
        from hw.joints import MissingJointsError

        msg = m.decode()
        if m.msgtype == FORWARD:
            return np.asarray(msg.data, dtype=np.float64) if len(msg.data) == 7 else None
        if m.msgtype != TRAJECTORY or not len(msg.points):
            return None
        try:
            index = arm_map.indices(list(msg.joint_names))
        except MissingJointsError:
            return None
        # The point the arm is asked to reach one control period ahead, else the last one.
        dt_ns = self.spec.dt * 1e9
        point = next(
            (
                p
                for p in msg.points
                if p.time_from_start.sec * 1e9 + p.time_from_start.nanosec >= dt_ns - 1e3
            ),
            msg.points[-1],
        )
        return np.asarray(point.positions, dtype=np.float64)[index]

    def _observations(self, decoded: dict[str, Any], rows: dict[str, np.ndarray]) -> dict:
        """Observation arrays from per-key value rows (joints (n, 9), poses (n, 3))."""
        joints = rows["joints"]
        q = joints[:, :7]
        obs = {
            "joint_pos": q.astype(np.float32),
            "ee_pos": np.stack([self.ik.fk(qi)[0] for qi in q]).astype(np.float32),
            "gripper": (joints[:, 7] + joints[:, 8]).astype(np.float32)[:, None],
        }
        for key in self._pose_topics:
            obs[key] = rows[key].astype(np.float32)
        return obs

    def _evaluate(self, obs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        rewards, successes = zip(
            *(
                self.task_class.evaluate({k: v[t] for k, v in obs.items()})
                for t in range(len(obs["joint_pos"]))
            )
        )
        return np.asarray(rewards, dtype=np.float32), np.asarray(successes, dtype=bool)

    # --- episodes ---------------------------------------------------------------------------

    def episodes(self, messages: Sequence[BagMessage]) -> Iterator[Episode]:
        decoded = self._decode(messages)
        if decoded["actions"]:
            yield from self._logged_episodes(decoded)
        else:
            yield self._resampled_episode(decoded)

    def _logged_episodes(self, decoded: dict[str, Any]) -> Iterator[Episode]:
        """A robolearn bag: steps at the logged actions, observations as the policy saw them."""
        series = decoded["series"]
        dt = self.spec.dt
        for start, end, steps, times in logged_episodes(decoded):
            rows, stamps = {}, None
            for key, s in series.items():
                index = latest_at(s.log_ns, times)
                if np.any(index < 0):
                    raise ValueError(f"a logged action precedes the first {key} message")
                rows[key] = s.values[index]
                if key == "joints":
                    stamps = s.stamps[index]
            obs = self._observations(decoded, rows)
            rewards, successes = self._evaluate(obs)
            # Step t's reward scores observation t + 1; the last one's is in the end event.
            reward = np.append(rewards[1:], np.float32(end["final_reward"] if end else np.nan))
            terminated = np.zeros(len(steps), dtype=bool)
            terminated[-1] = bool(end and end.get("terminated"))
            data = {
                **obs,
                "action": np.stack([decoded["actions"][j][1] for j in steps]),
                "reward": reward.astype(np.float32),
                "terminated": terminated,
                "timestamp": np.arange(len(steps), dtype=np.float64) * dt,
                "stamp_ns": stamps,
                "obs_latency": (times - stamps) * 1e-9,
            }
            success = end["success"] if end else successes.any()
            yield data, episode_meta(start, end, bool(success), self.source, data["reward"])

    def _resampled_episode(self, decoded: dict[str, Any]) -> Episode:
        """A foreign bag: one episode on the control-rate grid of the joint states' stamps."""
        series = {k: s.by_stamp() for k, s in decoded["series"].items()}
        joints = series["joints"]
        dt_ns = round(self.spec.dt * 1e9)
        start = max(s.stamps[0] for s in series.values())  # every topic has begun
        n = int((joints.stamps[-1] - start) // dt_ns)  # steps; one more grid point ends it
        if n < 1:
            raise ValueError("the bag's joint states span less than one control period")
        grid = start + dt_ns * np.arange(n + 1, dtype=np.int64)
        rows = {k: interpolate(s.stamps, s.values, grid) for k, s in series.items()}
        obs = self._observations(decoded, rows)
        rewards, successes = self._evaluate(obs)
        # Commands onto the stamp timeline: the joint states' typical log-minus-stamp offset.
        offset = int(np.median(joints.log_ns - joints.stamps))
        # Step k's command is the newest one issued by the end of the step (it answered obs k).
        action = np.zeros((n, self.ik.action_dim), dtype=np.float32)
        q = rows["joints"][:, :7]
        commands, gripper = decoded["commands"], decoded["gripper"]
        cmd_index = latest_at(commands.log_ns - offset, grid[1:])
        grip_index = latest_at(gripper.log_ns - offset, grid[1:])
        opening = rows["joints"][:, 7] + rows["joints"][:, 8]
        for k in range(n):
            target = commands.values[cmd_index[k]] if cmd_index[k] >= 0 else q[k]
            action[k] = self._action(
                q[k], target, self._opening(gripper, grip_index[k], opening[k + 1])
            )
        obs = {key: value[:n] for key, value in obs.items()}
        data = {
            **obs,
            "action": action,
            "reward": rewards[1:],
            "terminated": np.zeros(n, dtype=bool),
            "timestamp": np.arange(n, dtype=np.float64) * self.spec.dt,
            "stamp_ns": grid[:n],
        }
        meta = {
            "seed": -1,
            "success": bool(successes.any()),
            "source": self.source,
            "episode_return": float(np.sum(rewards[1:], dtype=np.float64)),
            "abort_reason": "",
        }
        return data, meta

    @staticmethod
    def _opening(gripper: _Series, index: int, observed: float) -> float:
        return float(gripper.values[index, 0]) if index >= 0 else float(observed)

    def _action(self, q: np.ndarray, target: np.ndarray, opening: float) -> np.ndarray:
        """The normalised action whose IK step best explains moving from ``q`` to ``target``."""
        pos, rot = self.ik.fk(q)
        pos_t, rot_t = self.ik.fk(target)
        values = list((pos_t - pos) / self.ik.max_step)
        if self.use_yaw:
            yaw = math.atan2(rot[1, 0], rot[0, 0])
            yaw_t = math.atan2(rot_t[1, 0], rot_t[0, 0])
            delta = (yaw_t - yaw + math.pi) % (2 * math.pi) - math.pi
            values.append(delta / self.ik.max_yaw_step)
        values.append(2.0 * opening / GRIPPER_MAX_OPENING - 1.0)
        return np.clip(np.asarray(values, dtype=np.float32), -1.0, 1.0)


class QuadrotorLogImporter:
    """Quadrotor bags -> episodes of ``robolearn/Quadrotor-v0`` (22-D observation, 4 actions).

    A robolearn bag's episodes reproduce the deployment's store (observations from the newest
    odometry logged at or before each action, the previous logged action fed back, each
    episode's target from its start event). A foreign bag becomes one episode on the 100 Hz grid
    of the odometry's header stamps (positions, velocities and rates interpolated linearly, the
    attitude normalised-linearly), each step's action the motor command in force over the step,
    ``a = 2 u - 1``, and the previous action the one before it.

    Args:
        topics: :class:`~hw.quadrotor_msgs.QuadrotorTopics` fields (topic names in the bag;
            unset ones are the interface's defaults).
        interface: ``"ros"`` (``nav_msgs/Odometry`` and ``Float32MultiArray`` commands) or
            ``"px4"`` (``VehicleOdometry`` and ``ActuatorMotors``), :mod:`hw.quadrotor_msgs`.
        frame: ``ros``: ``"enu_flu"`` (default) or ``"ned_frd"``, the odometry's convention.
        twist_in_body: ``ros``: whether the odometry's linear velocity is in the body frame
            (default).
        command_order: ``ros``: ``"policy"`` (default) or ``"px4"``, the commands' motor order.
        target: Position (m, world ENU) the observation's position error is taken to.
        vehicle: The preset of the simulated twin (``env_kwargs`` of the store, and the
            termination bound of the reward).
        clip_observation: Clip the position and velocity errors, as the env does.
        terminate_on_velocity: The reward's velocity termination, as the env's.
        source: Each episode's ``source`` metadata.
    """

    def __init__(
        self,
        topics: Mapping[str, Any] | None = None,
        interface: str = "ros",
        frame: str | None = None,
        twist_in_body: bool | None = None,
        command_order: str | None = None,
        target: Sequence[float] = (0.0, 0.0, 0.0),
        vehicle: str = "crazyflie",
        clip_observation: bool = True,
        terminate_on_velocity: bool = True,
        source: str = "bag",
    ) -> None:
        from hw.frames import check_convention
        from hw.quadrotor_msgs import (
            MOTOR_SETPOINTS,
            NAV_ODOMETRY,
            PX4,
            PX4_MOTORS,
            PX4_ODOMETRY,
            QuadrotorTopics,
            check_interface,
            register_px4_types,
        )
        from sims.pybullet.quadrotor import Vehicle
        from sims.quadrotor.params import TERMINATION_ARMS

        self.interface = check_interface(interface)
        if self.interface == PX4:
            register_px4_types()
            self._types = (PX4_ODOMETRY, PX4_MOTORS)
        else:
            self._types = (NAV_ODOMETRY, MOTOR_SETPOINTS)
        self.topics = QuadrotorTopics(**dict(topics or {})).resolved(self.interface)
        self.frame = check_convention(frame or "enu_flu")
        self.twist_in_body = True if twist_in_body is None else bool(twist_in_body)
        self.command_order = command_order or "policy"
        self.target = np.asarray(target, dtype=np.float64)
        self.vehicle = vehicle
        self.clip_observation = clip_observation
        self.terminate_on_velocity = terminate_on_velocity
        self.source = source
        arm = np.linalg.norm(Vehicle.from_preset(vehicle).rotor_positions[:, :2], axis=1).max()
        self._max_position = TERMINATION_ARMS * float(arm)

    @classmethod
    def from_description(
        cls, description: Mapping[str, Any], **overrides: Any
    ) -> QuadrotorLogImporter:
        """The importer of a robolearn bag, configured from its description (the deployment's
        ``hw.env`` and ``env_kwargs``); ``overrides`` win."""
        env = dict((description.get("hw") or {}).get("env") or {})
        sim = dict(description.get("env_kwargs") or {})
        keys = ("topics", "interface", "frame", "twist_in_body", "command_order", "target")
        kwargs = {k: env[k] for k in keys if k in env}
        kwargs["vehicle"] = sim.get("params", "crazyflie")
        for key in ("clip_observation", "terminate_on_velocity"):
            kwargs.setdefault(key, sim.get(key, True))
        return cls(**{**kwargs, **overrides})

    def topic_names(self) -> list[str]:
        """Every topic this importer reads."""
        return [self.topics.odometry, self.topics.command, ACTION_TOPIC, EPISODE_TOPIC]

    def store_attrs(self) -> dict[str, Any]:
        from robolearn.policy import FLAT_OBS_KEY
        from robolearn.robots.quadrotor import OBSERVATION_DIM, QUADROTOR_SPEC

        return {
            "env_id": "robolearn/Quadrotor-v0",
            "env_kwargs": {
                "params": self.vehicle,
                "clip_observation": self.clip_observation,
                "terminate_on_velocity": self.terminate_on_velocity,
            },
            "hw_env_id": "robolearn/ROS2Quadrotor-v0",
            "robot_spec": QUADROTOR_SPEC.to_dict(),
            "control_hz": QUADROTOR_SPEC.control_hz,
            "observation_keys": [FLAT_OBS_KEY],
            "observation_space": {FLAT_OBS_KEY: {"shape": [OBSERVATION_DIM], "dtype": "float32"}},
            "action_space": {"shape": [4], "dtype": "float32"},
        }

    def _decode(self, messages: Sequence[BagMessage]) -> dict[str, Any]:
        """Odometry in ENU/FLU (world velocity), commands as policy-ordered actions, the
        logged actions and the episode events."""
        from hw.frames import setpoint_to_action
        from hw.quadrotor_msgs import read_motor_command, read_odometry

        odometry_type, command_type = self._types

        odometry: tuple[list, list, list] = ([], [], [])
        commands: tuple[list, list, list] = ([], [], [])
        actions: list[tuple[int, np.ndarray]] = []
        events: list[tuple[int, dict[str, Any]]] = []
        for m in messages:
            if m.topic == ACTION_TOPIC:
                actions.append((m.log_ns, np.asarray(m.decode().data, dtype=np.float32)))
            elif m.topic == EPISODE_TOPIC:
                events.append((m.log_ns, json.loads(m.decode().data)))
            elif m.topic == self.topics.odometry and m.msgtype == odometry_type:
                state, stamp, _ = read_odometry(
                    m.decode(), m.msgtype, self.frame, self.twist_in_body
                )
                if state is None:
                    continue  # dropped, as the env drops it
                odometry[0].append(m.log_ns)
                odometry[1].append(stamp)
                odometry[2].append(state)
            elif m.topic == self.topics.command and m.msgtype == command_type:
                setpoint = read_motor_command(m.decode(), m.msgtype, self.command_order)
                if setpoint is not None:
                    commands[0].append(m.log_ns)
                    commands[1].append(0)
                    commands[2].append(setpoint_to_action(setpoint))
        if not odometry[0]:
            raise ValueError(
                f"the bag has no usable {odometry_type} messages on {self.topics.odometry} "
                "(topics are set by hw.env.topics.*, the messages by hw.env.interface)"
            )
        return {
            "odometry": _Series(*odometry),
            "commands": _Series(*commands),
            "actions": actions,
            "events": events,
        }

    def _steps(
        self, states: np.ndarray, actions: np.ndarray, target: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Observations, rewards and distances of steps whose observation ``t`` comes from
        ``states[t]`` and action ``t`` was ``actions[t]``; ``states`` has one more row (the
        state after the last action) that scores the last reward."""
        from hw.frames import quat_to_rotation
        from hw.quadrotor_env import teacher_reward
        from robolearn.robots.quadrotor import CLIP_POSITION, CLIP_VELOCITY, raptor_observation

        n = len(actions)
        prev = np.vstack([np.zeros((1, 4)), actions[:-1]]).astype(np.float64)
        p_err = states[:, 0:3] - target
        obs = raptor_observation(
            p_err[:n],
            quat_to_rotation(states[:n, 3:7]),
            states[:n, 7:10],
            states[:n, 10:13],
            prev,
            clip_position=CLIP_POSITION if self.clip_observation else None,
            clip_velocity=CLIP_VELOCITY if self.clip_observation else None,
        ).astype(np.float32)
        clipped = np.clip(actions, -1.0, 1.0)
        d_action = np.linalg.norm(clipped - np.clip(prev, -1.0, 1.0), axis=1)
        rewards, terminated = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool)
        for t in range(min(n, len(states) - 1)):
            r, term = teacher_reward(
                states[t + 1],
                p_err[t + 1],
                float(d_action[t]),
                self._max_position,
                self.terminate_on_velocity,
            )
            rewards[t], terminated[t] = r, term
        return {
            "obs": obs,
            "reward": rewards,
            "terminated": terminated,
            "position_error": np.linalg.norm(p_err[:n], axis=1),
        }

    def episodes(self, messages: Sequence[BagMessage]) -> Iterator[Episode]:
        from sims.quadrotor.env import SUCCESS_DISTANCE

        decoded = self._decode(messages)
        odometry = decoded["odometry"]
        if not decoded["actions"]:
            yield self._resampled_episode(decoded, SUCCESS_DISTANCE)
            return
        for start, end, steps, times in logged_episodes(decoded):
            index = latest_at(odometry.log_ns, times)
            if np.any(index < 0):
                raise ValueError("a logged action precedes the first odometry message")
            # The state after the last action: the next odometry (the reward's only use).
            states = odometry.values[np.append(index, min(index[-1] + 1, len(odometry) - 1))]
            actions = np.stack([decoded["actions"][j][1] for j in steps])
            target = np.asarray(start.get("target", self.target), dtype=np.float64)
            data = self._steps(states, actions, target)
            if end is not None:  # the deployment's own score of the last step
                data["reward"][-1] = end["final_reward"]
                data["terminated"][-1] = bool(end.get("terminated"))
            else:
                data["terminated"][-1] = False
            stamps = odometry.stamps[index]
            data.update(
                action=actions,
                timestamp=np.arange(len(steps), dtype=np.float64) * 0.01,
                stamp_ns=stamps,
                obs_latency=(times - stamps) * 1e-9,
            )
            success = end["success"] if end else data["position_error"][-1] < SUCCESS_DISTANCE
            yield data, episode_meta(start, end, bool(success), self.source, data["reward"])

    def _resampled_episode(self, decoded: dict[str, Any], success_distance: float) -> Episode:
        """A foreign bag: one episode on the 100 Hz grid of the odometry's stamps."""
        odometry = decoded["odometry"].by_stamp()
        dt_ns = 10_000_000
        n = int((odometry.stamps[-1] - odometry.stamps[0]) // dt_ns)
        if n < 1:
            raise ValueError("the bag's odometry spans less than one control period")
        grid = odometry.stamps[0] + dt_ns * np.arange(n + 1, dtype=np.int64)
        values = odometry.values.copy()
        # Quaternions q and -q are one attitude: align signs before interpolating.
        flip = np.sign(np.sum(values[1:, 3:7] * values[:-1, 3:7], axis=1))
        values[1:, 3:7] *= np.cumprod(np.where(flip == 0, 1.0, flip))[:, None]
        states = interpolate(odometry.stamps, values, grid)
        states[:, 3:7] /= np.linalg.norm(states[:, 3:7], axis=1, keepdims=True)
        commands = decoded["commands"]
        offset = int(np.median(odometry.log_ns - odometry.stamps))
        # Step k's command is the newest one issued by the end of the step.
        index = latest_at(commands.log_ns - offset, grid[1:])
        actions = np.where(
            (index >= 0)[:, None], commands.values[np.maximum(index, 0)], -1.0
        ).astype(np.float32)
        data = self._steps(states, actions, self.target)
        data.update(
            action=actions,
            timestamp=np.arange(n, dtype=np.float64) * 0.01,
            stamp_ns=grid[:n],
        )
        meta = {
            "seed": -1,
            "success": bool(np.linalg.norm(states[-1, :3] - self.target) < success_distance),
            "source": self.source,
            "episode_return": float(np.sum(data["reward"], dtype=np.float64)),
            "abort_reason": "",
        }
        return data, meta


#: Robot name (``robot_spec.name``) -> importer class.
IMPORTERS: dict[str, type] = {
    PANDA_SPEC.name: ArmLogImporter,
    PANDA_YAW_SPEC.name: ArmLogImporter,
    "quadrotor": QuadrotorLogImporter,
}


def importer_for(
    env_id: str, description: Mapping[str, Any] | None = None, **kwargs: Any
) -> LogImporter:
    """The importer of a simulated or hardware env id (``robolearn/ArmPush-v0``, ...);
    ``description`` (a robolearn bag's) configures a quadrotor importer as the deployment was
    (only ``source`` of ``kwargs`` applies then)."""
    from hw import ARM_ENVS, HW_IDS, QUADROTOR_ENVS

    hw_id = HW_IDS.get(env_id, env_id)
    if hw_id in QUADROTOR_ENVS:
        for arm_only in ("use_yaw", "pose_frames"):
            kwargs.pop(arm_only, None)
        if description and description.get("hw"):
            # A robolearn bag says how it was recorded: that wins over the caller's defaults.
            return QuadrotorLogImporter.from_description(
                description, **{k: v for k, v in kwargs.items() if k == "source"}
            )
        return QuadrotorLogImporter(**kwargs)
    if hw_id not in ARM_ENVS:
        raise ValueError(f"{env_id}: no bag importer (these envs have one: {sorted(HW_IDS)})")
    return ArmLogImporter(ARM_ENVS[hw_id][0], **kwargs)


def import_bag(
    bag: str | os.PathLike,
    out: str | os.PathLike,
    importer: LogImporter | None = None,
    env_id: str | None = None,
    **importer_kwargs: Any,
) -> EpisodeStore:
    """Import a bag into a new EpisodeStore at ``out``.

    For a robolearn bag, ``env_id`` defaults to the one recorded in the bag and the store gets
    the deployment's attributes; otherwise pass ``env_id`` (or a ready ``importer``).
    """
    custom = bag_custom_data(bag)
    description = json.loads(custom[CUSTOM_DATA_KEY]) if CUSTOM_DATA_KEY in custom else {}
    if importer is None:
        env_id = env_id or description.get("env_id")
        if env_id is None:
            raise ValueError(f"{bag}: not a robolearn bag, so the env must be given (env=...)")
        if "use_yaw" not in importer_kwargs and "env_kwargs" in description:
            importer_kwargs["use_yaw"] = bool(description["env_kwargs"].get("use_yaw", False))
        importer_kwargs.setdefault("source", f"bag:{Path(bag).name}")
        importer = importer_for(env_id, description, **importer_kwargs)
    topics = importer.topic_names() if hasattr(importer, "topic_names") else None
    messages = list(read_bag(bag, topics))
    episodes = list(importer.episodes(messages))
    if not episodes:
        raise ValueError(f"{bag}: no episode with at least one step")
    attrs = {**importer.store_attrs(), **description, "imported_from": str(bag)}
    attrs.pop("store", None)
    attrs.pop("first_episode", None)
    store = EpisodeStore.create(out, attrs=attrs)
    store.add_episodes(episodes)
    return store


def export_store(
    store: EpisodeStore,
    bag: str | os.PathLike,
    topics: Mapping[str, Any] | None = None,
    episodes: Sequence[int] | None = None,
) -> int:
    """Write arm episodes as a bag: joint states, poses, actions and episode events.

    Each step's messages are logged at the step's time (its measurement stamp ``stamp_ns``
    when the store has one, else the episode's nominal ``timestamp`` from the epoch), the
    fingers each at half the ``gripper`` opening. Commands are not synthesised: the store holds
    the policy's actions, not what the safety layer made of them. Returns the message count.
    """
    from hw.arm_env import ArmTopics

    names = ArmTopics(**dict(topics or {}))
    types = typestore().types
    header, time_t = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
    state, pose_t = types[JOINT_STATE], types[POSE]
    pose_msg, point_t = types["geometry_msgs/msg/Pose"], types["geometry_msgs/msg/Point"]
    identity = types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)
    description = {k: v for k, v in store.attrs.items() if k != "schema_version"}
    custom = {CUSTOM_DATA_KEY: json.dumps(description, default=str)}
    dt = 1.0 / float(store.attrs.get("control_hz") or PANDA_SPEC.control_hz)
    pose_topics = {"object_pos": names.object_pose, "goal_pos": names.goal_pose}

    def stamped(ns: int, frame: str = "") -> Any:
        sec, nanosec = divmod(ns, 1_000_000_000)
        return header(stamp=time_t(sec=int(sec), nanosec=int(nanosec)), frame_id=frame)

    with BagWriter(bag, custom) as writer:
        writer.add_topic(names.joint_states, JOINT_STATE)
        for topic, msgtype in ((ACTION_TOPIC, ACTION_TYPE), (EPISODE_TOPIC, STRING_TYPE)):
            writer.add_topic(topic, msgtype)
        keys = [k for k in pose_topics if k in store.keys]
        for key in keys:
            writer.add_topic(pose_topics[key], POSE)
        clock = 0
        for index in range(store.n_episodes) if episodes is None else episodes:
            ep = store.get_episode(index)
            meta = store.episode_meta(index)
            n = len(ep["action"])
            if "stamp_ns" in ep:
                times = ep["stamp_ns"].astype(np.int64)
            else:  # episodes one second apart on a clock of their own
                base = clock + 1_000_000_000
                times = base + np.round(ep["timestamp"] * 1e9).astype(np.int64)
            clock = int(times[-1]) + round(dt * 1e9)
            writer.write(
                EPISODE_TOPIC,
                string_message({"event": "start", "seed": int(meta.get("seed", -1))}),
                int(times[0]),
            )
            for t in range(n):
                ns = int(times[t])
                half = 0.5 * float(ep["gripper"][t, 0])
                msg = state(
                    header=stamped(ns),
                    name=list(JOINT_NAMES + FINGER_JOINT_NAMES),
                    position=np.append(ep["joint_pos"][t].astype(np.float64), [half, half]),
                    velocity=np.zeros(0),
                    effort=np.zeros(0),
                )
                writer.write(names.joint_states, serialize(msg, JOINT_STATE), ns)
                for key in keys:
                    x, y, z = (float(v) for v in ep[key][t])
                    msg = pose_t(
                        header=stamped(ns, "world"),
                        pose=pose_msg(position=point_t(x=x, y=y, z=z), orientation=identity),
                    )
                    writer.write(pose_topics[key], serialize(msg, POSE), ns)
                writer.write(ACTION_TOPIC, action_message(ep["action"][t]), ns)
            end = {
                "event": "end",
                "seed": int(meta.get("seed", -1)),
                "success": bool(meta.get("success", False)),
                "steps": n,
                "terminated": bool(ep["terminated"][-1]),
                "abort_reason": str(meta.get("abort_reason", "")),
                "final_reward": float(ep["reward"][-1]),
            }
            writer.write(EPISODE_TOPIC, string_message(end), clock)
        return writer.message_count
