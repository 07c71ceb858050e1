"""EpisodeStore write/read throughput against raw ``.npy`` files, and sampler speed.

Two datasets: low-dim (200 episodes x 100 steps of actions and proprioceptive/object state)
and images (50 episodes x 100 steps of 84x84x3 uint8 plus actions). For each:

- write: ``EpisodeStore.create`` + one ``add_episode`` per episode, against two raw baselines:
  one ``np.save`` per key per episode (the same unit of work, what a recorder without a store
  does) and one ``np.save`` per key of the whole concatenated array (the lower bound: no
  per-episode work at all).
- read: ``EpisodeStore.load()`` against ``np.load`` of the whole concatenated arrays.

Throughput is payload bytes / median wall time of 5 repeats (after one warm-up), in one run;
everything lives in the page cache, so this measures the software path, not the disk.
Then: SequenceSampler random windows per second at batch 256, horizon 16 (To=2, Ta=8 padding).

Run: ``python -m benchmarks.bench_store`` (writes the "data-store" section of BENCHMARKS.md).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.report import median_time, table, write_section
from robolearn.data import EpisodeStore, SequenceSampler

REPEATS = 5


def lowdim_episodes(n: int, steps: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    def one(i: int) -> dict[str, np.ndarray]:
        return {
            "action": rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
            "ee_pos": rng.standard_normal((steps, 3)).astype(np.float32),
            "ee_quat": rng.standard_normal((steps, 4)).astype(np.float32),
            "joint_pos": rng.standard_normal((steps, 7)).astype(np.float32),
            "object_pos": rng.standard_normal((steps, 3)).astype(np.float32),
            "reward": rng.standard_normal(steps).astype(np.float32),
            "terminated": np.arange(steps) == steps - 1,
            "timestamp": np.arange(steps, dtype=np.float64) / 10 + i,
        }

    return [one(i) for i in range(n)]


def image_episodes(n: int, steps: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    return [
        {
            "action": rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
            "image": rng.integers(0, 256, (steps, 84, 84, 3), dtype=np.uint8),
            "ee_pos": rng.standard_normal((steps, 3)).astype(np.float32),
        }
        for _ in range(n)
    ]


def bench_case(name: str, episodes: list[dict[str, np.ndarray]], root: Path) -> list[list[object]]:
    keys = list(episodes[0])
    nbytes = sum(a.nbytes for ep in episodes for a in ep.values())
    whole = {k: np.concatenate([ep[k] for ep in episodes]) for k in keys}
    counter = itertools.count()

    def fresh() -> Path:
        path = root / f"{name}-{next(counter)}"
        return path

    def write_store() -> None:
        store = EpisodeStore.create(fresh(), attrs={"bench": name})
        for i, ep in enumerate(episodes):
            store.add_episode(ep, meta={"success": True, "seed": i, "source": "bench"})

    def write_npy_episodes() -> None:
        path = fresh()
        path.mkdir()
        for i, ep in enumerate(episodes):
            for k, a in ep.items():
                np.save(path / f"{i:05d}_{k}.npy", a)

    def write_npy_whole() -> None:
        path = fresh()
        path.mkdir()
        for k, a in whole.items():
            np.save(path / f"{k}.npy", a)

    t_store = median_time(write_store, REPEATS)
    t_npy_ep = median_time(write_npy_episodes, REPEATS)
    t_npy_whole = median_time(write_npy_whole, REPEATS)

    store_path = root / f"{name}-read.zarr"
    npy_path = root / f"{name}-read-npy"
    npy_path.mkdir()
    store = EpisodeStore.create(store_path)
    for ep in episodes:
        store.add_episode(ep)
    for k, a in whole.items():
        np.save(npy_path / f"{k}.npy", a)
    reader = EpisodeStore.open(store_path)
    loaded = reader.load()
    assert all(np.array_equal(loaded[k], whole[k]) for k in keys), "store round trip differs"
    t_read_store = median_time(reader.load, REPEATS)
    t_read_npy = median_time(lambda: {k: np.load(npy_path / f"{k}.npy") for k in keys}, REPEATS)

    for path in root.iterdir():
        shutil.rmtree(path)

    mb = nbytes / 1e6

    def mbs(t: float) -> str:
        return f"{mb / t:,.0f}"

    return [
        [name, "write", f"{mb:.1f}", mbs(t_store), mbs(t_npy_ep), f"{t_npy_ep / t_store:.2f}x",
         mbs(t_npy_whole), f"{t_npy_whole / t_store:.2f}x"],
        [name, "read (load)", f"{mb:.1f}", mbs(t_read_store), "", "",
         mbs(t_read_npy), f"{t_read_npy / t_read_store:.2f}x"],
    ]  # fmt: skip


def bench_sampler(episodes: list[dict[str, np.ndarray]]) -> tuple[float, int]:
    data = {
        k: np.concatenate([ep[k] for ep in episodes]) for k in ("action", "ee_pos", "joint_pos")
    }
    ends = np.cumsum([len(ep["action"]) for ep in episodes])
    sampler = SequenceSampler(
        data, ends, horizon=16, pad_before=1, pad_after=7, key_first_k={"ee_pos": 2, "joint_pos": 2}
    )
    rng = np.random.default_rng(0)
    n_batches, batch = 200, 256
    t = median_time(lambda: [sampler.sample(batch, rng) for _ in range(n_batches)], REPEATS)
    return n_batches * batch / t, len(sampler)


def main() -> None:
    rng = np.random.default_rng(0)
    low = lowdim_episodes(200, 100, rng)
    img = image_episodes(50, 100, rng)
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        rows = bench_case("low-dim 200x100", low, Path(tmp))
        rows += bench_case("image 50x100 84x84x3", img, Path(tmp))
    windows_per_s, n_windows = bench_sampler(low)

    header = [
        "dataset", "op", "MB", "store MB/s", "npy per-episode MB/s", "store / npy per-episode",
        "npy whole-array MB/s", "store / npy whole-array",
    ]  # fmt: skip
    body = (
        table(header, rows)
        + "\n\n"
        + f"SequenceSampler: {windows_per_s:,.0f} random windows/s at batch 256, horizon 16 "
        f"(pad_before 1, pad_after 7, 3 low-dim keys, two with key_first_k=2; "
        f"{n_windows} windows over 200 episodes). Target >= 20,000/s.\n\n"
        "Targets: store/raw >= 0.5x. Store arrays are uncompressed (zarr `bytes` codec), chunked "
        "~4 MiB along time; appends pwrite only new rows, load() reads chunk files straight into "
        "the result. Page-cache resident, so these are software-path numbers, not disk numbers. "
        "Each add_episode is a durable commit costing at least one atomic rename (episode_ends' "
        "zarr.json; plus one for a str meta value), ~0.5-2.5 ms on this VM's ext4, so tiny "
        "low-dim episodes cannot approach one np.save of the whole concatenated arrays; against "
        "the same per-episode work (one .npy per key per episode) the store is faster."
    )
    write_section("data-store", "EpisodeStore and SequenceSampler throughput", body)


if __name__ == "__main__":
    main()
