"""The shipped student (``policy=pretrained:quadrotor``): it loads through the Policy API, flies
vehicles it never saw and the nominal Crazyflie from a cold start, and its shipped exports are
the same network."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from robolearn.algos.raptor import StudentPolicy
from robolearn.algos.raptor.evaluate import HELD_OUT_SEED, fly
from robolearn.policy import load_policy, resolve_checkpoint

NAME = "pretrained:quadrotor"


@pytest.fixture(scope="module")
def student() -> StudentPolicy:
    policy = load_policy(NAME)
    assert isinstance(policy, StudentPolicy)
    return policy


def test_shipped_student_is_the_raptor_student_with_its_report(student):
    assert sum(p.numel() for p in student.model.parameters()) == 2084
    report = (resolve_checkpoint(NAME) / "report.md").read_text()
    assert "| held-out survival (%) |" in report and "released" in report


def test_shipped_student_flies_vehicles_it_never_saw(student):
    # 40 held-out vehicles from RAPTOR's initial states, 5 s each (the protocol's first 40 of
    # 300: 98% survival, median final error 2.17 cm over all 300).
    flight = fly(student, range(HELD_OUT_SEED, HELD_OUT_SEED + 40), steps=500)
    assert flight.survived.mean() >= 0.9
    assert np.nanmedian(flight.final_errors) < 0.06
    # An untrained student, on the same vehicles, holds none of them.
    untrained = fly(StudentPolicy(), range(HELD_OUT_SEED, HELD_OUT_SEED + 40), steps=500)
    assert untrained.survived.mean() < 0.2


def test_shipped_student_hovers_the_crazyflie_from_a_cold_start(student):
    # Motors off at the target: the protocol measured 1.65 cm over the last second.
    flight = fly(student, [HELD_OUT_SEED], steps=500, params="crazyflie", init="motors_off")
    assert flight.survived.all() and flight.final_errors[0] < 0.05


def test_shipped_numpy_export_is_the_shipped_checkpoint(student):
    path = resolve_checkpoint(NAME) / "raptor_student.py"
    spec = importlib.util.spec_from_file_location("shipped_student", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    obs = np.random.default_rng(0).normal(scale=0.3, size=(2, 50, 22)).astype(np.float32)
    with torch.no_grad():
        expected = student.model(torch.from_numpy(obs))[0].numpy()
    exported = module.RaptorStudentNumpy()
    exported.reset(2)
    actions = np.stack([exported.step(obs[:, t]) for t in range(obs.shape[1])], 1)
    np.testing.assert_allclose(actions, expected, atol=1e-5, rtol=0)
