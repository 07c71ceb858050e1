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
