"""URDF of the Panda arm and gripper, generated from the numbers the MuJoCo model is built from.

Joint ``i`` sits at ``(a, 0, 0) + RotX(alpha) (0, 0, d)`` in link ``i-1`` with orientation
``RotX(alpha)`` and rotates about its local z axis (the modified DH convention of
:mod:`robolearn.robots.panda`), exactly as the MJCF of :mod:`sims.arm.model` places its bodies,
so PyBullet's tool centre point and :meth:`ArmIK.fk` agree to numerical precision.

Only the hand and the fingers collide (the MJCF gives the arm links no contacts either); the
links carry masses close to the MuJoCo model's, so gravity loads the joint servos similarly.
"""

from __future__ import annotations

import numpy as np

from robolearn.robots.panda import (
    DH_ALPHA,
    FINGER_JOINT_NAMES,
    FLANGE_D,
    GRIPPER_MAX_OPENING,
    HAND_YAW,
    JOINT_LOWER,
    JOINT_NAMES,
    JOINT_UPPER,
    TCP_OFFSET,
    joint_offsets,
)

#: Link masses in kg (link0 .. link7), rounded from the MuJoCo model's density-derived masses.
LINK_MASSES = (5.4, 0.96, 4.5, 1.9, 5.4, 0.56, 1.16, 0.93)
HAND_MASS = 0.6
FINGER_MASS = 0.05
#: Height of the fingers' slide joints above the hand's mounting face (as in the MJCF).
FINGER_Z = 0.0584
#: Half sizes of a finger's box (as in the MJCF): its tip reaches 8 mm beyond the TCP.
FINGER_HALF = (0.011, 0.007, 0.5 * (TCP_OFFSET + 0.008 - FINGER_Z))
#: Joint limits' effort and velocity (the Panda's datasheet values, joints 1..7).
JOINT_EFFORT = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
JOINT_VELOCITY = (2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61)
#: Name of the fixed link at the tool centre point.
TCP_LINK = "panda_tcp"


def _vec(values: np.ndarray | tuple[float, ...]) -> str:
    return " ".join(f"{float(v):.10g}" for v in values)


def _inertial(mass: float, radius: float) -> str:
    """A solid sphere's inertia: enough for position-servoed links, whose shape is cosmetic."""
    i = 0.4 * mass * radius**2
    return (
        f'<inertial><mass value="{mass}"/>'
        f'<inertia ixx="{i:.6g}" iyy="{i:.6g}" izz="{i:.6g}" ixy="0" ixz="0" iyz="0"/></inertial>'
    )


def _box(size: tuple[float, ...], xyz: tuple[float, ...], collide: bool) -> str:
    geometry = f'<geometry><box size="{_vec(2 * np.asarray(size))}"/></geometry>'
    origin = f'<origin xyz="{_vec(xyz)}"/>'
    visual = f"<visual>{origin}{geometry}</visual>"
    return visual + (f"<collision>{origin}{geometry}</collision>" if collide else "")


def build_urdf() -> str:
    """The URDF text of the Panda; ``panda_link0`` is the base (the loader fixes it)."""
    offsets = joint_offsets()
    parts = ['<?xml version="1.0"?>', '<robot name="panda">']
    parts.append(
        f'<link name="panda_link0">{_inertial(LINK_MASSES[0], 0.08)}'
        '<visual><origin xyz="0 0 0.08"/><geometry><cylinder radius="0.08" length="0.16"/>'
        "</geometry></visual></link>"
    )
    for i, name in enumerate(JOINT_NAMES):
        link = f"panda_link{i + 1}"
        parts.append(
            f'<link name="{link}">{_inertial(LINK_MASSES[i + 1], 0.06)}'
            '<visual><geometry><sphere radius="0.06"/></geometry></visual></link>'
        )
        parts.append(
            f'<joint name="{name}" type="revolute"><parent link="panda_link{i}"/>'
            f'<child link="{link}"/><origin xyz="{_vec(offsets[i])}" '
            f'rpy="{DH_ALPHA[i]:.10g} 0 0"/><axis xyz="0 0 1"/>'
            f'<limit lower="{JOINT_LOWER[i]}" upper="{JOINT_UPPER[i]}" '
            f'effort="{JOINT_EFFORT[i]}" velocity="{JOINT_VELOCITY[i]}"/></joint>'
        )
    # The hand: mounted FLANGE_D beyond joint 7, rotated HAND_YAW about the flange axis.
    parts.append(
        f'<link name="panda_hand">{_inertial(HAND_MASS, 0.05)}'
        f"{_box((0.025, 0.09, 0.025), (0.0, 0.0, 0.03), collide=True)}</link>"
    )
    parts.append(
        '<joint name="panda_hand_joint" type="fixed"><parent link="panda_link7"/>'
        f'<child link="panda_hand"/><origin xyz="0 0 {FLANGE_D}" rpy="0 0 {HAND_YAW:.10g}"/>'
        "</joint>"
    )
    parts.append(f'<link name="{TCP_LINK}">{_inertial(0.001, 0.001)}</link>')
    parts.append(
        f'<joint name="panda_tcp_joint" type="fixed"><parent link="panda_hand"/>'
        f'<child link="{TCP_LINK}"/><origin xyz="0 0 {TCP_OFFSET}"/></joint>'
    )
    # Fingers slide outwards along +-y of the hand; a finger's inner face sits at its joint
    # position, so the opening is the sum of the two finger joints.
    half_open = GRIPPER_MAX_OPENING / 2
    for name, sign in zip(FINGER_JOINT_NAMES, (1.0, -1.0)):
        link = name.replace("joint", "link")
        parts.append(
            f'<link name="{link}">{_inertial(FINGER_MASS, 0.01)}'
            f"{_box(FINGER_HALF, (0.0, sign * FINGER_HALF[1], FINGER_HALF[2]), collide=True)}"
            "</link>"
        )
        parts.append(
            f'<joint name="{name}" type="prismatic"><parent link="panda_hand"/>'
            f'<child link="{link}"/><origin xyz="0 0 {FINGER_Z}"/>'
            f'<axis xyz="0 {sign:g} 0"/><limit lower="0" upper="{half_open}" effort="30" '
            'velocity="0.2"/></joint>'
        )
    parts.append("</robot>")
    return "\n".join(parts)
