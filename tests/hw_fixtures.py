"""Shared set-up of the ROS 2 tests: skip without rclpy, and an isolated loopback ROS domain."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hw.ros import INSTALL_HINT, rclpy_available

#: Mark a test module as needing rclpy (skipped with the install hint otherwise).
needs_rclpy = pytest.mark.skipif(not rclpy_available(), reason=INSTALL_HINT)


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A ROS domain id of this test process, discovery limited to loopback.

    Derived from the process id, so concurrent test runs on one machine never hear each other;
    set in the environment for child processes (the deploy test's stand-in) as well.
    """
    domain = 101 + os.getpid() % 100
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # Jazzy and later
    if os.environ.get("ROS_DISTRO") in ("humble", "iron"):  # a sourced older install
        monkeypatch.setenv("ROS_LOCALHOST_ONLY", "1")
    yield domain


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 10 ms; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Keep what it is given (stand-ins, envs, spies: anything with ``close``) and close it at
    teardown, newest first, so an env is closed before the stand-in it talks to."""
    made: list[Any] = []

    def keep(obj: Any) -> Any:
        made.append(obj)
        return obj

    yield keep
    for obj in reversed(made):
        obj.close()


#: Seconds (five 100 Hz control periods) of a flight's timing that make it stalled by the
#: machine rather than flown by the code under test (see :func:`machine_stalls`).
STALL = 0.05
#: Flights a test makes at most while the machine stalls them (see :func:`machine_stalls`).
ATTEMPTS = 5


def machine_stalls(stamps_ns: Any, obs_latency: Any) -> list[str]:
    """Where a flight's recorded timing shows that the machine held it up (a loaded CI runner):
    consecutive observations stamped more than ``STALL`` apart (the stand-in's physics or the
    env's loop stalled, and the vehicle flew through the gap on its previous command) or an
    observation more than ``STALL`` old when the policy saw it.

    Such a flight says nothing of the code under test: 0.3 s of stall early in a flight took
    the x500 1.2 m off. Tests fly it again (a bounded number of times) and keep their
    assertions on the flight as they are.
    """
    import numpy as np

    gaps = np.diff(np.asarray(stamps_ns, dtype=np.int64)) * 1e-9
    ages = np.asarray(obs_latency, dtype=float)
    return [
        f"observation {i + 1}: {gaps[i] * 1e3:.0f} ms after the previous"
        for i in np.flatnonzero(gaps > STALL)
    ] + [f"observation {i}: {ages[i] * 1e3:.0f} ms old" for i in np.flatnonzero(ages > STALL)]
