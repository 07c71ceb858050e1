"""Adapter to the Meta-World benchmark (v3 tasks): gymnasium envs and scripted experts.

:class:`MetaWorldEnv` runs one Meta-World v3 task the MT1 way (goal observable), with the
task's object and goal positions drawn afresh at every reset from the env's own task
distribution (its ``_random_reset_space``; MT1 instead fixes 50 such draws). The draw comes from
the env's ``np_random``, so ``reset(seed=s)`` always gives the same initial state, whatever ran
before. The ids ``robolearn/MetaWorld-<task>`` (e.g. ``robolearn/MetaWorld-push-v3``) are
registered by ``sims`` (see ``sims.METAWORLD_ENVS``) with ``max_episode_steps`` =
``sims.METAWORLD_MAX_EPISODE_STEPS`` (200 steps at 80 Hz; Meta-World's own limit is 500).

:class:`MetaWorldExpert` wraps the package's scripted policy of the task (``metaworld.policies``)
in robolearn's Policy API, with the same ``noise`` knob as :class:`sims.arm.experts.ArmExpert`.

Meta-World is an optional dependency (``pip install -e ".[metaworld]"``): this module imports it
only when an env or an expert is made.

Measured success rates of the experts, ``max_episode_steps`` 200 (``python -m sims.metaworld
[noise ...]`` reruns the grid, about 15 minutes on one core). Grid: 50 episodes per cell, env
seeds 0-49, expert seed 0; mean episode length in brackets for noise 0. Chosen level
(``IMPERFECT_NOISE``): the grid's cell at that level, then a check on 100 other episodes (env
seeds 1000-1099, expert seed 1).

===============  ==========  ====  ====  ====  ====  ====  ====  ====  ====  =====================
task             noise 0     0.25  0.5   0.75  1.0   1.5   2.0   3.0   more  chosen: grid / check
===============  ==========  ====  ====  ====  ====  ====  ====  ====  ====  =====================
push-v3          1.00 (62)   0.58  0.12  0.00  0.02  0.00  0.00  0.02  [1]   0.275: 0.52 / 0.42
door-open-v3     0.96 (88)   0.88  0.80  0.62  0.40  0.16  0.04  0.00  [2]   1.0:   0.40 / 0.40
drawer-open-v3   1.00 (89)   0.96  0.54  0.16  0.04  0.08  0.04  0.04  [3]   0.5:   0.54 / 0.48
button-press-v3  1.00 (60)   1.00  0.66  0.12  0.04  0.00  0.00  0.02  [4]   0.575: 0.42 / 0.46
reach-v3         1.00 (48)   0.96  0.98  0.80  0.74  0.64  0.36  0.22  [5]   1.6:   0.46 / 0.36
===============  ==========  ====  ====  ====  ====  ====  ====  ====  ====  =====================

[1] push 0.3: 0.38 (check 0.33), 0.35: 0.32, 0.4: 0.20. [2] door-open 0.9: 0.48 (check 0.54).
[3] drawer-open 0.55: 0.42 (check 0.31), 0.6: 0.30. [4] button-press 0.55: 0.56, 0.6: 0.34
(check 0.39). [5] reach 1.75: 0.42 (check 0.35).

Noisy episodes are slow as well as unsuccessful (mean length 150-180 steps at the chosen
levels), and the tasks differ widely in how much noise they tolerate: push, where the hand must
stay on the puck, tolerates about a sixth of the noise that reach does.

Env speed (one core of a 2-core AMD EPYC, random actions, through ``gymnasium.make``): about 900
steps/s on push-v3, 1,150 door-open, 1,450 reach, 2,200 button-press and drawer-open; with the
expert acting, 600-1,500 steps/s. A reset costs 10-15 ms (Meta-World settles the hand for 500
physics steps) and making an env about 0.2 s.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import atexit  # noqa: E402
import importlib  # noqa: E402
import warnings  # noqa: E402
import weakref  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402 - MUJOCO_GL must be set before mujoco is imported
import numpy as np  # noqa: E402

from robolearn.policy import FLAT_OBS_KEY, Observation  # noqa: E402
from sims import METAWORLD_ENVS, METAWORLD_TASKS  # noqa: E402
from sims.noisy_expert import NoisyExpert  # noqa: E402

#: gym id -> Meta-World task name.
ENV_TASKS = dict(METAWORLD_ENVS)

#: Per task, the noise level that gives imperfect demonstrations (about 30-60% of them succeed;
#: see the table in the module docstring). The DSRL benchmark sets its own levels, chosen for the
#: success of the base policy trained on them (20-60%; ``TASKS`` in benchmarks/bench_dsrl.py).
IMPERFECT_NOISE: dict[str, float] = {
    "push-v3": 0.275,
    "door-open-v3": 1.0,
    "drawer-open-v3": 0.5,
    "button-press-v3": 0.575,
    "reach-v3": 1.6,
}

#: Meta-World's control rate: 5 physics steps of 2.5 ms per env step.
CONTROL_HZ = 80
OBS_DIM = 39
#: Meta-World's dense rewards lie in [0, MAX_REWARD] (the v2 reward functions).
MAX_REWARD = 10.0
INSTALL_HINT = 'Meta-World is not installed; install it with: pip install -e ".[metaworld]"'

_RENDER_FLAGS_OFF = (
    mujoco.mjtRndFlag.mjRND_SHADOW,
    mujoco.mjtRndFlag.mjRND_REFLECTION,
    mujoco.mjtRndFlag.mjRND_SKYBOX,
)

# Envs with an open renderer, closed by an atexit hook registered after the first renderer
# exists so that it runs before MuJoCo's own EGL teardown (as in sims.arm.env).
_OPEN_ENVS: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()


def _close_open_envs() -> None:
    for env in list(_OPEN_ENVS):
        env.close()


def _import_metaworld(module: str) -> Any:
    """``metaworld.<module>``, or an ImportError that says how to install Meta-World."""
    try:
        return importlib.import_module(f"metaworld.{module}")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err


def _check_task(task: str) -> None:
    if task not in METAWORLD_TASKS:
        raise ValueError(f"task must be one of {METAWORLD_TASKS}, got {task!r}")


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task, goal observable, with a fresh task draw at every reset.

    Observations are Meta-World's flat 39-D state as a float32 ``Box`` (policies see it as
    ``{"obs": ...}``): hand position (3), gripper opening (1), object positions and quaternions
    (14, zero-padded), the same 18 values of the previous step, and the goal position (3).
    Actions are a ``Box`` [-1, 1]^4: the hand's position delta (1 cm per unit per step) and the
    gripper effort. The reward is Meta-World's dense reward (v2 reward functions, 0 to 10 per
    step) mapped to ``r / 10 - 1``, in [-1, 0], so that every step before the task is done
    costs: with Meta-World's positive rewards and episodes that end on success, a
    return-maximising learner is paid more for hovering next to the goal until the time limit
    than for finishing (DSRL on push-v3 steered its base policy from 48% down to 0% success that
    way). For episodes that do not end on success the best policy is the same as with
    Meta-World's reward (a positive scale and a constant shift). Meta-World's own
    reward is ``info["metaworld_reward"]``. ``info["success"]`` is a bool (Meta-World reports a
    float), and the other entries of Meta-World's info are passed through.

    Args:
        task: Meta-World task name, one of ``sims.METAWORLD_TASKS`` (e.g. ``"push-v3"``).
        terminate_on_success: End the episode (``terminated=True``) on the first success.
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns a ``render_size`` image).
        render_size: Side of the square ``render()`` image in pixels.
        camera: Meta-World camera of ``render()``: ``"corner"``, ``"corner2"``, ``"corner3"``,
            ``"corner4"``, ``"topview"``, ``"behindGripper"`` or ``"gripperPOV"``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: str,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        render_size: int = 224,
        camera: str = "corner4",
    ) -> None:
        _check_task(task)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        env = _import_metaworld("env_dict").ALL_V3_ENVIRONMENTS[task]()
        # The MT set-up: the goal is part of the observation (the scripted experts need it).
        env._partially_observable = False
        del env.sawyer_observation_space  # a cached property; recomputed with the goal bounds
        # A new task draw at every reset, taken from env.np_random (so reset(seed) decides it).
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        # The TimeLimit of the gym id truncates episodes; Meta-World's own 500-step limit would
        # raise instead, so it is lifted.
        env.max_path_length = np.iinfo(np.int64).max
        self._env = env
        self.task = task
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self.render_size = int(render_size)
        try:
            self._camera_id = env.model.camera(camera).id
        except KeyError:
            names = [env.model.camera(i).name for i in range(env.model.ncam)]
            raise ValueError(f"camera must be one of {names}, got {camera!r}") from None
        self.camera = camera
        self._renderer: mujoco.Renderer | None = None
        space = env.sawyer_observation_space
        self.observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)

    @property
    def dt(self) -> float:
        """Seconds per env step."""
        return float(self._env.dt)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._env.np_random = self.np_random
        obs, _ = self._env.reset()
        return self._observe(obs), {"success": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if action.shape != (4,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 4 finite numbers, got {action!r}")
        obs, reward, _, _, info = self._env.step(action)
        success = bool(info["success"])
        info = {**info, "success": success, "metaworld_reward": float(reward)}
        terminated = success and self.terminate_on_success
        return self._observe(obs), float(reward) / MAX_REWARD - 1.0, terminated, False, info

    def render(self) -> np.ndarray | None:
        """An RGB ``render_size`` frame from ``camera`` (``render_mode="rgb_array"`` only)."""
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            renderer = mujoco.Renderer(self._env.model, self.render_size, self.render_size)
            for flag in _RENDER_FLAGS_OFF:
                renderer.scene.flags[flag] = False
            self._renderer = renderer
            if not _OPEN_ENVS:
                atexit.unregister(_close_open_envs)
                atexit.register(_close_open_envs)
            _OPEN_ENVS.add(self)
        self._renderer.update_scene(self._env.data, camera=self._camera_id)
        frame = self._renderer.render()
        # Meta-World's corner cameras are rolled by 180 degrees (their image "up" points down in
        # the world): turn such frames upright (a rotation, not a mirror).
        if self._env.data.cam_xmat[self._camera_id][7] < 0:  # z of the camera's up axis
            frame = np.ascontiguousarray(frame[::-1, ::-1])
        return frame

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        _OPEN_ENVS.discard(self)
        self._env.close()

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        space = self.observation_space
        return np.clip(obs, space.low, space.high).astype(np.float32)


class MetaWorldExpert(NoisyExpert):
    """Meta-World's scripted policy of a task (``metaworld.policies``), batched.

    The package's policy maps one 39-D observation to an action through a few hand-written
    phases (e.g. push: above the puck, down onto it, then to the goal); this wrapper runs it for
    each observation of the batch (on a copy: some of them write into their input) and clips the
    actions to [-1, 1]. It accepts the flat observation or ``{"obs": ...}``.

    With ``noise > 0`` the demonstrations get imperfect, the way a human teleoperator's are (the
    model of :class:`sims.arm.experts.ArmExpert`): temporally correlated noise on the hand's
    motion of standard deviation ``noise`` (an AR(1) process with correlation 0.8 per step), a
    probability ``0.15 * noise`` per step of a wrong move (a random translation), and a
    probability ``0.08 * noise`` per step of a wrong gripper command (a random effort).
    ``noise=0`` is deterministic and succeeds on 96-100% of episodes per task;
    ``noise=IMPERFECT_NOISE[task]`` (0.275 push to 1.6 reach) gives roughly 35-55% success
    (see the table in the module docstring).

    Args:
        task: Meta-World task name, one of ``sims.METAWORLD_TASKS``.
        noise: Imperfection level, 0 for the clean expert.
        seed: Seed of the noise random stream.
    """

    policy_type = "metaworld_expert"

    def __init__(self, task: str, noise: float = 0.0, seed: int = 0) -> None:
        _check_task(task)
        self._policy = _import_metaworld("policies").ENV_POLICY_MAP[task]()
        super().__init__(task, noise, seed)

    def act(self, obs: Observation) -> np.ndarray:
        flat = obs[FLAT_OBS_KEY] if isinstance(obs, dict) else obs
        flat = np.asarray(flat, dtype=np.float64)
        if flat.ndim != 2 or flat.shape[1] != OBS_DIM:
            raise ValueError(
                f"MetaWorldExpert needs a batch of {OBS_DIM}-D Meta-World observations, "
                f"got shape {flat.shape}"
            )
        action = np.empty((len(flat), 4))
        with warnings.catch_warnings():
            # "Constant(s) may be too high": their gains saturate by design; we clip.
            warnings.simplefilter("ignore", UserWarning)
            for i, o in enumerate(flat):
                action[i] = self._policy.get_action(o.copy())
        action = np.clip(action, -1.0, 1.0)
        if self.noise > 0:
            self._perturb(action)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _perturb(self, action: np.ndarray) -> None:
        rng = self.perturb_motion(action)
        grip = rng.random(len(action)) < 0.08 * self.noise
        action[grip, 3] = rng.uniform(-1.0, 1.0, int(grip.sum()))  # a wrong gripper effort


def make_expert(env_id: str, noise: float = 0.0, seed: int = 0) -> MetaWorldExpert:
    """The scripted expert of a ``robolearn/MetaWorld-<task>`` gym id."""
    if env_id not in ENV_TASKS:
        raise ValueError(f"no Meta-World expert for {env_id!r}; known ids: {sorted(ENV_TASKS)}")
    return MetaWorldExpert(ENV_TASKS[env_id], noise=noise, seed=seed)


def measure_success(
    env_id: str, noise: float, episodes: int = 50, seed: int = 0
) -> tuple[float, float]:
    """Success rate and mean episode length of ``make_expert(env_id, noise, seed)``, seeds 0.."""
    from robolearn.envs import make_env
    from robolearn.rollout import rollout

    env = make_env(env_id)
    try:
        result = rollout(
            make_expert(env_id, noise=noise, seed=seed), env, episodes, seed=0, progress=False
        )
    finally:
        env.close()
    return result.success_rate, result.mean_length


if __name__ == "__main__":  # the table of the module docstring
    import sys

    levels = [float(x) for x in sys.argv[1:]] or [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
    for env_id in ENV_TASKS:
        for noise in levels:
            rate, length = measure_success(env_id, noise)
            print(f"{env_id} noise {noise}: success {rate:.2f}, mean length {length:.0f}")
