"""rosbag2 (MCAP) logs without a ROS install: a crash-safe writer, a reader, and repair of a bag
whose writer was killed. Everything goes through the pure-Python ``rosbags`` package.

A bag is a rosbag2 directory (``metadata.yaml`` plus one ``.mcap`` file) that ``ros2 bag info``,
``ros2 bag play`` and Foxglove read. Each message is stored with its log time (when it was
received, or sent, in ROS time nanoseconds) and its CDR bytes, so header stamps stay inside the
messages untouched.

Crash safety. rosbags writes an MCAP file as a sequence of chunks and only writes the index,
the summary and ``metadata.yaml`` when the bag is closed. :class:`BagWriter` closes the pending
chunk and flushes the file at least every ``flush_seconds`` (and on :meth:`BagWriter.flush`), so
a process killed at any moment leaves every flushed chunk complete on disk.
:func:`repair_bag` (which :func:`open_bag` calls on a bag without ``metadata.yaml``) cuts the
file after its last complete record, reads what is there and rewrites it as a closed bag: at
most the last ``flush_seconds`` of messages are lost.

robolearn's own topics (standard message types, so any ROS tool reads them):

* :data:`ACTION_TOPIC` (``std_msgs/msg/Float32MultiArray``): the policy's action of each control
  step, logged at the time of the observation it was computed from;
* :data:`EPISODE_TOPIC` (``std_msgs/msg/String``): JSON episode events, ``{"event": "start",
  "seed": ...}`` at reset and ``{"event": "end", "success": ..., ...}`` when an episode ends;
* :data:`SAFETY_TOPIC` (``std_msgs/msg/String``): each safety event as JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: The policy's action at each control step (``std_msgs/msg/Float32MultiArray``).
ACTION_TOPIC = "/robolearn/action"
#: Episode start and end events as JSON (``std_msgs/msg/String``).
EPISODE_TOPIC = "/robolearn/episode"
#: Safety events as JSON (``std_msgs/msg/String``).
SAFETY_TOPIC = "/robolearn/safety"
#: Message types of the topics above.
ACTION_TYPE = "std_msgs/msg/Float32MultiArray"
STRING_TYPE = "std_msgs/msg/String"
#: ``custom_data`` key of the bag's metadata holding robolearn's JSON description of the log.
CUSTOM_DATA_KEY = "robolearn"
#: File in the bag directory holding the custom data from the start, for :func:`repair_bag`.
SIDECAR = "robolearn_custom_data.json"

_MAGIC = b"\x89MCAP0\r\n"
_OP_HEADER, _OP_FOOTER, _OP_DATA_END = 0x01, 0x02, 0x0F
_RECORD = struct.Struct("<BQ")


class BagError(Exception):
    """A bag that cannot be read or repaired; the message names its path."""


@functools.cache
def typestore() -> Any:
    """The rosbags type store of ROS 2 Jazzy (standard message definitions, no ROS needed)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


@dataclasses.dataclass(frozen=True)
class BagMessage:
    """One message of a bag.

    Attributes:
        topic: Topic name.
        msgtype: ROS type name, e.g. ``sensor_msgs/msg/JointState``.
        log_ns: Log time in nanoseconds (when the recorder received or sent it).
        data: The CDR-serialized message, as on the wire.
    """

    topic: str
    msgtype: str
    log_ns: int
    data: bytes

    def decode(self) -> Any:
        """The message as a rosbags dataclass (fields named as in the ``.msg`` definition)."""
        return typestore().deserialize_cdr(self.data, self.msgtype)


def serialize(msg: Any, msgtype: str) -> bytes:
    """CDR bytes of a rosbags message dataclass (as :meth:`BagMessage.decode` returns)."""
    return bytes(typestore().serialize_cdr(msg, msgtype))


def string_message(payload: Mapping[str, Any]) -> bytes:
    """CDR bytes of a ``std_msgs/msg/String`` holding ``payload`` as JSON."""
    msg = typestore().types[STRING_TYPE](data=json.dumps(dict(payload), default=str))
    return serialize(msg, STRING_TYPE)


def action_message(action: Any) -> bytes:
    """CDR bytes of a ``std_msgs/msg/Float32MultiArray`` holding one action vector."""
    import numpy as np

    types = typestore().types
    values = np.asarray(action, dtype=np.float32).reshape(-1)
    dim = types["std_msgs/msg/MultiArrayDimension"](label="action", size=values.size, stride=1)
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0)
    return serialize(types[ACTION_TYPE](layout=layout, data=values), ACTION_TYPE)


class BagWriter:
    """A rosbag2 MCAP bag written through ``rosbags``, flushed often enough to survive a kill.

    Thread-safe: ROS callbacks on several threads may write concurrently.

    Args:
        path: The bag directory to create (must not exist).
        custom_data: String values stored in the bag's ``custom_data`` (and in a sidecar file
            from the start, so a repaired bag keeps them).
        flush_seconds: Longest time between chunk flushes: what a kill can lose at most.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        custom_data: Mapping[str, str] | None = None,
        flush_seconds: float = 1.0,
    ) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if not flush_seconds > 0:
            raise ValueError(f"flush_seconds must be positive, got {flush_seconds}")
        self.path = Path(path)
        self.flush_seconds = float(flush_seconds)
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(key, value)
        self._writer.open()
        storage = self._writer.storage
        # The periodic flush closes rosbags' pending chunk: check the writer still has one.
        if not (hasattr(storage, "close_chunk") and hasattr(storage, "bio")):
            self._writer.abort()
            raise RuntimeError(
                f"rosbags {type(storage).__name__} has no close_chunk/bio: this rosbags "
                "version is not supported by BagWriter's crash-safe flushing"
            )
        self._storage = storage
        _write_atomic(self.path / SIDECAR, json.dumps(dict(custom_data or {})).encode())
        self._connections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._pending = 0  # messages in the open chunk
        self.message_count = 0
        self.closed = False

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic of a standard message type (a second call is a no-op)."""
        with self._lock:
            if topic in self._connections:
                if self._connections[topic].msgtype != msgtype:
                    raise ValueError(
                        f"{topic} already holds {self._connections[topic].msgtype}, not {msgtype}"
                    )
                return
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=typestore()
            )

    def write(self, topic: str, data: bytes | memoryview, log_ns: int) -> None:
        """Append one CDR-serialized message of a declared topic, logged at ``log_ns``."""
        with self._lock:
            if self.closed:
                return  # a callback racing the shutdown: the bag is complete already
            self._writer.write(self._connections[topic], int(log_ns), data)
            self.message_count += 1
            self._pending += 1
            if time.monotonic() - self._last_flush >= self.flush_seconds:
                self._flush_locked()

    def flush(self) -> None:
        """Close the open chunk and hand the file to the OS: all written so far survives a
        kill of this process."""
        with self._lock:
            if not self.closed:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending:
            self._storage.close_chunk()
            self._pending = 0
        self._storage.bio.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write the index, summary and ``metadata.yaml`` (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def is_bag(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a rosbag2 directory with an MCAP file (closed or not)."""
    path = Path(path)
    return path.is_dir() and any(path.glob("*.mcap"))


def open_bag(path: str | os.PathLike, repair: bool = True) -> Any:
    """An open ``rosbags.rosbag2.Reader`` of the bag at ``path``; call ``close()`` when done.

    A bag without ``metadata.yaml`` (its writer was killed) is repaired first with
    :func:`repair_bag` when ``repair`` is set.
    """
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no bag here (path does not exist)")
    if not (path / "metadata.yaml").exists():
        if not repair or not is_bag(path):
            raise BagError(f"{path}: not a rosbag2 directory (no metadata.yaml)")
        repair_bag(path)
    reader = Reader(path)
    try:
        reader.open()
    except Exception as err:
        raise BagError(f"{path}: unreadable bag: {err}") from err
    return reader


def read_bag(path: str | os.PathLike, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """The messages of a bag in log-time order, optionally only those of ``topics``."""
    reader = open_bag(path)
    try:
        wanted = None if topics is None else set(topics)
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for connection, log_ns, data in reader.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, int(log_ns), bytes(data))
    finally:
        reader.close()


def bag_topics(path: str | os.PathLike) -> dict[str, str]:
    """Topic -> message type of every topic in the bag."""
    reader = open_bag(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def bag_custom_data(path: str | os.PathLike) -> dict[str, str]:
    """The bag's ``custom_data`` (empty when it has none)."""
    reader = open_bag(path)
    try:
        return dict(reader.storage.metadata.custom or {})
    finally:
        reader.close()


def repair_bag(path: str | os.PathLike) -> int:
    """Turn the bag of a killed writer into a closed, indexed bag; the number of messages kept.

    The MCAP file is cut after its last complete record (a chunk the writer was still filling
    is dropped), read, and rewritten through ``rosbags`` with the custom data of the sidecar
    file. The original file is replaced only once the rewritten bag is complete.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.storage_mcap import McapReader

    path = Path(path)
    files = sorted(path.glob("*.mcap"))
    if len(files) != 1:
        raise BagError(f"{path}: expected one .mcap file to repair, found {len(files)}")
    if (path / "metadata.yaml").exists():
        raise BagError(f"{path}: has metadata.yaml, so it was closed: nothing to repair")
    raw = files[0].read_bytes()
    end = _last_complete_record(raw, files[0])
    sidecar = path / SIDECAR
    custom = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    work = Path(tempfile.mkdtemp(prefix=".repair-", dir=path.parent))
    try:
        # A summary-less end (DataEnd, a Footer with no summary, the magic): readers then scan
        # the records themselves instead of trusting an index that was never written.
        cut = work / "cut.mcap"
        footer = struct.pack("<QQI", 0, 0, 0)
        cut.write_bytes(
            raw[:end]
            + _RECORD.pack(_OP_DATA_END, 4)
            + struct.pack("<I", 0)
            + _RECORD.pack(_OP_FOOTER, len(footer))
            + footer
            + _MAGIC
        )
        reader = McapReader(cut)
        try:
            reader.open()
        except Exception as err:
            raise BagError(f"{files[0]}: cannot be repaired: {err}") from err
        fixed = work / path.name
        writer = Writer(fixed, version=9, storage_plugin=StoragePlugin.MCAP)
        for key, value in custom.items():
            writer.set_custom_data(key, value)
        writer.open()
        count = 0
        try:
            out = {
                c.id: writer.add_connection(c.topic, c.msgtype, typestore=typestore())
                for c in reader.connections
            }
            for connection, log_ns, data in reader.messages(reader.connections):
                writer.write(out[connection.id], log_ns, data)
                count += 1
        finally:
            reader.close()
            writer.close()
        (fixed / SIDECAR).write_text(json.dumps(custom))
        # Swap: the partial file goes only after the repaired bag is complete.
        backup = work / "partial"
        os.replace(path, backup)
        os.replace(fixed, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return count


def _last_complete_record(raw: bytes, name: Path) -> int:
    """Offset just past the last complete top-level record of an unfinished MCAP file."""
    if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + _RECORD.size:
        raise BagError(f"{name}: not an MCAP file (bad magic or truncated header)")
    pos = len(_MAGIC)
    op, length = _RECORD.unpack_from(raw, pos)
    if op != _OP_HEADER:
        raise BagError(f"{name}: MCAP file does not start with a header record")
    end = pos = pos + _RECORD.size + length
    while pos + _RECORD.size <= len(raw):
        op, length = _RECORD.unpack_from(raw, pos)
        if op in (_OP_DATA_END, _OP_FOOTER) or pos + _RECORD.size + length > len(raw):
            break
        end = pos = pos + _RECORD.size + length
    return end
