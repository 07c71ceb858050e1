"""DSRL: steer a frozen diffusion policy by reinforcement learning over its initial noise.

* ``envs`` — the chunk-level env and the noise-action env (the latent-action MDP);
* ``algorithms`` — DSRL-SAC and DSRL-NA as stable-baselines3 algorithms;
* ``steered`` — the steered policy (base + noise actor) as one robolearn Policy;
* ``train`` — the run: budget in env steps, evaluation, curves, checkpoints, resume.
"""

from robolearn.algos.dsrl.algorithms import DSRLNA, DSRLSAC
from robolearn.algos.dsrl.envs import ChunkedEnv, NoiseActionVecEnv, make_chunked_vec_env
from robolearn.algos.dsrl.steered import NoiseActor, SteeredPolicy
from robolearn.algos.dsrl.train import DSRLConfig, train_dsrl

__all__ = [
    "DSRLNA",
    "DSRLSAC",
    "ChunkedEnv",
    "DSRLConfig",
    "NoiseActionVecEnv",
    "NoiseActor",
    "SteeredPolicy",
    "make_chunked_vec_env",
    "train_dsrl",
]
