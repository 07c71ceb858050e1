"""Checkpointer: a crash at any point of a save leaves a whole checkpoint, old or new."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from robolearn.training import Checkpointer


def write_step(step: int):
    """A checkpoint of two files that must agree (as a model and its replay buffer)."""

    def fill(directory: Path) -> None:
        (directory / "model").write_text(str(step))
        (directory / "buffer").write_text(str(step))

    return fill


def read(checkpointer: Checkpointer) -> tuple[str, str]:
    latest = checkpointer.latest()
    return (latest / "model").read_text(), (latest / "buffer").read_text()


def test_write_swaps_in_whole_checkpoints(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.latest() is None and checkpointer.load_state() is None
    checkpointer.write(write_step(1))
    checkpointer.write(write_step(2))
    assert read(checkpointer) == ("2", "2")
    assert sorted(p.name for p in checkpointer.dir.iterdir()) == ["latest"]


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.write(write_step(1))

    def crashing(directory: Path) -> None:
        (directory / "model").write_text("2")
        raise KeyboardInterrupt  # killed before the buffer was written

    with pytest.raises(KeyboardInterrupt):
        checkpointer.write(crashing)
    assert read(Checkpointer(tmp_path)) == ("1", "1")
    checkpointer.write(write_step(3))  # the next save clears the partial one
    assert read(checkpointer) == ("3", "3")


def test_a_crash_between_the_renames_falls_back_to_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.write(write_step(1))
    renames = []

    def replace_once(src, dst):
        renames.append((src, dst))
        if len(renames) == 2:  # the new checkpoint's rename: the process dies first
            raise KeyboardInterrupt
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.write(write_step(2))
    monkeypatch.undo()
    assert not checkpointer.policy_dir.exists()  # the old one moved aside, the new one not in
    assert read(Checkpointer(tmp_path)) == ("1", "1")
