"""The ``robolearn`` command: ``robolearn <verb> [key=value ...]`` with hydra overrides.

Verbs:
  record   run a policy (scripted expert or checkpoint) in an env and record an EpisodeStore
  train    train a policy (default algo=bc; with no data= it first records expert
           demonstrations), then evaluate it: the README's main job. algo=diffusion trains
           a diffusion policy; algo=dsrl base=<diffusion checkpoint> steers one by RL
  eval     success rate, MP4 video, PNG plot and a report of a policy in an env
  replay   replay a log (a deploy run folder, an EpisodeStore or a rosbag2 bag): to=sim re-executes
           an episode's actions in simulation and reports the divergence from the log; to=ros
           publishes the run's bag on ROS 2 topics at its recorded timing; policy=<ckpt> (to=policy)
           re-runs a policy on the logged observations and reports the action differences
  import   import a rosbag2 MCAP bag (a deployment's, or JointState + JointTrajectory or Odometry
           + motor commands recorded elsewhere, topics and frames from hw.env) into an
           EpisodeStore: bag=<dir> out=<store>
  deploy   run a policy on an arm or a quadrotor over ROS 2 (hw=standin_arm|standin_quadrotor: a
           PyBullet stand-in started for you; hw=ros2_arm|ros2_quadrotor: a real robot) and
           record the deployment: the `ros` extra
  info     describe an EpisodeStore: `robolearn info <store>`

Every run writes one folder (default runs/<verb>/<time>-<env>) holding its resolved config, and
`resume=<that folder>` continues it. A wrong key or value fails at once with one clear line
(ROBOLEARN_DEBUG=1 shows the traceback of other errors).
"""

from __future__ import annotations

import datetime as dt
import difflib
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from robolearn.data.store import EpisodeStore, StoreError
from robolearn.envs import ensure_registered, renders
from robolearn.policy import (
    FLAT_OBS_KEY,
    POLICY_FILE,
    Policy,
    as_dict,
    load_policy,
    resolve_checkpoint,
)
from robolearn.rollout import control_hz
from robolearn.utils import resolve_device

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Evaluation episodes use seeds from ``seed + EVAL_SEED_OFFSET``: disjoint from recordings.
EVAL_SEED_OFFSET = 1_000_000
GROUPS = ("env", "policy", "algo", "hw")


class ConfigError(Exception):
    """A bad config key or value; the message names the key."""


# ---------------------------------------------------------------------------------- config ---


def compose_config(overrides: list[str]) -> DictConfig:
    """The root config with ``overrides`` applied; unknown keys or options raise ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if not CONFIG_DIR.is_dir():
        raise ConfigError(
            f"config directory {CONFIG_DIR} is missing (install robolearn with pip -e)"
        )
    overrides = _policy_path_override(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r} is not an override: write key=value (e.g. episodes=10)")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain_hydra_error(str(err), overrides)) from None


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _policy_path_override(overrides: list[str]) -> list[str]:
    """``policy=<dir>`` (anything that is not a config option) means a checkpoint directory."""
    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "policy" and value and value not in _options("policy"):
            out += ["policy=checkpoint", f"policy.path={value}"]
        else:
            out.append(item)
    return out


def _explain_hydra_error(message: str, overrides: list[str]) -> str:
    """Turn hydra's multi-line errors into one line naming the key and what would be valid."""
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if f"Could not find '{key}/{value}'" in message or f"'{key}/{value}'" in message:
            return f"{key}={value}: no such option; choose one of {_options(key)}"
        if f"Key '{key.split('.')[-1]}' is not in struct" in message or (
            f"Could not override '{key}'" in message
        ):
            known = _known_keys()
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            return f"unknown config key {key!r}{suggestion}"
    return " ".join(message.split())


def _known_keys() -> list[str]:
    keys = list(OmegaConf.load(CONFIG_DIR / "config.yaml").keys())
    for group in GROUPS:
        for option in _options(group):
            keys += [f"{group}.{k}" for k in OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")]
    return sorted(set(keys) - {"defaults"})


def validate(cfg: DictConfig, verb: str) -> None:
    """Check values before any work starts; each failure names its key."""

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}: {what}")

    def integer(key: str, minimum: int = 1) -> None:
        value = OmegaConf.select(cfg, key)
        need(
            key,
            isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"must be an integer >= {minimum}",
        )

    integer("episodes")
    integer("num_envs")
    integer("video_episodes", 0)
    integer("seed", 0)
    integer("threads")
    try:
        resolve_device(str(cfg.device))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"device={cfg.device!r}: {err}") from None
    need("progress", isinstance(cfg.progress, bool), "must be true or false")
    if cfg.resume is not None:
        need(
            "resume",
            (Path(cfg.resume) / "config.yaml").is_file(),
            "is not a run folder (it has no config.yaml)",
        )
    if verb in ("record", "eval") or (verb == "train" and cfg.data is None):
        try:
            ensure_registered(cfg.env.id)
        except ValueError as err:
            raise ConfigError(f"env.id={cfg.env.id!r}: {err}") from None
    if verb == "deploy":
        from hw import HW_IDS, hw_robot

        need(
            "env.id",
            cfg.env.id in HW_IDS,
            f"has no ROS 2 hardware env; deploy runs {sorted(HW_IDS)}",
        )
        robot = hw_robot(HW_IDS[cfg.env.id])
        need(
            "hw.name",
            cfg.hw.get("robot", "arm") == robot,
            f"is for the {cfg.hw.get('robot', 'arm')} (hw.robot); env={cfg.env.name} is a "
            f"{robot} task",
        )
    if verb in ("record", "eval", "deploy"):
        if cfg.policy.name == "checkpoint":
            need("policy.path", *_checkpoint_check(cfg.policy.path))
        if cfg.policy.name == "expert":
            noise = cfg.policy.noise
            need("policy.noise", isinstance(noise, (int, float)) and noise >= 0, "must be >= 0")
    if verb == "train":
        need("algo.name", cfg.algo.name in TRAINERS, f"must be one of {sorted(TRAINERS)}")
        if cfg.algo.name == "raptor":
            if cfg.env.name != "quadrotor":
                raise ConfigError(f"algo=raptor trains quadrotors: env={cfg.env.name} is not one")
            raptor_config(cfg)
            return
        if cfg.algo.name == "dsrl":
            dsrl_config(cfg)
            need("base", cfg.base is not None, "is required: robolearn train algo=dsrl base=<ckpt>")
            need("base", *_checkpoint_check(cfg.base))
            if cfg.algo.demo_store is not None:
                need("algo.demo_store", Path(cfg.algo.demo_store).exists(), "does not exist")
            return
        algo_config(cfg)
        obs_keys = cfg.algo.obs_keys
        need(
            "algo.obs_keys",
            obs_keys is None or (OmegaConf.is_list(obs_keys) and len(obs_keys) > 0),
            "must be null or a list of observation keys, e.g. [ee_pos,object_pos]",
        )
        if cfg.data is not None:
            need("data", Path(cfg.data).exists(), "does not exist")
        else:
            integer("algo.demos")
    if verb == "replay":
        need("log", cfg.log is not None, "is required: replay log=<store> episode=N")
        need("log", Path(cfg.log).exists(), "does not exist")
        integer("episode", 0)
        need("to", cfg.to in (None, *REPLAY_TARGETS), f"must be one of {list(REPLAY_TARGETS)}")
        need("rate", isinstance(cfg.rate, (int, float)) and cfg.rate > 0, "must be > 0")
    if verb == "import":
        need("bag", cfg.bag is not None, "is required: import bag=<rosbag2 dir> out=<store>")
        need("bag", Path(cfg.bag).is_dir(), "is not a rosbag2 directory")
    if verb == "info":
        need("store", cfg.store is not None, "is required: robolearn info <store>")


# ---------------------------------------------------------------------------------- runs ---


def make_run_dir(cfg: DictConfig, verb: str) -> Path:
    """Create (or, with resume=, reuse) the run folder and write the resolved config into it."""
    if cfg.resume is not None:
        run_dir = Path(cfg.resume)
    elif cfg.run_dir is not None:
        run_dir = Path(cfg.run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run_dir={run_dir} exists; pass resume={run_dir} to continue it")
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / verb / f"{stamp}-{cfg.env.name}"
        suffix = 1
        while run_dir.exists():  # runs started in the same second get their own folders
            suffix += 1
            run_dir = run_dir.with_name(f"{stamp}-{cfg.env.name}-{suffix}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    return run_dir


def resumed_config(overrides: list[str]) -> DictConfig | None:
    """With ``resume=<run>``, that run's saved config plus the other plain overrides."""
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if resume is None:
        return None
    path = Path(resume) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"resume={resume}: is not a run folder (it has no config.yaml)")
    cfg = _with_new_defaults(OmegaConf.load(path))
    OmegaConf.set_struct(cfg, True)  # a misspelt key fails instead of being added
    extra = [o for o in overrides if not o.startswith("resume=")]
    for item in extra:
        key = item.split("=")[0]
        if key in GROUPS:
            raise ConfigError(
                f"{item}: a resumed run keeps its {key}; override single keys ({key}.<name>=...)"
            )
    try:
        cfg.merge_with_dotlist(extra)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain_hydra_error(str(err), extra)) from None
    cfg.resume = resume
    return cfg


def _with_new_defaults(saved: DictConfig) -> DictConfig:
    """``saved`` over today's defaults of its config groups, so that a run made before a key
    existed resumes with that key's default (the saved values win everywhere else)."""
    groups = [
        f"{group}={saved[group].name}"
        for group in GROUPS
        if OmegaConf.select(saved, f"{group}.name") is not None
        and (CONFIG_DIR / group / f"{saved[group].name}.yaml").is_file()
    ]
    try:
        current = compose_config(groups)
    except ConfigError:
        return saved
    OmegaConf.set_struct(current, False)
    return OmegaConf.merge(current, saved)


def algo_config(cfg: DictConfig) -> Any:
    """The BCConfig or DiffusionConfig of ``cfg.algo``; bad values raise ConfigError."""
    if cfg.algo.name == "diffusion":
        from robolearn.algos.diffusion import DiffusionConfig as config_class
    else:
        from robolearn.algos.bc import BCConfig as config_class
    return _dataclass_from(config_class, cfg.algo)


def dsrl_config(cfg: DictConfig) -> Any:
    """The DSRLConfig of ``cfg.algo``; bad values raise ConfigError naming the key."""
    from robolearn.algos.dsrl import DSRLConfig

    return _dataclass_from(DSRLConfig, cfg.algo)


def _dataclass_from(config_class: Any, group: DictConfig) -> Any:
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    values = OmegaConf.to_container(group, resolve=True)
    try:
        return config_class(**{k: v for k, v in values.items() if k in names})
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def make_policy(cfg: DictConfig) -> Policy:
    """The configured policy: the env's scripted expert, a named baseline or a checkpoint."""
    if cfg.policy.name == "expert":
        if not cfg.env.get("expert"):
            raise ConfigError(f"policy=expert: env={cfg.env.name} has no scripted expert")
        factory = _import_string(cfg.env.expert)
        return factory(cfg.env.id, noise=float(cfg.policy.noise), seed=int(cfg.seed))
    if cfg.policy.name == "raptor_released":
        from robolearn.algos.raptor.baseline import ReleasedRaptorPolicy

        return ReleasedRaptorPolicy()
    return load_policy(cfg.policy.path, device=resolve_device(cfg.device))


def _checkpoint_check(path: str) -> tuple[bool, str]:
    """Whether ``path`` (a directory or ``pretrained:<name>``) is a checkpoint, and why not."""
    try:
        directory = resolve_checkpoint(path)
    except FileNotFoundError as err:
        return False, str(err)
    return (directory / POLICY_FILE).is_file(), "is not a policy checkpoint (no policy.json)"


def _import_string(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _env_kwargs(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.env.kwargs, resolve=True)  # type: ignore[return-value]


def _say(message: str) -> None:
    print(f"robolearn: {message}", flush=True)


# ---------------------------------------------------------------------------------- verbs ---


def _make_env(cfg: DictConfig, env_id: str, env_kwargs: dict[str, Any], **overrides: Any) -> Any:
    """A single env, or an in-process vector env when ``num_envs > 1``."""
    from robolearn.envs import make_env, make_vector_env

    if cfg.num_envs > 1:
        return make_vector_env(env_id, cfg.num_envs, env_kwargs, **overrides)
    return make_env(env_id, env_kwargs, **overrides)


def record_episodes(
    cfg: DictConfig, policy: Policy, path: Path, episodes: int, source: str
) -> EpisodeStore:
    """Record up to ``episodes`` episodes into the store at ``path``, continuing an existing one."""
    from robolearn.rollout import rollout

    env_kwargs = _env_kwargs(cfg)
    env = _make_env(cfg, cfg.env.id, env_kwargs)
    try:
        vector = cfg.num_envs > 1
        single = env.get_attr("unwrapped")[0] if vector else env.unwrapped
        obs_space = env.single_observation_space if vector else env.observation_space
        act_space = env.single_action_space if vector else env.action_space
        if path.exists():
            store = EpisodeStore.open(path, mode="a")
            if store.attrs.get("env_id") != cfg.env.id:
                raise ConfigError(
                    f"out={path} holds {store.attrs.get('env_id')} episodes, not {cfg.env.id}"
                )
        else:
            spec = getattr(single, "robot_spec", None)
            store = EpisodeStore.create(
                path,
                attrs={
                    "env_id": cfg.env.id,
                    "env_kwargs": env_kwargs,
                    "robot_spec": spec.to_dict() if spec is not None else None,
                    "control_hz": control_hz(env),
                    "observation_keys": list(getattr(obs_space, "spaces", [FLAT_OBS_KEY])),
                    "observation_space": _describe_space(obs_space),
                    "action_space": _describe_space(act_space),
                },
            )
        remaining = episodes - store.n_episodes
        if remaining > 0:
            first = int(cfg.seed) + store.n_episodes
            _say(
                f"recording {remaining} episodes (seeds {first}..{first + remaining - 1}) "
                f"of {cfg.env.id} into {path}"
            )
            result = rollout(
                policy,
                env,
                remaining,
                seed=first,
                store=store,
                source=source,
                progress=cfg.progress,
                desc=f"record {cfg.env.name}",
            )
            _say(f"recorded {remaining} episodes, success {result.success_rate:.0%}")
    finally:
        env.close()
    return store


def evaluate(
    cfg: DictConfig,
    policy: Policy,
    env_id: str,
    env_kwargs: dict[str, Any],
    run_dir: Path,
    title: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Roll the policy out, write video, plot and report into ``run_dir``; return the summary.

    Evaluation seeds start at ``seed + EVAL_SEED_OFFSET``, disjoint from recording seeds, so a
    policy is never evaluated on the initial states of its own demonstrations.
    """
    from robolearn.report import plot_rollout, write_report, write_video
    from robolearn.rollout import rollout

    first = int(cfg.seed) + EVAL_SEED_OFFSET
    _say(f"evaluating on {cfg.episodes} episodes of {env_id} (seeds {first}..)")
    video_kwargs = {"render_mode": "rgb_array"} if renders(env_id) else {}
    env = _make_env(cfg, env_id, env_kwargs, **video_kwargs)
    try:
        result = rollout(
            policy,
            env,
            cfg.episodes,
            seed=first,
            render_episodes=cfg.video_episodes if video_kwargs else 0,
            progress=cfg.progress,
            desc=f"eval {env_id}",
        )
        video = write_video(run_dir / "eval.mp4", result.videos, fps=control_hz(env))
    finally:
        env.close()
    plot = plot_rollout(run_dir / "eval.png", result, title)
    summary = {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "first_seed": first,
        **(extra or {}),
        **result.summary(),
    }
    highlights = {
        "env": env_id,
        "episodes": len(result.episodes),
        "success rate": f"{result.success_rate:.1%}",
        "mean return": result.mean_return,
        "mean length": result.mean_length,
    }
    _, md_path = write_report(run_dir, title, summary, highlights)
    _say(
        f"success rate {result.success_rate:.1%} over {len(result.episodes)} episodes "
        f"(mean return {result.mean_return:.2f})"
    )
    for name, path in (("video", video), ("plot", plot), ("report", md_path)):
        if path is not None:
            _say(f"{name}: {path}")
    return summary


def cmd_record(cfg: DictConfig) -> int:
    if cfg.out is not None and Path(cfg.out).exists() and cfg.resume is None:
        raise ConfigError(
            f"out={cfg.out} exists; choose a new out= (resume=<record run folder> continues "
            "an interrupted recording)"
        )
    run_dir = make_run_dir(cfg, "record")
    out = Path(cfg.out) if cfg.out is not None else run_dir / "episodes.zarr"
    policy = make_policy(cfg)
    store = record_episodes(cfg, policy, out, cfg.episodes, source=f"sim:{policy.policy_type}")
    success = store.meta("success")
    _say(f"{out}: {store.n_episodes} episodes, {store.n_steps} steps, success {success.mean():.0%}")
    return 0


def raptor_config(cfg: DictConfig) -> Any:
    """The RaptorConfig of ``cfg.algo``; bad values raise ConfigError naming the key."""
    from robolearn.algos.batched_sac import BatchedSACConfig
    from robolearn.algos.raptor.distill import DistillConfig
    from robolearn.algos.raptor.pipeline import RaptorConfig
    from robolearn.algos.raptor.teachers import TeacherConfig

    algo = OmegaConf.to_container(cfg.algo, resolve=True)
    try:
        teacher = dict(algo["teacher"])
        teacher["sac"] = BatchedSACConfig(**teacher["sac"])
        return RaptorConfig(
            teachers=algo["teachers"],
            vehicle_seed=algo["vehicle_seed"],
            distill_seed=algo["distill_seed"],
            workers=algo["workers"],
            evaluation_process=algo["evaluation_process"],
            min_teacher_return=algo["min_teacher_return"],
            selection_episodes=algo["selection_episodes"],
            teacher=TeacherConfig(**teacher),
            distill=DistillConfig(**algo["distill"]),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"algo: {err}") from None


def cmd_train(cfg: DictConfig) -> int:
    if cfg.algo.name == "raptor":
        return _train_raptor(cfg)
    if cfg.algo.name == "dsrl":
        return _train_dsrl(cfg)
    from robolearn.report import plot_curves
    from robolearn.training import read_metric

    given = EpisodeStore.open(cfg.data) if cfg.data is not None else None
    if given is not None and given.attrs.get("env_id"):
        cfg.env.name = given.attrs["env_id"].split("/")[-1]  # name the run after the data's env
    run_dir = make_run_dir(cfg, "train")
    _say(f"run folder: {run_dir}")
    if given is None:
        expert_cfg = cfg.copy()
        expert_cfg.policy = OmegaConf.create({"name": "expert", "noise": cfg.algo.demo_noise})
        store = record_episodes(
            expert_cfg,
            make_policy(expert_cfg),
            run_dir / "demos.zarr",
            cfg.algo.demos,
            source="sim:expert",
        )
    else:
        store = given
    env_id = store.attrs.get("env_id", cfg.env.id)
    env_kwargs = store.attrs.get("env_kwargs", _env_kwargs(cfg))
    data = store.load()
    if cfg.algo.name == "diffusion":
        from robolearn.algos.diffusion import default_obs_keys
        from robolearn.algos.diffusion import train_diffusion as trainer
    else:
        from robolearn.algos.bc import default_obs_keys
        from robolearn.algos.bc import train_bc as trainer
    available = default_obs_keys(data, store.attrs.get("observation_keys", []))
    obs_keys = list(cfg.algo.obs_keys) if cfg.algo.obs_keys is not None else available
    unknown = [k for k in obs_keys if k not in data]
    if unknown or not obs_keys:
        raise ConfigError(
            f"algo.obs_keys={obs_keys}: {store.path} has observation keys {available}"
        )
    algo_cfg = algo_config(cfg)
    _say(
        f"training {cfg.algo.name} on {store.n_episodes} episodes ({store.n_steps} steps), "
        f"observation keys {obs_keys}"
    )
    policy = trainer(
        data,
        store.episode_ends,
        obs_keys,
        algo_cfg,
        run_dir,
        device=resolve_device(cfg.device),
        seed=int(cfg.seed),
        progress=cfg.progress,
    )
    policy_dir = policy.save(run_dir / "policy")
    curves = {
        "train": read_metric(run_dir, "train/loss"),
        "validation": read_metric(run_dir, "val/loss"),
    }
    loss_plot = plot_curves(
        run_dir / "loss.png",
        curves,
        f"{cfg.algo.name} training loss",
        "MSE (normalised)",
        log_y=True,
    )
    final = ", ".join(
        f"{name} {values[-1]:.4g}" for name, (_, values) in curves.items() if len(values)
    )
    _say(f"final loss: {final}; curve: {loss_plot}")
    _say(f"policy: {policy_dir}")
    evaluate(
        cfg,
        policy,
        env_id,
        env_kwargs,
        run_dir,
        f"{cfg.algo.name} on {env_id}",
        extra={
            "policy": str(policy_dir),
            "data": str(store.path),
            "demos": store.n_episodes,
            "train_steps": algo_cfg.steps,
        },
    )
    return 0


def _train_dsrl(cfg: DictConfig) -> int:
    """Steer the diffusion policy ``base`` by DSRL in ``env``, then evaluate the result."""
    from robolearn.algos.diffusion import DiffusionPolicy
    from robolearn.algos.dsrl.train import make_evaluator, train_dsrl
    from robolearn.envs import make_env, make_vector_env

    device = resolve_device(cfg.device)
    base = load_policy(cfg.base, device=device)
    if not isinstance(base, DiffusionPolicy):
        raise ConfigError(f"base={cfg.base}: is a {base.policy_type} policy, not a diffusion one")
    env_kwargs = _env_kwargs(cfg)
    probe = make_env(cfg.env.id, env_kwargs)
    obs_keys = list(getattr(probe.observation_space, "spaces", [FLAT_OBS_KEY]))
    probe.close()
    missing = [k for k in base.obs_keys if k not in obs_keys]
    if missing:
        raise ConfigError(
            f"base={cfg.base}: needs observation keys {missing}, which env={cfg.env.name} "
            f"does not provide (it has {obs_keys})"
        )
    dsrl_cfg = dsrl_config(cfg)
    run_dir = make_run_dir(cfg, "train")
    _say(f"run folder: {run_dir}")
    eval_envs = min(10, dsrl_cfg.eval_episodes)
    evaluator = make_evaluator(
        lambda: make_vector_env(cfg.env.id, eval_envs, env_kwargs),
        dsrl_cfg.eval_episodes,
        seed=int(cfg.seed) + EVAL_SEED_OFFSET,
    )
    demos = EpisodeStore.open(cfg.algo.demo_store) if cfg.algo.demo_store else None
    _say(
        f"steering {cfg.base} by DSRL-{dsrl_cfg.variant.upper()} for {dsrl_cfg.env_steps} env "
        f"steps of {cfg.env.id}"
    )
    steered = train_dsrl(
        base,
        lambda: make_env(cfg.env.id, env_kwargs),
        dsrl_cfg,
        run_dir,
        evaluator,
        demos=demos,
        seed=int(cfg.seed),
        device=device,
        progress=cfg.progress,
    )
    policy_dir = steered.save(run_dir / "policy")
    _say(f"policy: {policy_dir}; success curve: {run_dir / 'success.png'}")
    evaluate(
        cfg,
        steered,
        cfg.env.id,
        env_kwargs,
        run_dir,
        f"DSRL-{dsrl_cfg.variant.upper()} on {cfg.env.id}",
        extra={"policy": str(policy_dir), "base": str(cfg.base), "env_steps": dsrl_cfg.env_steps},
    )
    return 0


def _train_raptor(cfg: DictConfig) -> int:
    """Sample vehicles, train teachers, distil the student, then evaluate it next to the
    released RAPTOR policy on the same held-out vehicles."""
    from robolearn.algos.raptor.baseline import ReleasedRaptorPolicy
    from robolearn.algos.raptor.evaluate import REFERENCE_RERUN, compare_quadrotor_policies
    from robolearn.algos.raptor.pipeline import train_raptor

    run_dir = make_run_dir(cfg, "train")
    _say(f"run folder: {run_dir}")
    student, summary = train_raptor(
        raptor_config(cfg),
        _import_string(cfg.algo.vehicle_sampler),
        _import_string(cfg.algo.env_factory),
        run_dir,
        seed=int(cfg.seed),
        device=resolve_device(cfg.device),
        progress=cfg.progress,
        say=_say,
    )
    _say(f"student: {summary['policy']}; exports in {run_dir / 'export'}")
    _say(f"evaluating on {cfg.algo.eval_vehicles} held-out vehicles next to the released policy")
    comparison = compare_quadrotor_policies(
        {"ours": student, "released": ReleasedRaptorPolicy()},
        vehicles=cfg.algo.eval_vehicles,
        preset_episodes=cfg.algo.eval_preset_episodes,
        progress=cfg.progress,
        out_dir=run_dir / "eval",
        reference=REFERENCE_RERUN,
    )
    print(comparison["table"])
    _say(f"report: {run_dir / 'eval' / 'report.md'}")
    return 0


def cmd_eval(cfg: DictConfig) -> int:
    run_dir = make_run_dir(cfg, "eval")
    policy = make_policy(cfg)
    if cfg.env.get("protocol") == "raptor":
        return _eval_quadrotor(cfg, policy, run_dir)
    evaluate(
        cfg,
        policy,
        cfg.env.id,
        _env_kwargs(cfg),
        run_dir,
        f"{policy.policy_type} on {cfg.env.id}",
        extra={"policy": cfg.policy.get("path", policy.policy_type)},
    )
    return 0


def _eval_quadrotor(cfg: DictConfig, policy: Policy, run_dir: Path) -> int:
    """RAPTOR's protocol: ``episodes`` held-out vehicles plus the presets (reference §11)."""
    from robolearn.algos.raptor.evaluate import HELD_OUT_SEED, evaluate_quadrotor

    _say(
        f"evaluating on {cfg.episodes} held-out vehicles (seeds {HELD_OUT_SEED}..) and the "
        "crazyflie and x500 presets"
    )
    result = evaluate_quadrotor(
        policy,
        vehicles=cfg.episodes,
        progress=cfg.progress,
        out_dir=run_dir,
        title=f"{policy.policy_type} on quadrotors",
    )
    held = result["held_out"]
    _say(
        f"survival {held['survival_rate']:.1%}, final error median "
        f"{100 * held['final_error']['median']:.1f} cm (mean "
        f"{100 * held['final_error']['mean']:.1f}, p90 {100 * held['final_error']['p90']:.1f})"
    )
    _say(f"report: {run_dir / 'report.md'}; plots and trajectories.mp4 in {run_dir}")
    return 0


REPLAY_TARGETS = ("sim", "ros", "policy")


def _replay_log(cfg: DictConfig) -> tuple[Path | None, Path | None]:
    """The EpisodeStore and the bag of ``log=``: a deploy run folder (``episodes.zarr`` and
    ``bag/``), a store, or a bag."""
    from robolearn.data.rosbag import is_bag

    log = Path(cfg.log)
    if is_bag(log):
        return None, log
    if (log / "episodes.zarr").exists():
        return log / "episodes.zarr", (log / "bag" if is_bag(log / "bag") else None)
    return log, None


def cmd_replay(cfg: DictConfig) -> int:
    target = cfg.to or ("policy" if cfg.policy.name == "checkpoint" else "sim")
    store_path, bag = _replay_log(cfg)
    if target == "ros":
        if bag is None:
            raise ConfigError(f"log={cfg.log}: to=ros needs a bag (a deploy run or a bag dir)")
        return _replay_to_ros(cfg, bag)
    if store_path is None:  # a bag alone: import it first
        from hw.logs import import_bag

        cfg.env.name = Path(cfg.log).name
        run_dir = make_run_dir(cfg, "replay")
        store = import_bag(bag, run_dir / "episodes.zarr", env_id=_bag_env_id(cfg, bag))
        _say(f"imported {bag} into {store.path}")
    else:
        store = EpisodeStore.open(store_path)
        run_dir = None
    if target == "policy":
        return _replay_policy(cfg, store, run_dir)
    return _replay_in_sim(cfg, store, run_dir)


def _bag_env_id(cfg: DictConfig, bag: Path) -> str:
    """The env of a bag: the one a robolearn bag records, else ``env.id``."""
    from robolearn.data.rosbag import CUSTOM_DATA_KEY, bag_custom_data

    custom = bag_custom_data(bag)
    if CUSTOM_DATA_KEY in custom:
        recorded = json.loads(custom[CUSTOM_DATA_KEY]).get("env_id")
        if recorded:
            return recorded
    return cfg.env.id


def _replay_in_sim(cfg: DictConfig, store: EpisodeStore, run_dir: Path | None) -> int:
    """Re-execute an episode's actions in simulation from its seed; divergence per step."""
    from robolearn.envs import make_env
    from robolearn.report import pyplot, save_figure, write_report, write_video

    if cfg.episode >= store.n_episodes:
        raise ConfigError(f"episode={cfg.episode}: {cfg.log} has {store.n_episodes} episodes")
    env_id = store.attrs.get("env_id")
    if env_id is None:
        raise StoreError(f"{store.path}: has no env_id attribute, so it cannot be replayed in sim")
    meta = store.episode_meta(cfg.episode)
    if "seed" not in meta or int(meta["seed"]) < 0:
        raise StoreError(f"{store.path}: episode {cfg.episode} has no recorded seed")
    if run_dir is None:
        cfg.env.name = env_id.split("/")[-1]
        run_dir = make_run_dir(cfg, "replay")
    episode = store.get_episode(cfg.episode)
    rendering = cfg.video_episodes > 0 and renders(env_id)
    render_kwargs = {"render_mode": "rgb_array"} if rendering else {}
    env = make_env(env_id, store.attrs.get("env_kwargs", {}), **render_kwargs)
    try:
        obs, _ = env.reset(seed=int(meta["seed"]))
        keys = [k for k in as_dict(obs) if k in episode]
        if not keys:
            raise StoreError(
                f"{store.path}: holds none of the env's observation keys {list(as_dict(obs))}"
            )
        errors: dict[str, list[float]] = {k: [] for k in keys}
        frames = [env.render()] if rendering else []
        actions = episode["action"]
        for t in range(len(actions)):
            current = as_dict(obs)
            for k in keys:
                diff = np.abs(np.asarray(current[k], dtype=np.float64) - episode[k][t])
                errors[k].append(float(diff.max()) if diff.size else 0.0)
            obs, _, terminated, truncated, _ = env.step(actions[t])
            if frames:
                frames.append(env.render())
            if (terminated or truncated) and t + 1 < len(actions):
                _say(f"warning: the replayed episode ended at step {t + 1} of {len(actions)}")
                break
        fps = store.attrs.get("control_hz") or control_hz(env)
    finally:
        env.close()
    video = write_video(run_dir / "replay.mp4", [np.stack(frames)] if frames else [], fps=fps)
    divergence = {
        k: {"max": max(v), "mean": float(np.mean(v)), "final": v[-1]} for k, v in errors.items()
    }
    worst = max(d["max"] for d in divergence.values())
    # The simulation can end the episode before the log does (a task reached one step earlier).
    replayed = len(next(iter(errors.values())))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, v in errors.items():
        ax.plot(np.arange(len(v)) / fps, v, label=k)
    ax.set(
        xlabel="time (s)",
        ylabel="max |sim - log| per key",
        title=f"replay of episode {cfg.episode}: simulation vs log",
    )
    if worst > 0:
        ax.set_yscale("symlog", linthresh=1e-6)
    ax.legend()
    save_figure(fig, run_dir / "divergence.png")
    summary = {
        "log": str(store.path),
        "episode": cfg.episode,
        "seed": int(meta["seed"]),
        "steps": len(actions),
        "replayed_steps": replayed,
        "max_divergence": worst,
        "final_divergence": max(d["final"] for d in divergence.values()),
        "divergence": divergence,
        "per_step": errors,
    }
    _, md_path = write_report(
        run_dir,
        f"replay of episode {cfg.episode} of {store.path}",
        summary,
        {
            "steps replayed / logged": f"{replayed} / {len(actions)}",
            "max divergence": worst,
            "final divergence": summary["final_divergence"],
            **{
                f"{k} max / final": f"{d['max']:.3g} / {d['final']:.3g}"
                for k, d in divergence.items()
            },
        },
    )
    per_key = ", ".join(f"{k} {d['max']:.2g}" for k, d in divergence.items())
    _say(
        f"replayed episode {cfg.episode} ({replayed} of {len(actions)} steps): "
        f"max divergence from the log {worst:.3g} ({per_key})"
    )
    if video is not None:
        _say(f"video: {video}")
    _say(f"report: {md_path}; plot: {run_dir / 'divergence.png'}")
    return 0


def _replay_policy(cfg: DictConfig, store: EpisodeStore, run_dir: Path | None) -> int:
    """Feed every logged observation to a policy; compare its actions with the logged ones."""
    from robolearn.report import pyplot, save_figure, write_report

    if cfg.episode >= store.n_episodes:
        raise ConfigError(f"episode={cfg.episode}: {cfg.log} has {store.n_episodes} episodes")
    policy = make_policy(cfg)
    obs_keys = store.attrs.get("observation_keys") or [
        k for k in store.keys if k not in NON_OBSERVATION_KEYS
    ]
    missing = [k for k in obs_keys if k not in store.keys]
    if missing:
        raise StoreError(f"{store.path}: lacks the observation keys {missing}")
    if run_dir is None:
        cfg.env.name = (store.attrs.get("env_id") or store.path.stem).split("/")[-1]
        run_dir = make_run_dir(cfg, "replay")
    per_episode, diffs = [], []
    plotted: tuple[np.ndarray, np.ndarray] | None = None
    for index in range(store.n_episodes):
        episode = store.get_episode(index)
        policy.reset(1)
        rerun = []
        for t in range(len(episode["action"])):
            obs = {k: episode[k][t][None] for k in obs_keys}
            if list(obs) == [FLAT_OBS_KEY]:
                obs = obs[FLAT_OBS_KEY]
            rerun.append(np.asarray(policy.act(obs), dtype=np.float32)[0])
        rerun_actions = np.stack(rerun)
        diff = np.abs(rerun_actions - episode["action"])
        diffs.append(diff)
        per_episode.append({"max": float(diff.max()), "mean": float(diff.mean())})
        if index == cfg.episode:
            plotted = (episode["action"], rerun_actions)
    all_diff = np.concatenate(diffs)
    summary = {
        "log": str(store.path),
        "policy": cfg.policy.get("path") or cfg.policy.name,
        "episodes": store.n_episodes,
        "steps": len(all_diff),
        "max_action_difference": float(all_diff.max()),
        "mean_action_difference": float(all_diff.mean()),
        "rmse_per_dim": np.sqrt(np.mean(all_diff**2, axis=0)).tolist(),
        "per_episode": per_episode,
    }
    assert plotted is not None
    logged, rerun_actions = plotted
    plt = pyplot()
    dims = logged.shape[1]
    fig, axes = plt.subplots(dims, 1, figsize=(7, 1.6 * dims + 0.6), sharex=True, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(logged[:, d], label="logged")
        ax.plot(rerun_actions[:, d], "--", label="policy re-run")
        ax.set_ylabel(f"action[{d}]")
    axes[0, 0].legend()
    axes[0, 0].set_title(f"episode {cfg.episode}: logged vs re-run actions")
    axes[-1, 0].set_xlabel("step")
    save_figure(fig, run_dir / "actions.png")
    _, md_path = write_report(
        run_dir,
        f"policy re-run on the observations of {store.path}",
        summary,
        {
            "episodes / steps": f"{store.n_episodes} / {len(all_diff)}",
            "max action difference": summary["max_action_difference"],
            "mean action difference": summary["mean_action_difference"],
            "RMSE per action dim": ", ".join(f"{x:.3g}" for x in summary["rmse_per_dim"]),
        },
    )
    _say(
        f"re-ran {summary['policy']} on {len(all_diff)} logged steps: action difference max "
        f"{summary['max_action_difference']:.3g}, mean {summary['mean_action_difference']:.3g}"
    )
    _say(f"report: {md_path}; plot: {run_dir / 'actions.png'}")
    return 0


def _replay_to_ros(cfg: DictConfig, bag: Path) -> int:
    """Publish a bag on ROS 2 topics at its recorded timing."""
    from hw.player import play_bag
    from robolearn.report import write_report

    cfg.env.name = bag.name
    run_dir = make_run_dir(cfg, "replay")
    _say(f"playing {bag} at {cfg.rate:g}x on ROS 2 (domain {cfg.hw.domain_id or 'ROS_DOMAIN_ID'})")
    summary = play_bag(bag, rate=float(cfg.rate), domain_id=cfg.hw.domain_id)
    summary["bag"] = str(bag)
    _, md_path = write_report(
        run_dir,
        f"{bag} played on ROS 2 topics",
        summary,
        {
            "messages": summary["messages"],
            "duration (s)": summary["duration_s"],
            "send lateness p50 / p99 (ms)": (
                f"{summary['late_ms_p50']:.2f} / {summary['late_ms_p99']:.2f}"
            ),
        },
    )
    _say(f"published {summary['messages']} messages on {len(summary['topics'])} topics; {md_path}")
    return 0


def cmd_import(cfg: DictConfig) -> int:
    from hw.logs import import_bag

    bag = Path(cfg.bag)
    cfg.env.name = f"import-{bag.name}"
    run_dir = make_run_dir(cfg, "import")
    env_id = _bag_env_id(cfg, bag)
    out = Path(cfg.out) if cfg.out is not None else run_dir / "episodes.zarr"
    from hw import HW_IDS, hw_robot

    hw_env = cfg.hw.env
    robot = hw_robot(HW_IDS[env_id]) if env_id in HW_IDS else "arm"
    kwargs: dict[str, Any] = {}
    if cfg.hw.get("robot", "arm") == robot:  # the hw config describes this robot's topics
        kwargs["topics"] = OmegaConf.to_container(hw_env.topics, resolve=True)
        if robot == "quadrotor":
            kwargs.update(
                {k: hw_env[k] for k in ("frame", "twist_in_body", "command_order")},
                target=list(hw_env.target),
                vehicle=_env_kwargs(cfg).get("params", "crazyflie"),
            )
    if robot == "arm":
        kwargs.update(
            use_yaw=bool(_env_kwargs(cfg).get("use_yaw", False)),
            pose_frames=list(hw_env.get("pose_frames") or ("world", "panda_link0")),
        )
    store = import_bag(bag, out, env_id=env_id, **kwargs)
    _say(
        f"imported {store.n_episodes} episodes ({store.n_steps} steps at "
        f"{store.attrs.get('control_hz')} Hz) of {env_id} from {bag} into {store.path}"
    )
    print(json.dumps(describe_store(store), indent=2, default=str))
    return 0


def cmd_deploy(cfg: DictConfig) -> int:
    from hw.deploy import deploy_policy

    cfg.env.name = f"{cfg.hw.name}-{cfg.env.name}"  # run folder runs/deploy/<time>-<hw>-<task>
    run_dir = make_run_dir(cfg, "deploy")
    _say(f"run folder: {run_dir}")
    policy = make_policy(cfg)
    hw_config = OmegaConf.to_container(cfg.hw, resolve=True)
    try:
        deploy_policy(
            policy,
            cfg.env.id,
            hw_config,  # type: ignore[arg-type]
            run_dir,
            episodes=cfg.episodes,
            seed=int(cfg.seed),
            env_kwargs=_env_kwargs(cfg),
            progress=cfg.progress,
            say=_say,
        )
    except RuntimeError as err:  # the stand-in died, an e-stop during reset, ...: one message
        if os.environ.get("ROBOLEARN_DEBUG"):
            raise
        print(f"robolearn deploy: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_info(cfg: DictConfig) -> int:
    store = EpisodeStore.open(cfg.store)
    print(json.dumps(describe_store(store), indent=2, default=str))
    return 0


def describe_store(store: EpisodeStore) -> dict[str, Any]:
    """Episodes, steps, keys with shapes and dtypes, success rate and control rate of a store."""
    info: dict[str, Any] = {
        "path": str(store.path),
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "mean_length": float(store.episode_lengths.mean()) if store.n_episodes else 0.0,
        "env_id": store.attrs.get("env_id"),
        "robot": (store.attrs.get("robot_spec") or {}).get("name"),
        "control_hz": store.attrs.get("control_hz"),
        "keys": _key_shapes(store),
    }
    if "success" in store.meta_keys and store.n_episodes:
        info["success_rate"] = float(np.mean(store.meta("success")))
    if "source" in store.meta_keys and store.n_episodes:
        sources, counts = np.unique(store.meta("source").astype(str), return_counts=True)
        info["sources"] = dict(zip(sources.tolist(), counts.tolist()))
    return info


def _key_shapes(store: EpisodeStore) -> dict[str, str]:
    """``key -> "dtype (steps, ...)"`` for every data key, read from the first episode."""
    if not store.n_episodes:
        return {key: "" for key in store.keys}
    first = store.get_episode(0)
    return {k: f"{v.dtype} {(store.n_steps, *v.shape[1:])}" for k, v in first.items()}


def _describe_space(space: Any) -> dict[str, Any]:
    if hasattr(space, "spaces"):
        return {k: _describe_space(v) for k, v in space.spaces.items()}
    return {"shape": list(space.shape), "dtype": str(space.dtype)}


TRAINERS = {"bc", "diffusion", "dsrl", "raptor"}
VERBS: dict[str, Callable[[DictConfig], int]] = {
    "record": cmd_record,
    "train": cmd_train,
    "eval": cmd_eval,
    "replay": cmd_replay,
    "import": cmd_import,
    "deploy": cmd_deploy,
    "info": cmd_info,
}
POSITIONAL = {"info": "store", "replay": "log", "import": "bag"}
#: Data keys of a store that are not observations.
NON_OBSERVATION_KEYS = {
    "action",
    "reward",
    "terminated",
    "timestamp",
    "stamp_ns",
    "obs_latency",
    "overrun",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robolearn`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    verb, overrides = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"robolearn: unknown verb {verb!r}; choose one of {sorted(VERBS)}", file=sys.stderr)
        return 2
    if verb in POSITIONAL and overrides and "=" not in overrides[0]:
        overrides[0] = f"{POSITIONAL[verb]}={overrides[0]}"
    try:
        cfg = resumed_config(overrides) or compose_config(overrides)
        validate(cfg, verb)
        import torch

        torch.set_num_threads(cfg.threads)
        return VERBS[verb](cfg)
    except ConfigError as err:
        print(f"robolearn {verb}: config error: {err}", file=sys.stderr)
        return 2
    except (StoreError, OSError, ValueError, KeyError, TypeError, ImportError) as err:
        # Anything a user can cause (bad data, a checkpoint for another env, a missing package)
        # ends in one line; ROBOLEARN_DEBUG=1 shows the traceback.
        if os.environ.get("ROBOLEARN_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"robolearn {verb}: error: {type(err).__name__}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
