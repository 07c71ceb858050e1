"""MJCF builder of the Panda arm scene: arm, parallel gripper, table, block and goal marker.

The arm's bodies are generated from the same modified DH parameters as the numpy kinematics in
:mod:`robolearn.robots.panda`: body ``i`` sits at ``(a, 0, 0) + RotX(alpha) (0, 0, d)`` in body
``i-1`` with orientation ``RotX(alpha)`` and a hinge about its local z axis, so MuJoCo's tool
centre point site and :meth:`ArmIK.fk` agree to numerical precision.
"""

from __future__ import annotations

import math
import os

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402 - MUJOCO_GL must be set before mujoco is imported

from robolearn.robots.panda import (
    DH_ALPHA,
    FLANGE_D,
    GRIPPER_MAX_OPENING,
    HAND_YAW,
    JOINT_LOWER,
    JOINT_NAMES,
    JOINT_UPPER,
    TCP_OFFSET,
    joint_offsets,
)

#: Physics timestep in seconds; the env runs ``round(1 / (control_hz * TIMESTEP))`` substeps.
TIMESTEP = 0.002
#: Half edge of the cubic block (a 4 cm cube).
BLOCK_HALF = 0.02
#: Cameras: name -> (position, look-at point).
CAMERAS = {
    "front": ((1.25, 0.0, 0.55), (0.45, 0.0, 0.1)),
    "side": ((0.5, -0.85, 0.45), (0.5, 0.0, 0.1)),
    "top": ((0.4, 0.0, 1.1), (0.5, 0.0, 0.0)),
    # A three-quarter view of the whole arm and table, for videos (``render_camera``).
    "overview": ((1.45, 0.95, 0.95), (0.35, 0.0, 0.2)),
}

# Position-servo gains per joint: stiff enough to track a 4 cm-per-step target within a control
# period, critically damped-ish through kv; gravity is compensated by body gravcomp.
_KP = (8000.0, 8000.0, 6000.0, 6000.0, 2400.0, 2400.0, 1600.0)
_KV = (240.0, 240.0, 160.0, 160.0, 50.0, 50.0, 30.0)
_LINK_RADIUS = (0.06, 0.06, 0.055, 0.055, 0.05, 0.045, 0.04)
_FINGER_KP = 400.0


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return " ".join(f"{float(v):.10g}" for v in values)


def _quat_x(angle: float) -> str:
    return _fmt((math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0))


def _xyaxes(pos: tuple[float, ...], target: tuple[float, ...]) -> str:
    """Camera x and y axes (MJCF ``xyaxes``) for a camera at ``pos`` looking at ``target``."""
    forward = np.subtract(target, pos)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return _fmt(np.concatenate([right, up]))


def _link_geoms(i: int, child_pos: np.ndarray, a_next: float) -> str:
    """Capsules of link ``i`` from its joint to the next joint (through the ``a`` offset)."""
    r = _LINK_RADIUS[i]
    geoms = [f'<geom class="link" type="sphere" size="{r * 1.1:.4g}"/>']
    corner = np.array([a_next, 0.0, 0.0])
    # The DH offset of the next body is an `a` step along x, then a `d` step: one capsule each.
    for start, end in ((np.zeros(3), corner), (corner, child_pos)):
        if np.linalg.norm(end - start) > 1e-6:
            geoms.append(
                f'<geom class="link" type="capsule" size="{r:.4g}" '
                f'fromto="{_fmt(start)} {_fmt(end)}"/>'
            )
    return "\n".join(geoms)


def build_mjcf(with_block: bool = True, fast_render: bool = True, offscreen_size: int = 256) -> str:
    """The scene's MJCF text.

    Args:
        with_block: Include the free-floating block (push and pick-place; not reach).
        fast_render: Shadows, reflections and multisampling off (the env's default). False
            keeps MuJoCo's default visual quality plus a reflective table, for comparison.
        offscreen_size: Offscreen framebuffer size; must cover the largest rendered image.
    """
    offset_pos = joint_offsets()
    # Joint 7 to the flange is a pure z offset.
    child_pos = [offset_pos[i + 1] for i in range(6)] + [np.array([0.0, 0.0, FLANGE_D])]
    a_next = [offset_pos[i + 1][0] for i in range(6)] + [0.0]

    hand_quat = _fmt((math.cos(HAND_YAW / 2), 0.0, 0.0, math.sin(HAND_YAW / 2)))
    finger_z = 0.0584
    finger_half = (0.011, 0.007, 0.5 * (TCP_OFFSET + 0.008 - finger_z))
    half_open = GRIPPER_MAX_OPENING / 2
    hand = f"""
<body name="hand" pos="0 0 {FLANGE_D}" quat="{hand_quat}" gravcomp="1">
  <geom name="hand" type="box" pos="0 0 0.03" size="0.025 0.09 0.025" rgba="0.9 0.9 0.9 1"
        contype="1" conaffinity="1" mass="0.6"/>
  <site name="tcp" pos="0 0 {TCP_OFFSET}" size="0.005" rgba="1 0 0 0.5" group="4"/>
  <body name="finger_left" pos="0 0 {finger_z}" gravcomp="1">
    <joint name="finger_left" type="slide" axis="0 1 0" range="0 {half_open}" damping="2"/>
    <geom name="finger_left" class="finger" pos="0 {finger_half[1]} {finger_half[2]}"
          size="{_fmt(finger_half)}"/>
  </body>
  <body name="finger_right" pos="0 0 {finger_z}" gravcomp="1">
    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {half_open}" damping="2"/>
    <geom name="finger_right" class="finger" pos="0 {-finger_half[1]} {finger_half[2]}"
          size="{_fmt(finger_half)}"/>
  </body>
</body>"""

    body = hand
    for i in reversed(range(7)):
        pos = offset_pos[i]
        body = f"""
<body name="link{i + 1}" pos="{_fmt(pos)}" quat="{_quat_x(DH_ALPHA[i])}" gravcomp="1">
  <joint name="{JOINT_NAMES[i]}" range="{JOINT_LOWER[i]} {JOINT_UPPER[i]}"/>
  {_link_geoms(i, child_pos[i], a_next[i])}
  {body}
</body>"""

    actuators = "\n".join(
        f'<position name="{JOINT_NAMES[i]}" joint="{JOINT_NAMES[i]}" kp="{_KP[i]}" kv="{_KV[i]}" '
        f'ctrlrange="{JOINT_LOWER[i]} {JOINT_UPPER[i]}"/>'
        for i in range(7)
    )
    cameras = "\n".join(
        f'<camera name="{name}" pos="{_fmt(pos)}" xyaxes="{_xyaxes(pos, target)}" fovy="45"/>'
        for name, (pos, target) in CAMERAS.items()
    )
    block = (
        f"""
<body name="block" pos="0.5 0 {BLOCK_HALF}">
  <freejoint name="block"/>
  <geom name="block" type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" mass="0.1"
        rgba="0.85 0.2 0.15 1" contype="1" conaffinity="1" condim="4"
        friction="1 0.01 0.0001"/>
</body>"""
        if with_block
        else ""
    )
    if fast_render:
        quality = '<quality shadowsize="0" offsamples="0"/>'
        table_material = '<material name="table" rgba="0.55 0.45 0.35 1"/>'
        light = (
            '<light name="top" pos="0.4 0 1.5" dir="0 0 -1" directional="true" castshadow="false"/>'
        )
    else:
        # MuJoCo's defaults (4096 shadow map, 4x multisampling) plus a reflective table.
        quality = ""
        table_material = '<material name="table" rgba="0.55 0.45 0.35 1" reflectance="0.3"/>'
        light = '<light name="top" pos="0.4 0 1.5" dir="0 0 -1" directional="true"/>'

    return f"""
<mujoco model="panda_scene">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic"/>
  <visual>
    <global offwidth="{offscreen_size}" offheight="{offscreen_size}"/>
    {quality}
    <headlight ambient="0.4 0.4 0.4" diffuse="0.5 0.5 0.5"/>
  </visual>
  <asset>
    {table_material}
  </asset>
  <default>
    <joint armature="0.1" damping="1"/>
    <default class="link">
      <geom contype="0" conaffinity="0" rgba="0.92 0.92 0.95 1" density="800"/>
    </default>
    <default class="finger">
      <geom type="box" contype="1" conaffinity="1" condim="4" friction="1.5 0.02 0.0001"
            rgba="0.25 0.25 0.25 1" mass="0.05" solref="0.01 1"/>
    </default>
  </default>
  <worldbody>
    {light}
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0.3 0.32 0.35 1"
          contype="0" conaffinity="0"/>
    <geom name="table" type="box" pos="0.4 0 -0.025" size="0.6 0.7 0.025" material="table"
          contype="1" conaffinity="1"/>
    <body name="link0">
      <geom class="link" type="cylinder" pos="0 0 0.08" size="0.08 0.08"/>
      <geom class="link" type="capsule" size="0.06" fromto="0 0 0.1 0 0 {offset_pos[0][2]}"/>
      {body}
    </body>
    {block}
    <body name="goal" mocap="true" pos="0.5 0 0.2">
      <geom name="goal" type="sphere" size="0.02" rgba="0.1 0.9 0.2 0.5" contype="0"
            conaffinity="0"/>
    </body>
    {cameras}
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    {actuators}
    <position name="finger_left" joint="finger_left" kp="{_FINGER_KP}" kv="10"
              ctrlrange="0 {half_open}" forcerange="-30 30"/>
    <position name="finger_right" joint="finger_right" kp="{_FINGER_KP}" kv="10"
              ctrlrange="0 {half_open}" forcerange="-30 30"/>
  </actuator>
</mujoco>
"""


def load_model(
    with_block: bool = True, fast_render: bool = True, offscreen_size: int = 256
) -> mujoco.MjModel:
    """Compile the scene into a ``mujoco.MjModel`` (see :func:`build_mjcf` for the arguments)."""
    return mujoco.MjModel.from_xml_string(build_mjcf(with_block, fast_render, offscreen_size))
