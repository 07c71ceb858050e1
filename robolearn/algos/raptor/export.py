"""Export a RAPTOR student for deployment without torch: a numpy module or a C99 header.

Both exports are the bare network: ``step`` returns the *raw* output, exactly what the torch
``RaptorStudent.step`` returns. The deployment loop clips it to [-1, 1] before it reaches the
motors (u = (a + 1) / 2) and feeds the raw value back as the next previous-action input, as
RAPTOR was trained (reference raptor.md, section 4).

* ``export_numpy``: one Python file importing only numpy, weights embedded as base64
  little-endian float32 (bit-exact), class ``RaptorStudentNumpy`` with ``reset``/``step``.
* ``export_c_header``: one C99 header, weights as ``static const float`` arrays printed with
  9 significant digits (float32 round-trips exactly), ``<prefix>_reset(hidden)`` and
  ``<prefix>_step(obs, hidden, action)``, <math.h> only, no allocation, no global state (the
  caller owns the hidden state, so one header serves any number of vehicles).
"""

from __future__ import annotations

import base64
import inspect
import re
from pathlib import Path

import numpy as np

from robolearn.algos.raptor.student import (
    ACTION_DIM,
    HIDDEN_DIM,
    OBS_DIM,
    RaptorStudent,
    StudentPolicy,
    numpy_step,
    student_weights,
)

_NUMPY_MODULE = '''"""RAPTOR student (Dense 22->16 ReLU, GRU 16, Dense 16->4) exported by robolearn.

Standalone: needs only numpy. ``step`` returns the raw network output; clip it to [-1, 1]
before sending it to the motors and feed the raw value back as the previous action.
Motor order [front-right, back-right, back-left, front-left].
"""

import base64

import numpy as np

_SHAPES = {shapes!r}
_DATA = {data!r}


def _load(name):
    flat = np.frombuffer(base64.b64decode(_DATA[name]), dtype="<f4")
    return flat.reshape(_SHAPES[name]).astype(np.float32)


{numpy_step}

class RaptorStudentNumpy:
    """The exported student. Observation (B, {obs_dim}) float32 -> raw action (B, {action_dim})."""

    def __init__(self):
        self.weights = {{name: _load(name) for name in _SHAPES}}
        self.hidden = None

    def reset(self, batch_size=1):
        """Start ``batch_size`` episodes from the learned initial hidden state."""
        self.hidden = np.tile(self.weights["initial_hidden"], (batch_size, 1))

    def step(self, obs):
        """Advance the hidden state by one step (100 Hz) and return the raw actions (B, 4)."""
        x = np.asarray(obs, dtype=np.float32)
        if self.hidden is None:
            self.reset(len(x))
        action, self.hidden = numpy_step(self.weights, x, self.hidden)
        return action
'''


def export_numpy(policy: StudentPolicy | RaptorStudent, path: str | Path) -> Path:
    """Write ``policy``'s network as a standalone numpy-only module at ``path``; returns it.

    Import it (e.g. with ``importlib``) and use ``RaptorStudentNumpy().reset(B)`` / ``.step``.
    """
    weights = student_weights(policy)
    text = _NUMPY_MODULE.format(
        shapes={k: list(v.shape) for k, v in weights.items()},
        data={k: base64.b64encode(v.astype("<f4").tobytes()).decode() for k, v in weights.items()},
        obs_dim=OBS_DIM,
        action_dim=ACTION_DIM,
        # The very function StudentPolicy steps with on the CPU: one implementation of both.
        numpy_step=inspect.getsource(numpy_step),
    )
    path = Path(path)
    path.write_text(text)
    return path


def _c_array(name: str, values: np.ndarray) -> str:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds non-finite weights, which C literals cannot express")
    # 9 significant digits round-trip every float32 exactly; the exponent form is a floating
    # literal even for integral values (0f is not C), and the f suffix keeps it single.
    items = [f"{float(v):.8e}f" for v in values.ravel()]
    rows = [", ".join(items[i : i + 6]) for i in range(0, len(items), 6)]
    body = ",\n    ".join(rows)
    return f"static const float {name}[{len(items)}] = {{\n    {body}\n}};\n"


_C_FUNCTIONS = """
/* Load the learned initial hidden state: call at the start of every flight (engage). */
static void {p}_reset(float hidden[{h}])
{{
    int i;
    for (i = 0; i < {h}; ++i) hidden[i] = {p}_initial_hidden[i];
}}

static float {p}_sigmoid(float x) {{ return 1.0f / (1.0f + expf(-x)); }}

/* One 100 Hz step: obs[{o}] (FLU: p error, R row-major, v error, body rates, previous raw
   action), hidden[{h}] updated in place, action[{a}] = raw output (clip to [-1, 1] for the
   motors, feed the raw value back). Motor order FR, BR, BL, FL. */
static void {p}_step(const float obs[{o}], float hidden[{h}], float action[{a}])
{{
    float x[{h}], gi[{g}], gh[{g}], next[{h}];
    int i, j;
    for (i = 0; i < {h}; ++i) {{
        float acc = {p}_input_bias[i];
        for (j = 0; j < {o}; ++j) acc += {p}_input_weight[i * {o} + j] * obs[j];
        x[i] = acc > 0.0f ? acc : 0.0f;
    }}
    for (i = 0; i < {g}; ++i) {{
        float acc_i = {p}_gru_bias_ih[i], acc_h = {p}_gru_bias_hh[i];
        for (j = 0; j < {h}; ++j) {{
            acc_i += {p}_gru_weight_ih[i * {h} + j] * x[j];
            acc_h += {p}_gru_weight_hh[i * {h} + j] * hidden[j];
        }}
        gi[i] = acc_i;
        gh[i] = acc_h;
    }}
    /* Gates stacked (r, z, n) as in PyTorch; b_hn stays inside r * (.). */
    for (i = 0; i < {h}; ++i) {{
        float r = {p}_sigmoid(gi[i] + gh[i]);
        float z = {p}_sigmoid(gi[{h} + i] + gh[{h} + i]);
        float n = tanhf(gi[{h2} + i] + r * gh[{h2} + i]);
        next[i] = z * hidden[i] + (1.0f - z) * n;
    }}
    for (i = 0; i < {h}; ++i) hidden[i] = next[i];
    for (i = 0; i < {a}; ++i) {{
        float acc = {p}_output_bias[i];
        for (j = 0; j < {h}; ++j) acc += {p}_output_weight[i * {h} + j] * hidden[j];
        action[i] = acc;
    }}
}}
"""


def export_c_header(
    policy: StudentPolicy | RaptorStudent, path: str | Path, prefix: str = "raptor_student"
) -> Path:
    """Write ``policy``'s network as a self-contained C99 header at ``path``; returns it.

    Functions: ``<prefix>_reset(float hidden[16])`` and
    ``<prefix>_step(const float obs[22], float hidden[16], float action[4])``. Link with -lm.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise ValueError(f"prefix {prefix!r} is not a C identifier")
    guard = f"{prefix.upper()}_H"
    parts = [
        f"/* RAPTOR student policy exported by robolearn: Dense({OBS_DIM}->{HIDDEN_DIM}, ReLU),"
        f" GRU({HIDDEN_DIM}), Dense({HIDDEN_DIM}->{ACTION_DIM}). C99, <math.h> only. */\n",
        f"#ifndef {guard}\n#define {guard}\n\n#include <math.h>\n\n",
    ]
    parts += [_c_array(f"{prefix}_{k}", v) + "\n" for k, v in student_weights(policy).items()]
    parts.append(
        _C_FUNCTIONS.format(
            p=prefix, o=OBS_DIM, h=HIDDEN_DIM, h2=2 * HIDDEN_DIM, g=3 * HIDDEN_DIM, a=ACTION_DIM
        )
    )
    parts.append(f"\n#endif /* {guard} */\n")
    path = Path(path)
    path.write_text("".join(parts))
    return path
