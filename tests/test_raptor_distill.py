"""Distillation: a short run on a toy vehicle family lowers the imitation loss and the student
flies better than an untrained one; the steady-state position correction removes the teachers'
hover offsets; an interrupted run resumes exactly. (The closed loop on real teachers is in the
teacher tests.)
"""

from __future__ import annotations

import os

import pytest
import torch

from robolearn.algos.raptor.distill import DistillConfig, collect, distill, steady_state_offsets
from robolearn.algos.raptor.student import RaptorStudent


class ToyFleet:
    """N 1-D vehicles with different actuator gains, each flown in ``k`` rows side by side (row
    ``j`` is vehicle ``j % N``); the student sees position and its last action (columns 0 and
    18) and must infer the gain; reward 1 - |x|."""

    def __init__(self, n: int = 8, k: int = 1) -> None:
        self.num_envs = n * k
        self.gain = torch.linspace(0.5, 2.0, n).repeat(k)
        self.generator = torch.Generator().manual_seed(0)
        self.x = torch.zeros(n)
        self.prev = torch.zeros(n)
        self.force = torch.zeros(self.num_envs, 3)  # no disturbance (PushedFleet has one)

    def reset(self, mask=None):
        self.x = torch.rand(self.num_envs, generator=self.generator) * 2 - 1
        self.prev = torch.zeros(self.num_envs)
        return self._teacher_obs()

    def _teacher_obs(self):
        return torch.stack([self.x, self.gain], 1)

    def student_observation(self):
        obs = torch.zeros(self.num_envs, 22)
        obs[:, 0], obs[:, 18] = self.x, self.prev
        return obs

    def step(self, action):
        a = action[:, 0].clamp(-1, 1)
        self.x = self.x + 0.2 * self.gain * a
        self.prev = action[:, 0]
        done = torch.zeros(self.num_envs, dtype=torch.bool)
        return self._teacher_obs(), 1 - self.x.abs(), done, done


class PushedFleet(ToyFleet):
    """ToyFleet with a constant push along x per episode, ``force[:, 0]`` in (-0.4, 0.4), which
    the weakest vehicle can still hold against: a dead-beat teacher then hovers ``0.2 * force``
    from where it would."""

    def reset(self, mask=None):
        obs = super().reset(mask)
        self.force = torch.zeros(self.num_envs, 3)
        self.force[:, 0] = (torch.rand(self.num_envs, generator=self.generator) * 2 - 1) * 0.4
        return obs

    def step(self, action):
        self.x = self.x + 0.2 * self.force[:, 0]
        return super().step(action)


class ToyTeachers:
    """Dead-beat controllers that know their vehicle's gain."""

    num_teachers = 8

    def act(self, teacher_obs):
        x, gain = teacher_obs[:, 0], teacher_obs[:, 1]
        action = (-x / (0.2 * gain)).clamp(-1, 1)
        return action[:, None].expand(-1, 4).clone()


def toy_config(**overrides) -> DistillConfig:
    cfg = dict(
        epochs=30,
        teacher_forcing_epochs=5,
        episodes_per_teacher=4,
        episode_steps=40,
        batch_episodes=8,
        lr=1e-2,
    )
    return DistillConfig(**(cfg | overrides))


@pytest.mark.parametrize("side_by_side", [1, 4])
def test_distillation_imitates_and_flies(side_by_side):
    torch.manual_seed(0)
    env, teachers = ToyFleet(k=side_by_side), ToyTeachers()
    untrained = collect(env, teachers, RaptorStudent(), steps=40).returns.mean()
    teacher = collect(env, teachers, None, steps=40).returns.mean()
    policy, curves = distill(env, teachers, toy_config(), progress=False)
    assert curves["loss"][-1] < 0.5 * curves["loss"][0]
    assert curves["on_policy"][:5] == [0.0] * 5 and curves["on_policy"][-1] == 1.0
    flown = collect(env, teachers, policy.model, steps=40).returns.mean()
    assert flown > untrained + 0.5 * (teacher - untrained), (flown, untrained, teacher)


class CrashingFleet(ToyFleet):
    """Half the vehicles crash at step 5 and their states turn to NaN afterwards."""

    def reset(self, mask=None):
        self.t = 0
        return super().reset(mask)

    def step(self, action):
        obs, reward, _, truncated = super().step(action)
        self.t += 1
        crashed = torch.arange(self.num_envs) % 2 == 0
        if self.t >= 5:
            self.x = torch.where(crashed, torch.nan, self.x)
        terminated = crashed & (self.t == 5)
        return self._teacher_obs(), torch.nan_to_num(reward), terminated, truncated


def test_crashed_vehicles_do_not_poison_training():
    torch.manual_seed(0)
    cfg = DistillConfig(
        epochs=4,
        teacher_forcing_epochs=1,
        episodes_per_teacher=2,
        episode_steps=20,
        batch_episodes=8,
        lr=1e-2,
    )
    policy, curves = distill(CrashingFleet(), ToyTeachers(), cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(curves["loss"])))
    assert all(torch.isfinite(p).all() for p in policy.model.parameters())


def test_crash_replay_keeps_the_newest_crashes_and_resumes_exactly(tmp_path):
    """Half the rows crash in every collection (8 crashed episodes per epoch): the replay holds
    the newest ``crash_replay`` of them, checkpointed with the run."""
    from robolearn.training import Checkpointer

    def cfg(epochs: int) -> DistillConfig:
        return DistillConfig(
            epochs=epochs,
            teacher_forcing_epochs=1,
            episodes_per_teacher=2,
            episode_steps=20,
            batch_episodes=8,
            lr=1e-2,
            crash_replay=6,
        )

    _, straight = distill(CrashingFleet(), ToyTeachers(), cfg(4), tmp_path / "a", progress=False)
    assert straight["student_survival"] == [0.5] * 4
    crashes = Checkpointer(tmp_path / "a").load_state()["crashes"]
    assert len(crashes.obs) == 6 and not crashes.survived.any()
    assert crashes.mask[:, :5].all() and not crashes.mask[:, 5:].any()  # crashed at step 5
    distill(CrashingFleet(), ToyTeachers(), cfg(2), tmp_path / "b", progress=False)
    _, resumed = distill(CrashingFleet(), ToyTeachers(), cfg(4), tmp_path / "b", progress=False)
    assert resumed == straight


def test_a_checkpoint_from_before_crash_replay_resumes(tmp_path):
    import math

    from robolearn.training import Checkpointer

    distill(ToyFleet(), ToyTeachers(), toy_config(epochs=2), tmp_path, progress=False)
    checkpointer = Checkpointer(tmp_path)
    state = checkpointer.load_state()
    # as an older version saved it
    del state["crashes"], state["curves"]["student_survival"], state["epoch_students"]
    torch.save(state, checkpointer.latest() / Checkpointer.STATE_FILE)
    _, curves = distill(
        ToyFleet(), ToyTeachers(), toy_config(epochs=3, crash_replay=4), tmp_path, progress=False
    )
    assert len(curves["loss"]) == 3
    assert all(map(math.isnan, curves["student_survival"][:2]))
    assert curves["student_survival"][2] == 1.0
    epoch_students = checkpointer.load_state()["epoch_students"]
    assert epoch_students[:2] == [None, None] and epoch_students[2] is not None


def test_every_epoch_student_is_kept_and_the_best_flight_is_returned(tmp_path):
    """The checkpoint holds each epoch's weights (also across a resumption); the student
    returned is the epoch whose flight return was highest."""
    from robolearn.training import Checkpointer

    cfg = toy_config(epochs=6, teacher_forcing_epochs=2)
    distill(
        ToyFleet(),
        ToyTeachers(),
        toy_config(epochs=3, teacher_forcing_epochs=2),
        tmp_path,
        progress=False,
    )
    policy, curves = distill(ToyFleet(), ToyTeachers(), cfg, tmp_path, progress=False)
    epoch_students = Checkpointer(tmp_path).load_state()["epoch_students"]
    assert len(epoch_students) == 6
    assert not torch.equal(
        epoch_students[0]["input_layer.weight"], epoch_students[-1]["input_layer.weight"]
    )
    best = max(range(6), key=curves["student_return"].__getitem__)
    for name, weights in policy.model.state_dict().items():
        assert torch.equal(weights, epoch_students[best][name]), name


def train_on_epoch_batches(fleet, monkeypatch) -> list[tuple[int, int, float]]:
    """Distil 3 epochs with crash replay (6), one batch per epoch; each epoch's training data
    as (episodes, steps, labelled steps)."""
    import robolearn.algos.raptor.distill as distill_module

    seen: list[tuple[int, int, float]] = []
    original = distill_module.imitation_loss

    def recording_loss(student, batch):
        seen.append((len(batch.obs), batch.obs.shape[1], float(batch.mask.sum())))
        return original(student, batch)

    monkeypatch.setattr(distill_module, "imitation_loss", recording_loss)
    cfg = DistillConfig(
        epochs=3,
        teacher_forcing_epochs=1,
        episodes_per_teacher=2,
        episode_steps=20,
        batch_episodes=100,  # one batch per epoch: its shape is the epoch's data
        crash_replay=6,
    )
    distill(fleet, ToyTeachers(), cfg, progress=False)
    return seen


def test_crash_replay_trains_on_earlier_crashes(monkeypatch):
    """From the second on-policy epoch on, the earlier epochs' crashed episodes are trained on
    next to the new collection."""
    seen = train_on_epoch_batches(CrashingFleet(), monkeypatch)
    assert [episodes for episodes, _, _ in seen] == [16, 16, 16 + 6]


class OnceAllCrashingFleet(CrashingFleet):
    """As CrashingFleet, but in the sixth collection every vehicle crashes, which ends it at step
    5: the first on-policy one (two for the steady-state offsets, then per epoch two for
    training and the student's own flight)."""

    collections = 0

    def reset(self, mask=None):
        self.collections += 1
        return super().reset(mask)

    def step(self, action):
        obs, reward, terminated, truncated = super().step(action)
        if self.collections == 6 and self.t == 5:
            self.x = torch.full_like(self.x, torch.nan)
            terminated = torch.ones_like(terminated)
        return self._teacher_obs(), torch.nan_to_num(reward), terminated, truncated


def test_a_collection_that_ends_early_does_not_shorten_later_training(monkeypatch):
    """Episodes are padded (masked) to the longest, not cut to the shortest: once every vehicle
    crashed in one collection, later epochs (and the crash replay) still train on 20 steps."""
    seen = train_on_epoch_batches(OnceAllCrashingFleet(), monkeypatch)
    # (episodes, steps, labelled steps). Epoch 0: 2 x 8 episodes, 4 of each crashed at step 5.
    # Epoch 1: all 8 of the first round crashed, 4 of the second. Epoch 2: 16 new episodes
    # and the 6 newest crashes replayed, still 20 steps long.
    assert seen == [(16, 20, 8 * 5 + 8 * 20), (16, 20, 12 * 5 + 4 * 20), (22, 20, 14 * 5 + 8 * 20)]


class OffsetTeachers(ToyTeachers):
    """Teachers that each hover ``offset[i]`` away from the target, as imperfect RL teachers
    do."""

    def __init__(self, offset: torch.Tensor) -> None:
        self.offset = offset

    def act(self, teacher_obs):
        shifted = teacher_obs.clone()
        shifted[:, 0] -= self.offset.repeat(len(shifted) // len(self.offset))
        return super().act(shifted)


def test_steady_state_offsets_find_where_teachers_hover():
    offset = torch.linspace(0.1, 0.3, 8)
    measured = steady_state_offsets(ToyFleet(), OffsetTeachers(offset), episodes=2, steps=40)
    torch.testing.assert_close(measured.intercept[:, 0], offset, atol=1e-4, rtol=0)
    assert measured.intercept[:, 1:].abs().max() == 0 and measured.slope.abs().max() == 0
    side_by_side = steady_state_offsets(ToyFleet(k=2), OffsetTeachers(offset), 2, steps=40)
    torch.testing.assert_close(side_by_side.intercept, measured.intercept, atol=1e-4, rtol=0)


def test_steady_state_offsets_can_follow_the_disturbance_force():
    offset = torch.linspace(0.1, 0.3, 8)
    fitted = steady_state_offsets(PushedFleet(k=2), OffsetTeachers(offset), 6, 40, True)
    torch.testing.assert_close(fitted.intercept[:, 0], offset, atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted.slope[:, 0], torch.full((8,), 0.2), atol=1e-4, rtol=0)
    assert fitted.slope[:, 1:].abs().max() == 0  # no force on those axes: no line to fit
    # RAPTOR's correction, the mean alone, keeps the mean push of the episodes it saw.
    mean = steady_state_offsets(PushedFleet(k=2), OffsetTeachers(offset), 6, 40)
    assert mean.slope.abs().max() == 0 and (mean.intercept[:, 0] - offset).abs().max() > 0.01


def test_disturbance_correction_teaches_cancelling_the_push():
    teachers = OffsetTeachers(torch.linspace(0.1, 0.3, 8))

    def final_error(disturbance_correction: bool) -> float:
        torch.manual_seed(0)
        env = PushedFleet(k=4)
        cfg = toy_config(epochs=40, disturbance_correction=disturbance_correction)
        policy, _ = distill(env, teachers, cfg, progress=False)
        collect(env, teachers, policy.model, steps=40)
        return env.x.abs().mean().item()

    # Under the mean correction the student hovers where the push leaves the teachers, 0.2 *
    # |force| (0.04 on average) from the target; following the force, it learns to cancel it.
    following, mean_only = final_error(True), final_error(False)
    assert following < 0.5 * mean_only, (following, mean_only)
    with pytest.raises(ValueError, match="needs distill.position_correction"):
        toy_config(position_correction=False, disturbance_correction=True)


def test_env_rows_must_be_a_whole_number_per_teacher():
    with pytest.raises(ValueError, match="15 rows: not a multiple of 8 teachers"):
        distill(ToyFleet(n=5, k=3), ToyTeachers(), toy_config(epochs=1), progress=False)


def test_position_correction_teaches_hovering_at_the_target():
    teachers = OffsetTeachers(torch.linspace(0.1, 0.3, 8))

    def final_error(position_correction: bool) -> float:
        torch.manual_seed(0)
        env = ToyFleet()
        policy, _ = distill(
            env, teachers, toy_config(position_correction=position_correction), progress=False
        )
        collect(env, teachers, policy.model, steps=40)
        return env.x.abs().mean().item()

    # Uncorrected, the student copies the teachers' 0.1-0.3 offsets (the best epoch, kept for
    # its return, is one that has not fully learnt them yet: ~0.05).
    corrected, uncorrected = final_error(True), final_error(False)
    assert corrected < 0.01 and corrected < 0.5 * uncorrected, (corrected, uncorrected)


@pytest.mark.parametrize("own_flight_env", [False, True])
def test_interrupted_distillation_resumes_exactly(tmp_path, own_flight_env):
    """Also with the student's flights on an env of their own (in a side process)."""

    def run(epochs: int, folder: str) -> dict:
        cfg = toy_config(epochs=epochs, teacher_forcing_epochs=3)
        flights = ToyFleet() if own_flight_env else None
        return distill(
            ToyFleet(), ToyTeachers(), cfg, tmp_path / folder, progress=False, flight_env=flights
        )[1]

    straight = run(8, "a")
    run(5, "b")
    assert run(8, "b") == straight


def test_cosine_learning_rate_goes_from_lr_to_lr_final(tmp_path):
    from robolearn.training import Checkpointer

    cfg = toy_config(epochs=5, lr=1e-2, lr_final=1e-3)
    rates = [cfg.lr_at(epoch) for epoch in range(5)]
    assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-3)
    assert rates[2] == pytest.approx(5.5e-3) and rates == sorted(rates, reverse=True)
    assert toy_config(lr=1e-2).lr_at(3) == 1e-2  # no lr_final: constant (RAPTOR)
    with pytest.raises(ValueError, match="lr_final=0.1: must be in"):
        toy_config(lr=1e-2, lr_final=0.1)
    distill(ToyFleet(), ToyTeachers(), cfg, tmp_path, progress=False)
    groups = Checkpointer(tmp_path).load_state()["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3)]


def test_more_passes_per_epoch_fit_the_same_data_better():
    def final_loss(passes: int) -> float:
        torch.manual_seed(0)
        cfg = toy_config(epochs=6, teacher_forcing_epochs=6, lr=3e-3, passes=passes)
        return distill(ToyFleet(), ToyTeachers(), cfg, progress=False)[1]["loss"][-1]

    assert final_loss(4) < 0.7 * final_loss(1)


class SideProcessFleet(ToyFleet):
    """A ToyFleet that refuses to fly in the process that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.home = os.getpid()

    def reset(self, mask=None):
        assert os.getpid() != self.home, "flown in the training process"
        return super().reset(mask)


def test_flights_on_their_own_env_fly_in_a_side_process():
    """With a flight env, every epoch's student flies there, in a side process; the run is the
    one flown here on that env, and it learns."""
    cfg = toy_config(epochs=8, teacher_forcing_epochs=3)
    flights = SideProcessFleet()
    _, curves = distill(ToyFleet(), ToyTeachers(), cfg, progress=False, flight_env=flights)
    _, here = distill(
        ToyFleet(), ToyTeachers(), cfg, progress=False, flight_env=ToyFleet(), flight_process=False
    )
    assert curves == here
    assert curves["student_return"][-1] > curves["student_return"][0] + 5
