"""Run reports: the MP4 writer."""

from __future__ import annotations

import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from robolearn.report import write_video


def test_episodes_become_one_mp4_with_gaps(tmp_path):
    episodes = [np.full((5, 16, 16, 3), 200, np.uint8), np.full((3, 16, 16, 3), 100, np.uint8)]
    path = write_video(tmp_path / "run.mp4", episodes, fps=8)
    frames = imageio.mimread(path)
    assert len(frames) == 5 + 2 + 3  # a black gap of fps // 4 frames between the episodes
    assert frames[5].max() < 20 and abs(int(frames[-1].mean()) - 100) < 10


def test_a_missing_ffmpeg_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match="pip install imageio-ffmpeg"):
        write_video(tmp_path / "run.mp4", [np.zeros((2, 16, 16, 3), np.uint8)], fps=8)
