"""What every robolearn env over ROS 2 shares, whatever the robot: :class:`RosEnv`.

A hardware env is a ``gymnasium.Env`` whose observations come from a driver's topics and whose
actions go out as command messages, with the simulated twin's spaces. The robot decides what
it subscribes to, how a message becomes an observation and how an action becomes a command;
this module holds the loop around that, which is the same for the arm and the quadrotor:

* a private ROS runtime and node, with the e-stop services ``~/estop`` and ``~/clear_estop``
  (``std_srvs/Trigger``) and, when given, a client of a scene reset node;
* the newest decoded sample of every subscribed topic, taken under one lock, with why each
  topic's last rejected message was dropped (for the reset's timeout message);
* the step timing: a fixed-rate tick, or syncing to the stamps of one *pacing* topic (the
  joint states, the odometry);
* the watchdog over the measurement topics, and the safety events of each step in ``info``;
* recording through an attached :class:`~hw.recorder.TopicRecorder`: every message received at
  its receive time, every command at its send time, each step's action at the snapshot time of
  the observation it acted on, episode start and end events and safety events.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import gymnasium as gym

from hw.recorder import TopicRecorder
from hw.recorder import now_ns as recorder_now_ns
from hw.ros import RosRuntime, check_realtime_priority, sensor_qos, use_realtime_priority
from hw.safety import SafetyLayer
from robolearn.robots.spec import RobotSpec

logger = logging.getLogger("hw.ros_env")

T = TypeVar("T")


@dataclasses.dataclass
class Sample:
    """The newest message of a topic: its decoded ``value``, header stamp and arrival time."""

    value: Any
    stamp_ns: int
    received: float  # time.monotonic() at arrival


def as_config(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """``value`` as the dataclass ``cls``: itself, ``cls()`` for ``None``, or built from a
    mapping of its fields whose lists become tuples (YAML has no tuples; the dataclasses are
    frozen)."""
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    return value


class RosEnv(gym.Env, abc.ABC):
    """Base of the ROS 2 envs (:class:`hw.arm_env.ROS2ArmEnv`,
    :class:`hw.quadrotor_env.ROS2QuadrotorEnv`): see the module docstring for what it does.

    A subclass's ``__init__`` validates its own arguments, calls this one, sets ``safety`` (a
    :class:`~hw.safety.SafetyLayer`), its spaces and whatever its callbacks use, and then calls
    :meth:`_start_node`. It provides:

    * :meth:`_setup_topics`: its subscriptions (through :meth:`_subscribe`, handing each
      decoded message to :meth:`_accept` or :meth:`_drop`) and command publishers, and the
      lists ``_required_topics`` (``reset`` waits for a fresh message on each) and
      ``_watched_topics`` (the watchdog's);
    * :meth:`_recorded_topics`: every topic it subscribes or publishes, with its message class;
    * :meth:`_engage_estop`: what it does when the e-stop service is called;
    * ``reset`` and ``step``, built from the helpers here: :meth:`_check_estop_released`,
      :meth:`_wait_for_subscribers`, :meth:`_reset_scene`, :meth:`_wait_fresh`,
      :meth:`_use_observation`, :meth:`_start_safety_episode` and :meth:`_open_episode` in
      ``reset``; :meth:`_begin_step`, :meth:`_wait_for_tick`, :meth:`_snapshot`,
      :meth:`_safety_abort` and :meth:`_finish_step` in ``step``. Commands go out through
      :meth:`_publish`.

    Args:
        spec: The robot's spec at its own control rate.
        control_hz: Control rate in Hz; ``None`` keeps the spec's.
        reset_timeout: Seconds ``reset`` waits for the driver.
        scene_reset_node: A node serving ``<node>/reset`` (``std_srvs/Trigger``) and taking
            episode parameters (the stand-ins), or ``None``.
        pacing_topic: The measurement topic whose stamp is the observation's (``stamp_ns``).
        sync_to_pacing_topic: Pace the loop by ``pacing_topic``: each step waits for the first
            message stamped at least half a control period after the current observation's
            (for at most the watchdog timeout), instead of sleeping to a local tick.
        realtime_priority: SCHED_FIFO priority (1-99) for the thread that creates the env
            (the one that should step it) until ``close``, and for every thread or process it
            starts meanwhile, the env's ROS threads first (they inherit it, and keep it; so do
            e.g. torch's worker threads if the first torch op runs in that time). ``None``
            leaves scheduling alone. See :func:`hw.ros.use_realtime_priority`.
    """

    #: The robot's safety layer, set by the subclass before :meth:`_start_node`.
    safety: SafetyLayer

    def __init__(
        self,
        spec: RobotSpec,
        *,
        control_hz: float | None,
        reset_timeout: float,
        scene_reset_node: str | None,
        pacing_topic: str,
        sync_to_pacing_topic: bool,
        realtime_priority: int | None = None,
    ) -> None:
        self.realtime_priority = check_realtime_priority(realtime_priority)
        if not reset_timeout > 0:
            raise ValueError(f"reset_timeout must be positive, got {reset_timeout!r}")
        if control_hz is not None and not (math.isfinite(control_hz) and control_hz > 0):
            raise ValueError(f"control_hz must be a positive number, got {control_hz!r}")
        if control_hz is not None:
            spec = dataclasses.replace(spec, control_hz=float(control_hz))
            self.metadata = {**self.metadata, "render_fps": int(round(control_hz))}
        self.robot_spec = spec
        self.dt = spec.dt
        self.reset_timeout = float(reset_timeout)
        self.scene_reset_node = scene_reset_node
        self.node: Any = None
        self._pacing_topic = pacing_topic
        self._synced = sync_to_pacing_topic
        self._required_topics: list[str] = []
        self._watched_topics: list[str] = []

        self._lock = threading.Lock()  # the samples and the problems
        # Notified on each accepted sample (the synced step waits on it for the pacing topic).
        self._arrived = threading.Condition(self._lock)
        # Serialises publishing: a step, the e-stop service and timers publish from different
        # threads, and subclasses keep what was last commanded under it.
        self._pub_lock = threading.Lock()
        self._latest: dict[str, Sample] = {}
        self._problems: dict[str, str] = {}  # topic -> why its last rejected message was dropped
        self._events_seen = 0  # safety events already reported in an info
        self._next_tick = 0.0
        self._commanded_at = 0.0  # monotonic time of the last step's start (or of the reset)
        self._obs_stamp_ns = 0  # pacing topic's header stamp of the current observation
        self._recorder: TopicRecorder | None = None
        self._snapshot_ns = 0  # log time of the last snapshot
        self._obs_ns = 0  # log time of the snapshot the current observation came from
        self._episode: dict[str, Any] | None = None  # the open episode's end event, if recording
        self._closed = False
        self._ros: RosRuntime | None = None
        self._restore_scheduling: Callable[[], None] | None = None

    # --- what a subclass provides ------------------------------------------------------------

    @abc.abstractmethod
    def _setup_topics(self, node: Any) -> None:
        """Create the robot's subscriptions and publishers on ``node``; set
        ``_required_topics`` and ``_watched_topics``."""

    @abc.abstractmethod
    def _recorded_topics(self) -> list[tuple[str, type]]:
        """Every topic the env subscribes or publishes, with its rclpy message class."""

    @abc.abstractmethod
    def _engage_estop(self) -> str:
        """Bring the robot to its safe state after the e-stop service latched; what it does,
        for the service's reply (``"the arm holds"``)."""

    # --- ROS wiring -------------------------------------------------------------------------

    def _start_node(self, node_name: str, domain_id: int | None) -> None:
        """Make the runtime and the node with the robot's topics, the e-stop services and the
        scene reset clients (the runtime is closed again if any of it fails)."""
        from std_srvs.srv import Trigger

        if self.realtime_priority is not None:  # first: the runtime's threads inherit it
            self._restore_scheduling = use_realtime_priority(self.realtime_priority)
        try:
            self._ros = RosRuntime(domain_id)
            node = self._ros.create_node(node_name)
            self.node = node
            self._setup_topics(node)
            node.create_service(Trigger, "~/estop", self._on_estop)
            node.create_service(Trigger, "~/clear_estop", self._on_clear_estop)
            self._reset_client = self._params_client = None
            if self.scene_reset_node is not None:
                from rcl_interfaces.srv import SetParameters

                base = self.scene_reset_node.rstrip("/")
                self._reset_client = node.create_client(Trigger, f"{base}/reset")
                self._params_client = node.create_client(SetParameters, f"{base}/set_parameters")
        except BaseException:
            if self._ros is not None:
                self._ros.close()
            self._restore_thread_scheduling()
            raise

    def _subscribe(
        self, msg_class: type, topic: str, on_message: Callable[[Any, bytes], None]
    ) -> None:
        """Subscribe best effort (which hears reliable publishers too) and call
        ``on_message(msg, data)``: raw, deserialized here, because the recorder keeps the exact
        wire bytes (a re-serialized message differs from them in its CDR padding bytes)."""
        from rclpy.serialization import deserialize_message

        self.node.create_subscription(
            msg_class,
            topic,
            lambda data: on_message(deserialize_message(data, msg_class), data),
            sensor_qos(),
            raw=True,
        )

    def attach_recorder(self, recorder: TopicRecorder) -> None:
        """Record this env's raw topics, commands, actions, episodes and safety events."""
        for topic, msg_class in self._recorded_topics():
            recorder.add_topic(topic, msg_class)
        self._recorder = recorder

    def _accept(self, topic: str, sample: Sample, data: bytes) -> None:
        """Make ``sample`` the newest of ``topic``. Its log time is taken under the lock that
        makes it the newest, so "the newest message of each topic logged at or before the
        action" in the bag is exactly what the policy saw."""
        with self._lock:
            log_ns = recorder_now_ns()
            self._latest[topic] = sample
            self._arrived.notify_all()
        if self._synced and topic == self._pacing_topic:
            # Hand the GIL to the step waiting for this sample now, rather than after the
            # executor's own Python bookkeeping (measured: 0.6 -> 0.1 ms median hand-over).
            time.sleep(0)
        self._record(topic, data, log_ns)

    def _drop(self, topic: str, why: str, data: bytes) -> None:
        """Reject a message of ``topic`` (recorded all the same), saying why."""
        with self._lock:
            first = self._problems.get(topic) != why
            self._problems[topic] = why
        if first:  # once per distinct problem: a driver at 1 kHz would flood the log
            logger.warning("dropping messages on %s: %s", topic, why)
        self._record(topic, data, recorder_now_ns())

    def _record(self, topic: str, data: bytes, log_ns: int) -> None:
        # Written outside the sample lock: the bag sorts by log time, so order does not matter.
        if self._recorder is not None:
            self._recorder.write(topic, data, log_ns)

    def _publish(self, publisher: Any, topic: str, msg: Any) -> None:
        """Publish a command (with ``_pub_lock`` held), recorded at its send time; serialized
        here when recording, so the bag holds the very bytes on the wire."""
        if self._recorder is None:
            publisher.publish(msg)
            return
        from rclpy.serialization import serialize_message

        data = serialize_message(msg)
        publisher.publish(data)
        self._record(topic, data, recorder_now_ns())

    def _on_estop(self, request: Any, response: Any) -> Any:
        self.safety.trigger_estop(f"e-stop service {self.node.get_fully_qualified_name()}/estop")
        done = self._engage_estop()
        response.success = True
        response.message = f"e-stop latched: {done}; call clear_estop to release it"
        return response

    def _on_clear_estop(self, request: Any, response: Any) -> Any:
        self.safety.clear_estop()
        response.success = True
        response.message = "e-stop released"
        return response

    # --- reset ------------------------------------------------------------------------------

    def _check_estop_released(self) -> None:
        """Refuse to start an episode while the e-stop is latched."""
        reason = self.safety.estop_reason
        if reason is not None:
            raise RuntimeError(
                f"e-stop is latched ({reason}); call "
                f"{self.node.get_fully_qualified_name()}/clear_estop to release it"
            )

    def _wait_for_subscribers(
        self, publishers: list[tuple[Any, str]], deadline: float, check: str
    ) -> None:
        """Wait until every ``(publisher, topic)`` has a subscriber: commands sent before the
        driver is matched are lost. ``check`` says what to check in the timeout's message."""
        while True:
            unmatched = [topic for pub, topic in publishers if pub.get_subscription_count() == 0]
            if not unmatched:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nobody subscribes to {unmatched} within {self.reset_timeout:g} s: "
                    f"{check}, in ROS_DOMAIN_ID {self._ros.domain_id}?"
                )
            time.sleep(0.01)

    def _reset_scene(self, parameters: Mapping[str, Any]) -> int:
        """Set the episode ``parameters`` (name -> value) on the scene reset node, then call
        its reset; the ROS time from which messages describe the new episode (the stand-ins
        stamp a measurement under the lock their reset takes)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        from std_srvs.srv import Trigger

        node = self.scene_reset_node
        if parameters:
            request = SetParameters.Request(
                parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in parameters.items()]
            )
            response = self._ros.call(
                self._params_client, request, self.reset_timeout, f"setting {node} parameters"
            )
            for result in response.results:
                if not result.successful:
                    raise RuntimeError(
                        f"{node} refused the episode parameters {dict(parameters)}: {result.reason}"
                    )
        response = self._ros.call(
            self._reset_client, Trigger.Request(), self.reset_timeout, f"{node}/reset"
        )
        if not response.success:
            raise RuntimeError(f"{node}/reset failed: {response.message}")
        return self.node.get_clock().now().nanoseconds

    def _wait_fresh(self, since: float, since_stamp_ns: int, deadline: float) -> dict[str, Sample]:
        """Wait until every required topic delivered after ``since`` (monotonic) with a stamp
        no older than ``since_stamp_ns``; the snapshot, or TimeoutError naming what is missing."""
        while True:
            samples = self._snapshot()
            missing = [
                topic
                for topic in self._required_topics
                if topic not in samples
                or samples[topic].received <= since
                or samples[topic].stamp_ns < since_stamp_ns
            ]
            if not missing:
                return samples
            if time.monotonic() > deadline:
                with self._lock:
                    problems = {t: self._problems[t] for t in missing if t in self._problems}
                why = "".join(f"; {t}: {p}" for t, p in problems.items())
                raise TimeoutError(
                    f"no fresh message on {missing} within {self.reset_timeout:g} s of reset "
                    f"(is the driver running, in ROS_DOMAIN_ID {self._ros.domain_id}?){why}"
                )
            time.sleep(0.002)

    def _start_safety_episode(self) -> None:
        """Report the safety events of the reset (into the bag), then restart the safety
        layer's episode."""
        self._record_safety_events()
        self.safety.start_episode()
        self._events_seen = len(self.safety.events)

    def _open_episode(self, info: dict[str, Any], seed: int | None, **start: Any) -> None:
        """Finish the reset: the first step's tick is one period from now; ``info`` gets the
        step keys; a recorder gets the start event (with ``start``'s extra fields)."""
        self._next_tick = self._commanded_at = time.monotonic()
        info["overrun"] = False
        info["safety_events"] = []
        if self._recorder is not None:
            self._recorder.episode({"event": "start", "seed": seed, **start}, self._obs_ns)
            self._episode = {"event": "end", "seed": seed, "success": info["success"], "steps": 0}

    # --- step -------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Sample]:
        """The newest sample of every topic, as of now."""
        with self._lock:
            self._snapshot_ns = recorder_now_ns()
            return dict(self._latest)

    def _use_observation(self, samples: Mapping[str, Sample]) -> None:
        """Make the last snapshot, ``samples``, the current observation: a synced step waits
        from its pacing stamp, and the next action is logged at its snapshot time."""
        self._obs_stamp_ns = samples[self._pacing_topic].stamp_ns
        self._obs_ns = self._snapshot_ns

    def _begin_step(self, action: Any) -> None:
        """Start a step: check the loop's gap since the previous command (or the reset) and
        log the action."""
        now = time.monotonic()
        self.safety.check_loop_gap(now - self._commanded_at)
        self._commanded_at = now
        if self._recorder is not None:
            self._recorder.action(action, self._obs_ns)

    def _wait_for_tick(self) -> bool:
        """Wait until the step's observation is due; whether the loop was late (``overrun``)."""
        if self._synced:
            return self._wait_for_pacing_sample()
        # Fixed rate: sleep to the next tick; after an overrun restart the schedule from now
        # rather than firing a burst of late steps.
        self._next_tick += self.dt
        delay = self._next_tick - time.monotonic()
        if delay < 0:
            self._next_tick = time.monotonic()
            return True
        time.sleep(delay)
        return False

    def _wait_for_pacing_sample(self) -> bool:
        """Wait for the first pacing sample stamped half a control period or more after the
        current observation's (at most the watchdog timeout, which then judges the stale one);
        whether it had already arrived (the loop is late). Stamps rather than arrival times, so
        a late message costs no step."""
        earliest = self._obs_stamp_ns + round(0.5e9 * self.dt)

        def arrived() -> bool:
            sample = self._latest.get(self._pacing_topic)
            return sample is not None and sample.stamp_ns >= earliest

        with self._arrived:
            late = arrived()
            self._arrived.wait_for(arrived, self.safety.watchdog_timeout)
        return late

    def _safety_abort(self, samples: Mapping[str, Sample]) -> str | None:
        """Why the episode must end now: a latched e-stop or a stale watched topic."""
        reason = self.safety.estop_reason
        if reason is not None:
            return f"estop: {reason}"
        now = time.monotonic()
        ages = [
            (topic, now - samples[topic].received if topic in samples else math.inf)
            for topic in self._watched_topics
        ]
        return self.safety.check_fresh(ages)

    def _finish_step(
        self,
        info: dict[str, Any],
        *,
        overrun: bool,
        abort: str | None,
        terminated: bool,
        reward: float,
        **end: Any,
    ) -> None:
        """Complete ``info`` with the step keys and the safety events, count the step, and
        update the recorded episode's end event (with ``end``'s extra fields), closing it when
        the episode ends."""
        info["overrun"] = overrun
        info["safety_events"] = self._record_safety_events()
        if abort is not None:
            info["abort_reason"] = abort
        self.safety.step_index += 1
        if self._episode is not None:
            episode = self._episode
            episode["steps"] += 1
            episode["success"] = bool(episode["success"] or info["success"])
            episode.update(
                terminated=terminated, abort_reason=abort or "", final_reward=float(reward), **end
            )
            if terminated or abort is not None:
                self._end_recorded_episode()

    def _record_safety_events(self) -> list[dict[str, Any]]:
        """The safety events since the last call, as dicts, recorded on the safety topic."""
        events = [e.to_dict() for e in self.safety.events_since(self._events_seen)]
        self._events_seen += len(events)
        if self._recorder is not None:
            for event in events:
                self._recorder.safety(event, round(event["wall_time"] * 1e9))
        return events

    def _end_recorded_episode(self) -> None:
        """Record the open episode's end, logged at its last observation's snapshot time; a
        time limit outside the env ends episodes silently, so reset and close call this too."""
        if self._recorder is not None and self._episode is not None:
            self._recorder.episode(self._episode, self._obs_ns)
            self._recorder.flush()  # a finished episode survives a kill
        self._episode = None

    def close(self) -> None:
        """Shut this env's ROS node down and close the bag of an attached recorder
        (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._end_recorded_episode()
        if self._ros is not None:
            self._ros.close()
        self._restore_thread_scheduling()
        if self._recorder is not None:
            self._recorder.close()

    def _restore_thread_scheduling(self) -> None:
        if self._restore_scheduling is not None:
            self._restore_scheduling()
            self._restore_scheduling = None
