"""EpisodeStore: round trips, validation, crash safety, errors, Diffusion Policy v2 stores."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.storage

from robolearn.data import SCHEMA_VERSION, EpisodeStore, StoreError


def make_episode(i: int, length: int | None = None) -> dict[str, np.ndarray]:
    """Deterministic episode data derived from its index."""
    n = length if length is not None else 5 + (i * 7) % 11
    return {
        "action": (np.arange(n * 7, dtype=np.float32).reshape(n, 7) + 1000 * i),
        "ee_pos": np.full((n, 3), i, dtype=np.float64) + np.arange(n)[:, None],
        "image": ((np.arange(n * 6 * 8 * 3) + i) % 251).astype(np.uint8).reshape(n, 6, 8, 3),
        "reward": np.linspace(0, 1, n, dtype=np.float32),
        "terminated": np.arange(n) == n - 1,
    }


def assert_episode_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        assert got[key].tobytes() == want[key].tobytes(), key


def test_round_trip_data_meta_attrs(tmp_path: Path) -> None:
    path = tmp_path / "store.zarr"
    attrs = {"control_hz": 10, "robot": {"name": "panda", "joints": ["j1", "j2"]}}
    store = EpisodeStore.create(path, attrs=attrs)
    episodes = [make_episode(i) for i in range(4)]
    for i, ep in enumerate(episodes):
        meta = {"success": i % 2 == 0, "seed": 100 + i, "source": f"sim-{i}"}
        assert store.add_episode(ep, meta) == i
    store.update_attrs(env_id="robolearn/Reach-v0", observation_keys=["ee_pos", "image"])
    store.close()

    reader = EpisodeStore.open(path)
    assert len(reader) == reader.n_episodes == 4
    lengths = [len(ep["action"]) for ep in episodes]
    np.testing.assert_array_equal(reader.episode_lengths, lengths)
    np.testing.assert_array_equal(reader.episode_ends, np.cumsum(lengths))
    assert reader.episode_ends.dtype == np.int64
    assert reader.n_steps == sum(lengths)
    assert reader.keys == sorted(episodes[0])
    for i, ep in enumerate(episodes):
        assert_episode_equal(reader.get_episode(i), ep)
    assert_episode_equal(reader.get_episode(-1, keys=["image"]), {"image": episodes[-1]["image"]})
    loaded = reader.load(["action", "terminated"])
    np.testing.assert_array_equal(loaded["action"], np.concatenate([e["action"] for e in episodes]))
    assert loaded["terminated"].sum() == 4

    assert reader.meta_keys == ["length", "seed", "source", "success"]
    np.testing.assert_array_equal(reader.meta("success"), [True, False, True, False])
    np.testing.assert_array_equal(reader.meta("seed"), [100, 101, 102, 103])
    assert reader.meta("seed").dtype == np.int64
    assert list(reader.meta("source")) == ["sim-0", "sim-1", "sim-2", "sim-3"]
    np.testing.assert_array_equal(reader.meta("length"), lengths)
    assert reader.episode_meta(1) == {
        "length": lengths[1],
        "seed": 101,
        "source": "sim-1",
        "success": False,
    }
    assert reader.attrs == {
        "schema_version": SCHEMA_VERSION,
        **attrs,
        "env_id": "robolearn/Reach-v0",
        "observation_keys": ["ee_pos", "image"],
    }
    with pytest.raises(PermissionError):
        reader.add_episode(make_episode(9))
    with pytest.raises(IndexError):
        reader.get_episode(4)
    with pytest.raises(KeyError, match="nope"):
        reader.meta("nope")


def test_plain_zarr_reads_the_store_in_dp_layout(tmp_path: Path) -> None:
    path = tmp_path / "store.zarr"
    with EpisodeStore.create(path) as store:
        for i in range(3):
            store.add_episode(make_episode(i), {"success": True})
    group = zarr.open_group(path, mode="r")
    ends = group["meta/episode_ends"][:]
    assert ends.dtype == np.int64
    for key, want in make_episode(0).items():
        arr = group[f"data/{key}"]
        assert arr.shape[0] == ends[-1]  # exact lengths after close, as DP's ReplayBuffer asserts
        np.testing.assert_array_equal(arr[: ends[0]], want)
    assert list(group["meta/success"][:]) == [True, True, True]


def test_meta_fill_values_for_missing_and_new_keys(tmp_path: Path) -> None:
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode(make_episode(0), {"success": True, "seed": 1, "source": "a", "score": 0.5})
    store.add_episode(make_episode(1), {})
    store.add_episode(make_episode(2), {"note": "late", "score": 2})
    np.testing.assert_array_equal(store.meta("success"), [True, False, False])
    np.testing.assert_array_equal(store.meta("seed"), [1, -1, -1])
    assert list(store.meta("source")) == ["a", "", ""]
    np.testing.assert_array_equal(store.meta("score"), [0.5, np.nan, 2.0])
    assert list(store.meta("note")) == ["", "", "late"]


def test_validation_errors_name_the_problem(tmp_path: Path) -> None:
    store = EpisodeStore.create(tmp_path / "s.zarr")
    bad = make_episode(0)
    bad["reward"] = bad["reward"][:-1]
    with pytest.raises(ValueError, match="differ in length"):
        store.add_episode(bad)
    with pytest.raises(ValueError, match="at least one step"):
        store.add_episode({"action": np.zeros((0, 2))})
    with pytest.raises(ValueError, match="'obs'.*scalar"):
        store.add_episode({"obs": np.float32(1.0)})
    with pytest.raises(ValueError, match="'obs'.*dtype"):
        store.add_episode({"obs": np.array(["a", "b"])})
    assert store.n_episodes == 0 and store.keys == []

    store.add_episode(make_episode(0), {"success": True})
    wrong_dtype = make_episode(1)
    wrong_dtype["action"] = wrong_dtype["action"].astype(np.float64)
    with pytest.raises(ValueError, match="'action'.*float64.*float32"):
        store.add_episode(wrong_dtype)
    wrong_shape = make_episode(1)
    wrong_shape["image"] = wrong_shape["image"][:, :4]
    with pytest.raises(ValueError, match="'image'.*shape"):
        store.add_episode(wrong_shape)
    missing = make_episode(1)
    del missing["reward"]
    with pytest.raises(ValueError, match="missing \\['reward'\\]"):
        store.add_episode(missing)
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        store.add_episode({**make_episode(1), "extra": np.zeros(5 + 7 % 11)})
    with pytest.raises(ValueError, match="meta 'success'.*bool.*str"):
        store.add_episode(make_episode(1), {"success": "yes"})
    with pytest.raises(ValueError, match="meta 'blob'"):
        store.add_episode(make_episode(1), {"blob": [1, 2]})
    with pytest.raises(ValueError, match="length"):
        store.add_episode(make_episode(1), {"length": 1})
    # Nothing above was committed; the store still takes a valid episode.
    assert store.n_episodes == 1
    assert store.add_episode(make_episode(1)) == 1
    assert_episode_equal(EpisodeStore.open(store.path).get_episode(1), make_episode(1))
    with pytest.raises(FileExistsError, match=str(store.path)):
        EpisodeStore.create(store.path)
    assert len(EpisodeStore.create(store.path, overwrite=True)) == 0


# Shared by the writer subprocess and the checks, so both derive identical episodes.
EPISODE_SOURCE = """
def writer_episode(i):
    n = 40 + (i * 13) % 50
    pixels = (np.arange(n * 64 * 64 * 3) + i) % 251
    return {
        "action": np.arange(n * 7, dtype=np.float32).reshape(n, 7) + 1000 * i,
        "image": pixels.astype(np.uint8).reshape(n, 64, 64, 3),
        "terminated": np.arange(n) == n - 1,
    }
"""
_namespace: dict = {"np": np}
exec(EPISODE_SOURCE, _namespace)
writer_episode = _namespace["writer_episode"]

WRITER = (
    "import sys\nimport numpy as np\nfrom robolearn.data import EpisodeStore\n"
    + EPISODE_SOURCE
    + textwrap.dedent(
        """
        store = EpisodeStore.open(sys.argv[1], "a")
        i = store.n_episodes
        while True:
            ep = writer_episode(i)
            print("begin", i, flush=True)
            meta = {"seed": i, "source": "writer-%d" % i, "success": i % 3 == 0}
            store.add_episode(ep, meta)
            print("end", i, flush=True)
            i += 1
        """
    )
)


def test_sigkill_at_random_moments_never_corrupts_committed_episodes(tmp_path: Path) -> None:
    path = tmp_path / "crash.zarr"
    EpisodeStore.create(path, attrs={"test": "crash"}).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = np.random.default_rng(1234)
    killed_mid_append = 0
    # At least 6 kills, and more (up to 30) until one lands inside add_episode: appends are
    # fast, so most kills land in the writer's own episode generation.
    for trial in range(30):
        if trial >= 6 and killed_mid_append:
            break
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("begin")  # imports done, appending
        time.sleep(float(rng.uniform(0.0, 0.25)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = out.split()
        last = "begin" if not lines else lines[-2]
        killed_mid_append += last == "begin"

        reader = EpisodeStore.open(path)
        n = reader.n_episodes
        assert reader.attrs["test"] == "crash"
        for i in range(n):
            assert_episode_equal(reader.get_episode(i), writer_episode(i))
        np.testing.assert_array_equal(reader.meta("seed"), np.arange(n))
        assert list(reader.meta("source")) == [f"writer-{i}" for i in range(n)]

        # The next writer truncates trailing rows and appends where the last commit ended.
        writer = EpisodeStore.open(path, "a")
        assert writer.n_episodes == n
        assert not list(path.rglob("*.partial")), f"trial {trial}: temp files left"
        for key in writer.keys:
            shape = json.loads((path / "data" / key / "zarr.json").read_text())["shape"]
            assert shape[0] == writer.n_steps, (trial, key)
        assert writer.add_episode(writer_episode(n), {"seed": n, "source": f"writer-{n}"}) == n
        writer.close()
        assert_episode_equal(EpisodeStore.open(path).get_episode(n), writer_episode(n))
    assert killed_mid_append >= 1, "no kill landed inside add_episode"
    assert EpisodeStore.open(path).n_episodes >= 6


def test_reopened_writer_after_first_episode_crash_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path)
    store._create_data_arrays({"junk": np.zeros((3, 2), np.int16)}, 3, exact=True)  # then a crash
    store._data["junk"].write(0, np.ones((3, 2), np.int16))
    reopened = EpisodeStore.open(path, "a")
    assert reopened.keys == []
    reopened.add_episode(make_episode(0))
    assert reopened.keys == sorted(make_episode(0))


def test_missing_and_corrupted_stores_raise_store_error(tmp_path: Path) -> None:
    def check(path: Path, match: str) -> None:
        with pytest.raises(StoreError, match=match) as info:
            EpisodeStore.open(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message

    check(tmp_path / "absent.zarr", "does not exist")
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty", "not a zarr group")
    (tmp_path / "file.zarr").write_text("hello")
    check(tmp_path / "file.zarr", "not a zarr group")
    zarr.open_group(tmp_path / "plain.zarr", mode="w").create_group("data")
    check(tmp_path / "plain.zarr", "episode_ends")

    path = tmp_path / "s.zarr"
    with EpisodeStore.create(path) as store:
        store.add_episode(make_episode(0))
    action_meta = path / "data" / "action" / "zarr.json"
    good = action_meta.read_bytes()
    action_meta.write_bytes(good[: len(good) // 2])
    check(path, "unreadable metadata")
    action_meta.write_bytes(good)
    (path / "zarr.json").write_text("{not json")
    check(path, "unreadable metadata")


def build_dp_store(store: object) -> dict[str, np.ndarray]:
    """A small replay buffer in Diffusion Policy's zarr v2 layout (Push-T keys)."""
    rng = np.random.default_rng(0)
    ends = np.array([30, 55, 90], dtype=np.int64)
    n = int(ends[-1])
    data = {
        "action": rng.standard_normal((n, 2)).astype(np.float32),
        "img": rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8),
        "keypoint": rng.standard_normal((n, 9, 2)).astype(np.float32),
        "state": rng.standard_normal((n, 5)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
    }
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    root = zarr.open_group(store, mode="w", zarr_format=2)
    for key, value in data.items():
        chunks = (16, *value.shape[1:]) if key == "img" else value.shape
        root.create_array(f"data/{key}", data=value, chunks=chunks, compressors=blosc)
    root.create_array("meta/episode_ends", data=ends, chunks=ends.shape, compressors=blosc)
    return {**data, "episode_ends": ends}


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_opens_diffusion_policy_v2_store(tmp_path: Path, kind: str) -> None:
    if kind == "dir":
        path = tmp_path / "pusht_cchi_v7_replay.zarr"
        want = build_dp_store(zarr.storage.LocalStore(path))
    else:
        path = tmp_path / "pusht_cchi_v7_replay.zarr.zip"
        zip_store = zarr.storage.ZipStore(path, mode="w")
        want = build_dp_store(zip_store)
        zip_store.close()
    assert (path / ".zgroup").exists() if kind == "dir" else path.is_file()

    with EpisodeStore.open(path) as store:
        assert store.n_episodes == 3
        np.testing.assert_array_equal(store.episode_ends, want["episode_ends"])
        assert store.keys == ["action", "img", "keypoint", "n_contacts", "state"]
        episode = store.get_episode(1)
        for key in store.keys:
            np.testing.assert_array_equal(episode[key], want[key][30:55])
        np.testing.assert_array_equal(store.load(["img"])["img"], want["img"])
        assert store.meta_keys == []
    with pytest.raises(StoreError, match="only zarr v3 stores"):
        EpisodeStore.open(path, "a")


def test_reads_v3_store_in_another_layout_through_zarr(tmp_path: Path) -> None:
    path = tmp_path / "compressed.zarr"
    root = zarr.open_group(path, mode="w")
    action = np.arange(40, dtype=np.float32).reshape(20, 2)
    root.create_array("data/action", data=action, chunks=(7, 2))  # default zstd compression
    root.create_array("meta/episode_ends", data=np.array([8, 20], dtype=np.int64))
    store = EpisodeStore.open(path)
    np.testing.assert_array_equal(store.get_episode(1)["action"], action[8:])
    with pytest.raises(StoreError, match="not in EpisodeStore's layout"):
        EpisodeStore.open(path, "a")


def test_add_episodes_round_trip_equals_per_episode_appends(tmp_path: Path) -> None:
    episodes = [make_episode(i) for i in range(7)]
    metas: list[dict | None] = [
        {"success": True, "seed": 0, "source": "a"},
        None,  # every meta key gets its fill value
        {"score": 0.5, "source": "c" * 300},  # a new key mid-batch, a long string
        {"score": 2, "note": "late"},  # an int into the float64 array, another new key
        {"success": False, "seed": 4},
        {"source": "ünïcode"},
        {"seed": 6, "length": len(episodes[6]["action"])},
    ]
    one_by_one = EpisodeStore.create(tmp_path / "one.zarr")
    for ep, meta in zip(episodes, metas, strict=True):
        one_by_one.add_episode(ep, meta)
    # Streaming and batches mix: a single episode, a batch of four, then a batch of two.
    bulk = EpisodeStore.create(tmp_path / "bulk.zarr")
    assert bulk.add_episodes([]) == []
    assert bulk.add_episodes([(episodes[0], metas[0])]) == [0]
    assert bulk.add_episodes(zip(episodes[1:5], metas[1:5], strict=True)) == [1, 2, 3, 4]
    assert bulk.add_episodes(list(zip(episodes[5:], metas[5:], strict=True))) == [5, 6]
    one_by_one.close()
    bulk.close()

    want, got = EpisodeStore.open(tmp_path / "one.zarr"), EpisodeStore.open(tmp_path / "bulk.zarr")
    np.testing.assert_array_equal(got.episode_ends, want.episode_ends)
    assert got.keys == want.keys
    for i in range(7):
        assert_episode_equal(got.get_episode(i), episodes[i])
    assert (
        got.meta_keys == want.meta_keys == ["length", "note", "score", "seed", "source", "success"]
    )
    for name in got.meta_keys:
        np.testing.assert_array_equal(got.meta(name), want.meta(name))
    assert list(got.meta("source")) == ["a", "", "c" * 300, "", "", "ünïcode", ""]
    np.testing.assert_array_equal(got.meta("score"), [np.nan, np.nan, 0.5, 2.0] + [np.nan] * 3)
    # Plain zarr sees the same DP-layout store, with exact lengths after close.
    group = zarr.open_group(tmp_path / "bulk.zarr", mode="r")
    assert group["data/action"].shape[0] == group["meta/episode_ends"][-1]
    assert list(group["meta/source"][:]) == list(want.meta("source"))
    np.testing.assert_array_equal(group["meta/seed"][:], want.meta("seed"))


def test_add_episodes_is_all_or_nothing_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path)
    bad = make_episode(3)
    bad["reward"] = bad["reward"][:-1]
    # Invalid episode 2 of a batch on an empty store: nothing written, no keys defined.
    with pytest.raises(ValueError, match="add_episodes: episode 2: data arrays differ"):
        store.add_episodes([(make_episode(0), {"a": 1}), (make_episode(1), None), (bad, None)])
    with pytest.raises(TypeError, match="episode 0: expected a \\(data, meta\\) pair"):
        store.add_episodes([make_episode(0)])  # type: ignore[list-item]
    assert store.n_episodes == 0 and store.keys == [] and store.meta_keys == []
    # Within a batch, later episodes are checked against what earlier ones define.
    with pytest.raises(ValueError, match="episode 1: meta 'seed'.*int64.*float64"):
        store.add_episodes([(make_episode(0), {"seed": 1}), (make_episode(1), {"seed": 0.5})])
    assert store.add_episodes([(make_episode(0), {"seed": 0})]) == [0]

    # A failure while writing (here: the disk, at the episode_ends write) rolls back too.
    def broken_write(*args: object) -> None:
        raise OSError("disk full")

    ends_array = store._ends_array
    assert ends_array is not None
    ends_array.write = broken_write  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        store.add_episodes([(make_episode(1), {"seed": 1, "new_key": "x"})] * 3)
    del ends_array.write
    assert store.n_episodes == 1 and store.meta_keys == ["length", "seed"]
    assert not (path / "meta" / "new_key").exists()
    assert store.add_episodes([(make_episode(1), {"seed": 1})] * 2) == [1, 2]
    store.close()
    reader = EpisodeStore.open(path)
    assert reader.n_episodes == 3 and reader.meta_keys == ["length", "seed"]
    np.testing.assert_array_equal(reader.meta("seed"), [0, 1, 1])
    assert_episode_equal(reader.get_episode(2), make_episode(1))


BATCH = 6
BULK_WRITER = (
    "import sys\nimport numpy as np\nfrom robolearn.data import EpisodeStore\n"
    + EPISODE_SOURCE
    + textwrap.dedent(
        f"""
        store = EpisodeStore.open(sys.argv[1], "a")
        i = store.n_episodes
        while True:
            # Each batch brings a meta key of its own: a crashed batch must not leave it behind.
            batch = [
                (writer_episode(j), {{"seed": j, "source": "writer-%d" % j, "b%d" % i: True}})
                for j in range(i, i + {BATCH})
            ]
            print("begin", i, flush=True)
            store.add_episodes(batch)
            print("end", i, flush=True)
            i += {BATCH}
        """
    )
)


def test_sigkill_mid_add_episodes_leaves_the_store_as_before(tmp_path: Path) -> None:
    path = tmp_path / "crash.zarr"
    with EpisodeStore.create(path, attrs={"test": "bulk-crash"}) as store:
        store.add_episode(writer_episode(0), {"seed": 0, "source": "writer-0"})  # before any batch
    script = tmp_path / "bulk_writer.py"
    script.write_text(BULK_WRITER)
    rng = np.random.default_rng(4321)
    killed_mid_batch = 0
    for trial in range(30):  # at least 6 kills, more until one lands inside add_episodes
        if trial >= 6 and killed_mid_batch:
            break
        before = EpisodeStore.open(path).n_episodes
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("begin")  # imports done, batches under way
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = out.split()
        killed_mid_batch += (not lines) or lines[-2] == "begin"

        reader = EpisodeStore.open(path)
        n = reader.n_episodes
        # Every finished batch is there, nothing of the one that was killed. A kill between
        # a batch's commit and its "end" line leaves that batch committed but unreported.
        reported = before + BATCH * lines.count("end")
        assert n in (reported, reported + BATCH), (trial, n, before)
        assert reader.attrs["test"] == "bulk-crash"
        for i in range(n):
            assert_episode_equal(reader.get_episode(i), writer_episode(i))
        np.testing.assert_array_equal(reader.meta("seed"), np.arange(n))
        assert list(reader.meta("source")) == [f"writer-{i}" for i in range(n)]
        batch_keys = {k for k in reader.meta_keys if k.startswith("b")}
        assert batch_keys == {f"b{i}" for i in range(1, n, BATCH)}, trial

        writer = EpisodeStore.open(path, "a")  # recovers: trailing rows and meta arrays go
        assert writer.n_episodes == n
        assert not list(path.rglob("*.partial")), f"trial {trial}: temp files left"
        assert sorted(p.name for p in (path / "meta").iterdir() if p.is_dir()) == sorted(
            [*reader.meta_keys, "episode_ends"]
        )
        writer.close()
        group = zarr.open_group(path, mode="r")  # and plain zarr reads it whole after close
        assert list(group["meta/source"][:]) == [f"writer-{i}" for i in range(n)]
    assert killed_mid_batch >= 1, "no kill landed inside add_episodes"
