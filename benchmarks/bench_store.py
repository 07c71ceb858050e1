"""EpisodeStore write/read throughput against raw ``.npy`` files, and sampler speed.

Two datasets: low-dim (200 episodes x 100 steps of actions and proprioceptive/object state)
and images (50 episodes x 100 steps of 84x84x3 uint8 plus actions). For each, the store and
raw numpy do the same work at the same granularity:

- streaming write: ``EpisodeStore.create`` + one ``add_episode`` (one durable commit) per
  episode, against one ``np.save`` per key per episode (what a recorder without a store does);
- bulk write: ``EpisodeStore.create`` + one ``add_episodes`` of all episodes (one commit),
  against one ``np.save`` per key of the whole concatenated array (the arrays are
  concatenated before timing, so numpy gets that work for free);
- read: ``EpisodeStore.load()`` against ``np.load`` of the whole concatenated arrays.

Store writes include creating the store and closing it (cutting arrays to exact lengths).
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

    def meta(i: int) -> dict[str, object]:
        return {"success": True, "seed": i, "source": "bench"}

    def write_store_streaming() -> None:
        store = EpisodeStore.create(fresh(), attrs={"bench": name})
        for i, ep in enumerate(episodes):
            store.add_episode(ep, meta(i))
        store.close()

    def write_store_bulk() -> None:
        store = EpisodeStore.create(fresh(), attrs={"bench": name})
        store.add_episodes((ep, meta(i)) for i, ep in enumerate(episodes))
        store.close()

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

    # Interleaved so that both sides of each ratio see the same (noisy, shared) machine state.
    t_stream = median_time(write_store_streaming, REPEATS)
    t_npy_ep = median_time(write_npy_episodes, REPEATS)
    t_bulk = median_time(write_store_bulk, REPEATS)
    t_npy_whole = median_time(write_npy_whole, REPEATS)

    store_path = root / f"{name}-read.zarr"
    npy_path = root / f"{name}-read-npy"
    npy_path.mkdir()
    with EpisodeStore.create(store_path) as store:
        store.add_episodes((ep, None) for ep in episodes)
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

    def row(op: str, t_store: float, baseline: str, t_raw: float) -> list[object]:
        ratio = t_raw / t_store
        verdict = "yes" if ratio >= 0.5 else "**no**"
        return [name, op, f"{mb:.1f}", mbs(t_store), baseline, mbs(t_raw), f"{ratio:.2f}x", verdict]

    return [
        row("write, streaming: add_episode per episode", t_stream,
            "np.save per key per episode", t_npy_ep),
        row("write, bulk: one add_episodes", t_bulk, "np.save per key, whole arrays", t_npy_whole),
        row("read: load()", t_read_store, "np.load per key, whole arrays", t_read_npy),
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
    # A dataset of realistic size, where bytes rather than a fresh store's fixed file-system
    # operations dominate (1000 episodes x 200 steps ~ 22 MB of low-dim data).
    large = lowdim_episodes(1000, 200, rng)
    img = image_episodes(50, 100, rng)
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        rows = bench_case("low-dim 200x100", low, Path(tmp))
        rows += bench_case("low-dim 1000x200", large, Path(tmp))
        rows += bench_case("image 50x100 84x84x3", img, Path(tmp))
    windows_per_s, n_windows = bench_sampler(low)

    header = [
        "dataset", "store op", "MB", "store MB/s", "raw numpy, same granularity", "raw MB/s",
        "store / raw", ">= 0.5x",
    ]  # fmt: skip
    body = (
        table(header, rows)
        + "\n\n"
        + f"SequenceSampler: {windows_per_s:,.0f} random windows/s at batch 256, horizon 16 "
        f"(pad_before 1, pad_after 7, 3 low-dim keys, two with key_first_k=2; "
        f"{n_windows} windows over 200 episodes). Target >= 20,000/s.\n\n"
        "Target: store / raw >= 0.5x, each store operation against raw numpy doing the same "
        "work at the same granularity. Store writes include create and close; meta per "
        "episode: success, seed, source (a string) and length. Store arrays are uncompressed "
        "(zarr `bytes` codec), chunked ~4 MiB along time; appends write only new rows "
        "(pwritev, one call per chunk per key for a whole batch), load() reads chunk files "
        "straight into the result. Page-cache resident, so these are software-path numbers, "
        "not disk numbers; the machine is shared and noisy, ratios come from one run. "
        "Each add_episode is a durable commit: one atomic rename (episode_ends' zarr.json) "
        "plus a few in-place pwrites, and a metadata rename per array only when it grows by a "
        "chunk. add_episodes validates and writes a whole batch and commits it with one "
        "rename (all or nothing, also under SIGKILL). Bulk low-dim misses the target: its "
        "2.2 MB of rows take well under a millisecond to write, the time goes to file-system "
        "namespace operations, which cost ~0.2-1 ms each on this VM's ext4. A fresh store in "
        "the zarr layout is 13 arrays (8 data keys, 4 meta keys, episode_ends), each a "
        "directory, a zarr.json (temporary file + rename) and chunk directories and files: "
        "~35 mkdir, ~40 file creates and 20 renames (strace), against np.save's 1 mkdir and 8 "
        "file creates. The 1000x200 low-dim dataset and the images dataset, where bytes "
        "dominate, show the throughput of the write path itself."
    )
    write_section("data-store", "EpisodeStore and SequenceSampler throughput", body)


if __name__ == "__main__":
    main()
