"""The released RAPTOR checkpoint as a robolearn policy (baseline for the student).

``ReleasedRaptorPolicy`` wraps ``foundation_policy.Raptor`` (the ``baselines`` extra), which
ships its own weights, so a checkpoint of it is ``policy.json`` alone. Facts about that
package (1.0.2) the wrapper accounts for:

* ``Raptor.reset()`` only forgets the hidden state; the next ``evaluate_step`` tiles the
  learned initial state to that call's batch. A later call with another batch size would
  broadcast silently, so ``act`` checks the batch against ``reset(batch_size)``.
* ``evaluate_step`` returns the raw network output: no clipping, dtype of the input.
* Its deployed input contract clips the position and velocity errors to +-0.5 m and
  +-1 m/s (reference raptor.md, section 11: 97% of sampled vehicles stabilise with the clip,
  64% without), and feeds back the raw previous action (section 4). Both are on by default.

``released_student`` copies the released weights into our ``StudentPolicy`` (same layout and
gate order), which makes the released policy exportable with ``robolearn.algos.raptor.export``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robolearn.algos.raptor.student import (
    RaptorStudent,
    StudentPolicy,
    flat_observation,
    prepare_observation,
)
from robolearn.policy import Observation, Policy

#: Input clip of the deployed released policy: position error (m), velocity error (m/s).
POSITION_CLIP = 0.5
VELOCITY_CLIP = 1.0
POSITION = slice(0, 3)
VELOCITY = slice(12, 15)


def load_released_model() -> Any:
    """A fresh ``foundation_policy.Raptor`` (stateful), or an ImportError naming the extra."""
    try:
        from foundation_policy import Raptor
    except ImportError as err:
        raise ImportError(
            "the released RAPTOR policy needs the `foundation-policy` package: "
            "pip install 'robolearn[baselines]'"
        ) from err
    return Raptor()


def clip_errors(x: np.ndarray) -> np.ndarray:
    """Clip the position and velocity errors of (B, 22) observations in place, as PX4 does."""
    np.clip(x[:, POSITION], -POSITION_CLIP, POSITION_CLIP, out=x[:, POSITION])
    np.clip(x[:, VELOCITY], -VELOCITY_CLIP, VELOCITY_CLIP, out=x[:, VELOCITY])
    return x


class ReleasedRaptorPolicy(Policy):
    """The released 2084-parameter RAPTOR policy (checkpoint 2025-04-19) behind the Policy API.

    ``act`` takes (B, 22) observations (or ``{"obs": ...}``) and returns (B, 4) float32 motor
    commands clipped to [-1, 1]; ``raw_action`` holds the unclipped output of the last step.
    """

    policy_type = "raptor_released"

    def __init__(self, clip_inputs: bool = True, raw_action_feedback: bool = True) -> None:
        self.clip_inputs = clip_inputs
        self.raw_action_feedback = raw_action_feedback
        self.model = load_released_model()
        self.batch_size: int | None = None
        self.raw_action: np.ndarray | None = None

    def reset(self, batch_size: int = 1) -> None:
        """Start ``batch_size`` episodes from the released learned initial hidden state."""
        self.model.reset()
        self.batch_size = batch_size
        self.raw_action = None

    def act(self, obs: Observation) -> np.ndarray:
        """(B, 22) observations -> (B, 4) float32 actions in [-1, 1]; advances the hidden state."""
        if self.batch_size is None:
            self.reset(len(flat_observation(obs)))
        x = prepare_observation(obs, self.batch_size, self.raw_action, self.raw_action_feedback)
        if self.clip_inputs:
            clip_errors(x)
        self.raw_action = np.asarray(self.model.evaluate_step(x), dtype=np.float32)
        return np.clip(self.raw_action, -1.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"clip_inputs": self.clip_inputs, "raw_action_feedback": self.raw_action_feedback}


def released_student(device: str = "cpu") -> StudentPolicy:
    """Our ``StudentPolicy`` holding the released checkpoint's weights (no input clipping).

    The released Sequential is Dense(22->16, ReLU), GRU(16), Dense(16->4, identity) with GRU
    gates stacked (r, z, n), the layout of ``torch.nn.GRU``, so tensors copy one to one.
    """
    dense_in, gru, dense_out = load_released_model().layers
    model = RaptorStudent()
    weights = {
        "input_layer.weight": dense_in.weights,
        "input_layer.bias": dense_in.biases,
        "gru.weight_ih_l0": gru.weights_input,
        "gru.weight_hh_l0": gru.weights_hidden,
        "gru.bias_ih_l0": gru.biases_input,
        "gru.bias_hh_l0": gru.biases_hidden,
        "output_layer.weight": dense_out.weights,
        "output_layer.bias": dense_out.biases,
        "initial_hidden": gru.initial_hidden_state,
    }
    # The package stores biases as (1, n) rows and the initial state may carry a batch axis.
    model.load_state_dict(
        {
            k: torch.as_tensor(np.asarray(v, np.float32)).reshape(model.state_dict()[k].shape)
            for k, v in weights.items()
        }
    )
    return StudentPolicy(model, device=device)
