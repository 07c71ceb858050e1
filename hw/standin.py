"""What the stand-in hardware nodes share (:mod:`hw.standin_arm`, :mod:`hw.standin_quadrotor`):
:class:`StandIn`, the node-plus-physics-thread scaffolding, :class:`DelayLine` for the link
latencies, :func:`config_from_mapping` and :func:`standin_main`, the command line of each.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import heapq
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from hw.ros import RosRuntime

logger = logging.getLogger("hw.standin")

C = TypeVar("C")


def config_from_mapping(cls: type[C], values: Mapping[str, Any]) -> C:
    """A stand-in config dataclass from a (YAML / JSON) mapping: lists become tuples, the
    ``physics`` mapping a dict; unknown keys raise."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown stand-in config keys {unknown}; known: {sorted(names)}")
    return cls(
        **{
            k: tuple(v) if isinstance(v, list) else dict(v) if k == "physics" else v
            for k, v in values.items()
        }
    )


def standin_config(cls: type[C], config: C | Mapping[str, Any] | None) -> C:
    """``config`` as the config dataclass ``cls``: itself, the defaults for ``None``, or
    :func:`config_from_mapping` of a mapping."""
    if config is None:
        return cls()
    if isinstance(config, Mapping):
        return config_from_mapping(cls, config)
    return config


class DelayLine:
    """Runs callables after a delay, in submission order, on one thread (latency emulation)."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._last_due = 0.0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            # Never earlier than the previous item: a link delivers in order.
            due = max(time.monotonic() + delay, self._last_due)
            self._last_due = due
            heapq.heappush(self._heap, (due, next(self._counter), fn))
            self._cond.notify()

    def clear(self) -> None:
        """Drop everything not yet delivered."""
        with self._cond:
            self._heap.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a failed publish must not kill the link
                logger.exception("delayed call failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=1.0)


class StandIn(abc.ABC):
    """Base of the stand-in nodes: a simulated robot behind ROS 2 topics, in this process.

    It owns a private ROS context (its own DDS participant, as a separate driver process would
    be), a physics thread stepping the simulation in real time and publishing a measurement per
    tick, and two delay lines: measurements reach the topics ``latency`` (plus up to ``jitter``)
    after they are taken, commands take effect ``command_latency`` after they arrive.

    A subclass's ``__init__`` builds its simulation, calls this one, then :meth:`_start`. It
    provides :meth:`_setup_node` (its publishers, subscriptions and ``~/reset`` service),
    :meth:`_step_physics` (one tick under the lock), :meth:`_publish` (queue the tick's
    messages through :meth:`_deliver`) and :meth:`_close_simulation`; command callbacks hand
    their effect to :meth:`_apply_later`, and a reset clears the delay lines.

    Args:
        config: The subclass's config dataclass; it has ``node_name``, ``seed``, ``latency``,
            ``jitter`` and ``command_latency`` fields.
        rate_hz: Rate of the physics loop, a measurement per tick.
        name: Prefix of the threads' names.
    """

    def __init__(self, config: Any, rate_hz: float, name: str) -> None:
        self.config = config
        self.episode_seed: int | None = None
        self.commands_received = 0
        self._rate_hz = rate_hz
        self._name = name
        self._rng = np.random.default_rng(config.seed)
        self._lock = threading.Lock()  # the simulation and what it is commanded
        self._running = threading.Event()
        self.node: Any = None

    # --- what a subclass provides ------------------------------------------------------------

    @abc.abstractmethod
    def _setup_node(self, node: Any) -> None:
        """Create the node's publishers, subscriptions and services."""

    @abc.abstractmethod
    def _step_physics(self) -> Any:
        """Advance the simulation by one tick (the lock is held); the tick's measurement."""

    @abc.abstractmethod
    def _publish(self, stamp_ns: int, measurement: Any) -> None:
        """Queue the measurement's messages, stamped ``stamp_ns``, through :meth:`_deliver`."""

    @abc.abstractmethod
    def _close_simulation(self) -> None:
        """Release the simulation."""

    # --- lifecycle --------------------------------------------------------------------------

    def _start(self, domain_id: int | None, first_episode: Callable[[], None]) -> None:
        """Start the delay lines and the runtime, make the first episode, then the node and the
        physics thread; on failure undo it all (the simulation included)."""
        self._outbox = DelayLine(f"{self._name}-outbox")
        self._inbox = DelayLine(f"{self._name}-inbox")
        self._ros = RosRuntime(domain_id)
        try:
            # The scene is ready before the node exists: the executor spins from the moment the
            # reset service does, and a client's reset must neither find the scene half made
            # nor be overwritten by this initial one.
            first_episode()
            self.node = self._ros.create_node(self.config.node_name)
            self._setup_node(self.node)
            self._running.set()
            self._physics = threading.Thread(
                target=self._physics_loop, name=f"{self._name}-physics", daemon=True
            )
            self._physics.start()
        except BaseException:
            self._ros.close()
            self._outbox.stop()
            self._inbox.stop()
            self._close_simulation()
            raise

    def _physics_loop(self) -> None:
        period = 1.0 / self._rate_hz
        tick = time.monotonic()
        while self._running.is_set():
            with self._lock:
                measurement = self._step_physics()
                # Stamped under the lock: a message stamped after a reset returned was
                # measured after it (the env relies on this to skip the previous episode).
                stamp_ns = self.node.get_clock().now().nanoseconds
            self._publish(stamp_ns, measurement)
            tick += period
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:  # fell far behind (a loaded machine): do not try to catch up
                tick = time.monotonic()

    def _deliver(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (the publishing of a measurement) after the link latency and jitter."""
        cfg = self.config
        delay = cfg.latency + (self._rng.uniform(0.0, cfg.jitter) if cfg.jitter else 0.0)
        self._outbox.submit(delay, fn)

    def _apply_later(self, fn: Callable[[], None]) -> None:
        """Count a received command and run ``fn`` (its effect) after the command latency."""
        self.commands_received += 1
        self._inbox.submit(self.config.command_latency, fn)

    def close(self) -> None:
        """Stop publishing and shut the node down, as a killed driver would (idempotent)."""
        if not self._running.is_set():
            return
        self._running.clear()
        self._physics.join(timeout=2.0)
        self._outbox.stop()
        self._inbox.stop()
        self._ros.close()
        self._close_simulation()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def standin_main(
    argv: Sequence[str] | None,
    standin_class: Callable[..., StandIn],
    config_class: type,
    option: tuple[str, Sequence[str]],
    config_example: str,
    describe: Callable[[Any], str],
) -> int:
    """The command line of a stand-in (``python -m hw.standin_<robot>``): run one until SIGINT
    or SIGTERM.

    Args:
        argv: The arguments (``None``: the process's).
        standin_class: The stand-in, built as ``standin_class(config_mapping, domain_id=...)``;
            its module names the program and its module docstring describes it.
        config_class: Its config dataclass, named in ``--help``.
        option: ``(field, choices)``: the config field with an option of its own (``--task``).
        config_example: An example of ``--config``'s JSON, for ``--help``.
        describe: What the log line calls the running stand-in, from its config.
    """
    module = sys.modules[standin_class.__module__]
    field, choices = option
    parser = argparse.ArgumentParser(
        # The spec's name: the module is __main__ when run with -m.
        prog=f"python -m {module.__spec__.name}",
        description=module.__doc__.split("\n\n")[0],
    )
    parser.add_argument(f"--{field}", choices=list(choices), default=None)
    parser.add_argument(
        "--config",
        default="{}",
        help=f"JSON object of {config_class.__name__} fields, e.g. '{config_example}'",
    )
    parser.add_argument("--domain-id", type=int, default=None, help="default: ROS_DOMAIN_ID")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    values = json.loads(args.config)
    if getattr(args, field) is not None:
        values[field] = getattr(args, field)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with standin_class(values, domain_id=args.domain_id) as standin:
        logging.getLogger(module.__spec__.name).info(
            "stand-in %s up as /%s; Ctrl-C stops it",
            describe(standin.config),
            standin.config.node_name,
        )
        stop.wait()
    return 0
