"""RAPTOR exports: the numpy module and the gcc-compiled C header match the torch student."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from robolearn.algos.raptor import RaptorStudent, StudentPolicy
from robolearn.algos.raptor.export import export_c_header, export_numpy

STEPS = 200

C_DRIVER = r"""
#include <stdio.h>
#include "student.h"
#include "student.h" /* twice: the include guard must hold */

int main(void)
{
    float obs[22], hidden[16], action[4];
    raptor_student_reset(hidden);
    while (fread(obs, sizeof(float), 22, stdin) == 22) {
        raptor_student_step(obs, hidden, action);
        fwrite(action, sizeof(float), 4, stdout);
    }
    return 0;
}
"""


@pytest.fixture
def student() -> StudentPolicy:
    torch.manual_seed(0)
    model = RaptorStudent()
    with torch.no_grad():
        model.initial_hidden.normal_(0, 0.5)
        model.initial_hidden[:4] = 0.0  # integral values must still print as float literals
        model.output_layer.weight.mul_(4)
        model.output_layer.bias[0] = 1.0
    return StudentPolicy(model)


def torch_actions(student: StudentPolicy, obs: np.ndarray) -> np.ndarray:
    """Raw torch outputs for obs (B, T, 22), from the learned initial state."""
    with torch.no_grad():
        return student.model(torch.from_numpy(obs))[0].numpy()


def random_observations(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, STEPS, 22)).astype(np.float32)


def test_numpy_module_matches_torch(student, tmp_path):
    path = export_numpy(student, tmp_path / "raptor_policy.py")
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"base64", "numpy"}  # standard library base64 plus numpy only
    spec = importlib.util.spec_from_file_location("raptor_policy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    obs = random_observations(3, seed=1)
    expected = torch_actions(student, obs)
    exported = module.RaptorStudentNumpy()
    for _ in range(2):  # reset really restarts from the learned initial state
        exported.reset(3)
        actions = np.stack([exported.step(obs[:, t]) for t in range(STEPS)], 1)
        assert actions.dtype == np.float32
        np.testing.assert_allclose(actions, expected, atol=1e-5, rtol=0)


def test_c_header_matches_torch(student, tmp_path):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required for the C export test"
    export_c_header(student, tmp_path / "student.h")
    (tmp_path / "driver.c").write_text(C_DRIVER)
    flags = ["-O2", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"]
    subprocess.run([gcc, *flags, "driver.c", "-o", "driver", "-lm"], cwd=tmp_path, check=True)
    obs = random_observations(1, seed=2)
    out = subprocess.run(
        [str(Path(tmp_path) / "driver")], input=obs[0].tobytes(), capture_output=True, check=True
    ).stdout
    actions = np.frombuffer(out, dtype=np.float32).reshape(STEPS, 4)
    np.testing.assert_allclose(actions, torch_actions(student, obs)[0], atol=1e-5, rtol=0)


def test_c_header_rejects_a_bad_prefix(student, tmp_path):
    with pytest.raises(ValueError, match="C identifier"):
        export_c_header(student, tmp_path / "x.h", prefix="not-valid")
