"""What a run shows a person: MP4 videos, PNG plots and a JSON + markdown report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.rollout import RolloutResult


def write_video(path: Path, videos: Sequence[np.ndarray], fps: float) -> Path | None:
    """Write episodes one after another into one MP4 (H.264); a short black gap separates them."""
    if not videos:
        return None
    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg  # noqa: F401 - imageio's MP4 writer; without it imageio picks another
    except ImportError as error:
        raise RuntimeError(f"writing {path} needs FFmpeg: pip install imageio-ffmpeg") from error

    gap = [np.zeros_like(videos[0][0])] * max(1, int(fps // 4))
    frames: list[np.ndarray] = []
    for i, video in enumerate(videos):
        if i:
            frames.extend(gap)
        frames.extend(video)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, codec="libx264", quality=7, macro_block_size=1)
    return path


def plot_rollout(path: Path, result: RolloutResult, title: str) -> Path:
    """Per-episode return (coloured by success) and the episode-length histogram."""
    plt = pyplot()
    returns = np.array([e.episode_return for e in result.episodes])
    lengths = np.array([e.length for e in result.episodes])
    success = np.array([e.success for e in result.episodes])
    fig, (ax_ret, ax_len) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = np.where(success, "tab:green", "tab:red")
    ax_ret.bar(np.arange(len(returns)), returns, color=colors)
    ax_ret.set_xlabel("episode")
    ax_ret.set_ylabel("return")
    ax_ret.set_title("return per episode (green = success)")
    bins = np.arange(lengths.min(), lengths.max() + 2) if len(lengths) else 10
    ax_len.hist(
        [lengths[success], lengths[~success]],
        bins=bins,
        stacked=True,
        color=["tab:green", "tab:red"],
        label=["success", "failure"],
    )
    ax_len.set_xlabel("episode length (steps)")
    ax_len.set_ylabel("episodes")
    ax_len.legend()
    fig.suptitle(f"{title}: success {result.success_rate:.0%} over {len(returns)} episodes")
    return save_figure(fig, path)


def plot_curves(
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    ylabel: str,
    log_y: bool = False,
    xlabel: str = "step",
) -> Path:
    """Line plot of named (x, y) curves, e.g. training and validation loss against steps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (x, y) in curves.items():
        if len(x):
            ax.plot(x, y, label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def write_report(
    run_dir: Path, title: str, summary: dict[str, Any], highlights: dict[str, Any]
) -> tuple[Path, Path]:
    """``report.json`` (everything) and ``report.md`` (a title, the highlights, the files)."""
    json_path = run_dir / "report.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in highlights.items()]
    files = sorted(
        p.relative_to(run_dir) for p in run_dir.glob("*") if p.suffix in {".mp4", ".png"}
    )
    if files:
        lines += ["", "Files: " + ", ".join(f"[{f}]({f})" for f in files)]
    md_path = run_dir / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG (creating folders) and close a matplotlib figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
