"""Wall time and result of the README's main job (`robolearn train`, default config).

The issue asks for record -> train BC -> eval on arm push within 5 minutes on 2 CPU cores.
Usage: python -m benchmarks.bench_main_job [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import table, write_section

LIMIT_S = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    robolearn = shutil.which("robolearn") or str(Path(sys.executable).parent / "robolearn")
    rows, times = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run(
                [robolearn, "train", f"seed={i}"], cwd=tmp, check=True, capture_output=True
            )
            wall = time.perf_counter() - start
            report = json.loads(next(Path(tmp).glob("runs/train/*/report.json")).read_text())
        times.append(wall)
        rows.append([i, f"{wall:.0f}", f"{report['success_rate']:.0%}", report["demos"]])
        print(rows[-1], flush=True)
    median = statistics.median(times)
    body = (
        "`robolearn train` with the default config (200 clean expert demos on arm push, BC MLP "
        "4000 steps, 50 evaluation episodes with video, plot and report), from an empty folder, "
        "with seed=0..N-1.\n\n"
        + table(["seed", "wall s", "BC success (50 eps)", "demos"], rows)
        + f"\n\nMedian wall time {median:.0f} s = {median / LIMIT_S:.2f}x of the 300 s limit."
    )
    write_section("main-job", "Main job: record -> train BC -> eval on arm push", body)


if __name__ == "__main__":
    main()
