"""The RAPTOR student: Dense(22->16, ReLU) -> GRU(16) -> Dense(16->4), 2084 parameters.

``RaptorStudent`` is the torch module (sequence forward for BPTT over whole episodes, and a
single step); ``StudentPolicy`` wraps it in the robolearn ``Policy`` API with the hidden state
kept inside. The layer layout and GRU gate order (r, z, n; PyTorch convention) are the ones of
the released checkpoint, so its weights load unchanged (see ``baseline.released_student``).

Observation (22-D, float32, FLU): position error (3), rotation matrix row-major (9), velocity
error (3), body rates (3), previous raw action (4). Action: 4 normalised motor commands,
motor order [front-right, back-right, back-left, front-left].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from robolearn.nets.gru import gru_sequence
from robolearn.policy import (
    FLAT_OBS_KEY,
    WEIGHTS_FILE,
    Observation,
    Policy,
    as_dict,
    read_policy_file,
)
from robolearn.utils import resolve_device

OBS_DIM = 22
HIDDEN_DIM = 16
ACTION_DIM = 4
#: Columns of the observation that hold the previous action.
PREV_ACTION = slice(18, 22)


class RaptorStudent(nn.Module):
    """Dense(22->16, ReLU) -> GRU(16) -> Dense(16->4, identity), plus a learned initial state.

    There is no output squashing: as in RAPTOR, the raw output is fed back as the next
    previous-action input and only the environment (or ``StudentPolicy``) clips it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Linear(OBS_DIM, HIDDEN_DIM)
        # nn.GRU implements exactly the RAPTOR cell: gates stacked (r, z, n), with b_hn inside r*(.)
        self.gru = nn.GRU(HIDDEN_DIM, HIDDEN_DIM, batch_first=True)
        self.output_layer = nn.Linear(HIDDEN_DIM, ACTION_DIM)
        self.initial_hidden = nn.Parameter(torch.zeros(HIDDEN_DIM))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """The learned initial hidden state repeated for ``batch_size`` episodes: (B, 16)."""
        return self.initial_hidden.expand(batch_size, HIDDEN_DIM)

    def forward(
        self, obs: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run whole sequences (for BPTT): obs (B, T, 22), hidden (B, 16) or None (learned start).

        Returns raw actions (B, T, 4) and the final hidden state (B, 16).
        """
        if hidden is None:
            hidden = self.initial_state(obs.shape[0])
        features = torch.relu(self.input_layer(obs))
        if features.device.type == "cpu":
            # The same GRU with a hand-written backward pass, ~4x faster on a CPU.
            out, last = gru_sequence(self.gru, features, hidden)
        else:
            out, last = self.gru(features, hidden.unsqueeze(0).contiguous())
            last = last.squeeze(0)
        return self.output_layer(out), last

    def step(self, obs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One control step: obs (B, 22), hidden (B, 16) -> raw action (B, 4), hidden (B, 16)."""
        gru = self.gru
        features = F.linear(obs, self.input_layer.weight, self.input_layer.bias).relu()
        # torch.gru_cell is the cell nn.GRU applies per time step; calling it and F.linear
        # directly skips the module-call overhead that dominates at batch 1 (about 2x faster).
        hidden = torch.gru_cell(
            features, hidden, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
        )
        return F.linear(hidden, self.output_layer.weight, self.output_layer.bias), hidden


def student_weights(student: StudentPolicy | RaptorStudent) -> dict[str, np.ndarray]:
    """The student's tensors as float32 numpy arrays, named by layer (C-ordered, row = output)."""
    model = student.model if isinstance(student, StudentPolicy) else student
    gru = model.gru
    tensors: dict[str, torch.Tensor] = {
        "input_weight": model.input_layer.weight,
        "input_bias": model.input_layer.bias,
        "gru_weight_ih": gru.weight_ih_l0,
        "gru_weight_hh": gru.weight_hh_l0,
        "gru_bias_ih": gru.bias_ih_l0,
        "gru_bias_hh": gru.bias_hh_l0,
        "output_weight": model.output_layer.weight,
        "output_bias": model.output_layer.bias,
        "initial_hidden": model.initial_hidden,
    }
    return {
        k: np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32)
        for k, v in tensors.items()
    }


def numpy_step(
    weights: dict[str, np.ndarray], obs: np.ndarray, hidden: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the student in numpy float32, the arithmetic of ``RaptorStudent.step``:
    ``weights`` from ``student_weights``, obs (B, 22), hidden (B, 16) -> raw action (B, 4),
    hidden (B, 16). The numpy export runs this very function."""
    w = weights
    n = hidden.shape[1]
    x = np.maximum(obs @ w["input_weight"].T + w["input_bias"], np.float32(0))
    gi = x @ w["gru_weight_ih"].T + w["gru_bias_ih"]
    gh = hidden @ w["gru_weight_hh"].T + w["gru_bias_hh"]
    with np.errstate(over="ignore"):  # exp(-x) -> inf far below 0, where the gate is 0
        rz = np.float32(1) / (np.float32(1) + np.exp(-(gi[:, : 2 * n] + gh[:, : 2 * n])))
    r, z = rz[:, :n], rz[:, n:]
    candidate = np.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
    hidden = z * hidden + (np.float32(1) - z) * candidate
    return hidden @ w["output_weight"].T + w["output_bias"], hidden


class StudentPolicy(Policy):
    """The student as a robolearn policy: batched numpy in, clipped actions in [-1, 1] out.

    RAPTOR feeds the *raw* (unclipped) output back as the previous-action input, while an env
    can only record the clipped action it received. With ``raw_action_feedback`` (the default)
    the policy therefore overwrites the previous-action columns with its own raw output from
    the second step after ``reset`` on, so the network sees what it was trained on whatever the
    env records; when no output saturates this changes nothing. The first step uses the env's
    value (the env's reset action). ``raw_action`` holds the last raw output and
    ``network_input`` the last observation the network actually saw (for relabelling).

    On the CPU, episodes of up to ``NUMPY_MAX_BATCH`` vehicles (a deployment) step in numpy
    (:func:`numpy_step`, on the weights as of ``reset``): torch releases the GIL around every
    op, and in a process whose ROS executor thread competes for it each release can cost the
    step up to the interpreter's switch interval. On the stand-in Crazyflie the torch step
    overran the 100 Hz loop 1.2-2.5x as often as this one (two runs of 20 episodes).
    """

    policy_type = "raptor_student"
    #: Largest batch stepped in numpy on the CPU (larger ones, e.g. evaluations, use torch).
    NUMPY_MAX_BATCH = 8

    def __init__(
        self,
        model: RaptorStudent | None = None,
        raw_action_feedback: bool = True,
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(resolve_device(device))
        self.model = (model if model is not None else RaptorStudent()).to(self.device)
        self.raw_action_feedback = raw_action_feedback
        self.hidden: torch.Tensor | np.ndarray | None = None
        self.raw_action: np.ndarray | None = None
        self.network_input: np.ndarray | None = None
        self._numpy_weights: dict[str, np.ndarray] | None = None  # set: step in numpy

    def reset(self, batch_size: int = 1) -> None:
        """Start ``batch_size`` episodes from the learned initial hidden state."""
        if self.device.type == "cpu" and batch_size <= self.NUMPY_MAX_BATCH:
            self._numpy_weights = student_weights(self.model)
            self.hidden = np.tile(self._numpy_weights["initial_hidden"], (batch_size, 1))
        else:
            self._numpy_weights = None
            with torch.no_grad():
                self.hidden = self.model.initial_state(batch_size).clone()
        self.raw_action = None
        self.network_input = None

    @torch.no_grad()
    def act(self, obs: Observation) -> np.ndarray:
        """(B, 22) observations (or ``{"obs": (B, 22)}``) -> (B, 4) float32 actions in [-1, 1]."""
        if self.hidden is None:
            self.reset(len(flat_observation(obs)))
        x = prepare_observation(obs, len(self.hidden), self.raw_action, self.raw_action_feedback)
        if self._numpy_weights is not None:
            self.raw_action, self.hidden = numpy_step(self._numpy_weights, x, self.hidden)
        else:
            action, self.hidden = self.model.step(torch.from_numpy(x).to(self.device), self.hidden)
            self.raw_action = action.cpu().numpy()
        self.network_input = x
        return np.clip(self.raw_action, -1.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"raw_action_feedback": self.raw_action_feedback}

    def save(self, path: str | Path) -> Path:
        path = super().save(path)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(weights, str(path / WEIGHTS_FILE))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> StudentPolicy:
        path = Path(path)
        policy = cls(**read_policy_file(path)["config"], device=device)
        policy.model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=str(policy.device)))
        return policy


def flat_observation(obs: Observation) -> np.ndarray:
    """The flat (B, 22) observation array, from an array or ``{"obs": array}``."""
    obs = as_dict(obs)
    if FLAT_OBS_KEY not in obs:
        raise KeyError(f"observation lacks key {FLAT_OBS_KEY!r} (the flat 22-D quadrotor vector)")
    return obs[FLAT_OBS_KEY]


def prepare_observation(
    obs: Observation, batch_size: int, raw_action: np.ndarray | None, raw_action_feedback: bool
) -> np.ndarray:
    """The (B, 22) float32 network input, checked against ``batch_size``, with raw-action feedback.

    Shared by the student and the released-policy baseline, which have the same input contract.
    """
    # A copy: the feedback below must not write into the caller's observation.
    x = np.array(flat_observation(obs), dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != OBS_DIM:
        raise ValueError(f"expected observations of shape (B, {OBS_DIM}), got {x.shape}")
    if len(x) != batch_size:
        raise ValueError(f"observation batch {len(x)} differs from reset(batch_size={batch_size})")
    if raw_action_feedback and raw_action is not None:
        x[:, PREV_ACTION] = raw_action
    return x
