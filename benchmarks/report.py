"""Shared helpers for benchmark scripts: timing and writing results into BENCHMARKS.md.

Each benchmark owns one section of BENCHMARKS.md, delimited by HTML comment markers, and
rewrites only that section, so benchmarks can be run one at a time in any order.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """One line describing this machine: CPU model, core count, Python and torch versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return ", ".join(parts)


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section ``key`` of BENCHMARKS.md with ``body``.

    The section header records the command that produced it, the machine, date and commit.
    """
    script = Path(sys.argv[0])
    # Benchmarks run as modules (python -m benchmarks.<name>) so that `benchmarks` imports.
    target = f"-m benchmarks.{script.stem}" if script.parent.name == "benchmarks" else str(script)
    command = " ".join(["python", target, *(shlex.quote(a) for a in sys.argv[1:])])
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"<!-- {key}:begin -->\n## {title}\n\n"
        f"- command: `{command}`\n- machine: {machine()}\n- date: {stamp}, commit {commit()}\n\n"
        f"{body.strip()}\n<!-- {key}:end -->\n"
    )
    doc = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n\n"
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        doc = head + text + ("\n" + tail if tail else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    BENCHMARKS_MD.write_text(doc)
    print(text)


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
