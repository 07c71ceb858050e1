"""rosbag2 MCAP export and import rate of robolearn's arm logs against plain ``rosbags``.

Data: an arm push EpisodeStore of 100 episodes x 100 steps (random joint positions, block and
goal poses, actions), i.e. per step one ``sensor_msgs/JointState`` (9 joints), two
``geometry_msgs/PoseStamped`` and one ``std_msgs/Float32MultiArray`` action, plus two episode
events per episode: 40,200 messages.

- export: ``hw.logs.export_store`` (store -> messages -> crash-safe ``BagWriter``), against the
  anchor: ``rosbags.rosbag2.Writer`` writing the same messages, already built as rosbags
  dataclasses (serialize + write only);
- import: ``hw.logs.import_bag`` (read, decode, map joints by name, rebuild observations, FK,
  rewards, write the EpisodeStore), against the anchor: ``rosbags`` Reader reading and
  deserializing every message of the same bag (nothing else).

Rate = messages / median wall time of 3 repeats (after one warm-up), in one run; files live in
the page cache. Run: ``python -m benchmarks.bench_mcap`` (writes the "mcap" section).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.report import median_time, table, write_section
from hw.logs import export_store, import_bag
from robolearn.data.rosbag import read_bag, typestore
from robolearn.data.store import EpisodeStore

EPISODES, STEPS, REPEATS = 100, 100, 3


def make_store(path: Path, rng: np.random.Generator) -> EpisodeStore:
    store = EpisodeStore.create(path, attrs={"env_id": "robolearn/ArmPush-v0", "control_hz": 20.0})
    episodes = []
    for i in range(EPISODES):
        data = {
            "joint_pos": rng.uniform(-1, 1, (STEPS, 7)).astype(np.float32),
            "ee_pos": rng.uniform(0.3, 0.6, (STEPS, 3)).astype(np.float32),
            "gripper": rng.uniform(0, 0.08, (STEPS, 1)).astype(np.float32),
            "object_pos": rng.uniform(0.3, 0.6, (STEPS, 3)).astype(np.float32),
            "goal_pos": rng.uniform(0.3, 0.6, (STEPS, 3)).astype(np.float32),
            "action": rng.uniform(-1, 1, (STEPS, 4)).astype(np.float32),
            "reward": rng.standard_normal(STEPS).astype(np.float32),
            "terminated": np.arange(STEPS) == STEPS - 1,
            "timestamp": np.arange(STEPS) / 20.0,
            "stamp_ns": 10**18 + i * 10**10 + np.arange(STEPS, dtype=np.int64) * 50_000_000,
        }
        episodes.append((data, {"seed": i, "success": bool(i % 2), "source": "bench"}))
    store.add_episodes(episodes)
    return store


def main() -> None:
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    root = Path(tempfile.mkdtemp(prefix="bench-mcap-"))
    counter = itertools.count()
    try:
        store = make_store(root / "store.zarr", np.random.default_rng(0))
        reference = root / "reference"
        n_messages = export_store(store, reference)
        # The anchor's input: the same messages as rosbags dataclasses, built before timing.
        messages = [(m.topic, m.msgtype, m.log_ns, m.decode()) for m in read_bag(reference)]
        assert len(messages) == n_messages
        types = typestore()

        def ours_export() -> None:
            export_store(store, root / f"export-{next(counter)}")

        def rosbags_write() -> None:
            with Writer(
                root / f"plain-{next(counter)}", version=9, storage_plugin=StoragePlugin.MCAP
            ) as writer:
                connections = {}
                for topic, msgtype, log_ns, msg in messages:
                    if topic not in connections:
                        connections[topic] = writer.add_connection(topic, msgtype, typestore=types)
                    writer.write(connections[topic], log_ns, types.serialize_cdr(msg, msgtype))

        def ours_import() -> None:
            import_bag(reference, root / f"import-{next(counter)}.zarr")

        def rosbags_read() -> None:
            with Reader(reference) as reader:
                for connection, _, data in reader.messages():
                    types.deserialize_cdr(data, connection.msgtype)

        rates = {
            name: n_messages / median_time(fn, repeats=REPEATS)
            for name, fn in (
                ("export", ours_export),
                ("write", rosbags_write),
                ("import", ours_import),
                ("read", rosbags_read),
            )
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        [
            "export (EpisodeStore -> MCAP)",
            f"{rates['export']:,.0f}",
            f"{rates['write']:,.0f}",
            f"{rates['export'] / rates['write']:.2f}",
        ],
        [
            "import (MCAP -> EpisodeStore)",
            f"{rates['import']:,.0f}",
            f"{rates['read']:,.0f}",
            f"{rates['import'] / rates['read']:.2f}",
        ],
    ]
    body = (
        f"{EPISODES} arm push episodes x {STEPS} steps = {n_messages:,} messages (JointState, "
        "2 PoseStamped and the action per step, episode events). Anchor: plain `rosbags` "
        "writing pre-built messages (serialize + write) and reading + deserializing every "
        "message of the same bag. Median of 3 after a warm-up.\n\n"
        + table(["path", "robolearn msg/s", "plain rosbags msg/s", "ratio"], rows)
        + "\n\nThe machine's 2 cores were shared with another engineer's long benchmark jobs "
        "during this run, so the absolute rates are noisy; the ratios, measured back to back in "
        "one run, are the result. Export does the anchor's work plus building the messages "
        "from the store's arrays and a chunk flush per second; import does the anchor's work "
        "plus joint mapping, forward kinematics, rewards and the EpisodeStore write."
    )
    write_section("mcap", "rosbag2 MCAP export / import vs plain rosbags", body)


if __name__ == "__main__":
    main()
