"""FieldChecks: each check rejects what it should, naming the key and the value."""

from __future__ import annotations

import dataclasses
import re

import pytest

from robolearn.config_checks import FieldChecks


@dataclasses.dataclass
class Config:
    steps: object = 10
    lr: object = 1e-3
    ratio: object = 0.1
    flag: object = True
    mode: object = "a"
    widths: object = (8, 8)


@pytest.mark.parametrize(
    ("field", "value", "check", "message"),
    [
        ("steps", 0, lambda c: c.integers("steps"), "x.steps=0: must be an integer >= 1"),
        ("steps", True, lambda c: c.integers("steps"), "must be an integer >= 1"),
        ("steps", -1, lambda c: c.integers("steps", minimum=0), "must be an integer >= 0"),
        ("lr", "fast", lambda c: c.positive("lr"), "x.lr='fast': must be a number"),
        ("lr", 0.0, lambda c: c.positive("lr"), "x.lr=0.0: must be > 0"),
        ("ratio", 1.0, lambda c: c.fraction("ratio"), "must be in [0, 1)"),
        ("flag", "yes", lambda c: c.flags("flag"), "x.flag='yes': must be true or false"),
        ("mode", "c", lambda c: c.choice("mode", ("a", "b")), "must be one of ('a', 'b')"),
        ("widths", (), lambda c: c.widths("widths"), "must be a non-empty list"),
        ("widths", (8, 0), lambda c: c.widths("widths"), "must be a non-empty list"),
    ],
)
def test_each_check_rejects_and_names_the_key(field, value, check, message):
    good = FieldChecks(Config(), prefix="x")
    check(good)  # the defaults pass
    bad = FieldChecks(Config(**{field: value}), prefix="x")
    with pytest.raises(ValueError, match=re.escape(message)):
        check(bad)
