"""Checks for config dataclasses whose errors name the key: ``algo.lr=0: must be > 0``.

Each method checks named fields of one config object and raises ``ValueError`` on the first
bad one, so a typo in a hydra override fails before any work starts, with the key to fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FieldChecks:
    """Validation of ``config``'s fields; errors read ``<prefix>.<name>=<value>: <what>``."""

    def __init__(self, config: Any, prefix: str = "algo") -> None:
        self.config = config
        self.prefix = prefix

    def fail(self, name: str, what: str) -> NoReturn:
        raise ValueError(f"{self.prefix}.{name}={getattr(self.config, name)!r}: {what}")

    def integers(self, *names: str, minimum: int = 1) -> None:
        for name in names:
            value = getattr(self.config, name)
            if not _is_int(value) or value < minimum:
                self.fail(name, f"must be an integer >= {minimum}")

    def numbers(self, *names: str) -> None:
        for name in names:
            if not _is_number(getattr(self.config, name)):
                self.fail(name, "must be a number")

    def positive(self, *names: str) -> None:
        self.numbers(*names)
        for name in names:
            if getattr(self.config, name) <= 0:
                self.fail(name, "must be > 0")

    def fraction(self, name: str) -> None:
        """A number in [0, 1)."""
        self.numbers(name)
        if not 0 <= getattr(self.config, name) < 1:
            self.fail(name, "must be in [0, 1)")

    def flags(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self.config, name), bool):
                self.fail(name, "must be true or false")

    def choice(self, name: str, options: Iterable[Any]) -> None:
        options = tuple(options)
        if getattr(self.config, name) not in options:
            self.fail(name, f"must be one of {options}")

    def widths(self, *names: str) -> None:
        """Non-empty lists of positive integer layer widths."""
        for name in names:
            widths = getattr(self.config, name)
            if not widths or any(not _is_int(w) or w < 1 for w in widths):
                self.fail(name, "must be a non-empty list of positive widths")
