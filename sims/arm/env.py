"""MuJoCo Panda arm tasks: reach, push and pick-and-place.

One env class family: :class:`ArmEnv` holds the simulation, the shared IK action layer
(:class:`robolearn.robots.panda.ArmIK`), rendering and domain randomisation; the task
subclasses only choose the scene, how resets sample object and goal, and reward and success.

Observations are a ``Dict`` of float32 boxes: ``joint_pos`` (7), ``ee_pos`` (3, tool centre
point in the base frame, which is the world frame here), ``gripper`` (1, finger opening in m),
``object_pos`` (3, push and pick-place), ``goal_pos`` (3), and ``image`` (H, W, 3 uint8) when
built with ``image=True``. Actions are ``Box(-1, 1, (4,))``: TCP translation delta and gripper,
or ``(5,)`` with a yaw delta when ``use_yaw=True`` (see :data:`PANDA_SPEC.action_meaning`).
"""

from __future__ import annotations

import abc
import atexit
import dataclasses
import math
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402 - MUJOCO_GL must be set before mujoco is imported

from robolearn.robots.panda import (  # noqa: E402
    GRIPPER_MAX_OPENING,
    HOME_QPOS,
    JOINT_LOWER,
    JOINT_UPPER,
    PANDA_SPEC,
    PANDA_YAW_SPEC,
    ArmIK,
)
from robolearn.robots.spec import RobotSpec  # noqa: E402
from sims.arm.model import BLOCK_HALF, CAMERAS, TIMESTEP, load_model  # noqa: E402

Box2 = tuple[tuple[float, ...], tuple[float, ...]]


@dataclasses.dataclass(frozen=True)
class ArmRandomization:
    """Domain randomisation knobs, sampled once per ``reset``.

    Attributes:
        object_mass: Block mass range in kg (its inertia scales with it).
        object_friction: Block sliding friction coefficient range.
        object_xy: ``((x_lo, y_lo), (x_hi, y_hi))`` of the block's initial position on the
            table; ``None`` uses the task's default.
        goal: ``((x_lo, y_lo, z_lo), (x_hi, y_hi, z_hi))`` of the goal; ``None`` uses the
            task's default (push goals always lie on the table, so their z is ignored).
        joint_noise: Half-width of the uniform noise added to the home posture, in rad.
        camera_pos_noise: Half-width of the uniform noise on each camera position axis, in m.
        camera_angle_noise: Half-width of the uniform noise on each camera rotation axis, in rad.
    """

    object_mass: tuple[float, float] = (0.05, 0.2)
    object_friction: tuple[float, float] = (0.8, 1.2)
    object_xy: Box2 | None = None
    goal: Box2 | None = None
    joint_noise: float = 0.02
    camera_pos_noise: float = 0.0
    camera_angle_noise: float = 0.0


@dataclasses.dataclass(frozen=True)
class ArmScene:
    """An episode's initial state, drawn by :meth:`ArmEnv.sample_scene`.

    Attributes:
        joint_pos: Initial arm joint positions (7,); the gripper starts fully open.
        object_xy: The block's initial centre on the table (2,), ``None`` without a block.
        object_mass: The block's mass in kg, ``None`` without a block.
        object_friction: The block's sliding friction coefficient, ``None`` without a block.
        goal: The goal position (3,).
    """

    joint_pos: np.ndarray
    object_xy: np.ndarray | None
    object_mass: float | None
    object_friction: float | None
    goal: np.ndarray


def observation_space(has_object: bool, image_size: int | None = None) -> gym.spaces.Dict:
    """The arm tasks' observation space (shared with the ROS 2 hardware env, :mod:`hw`).

    Args:
        has_object: Whether the task has the block (adds ``object_pos``).
        image_size: Side of the ``image`` entry in pixels; ``None`` for no image.
    """
    far = np.full(3, 3.0, dtype=np.float32)
    spaces = {
        "joint_pos": gym.spaces.Box(
            (JOINT_LOWER - 0.1).astype(np.float32), (JOINT_UPPER + 0.1).astype(np.float32)
        ),
        "ee_pos": gym.spaces.Box(-far, far),
        "gripper": gym.spaces.Box(-0.01, GRIPPER_MAX_OPENING + 0.01, (1,), np.float32),
    }
    if has_object:
        spaces["object_pos"] = gym.spaces.Box(-far, far)
    spaces["goal_pos"] = gym.spaces.Box(-far, far)
    if image_size is not None:
        spaces["image"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
    return gym.spaces.Dict(spaces)


def action_space(use_yaw: bool = False) -> gym.spaces.Box:
    """The arm tasks' action space: TCP delta and gripper (and a yaw delta with ``use_yaw``)."""
    return gym.spaces.Box(-1.0, 1.0, (5 if use_yaw else 4,), np.float32)


# Envs with open renderers. Their GL contexts are freed by an atexit hook registered after the
# first renderer exists, so it runs before MuJoCo's own EGL teardown hook (atexit runs in
# reverse order); freeing them later, during interpreter shutdown, prints EGL errors for every
# env a script did not close.
_OPEN_ENVS: weakref.WeakSet[ArmEnv] = weakref.WeakSet()


def _close_open_envs() -> None:
    for env in list(_OPEN_ENVS):
        env.close()


_RENDER_FLAGS_OFF = (
    mujoco.mjtRndFlag.mjRND_SHADOW,
    mujoco.mjtRndFlag.mjRND_REFLECTION,
    mujoco.mjtRndFlag.mjRND_SKYBOX,
)


class ArmEnv(gym.Env, abc.ABC):
    """Base of the Panda arm tasks (use a task subclass).

    Args:
        image: Add a camera image to the observations.
        image_size: Side of the square observation image in pixels.
        camera: Camera for observation images and ``render``: ``"front"``, ``"side"``, ``"top"``.
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns a ``render_size`` image).
        render_size: Side of the square ``render()`` image in pixels.
        render_camera: Camera of ``render()`` (videos); ``camera`` is the image observation's.
        terminate_on_success: End the episode (``terminated=True``) when the task succeeds.
        use_yaw: Five-dimensional actions with a gripper yaw delta.
        randomization: Domain randomisation, an :class:`ArmRandomization` or a mapping of its
            fields; ``None`` uses the defaults.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(PANDA_SPEC.control_hz)}

    #: Task name, as the experts name it.
    task: str = ""
    #: Whether the scene has the block.
    has_object: bool = True
    #: Default initial block xy box and goal box (see :class:`ArmRandomization`).
    default_object_xy: Box2 = ((0.4, -0.15), (0.6, 0.15))
    default_goal: Box2 = ((0.3, -0.25, 0.05), (0.65, 0.25, 0.35))
    #: Distance (m) between the tracked point and the goal that counts as success.
    success_threshold: float = 0.04

    def __init__(
        self,
        image: bool = False,
        image_size: int = 84,
        camera: str = "front",
        render_mode: str | None = None,
        render_size: int = 256,
        render_camera: str = "overview",
        terminate_on_success: bool = True,
        use_yaw: bool = False,
        randomization: ArmRandomization | Mapping[str, Any] | None = None,
    ) -> None:
        if camera not in CAMERAS:
            raise ValueError(f"camera must be one of {sorted(CAMERAS)}, got {camera!r}")
        if render_camera not in CAMERAS:
            raise ValueError(
                f"render_camera must be one of {sorted(CAMERAS)}, got {render_camera!r}"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if randomization is None:
            randomization = ArmRandomization()
        elif isinstance(randomization, Mapping):
            randomization = ArmRandomization(**randomization)
        self.randomization = randomization
        self.image = image
        self.image_size = image_size
        self.camera = camera
        self.render_mode = render_mode
        self.render_size = render_size
        self.terminate_on_success = terminate_on_success
        self.use_yaw = use_yaw
        self.robot_spec: RobotSpec = PANDA_YAW_SPEC if use_yaw else PANDA_SPEC
        self.ik = ArmIK(use_yaw=use_yaw)

        self.model = load_model(
            with_block=self.has_object, offscreen_size=max(image_size, render_size)
        )
        self.data = mujoco.MjData(self.model)
        self.nstep = round(1.0 / (self.robot_spec.control_hz * TIMESTEP))
        # Views into MuJoCo's buffers, fetched once so step() does no name lookups.
        self._qpos_arm = self.data.qpos[:7]
        self._ctrl = self.data.ctrl
        self._tcp_pos = self.data.site("tcp").xpos
        self._goal_mocap = self.model.body("goal").mocapid[0]
        self._camera_id = self.model.camera(camera).id
        self._render_camera_id = self.model.camera(render_camera).id
        self._nominal_cam_pos = self.model.cam_pos.copy()
        self._nominal_cam_quat = self.model.cam_quat.copy()
        if self.has_object:
            block_body = self.model.body("block")
            self._block_body = block_body.id
            self._block_geom = self.model.geom("block").id
            adr = self.model.joint("block").qposadr[0]
            self._block_qpos = self.data.qpos[adr : adr + 7]
            if adr != 9:  # _observe slices the block position out of qpos[:12]
                raise ValueError(f"block joint at qpos[{adr}], observations expect qpos[9]")
            self._nominal_mass = float(block_body.mass[0])
            self._nominal_inertia = block_body.inertia.copy()
        # The observed qpos prefix: arm (7), fingers (2), then the block position (3) if any.
        self._qpos_obs = self.data.qpos[: 12 if self.has_object else 9]
        self._goal = np.zeros(3)
        self._goal_obs = np.zeros(3, dtype=np.float32)
        self._renderers: dict[int, mujoco.Renderer] = {}

        self.observation_space = observation_space(self.has_object, image_size if image else None)
        self.action_space = action_space(use_yaw)

    # --- task hooks -------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def _sample_task(
        cls, rng: np.random.Generator, rand: ArmRandomization
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """The block's initial xy (``None`` without a block) and the goal position."""

    @classmethod
    @abc.abstractmethod
    def evaluate(cls, obs: Mapping[str, np.ndarray]) -> tuple[float, bool]:
        """Reward and success of an observation (a function of the observation only, so the
        hardware env of the same task scores episodes identically)."""

    @classmethod
    def sample_scene(
        cls,
        rng: np.random.Generator,
        rand: ArmRandomization,
        perturb_camera: Callable[[np.random.Generator], None] | None = None,
    ) -> ArmScene:
        """Draw an episode's initial state from ``rng``, as ``reset`` does.

        A classmethod, so other engines (the PyBullet stand-in hardware) start an episode of a
        given seed from the very same state. ``perturb_camera`` draws the camera noise at its
        place in the random stream (MuJoCo only; the numbers after it depend on it).
        """
        noise = rand.joint_noise
        q = np.clip(HOME_QPOS + rng.uniform(-noise, noise, 7), JOINT_LOWER, JOINT_UPPER)
        if perturb_camera is not None:
            perturb_camera(rng)
        mass = friction = None
        if cls.has_object:
            mass = float(rng.uniform(*rand.object_mass))
            friction = float(rng.uniform(*rand.object_friction))
        object_xy, goal = cls._sample_task(rng, rand)
        return ArmScene(q, object_xy, mass, friction, goal)

    # --- gymnasium API ----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        rand = self.randomization
        model, data = self.model, self.data
        mujoco.mj_resetData(model, data)
        model.cam_pos[:] = self._nominal_cam_pos
        model.cam_quat[:] = self._nominal_cam_quat
        camera_noise = rand.camera_pos_noise > 0 or rand.camera_angle_noise > 0
        scene = self.sample_scene(rng, rand, self._perturb_camera if camera_noise else None)

        data.qpos[:7] = scene.joint_pos
        data.ctrl[:7] = scene.joint_pos
        data.qpos[7:9] = GRIPPER_MAX_OPENING / 2
        data.ctrl[7:9] = GRIPPER_MAX_OPENING / 2
        if self.has_object:
            model.body_mass[self._block_body] = scene.object_mass
            model.body_inertia[self._block_body] = self._nominal_inertia * (
                scene.object_mass / self._nominal_mass
            )
            model.geom_friction[self._block_geom, 0] = scene.object_friction
            x, y = scene.object_xy
            self._block_qpos[:] = (x, y, BLOCK_HALF, 1.0, 0.0, 0.0, 0.0)
        self._goal = scene.goal
        data.mocap_pos[self._goal_mocap] = self._goal
        self._goal_obs = self._goal.astype(np.float32)
        mujoco.mj_forward(model, data)

        obs = self._observe()
        _, success = self.evaluate(obs)
        return obs, {"success": success}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        q_target, opening = self.ik.action_to_targets(self._qpos_arm, action)
        ctrl = self._ctrl
        ctrl[:7] = q_target
        ctrl[7] = ctrl[8] = 0.5 * opening
        mujoco.mj_step(self.model, self.data, nstep=self.nstep)
        # mj_step leaves positions computed before its last integration; refresh the TCP site.
        mujoco.mj_kinematics(self.model, self.data)
        obs = self._observe()
        reward, success = self.evaluate(obs)
        return obs, reward, success and self.terminate_on_success, False, {"success": success}

    def render(self) -> np.ndarray | None:
        """An RGB ``render_size`` frame from the env's camera (``render_mode="rgb_array"`` only)."""
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.render_size, self._render_camera_id)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        _OPEN_ENVS.discard(self)

    # --- internals --------------------------------------------------------------------------

    def _observe(self) -> dict[str, np.ndarray]:
        # One float32 copy of the qpos prefix, sliced into the entries: fresh arrays every
        # step (callers may keep them) at a fraction of the numpy calls of a copy per key.
        qpos = self._qpos_obs.astype(np.float32)
        obs = {
            "joint_pos": qpos[:7],
            "ee_pos": self._tcp_pos.astype(np.float32),
            # The float32 sum of the float32 finger positions, as qpos[7:9].sum(dtype=float32).
            "gripper": qpos[7:8] + qpos[8:9],
        }
        if self.has_object:
            obs["object_pos"] = qpos[9:12]
        obs["goal_pos"] = self._goal_obs.copy()
        if self.image:
            obs["image"] = self._render(self.image_size, self._camera_id)
        return obs

    def _render(self, size: int, camera_id: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = mujoco.Renderer(self.model, size, size)
            for flag in _RENDER_FLAGS_OFF:
                renderer.scene.flags[flag] = False
            self._renderers[size] = renderer
            if not _OPEN_ENVS:
                atexit.unregister(_close_open_envs)
                atexit.register(_close_open_envs)
            _OPEN_ENVS.add(self)
        renderer.update_scene(self.data, camera=camera_id)
        return renderer.render()

    def _perturb_camera(self, rng: np.random.Generator) -> None:
        rand = self.randomization
        model = self.model
        for cam in range(model.ncam):
            model.cam_pos[cam] += rng.uniform(-rand.camera_pos_noise, rand.camera_pos_noise, 3)
            rotvec = rng.uniform(-rand.camera_angle_noise, rand.camera_angle_noise, 3)
            angle = float(np.linalg.norm(rotvec))
            if angle > 0:
                delta = np.empty(4)
                mujoco.mju_axisAngle2Quat(delta, rotvec / angle, angle)
                quat = np.empty(4)
                mujoco.mju_mulQuat(quat, model.cam_quat[cam], delta)
                model.cam_quat[cam] = quat

    @staticmethod
    def _box(override: Box2 | None, default: Box2, rng: np.random.Generator) -> np.ndarray:
        low, high = override if override is not None else default
        return rng.uniform(low, high)


class ArmReachEnv(ArmEnv):
    """Move the tool centre point to a goal in the air (success within 3 cm)."""

    task = "reach"
    has_object = False
    success_threshold = 0.03

    @classmethod
    def _sample_task(
        cls, rng: np.random.Generator, rand: ArmRandomization
    ) -> tuple[np.ndarray | None, np.ndarray]:
        return None, cls._box(rand.goal, cls.default_goal, rng)

    @classmethod
    def evaluate(cls, obs: Mapping[str, np.ndarray]) -> tuple[float, bool]:
        dist = _dist(obs["ee_pos"], obs["goal_pos"])
        success = dist < cls.success_threshold
        return -dist + float(success), success


class ArmPushEnv(ArmEnv):
    """Push the block along the table until its centre is within 4 cm (in xy) of the goal."""

    task = "push"
    default_goal = ((0.35, -0.2, BLOCK_HALF), (0.65, 0.2, BLOCK_HALF))
    #: Minimum initial block-to-goal distance, so no episode starts solved.
    min_goal_distance = 0.1

    @classmethod
    def _sample_task(
        cls, rng: np.random.Generator, rand: ArmRandomization
    ) -> tuple[np.ndarray | None, np.ndarray]:
        xy = cls._box(rand.object_xy, cls.default_object_xy, rng)
        goal = cls._box(rand.goal, cls.default_goal, rng)
        # Rejection sampling with the episode's own RNG keeps resets fully seed-determined.
        while math.hypot(goal[0] - xy[0], goal[1] - xy[1]) < cls.min_goal_distance:
            goal = cls._box(rand.goal, cls.default_goal, rng)
        goal[2] = BLOCK_HALF
        return xy, goal

    @classmethod
    def evaluate(cls, obs: Mapping[str, np.ndarray]) -> tuple[float, bool]:
        obj, goal = obs["object_pos"], obs["goal_pos"]
        # The xy offset in float32, the observations' precision, in one numpy call.
        dx, dy, _ = (obj - goal).tolist()
        dist = math.hypot(dx, dy)
        success = dist < cls.success_threshold
        return -dist - 0.5 * _dist(obs["ee_pos"], obj) + float(success), success


class ArmPickPlaceEnv(ArmEnv):
    """Grasp the block and hold its centre within 4 cm of a goal in the air."""

    task = "pick_place"
    default_goal = ((0.35, -0.2, 0.1), (0.65, 0.2, 0.3))

    @classmethod
    def _sample_task(
        cls, rng: np.random.Generator, rand: ArmRandomization
    ) -> tuple[np.ndarray | None, np.ndarray]:
        xy = cls._box(rand.object_xy, cls.default_object_xy, rng)
        return xy, cls._box(rand.goal, cls.default_goal, rng)

    @classmethod
    def evaluate(cls, obs: Mapping[str, np.ndarray]) -> tuple[float, bool]:
        obj = obs["object_pos"]
        dist = _dist(obj, obs["goal_pos"])
        success = dist < cls.success_threshold
        return -dist - 0.5 * _dist(obs["ee_pos"], obj) + float(success), success


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    # tolist: Python floats in one call (indexing makes a numpy scalar per entry).
    a0, a1, a2 = a.tolist()
    b0, b1, b2 = b.tolist()
    return math.sqrt((a0 - b0) ** 2 + (a1 - b1) ** 2 + (a2 - b2) ** 2)
