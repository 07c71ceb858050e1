"""EpisodeStore: episodes of robot data in a zarr v3 group, crash-safe appends, DP-compatible.

Layout (zarr v3, Diffusion Policy replay-buffer compatible)::

    <path>/zarr.json            group; attributes hold schema_version, robot spec, spaces, ...
    <path>/data/<key>           one array per key, all episodes concatenated along axis 0
    <path>/meta/episode_ends    int64, cumulative exclusive end index of every episode
    <path>/meta/<name>          one value per episode (success, seed, source, length, ...)

Arrays are chunked along time only and stored without compression (the ``bytes`` codec), so a
chunk file is the raw little-endian rows of the chunk. That lets this module append rows with a
plain ``pwrite`` into the tail chunk and load whole arrays with ``readinto`` straight into the
result, at the speed of raw ``.npy`` files; any zarr v3 reader still reads the store.

Appending. ``add_episodes`` appends a batch of episodes with one commit; ``add_episode`` (the
streaming path used while recording) is a batch of one. A batch writes, in order: the new data
rows, the new meta values, the new ``episode_ends`` values, and last the ``episode_ends`` shape
in its ``zarr.json``: that one atomic metadata write (temporary file + ``os.replace``) is the
commit point of the whole batch.

Crash safety. Rows and meta values are only ever written beyond the committed length (the
number of episodes in ``episode_ends``), so they may be written in place: ``pwrite`` into the
tail chunk of a raw array; for a string meta array, the encoded items past the committed ones
are rewritten in place, never the committed items before them (a vlen-utf8 chunk is a count,
then length-prefixed items, so the committed items are a stable prefix of the file). Every
metadata file, and a chunk file that must appear with committed rows in it, is written to a
temporary file and moved into place with ``os.replace`` (so a half-written file never appears).
A meta array first created by a batch records that episode index (``first_episode``
attribute) and stays hidden until a commit covers it. A process killed at any moment therefore
leaves every committed episode intact and nothing of an uncommitted batch visible. Readers
trust ``episode_ends`` alone and ignore trailing rows; the next writer (``open(path, "a")``)
truncates them. zarr's LocalStore also writes files atomically (zarr >= 3.1), but only by
rewriting whole chunks, too slow for appends.

Data and meta arrays grow a whole chunk at a time while streaming single episodes (one
metadata write per chunk instead of per episode), so they may be longer than
``episode_ends[-1]`` until the writer is closed (``close()``, garbage collection or interpreter
exit), which cuts them to the exact committed lengths that Diffusion Policy's ReplayBuffer
asserts. A batch of several episodes grows them to the exact length instead: its metadata
writes are shared by the whole batch anyway.

Stores written by Diffusion Policy (zarr v2, a ``.zarr`` directory or a ``.zarr.zip``, usually
Blosc-compressed) and v3 arrays in another layout are read through zarr itself, read-only.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import shutil
import struct
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np

SCHEMA_VERSION = 1
"""Version of the layout and attribute conventions written by :class:`EpisodeStore`."""

# ~4 MiB per chunk: bulk loads are a few large reads, and appends of image episodes create a
# new chunk file (and grow the shape) only every few episodes.
_DATA_CHUNK_BYTES = 4 << 20
_MAX_CHUNK_ROWS = 1 << 20
# Meta arrays hold one row per episode; a small chunk keeps the rewritten string chunk small.
_META_CHUNK_ROWS = 1024
_PARTIAL = ".partial"
_EPISODE_ENDS = "episode_ends"
_LENGTH = "length"
# Attribute of a meta array: index of the first episode written to it. The array belongs to the
# store only once that episode is committed (a crashed batch that created it is rolled back).
_FIRST_EPISODE = "first_episode"
_U32 = struct.Struct("<I")  # the item count and item lengths of a vlen-utf8 chunk
_IOV_MAX = 1024  # buffers per pwritev call (Linux's IOV_MAX)

_FAST_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
}
_NAN_INF = {"NaN", "Infinity", "-Infinity"}
_META_FILL: dict[str, Any] = {"bool": False, "int64": -1, "float64": float("nan"), "string": ""}


class StoreError(Exception):
    """A store is missing, not an episode store, or corrupted. The message names the path."""


def _atomic_write(path: Path, payload: bytes | memoryview) -> None:
    """Write ``path`` so that readers see the old content or the new one, never a mix."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{_PARTIAL}")
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> None:
    """Write byte ``views`` back to back at ``offset``: one ``pwritev`` per ``_IOV_MAX`` buffers."""
    views = [v for v in views if v.nbytes]
    i = 0
    while i < len(views):
        done = os.pwritev(fd, views[i : i + _IOV_MAX], offset)
        if done <= 0:
            raise OSError(f"pwritev wrote {done} bytes")
        offset += done
        # A short write (a full disk, a signal) goes on from where it stopped.
        while i < len(views) and done >= views[i].nbytes:
            done -= views[i].nbytes
            i += 1
        if done:
            views[i] = views[i][done:]


def _grown_length(n: int, chunk_rows: int, exact: bool) -> int:
    """Rows an array grows to so that it holds ``n``: exactly ``n``, or whole chunks."""
    return n if exact else -(-n // chunk_rows) * chunk_rows


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_json(obj: Any, what: str, indent: int | None = 2) -> str:
    try:
        return json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what}: {exc}") from None


def _array_metadata(
    shape: Sequence[int], data_type: str, chunk_rows: int, fill_value: Any, codecs: list
) -> dict:
    """zarr v3 array metadata, chunked along axis 0 only, as zarr itself writes it."""
    if isinstance(fill_value, float) and math.isnan(fill_value):
        fill_value = "NaN"
    return {
        "shape": list(shape),
        "data_type": data_type,
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [chunk_rows, *shape[1:]]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill_value,
        "codecs": codecs,
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _bytes_codecs(dtype: np.dtype) -> list:
    if dtype.itemsize == 1:
        return [{"name": "bytes"}]
    return [{"name": "bytes", "configuration": {"endian": "little"}}]


def _drop_chunks_beyond(path: Path, chunk_rows: int, n: int) -> None:
    """Delete the chunk files of an array that lie wholly past row ``n``."""
    first_dead = -(-n // chunk_rows)
    chunk_dir = path / "c"
    if not chunk_dir.is_dir():
        return
    for entry in os.scandir(chunk_dir):
        if entry.name.endswith(_PARTIAL):
            os.unlink(entry.path)
        elif entry.name.isdigit() and int(entry.name) >= first_dead:
            if entry.is_dir():
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _set_shape(array: _RawArray | _StrArray, n: int) -> None:
    """Rewrite an array's ``zarr.json`` with ``n`` rows, atomically."""
    array.meta["shape"][0] = n
    # Written on every commit: compact JSON, which json's C encoder writes (indented: Python's).
    payload = _to_json(array.meta, str(array.path), indent=None).encode()
    _atomic_write(array.path / "zarr.json", payload)


def _chunked_only_along_time(meta: dict) -> bool:
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        return False
    chunks = grid.get("configuration", {}).get("chunk_shape", [])
    shape = meta.get("shape", [])
    return len(chunks) == len(shape) >= 1 and list(chunks[1:]) == list(shape[1:])


def _default_key_encoding(meta: dict) -> bool:
    enc = meta.get("chunk_key_encoding", {})
    return enc.get("name") == "default" and enc.get("configuration", {}).get("separator") == "/"


class _ChunkedArray(abc.ABC):
    """What the writable array kinds share: an ``n``-row length kept in their ``zarr.json``."""

    path: Path
    meta: dict
    chunk_rows: int

    @property
    def length(self) -> int:
        return int(self.meta["shape"][0])

    @abc.abstractmethod
    def drop_chunks_beyond(self, n: int) -> None:
        """Delete what lies past row ``n``."""

    def set_length(self, n: int) -> None:
        """Set the length exactly (atomic metadata write); shrinking deletes chunks past it."""
        _set_shape(self, n)
        self.drop_chunks_beyond(n)

    def reserve(self, n: int, exact: bool = False) -> None:
        """Make the array at least ``n`` rows long: exactly ``n``, or a whole number of chunks."""
        if self.length < n:
            _set_shape(self, _grown_length(n, self.chunk_rows, exact))


class _RawArray(_ChunkedArray):
    """Direct file access to a v3 array stored with the ``bytes`` codec, chunked along time."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.row_shape = tuple(meta["shape"][1:])
        self.chunk_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.row_bytes = self.dtype.itemsize * math.prod(self.row_shape)
        fill = meta["fill_value"]
        self.fill = float(fill) if isinstance(fill, str) else fill
        self._chunk_suffix = "/".join(["0"] * len(self.row_shape))

    @staticmethod
    def supports(meta: dict) -> bool:
        codecs = meta.get("codecs", [])
        return (
            meta.get("data_type") in _FAST_DTYPES
            and _chunked_only_along_time(meta)
            and _default_key_encoding(meta)
            and len(codecs) == 1
            and codecs[0].get("name") == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and not meta.get("storage_transformers")
            and (not isinstance(meta.get("fill_value"), str) or meta["fill_value"] in _NAN_INF)
        )

    def _chunk_path(self, ci: int) -> str:
        suffix = f"/{self._chunk_suffix}" if self._chunk_suffix else ""
        return f"{self.path}/c/{ci}{suffix}"

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``, read straight into the result array."""
        out = np.empty((stop - start, *self.row_shape), dtype=self.dtype)
        flat = out.reshape(-1).view(np.uint8) if out.size else out
        row = start
        while row < stop:
            ci, local = divmod(row, self.chunk_rows)
            n = min(stop - row, self.chunk_rows - local)
            lo = (row - start) * self.row_bytes
            want = n * self.row_bytes
            try:
                with open(self._chunk_path(ci), "rb", buffering=0) as f:
                    f.seek(local * self.row_bytes)
                    got = f.readinto(memoryview(flat[lo : lo + want]))
            except FileNotFoundError:
                out[row - start : row - start + n] = self.fill
                got = want
            if got != want:
                raise StoreError(f"{self._chunk_path(ci)}: chunk file is truncated")
            row += n
        return out

    def write(self, start: int, values: np.ndarray | Sequence[np.ndarray]) -> None:
        """Write rows at ``start``: one array, or several (a batch) back to back.

        Callers only write beyond the committed length. A batch is concatenated once and the
        slices that fall into one chunk go out in one ``pwritev``, so a batch of many small
        episodes costs one open and one system call per chunk, not per episode.
        """
        parts = [values] if isinstance(values, np.ndarray) else values
        if len(parts) > 1:
            # One C-speed copy is cheaper than slicing every small episode in Python.
            parts = [np.concatenate(parts)]
        rb = self.row_bytes
        views: dict[int, tuple[int, list[memoryview]]] = {}  # chunk -> (byte offset, slices)
        row = start
        for part in parts:
            buf = np.ascontiguousarray(part, dtype=self.dtype).reshape(-1).view(np.uint8)
            done, n_rows = 0, len(part)
            while done < n_rows:
                ci, local = divmod(row, self.chunk_rows)
                n = min(n_rows - done, self.chunk_rows - local)
                views.setdefault(ci, (local * rb, []))[1].append(
                    memoryview(buf[done * rb : (done + n) * rb])
                )
                done += n
                row += n
        for ci, (offset, chunk_views) in views.items():
            path = self._chunk_path(ci)
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                self._new_chunk(path, self.chunk_rows * rb, offset, chunk_views)
            else:
                try:
                    _pwrite_all(fd, chunk_views, offset)
                finally:
                    os.close(fd)

    def _new_chunk(self, path: str, size: int, offset: int, views: list[memoryview]) -> None:
        # The only committed rows a missing chunk can cover are fill values (a meta array
        # created after earlier episodes: a missing chunk reads as fill). A chunk file must be
        # full-size (zarr requires that).
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if self.fill in (0, False):
            # Zero fill: a sparse file reads as fill from the start, so no reader ever sees a
            # wrong committed row and the chunk is written in place.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, size)
                _pwrite_all(fd, views, offset)
            finally:
                os.close(fd)
            return
        # Other fills (NaN, -1; small meta chunks): built in memory and moved into place whole,
        # so committed fill rows never read as zeros.
        chunk = np.full(size // self.dtype.itemsize, self.fill, self.dtype).view(np.uint8)
        pos = offset
        for view in views:
            chunk[pos : pos + view.nbytes] = np.frombuffer(view, np.uint8)
            pos += view.nbytes
        _atomic_write(Path(path), memoryview(chunk))

    def drop_chunks_beyond(self, n: int) -> None:
        _drop_chunks_beyond(self.path, self.chunk_rows, n)


def _encode_items(values: Iterable[str]) -> bytes:
    """vlen-utf8 items without the count header: a u32 length, then the UTF-8 bytes, each."""
    out = bytearray()
    for value in values:
        raw = value.encode()
        out += _U32.pack(len(raw))
        out += raw
    return bytes(out)


class _StrArray(_ChunkedArray):
    """A 1-D variable-length UTF-8 string array (``vlen-utf8`` codec), for meta values.

    A chunk file is ``u32 count`` then ``count`` items of ``u32 length + UTF-8 bytes``. Appends
    rewrite, in place, only the items from the first uncommitted one to the chunk's end (the
    new values, then fill); the committed items before them are a prefix that never changes.
    So an append costs one ``pwrite``, not a rewrite and rename of the whole chunk, and a
    crash can leave a torn tail only past the committed items: reads decode just the prefix
    they need when the whole chunk does not decode, and the next writer rewrites the tail.
    """

    _codec = numcodecs.VLenUTF8()

    def __init__(self, path: Path, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self.chunk_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.fill = meta.get("fill_value") or ""
        self._fill_item = _encode_items([self.fill])
        # (chunk, item, byte offset) where the last write ended, so that the next append
        # need not read and parse the chunk to find where its items start (one writer only).
        self._cursor: tuple[int, int, int] | None = None

    @staticmethod
    def supports(meta: dict) -> bool:
        codecs = meta.get("codecs", [])
        return (
            meta.get("data_type") == "string"
            and len(meta.get("shape", [])) == 1
            and _chunked_only_along_time(meta)
            and _default_key_encoding(meta)
            and [c.get("name") for c in codecs] == ["vlen-utf8"]
        )

    def _chunk_path(self, ci: int) -> Path:
        return self.path / f"c/{ci}"

    def _item_offset(self, raw: bytes, item: int) -> int:
        """Byte offset of item ``item`` in the encoded chunk ``raw`` (walks the prefix)."""
        pos = _U32.size
        for _ in range(item):
            if pos + _U32.size > len(raw):
                raise StoreError(f"{self.path}: string chunk is truncated")
            pos += _U32.size + _U32.unpack_from(raw, pos)[0]
        if pos > len(raw):
            raise StoreError(f"{self.path}: string chunk is truncated")
        return pos

    def _chunk(self, ci: int, need: int) -> list[str]:
        """The first ``need`` items of chunk ``ci`` (fill values if it has no file)."""
        try:
            raw = self._chunk_path(ci).read_bytes()
        except FileNotFoundError:
            return [self.fill] * need
        try:
            return list(self._codec.decode(raw)[:need])
        except ValueError:
            pass
        # A torn tail (a writer killed mid-append): decode the committed prefix only.
        values, pos = [], _U32.size
        for _ in range(need):
            n = _U32.unpack_from(raw, pos)[0] if pos + _U32.size <= len(raw) else -1
            if n < 0 or pos + _U32.size + n > len(raw):
                raise StoreError(f"{self._chunk_path(ci)}: string chunk is truncated")
            values.append(raw[pos + _U32.size : pos + _U32.size + n].decode())
            pos += _U32.size + n
        return values

    def read(self, start: int, stop: int) -> np.ndarray:
        values: list[str] = []
        for ci in range(start // self.chunk_rows, -(-stop // self.chunk_rows)):
            lo = ci * self.chunk_rows
            chunk = self._chunk(ci, min(stop - lo, self.chunk_rows))
            values.extend(chunk[max(start - lo, 0) :])
        return np.array(values, dtype=str) if values else np.zeros(0, dtype=str)

    def write(self, start: int, values: Sequence[object]) -> None:
        """Write values at ``start``; callers only write beyond the committed length."""
        texts = [str(v) for v in values]
        done = 0
        while done < len(texts):
            ci, local = divmod(start + done, self.chunk_rows)
            n = min(len(texts) - done, self.chunk_rows - local)
            self._write_tail(ci, local, texts[done : done + n])
            done += n

    def _write_tail(self, ci: int, item: int, texts: list[str]) -> None:
        """Rewrite chunk ``ci`` from item ``item`` on: ``texts``, then fill to the chunk's end."""
        path = self._chunk_path(ci)
        body = _encode_items(texts)
        tail = body + self._fill_item * (self.chunk_rows - item - len(texts))
        offset = None
        if self._cursor is not None and self._cursor[:2] == (ci, item):
            offset = self._cursor[2]
        else:
            with contextlib.suppress(FileNotFoundError):
                offset = self._item_offset(self._chunk_path(ci).read_bytes(), item)
        if offset is None:
            # No file yet: items before ``item`` may be committed fill values, so the chunk is
            # written whole and moved into place (a rename to a new name, once per chunk).
            path.parent.mkdir(parents=True, exist_ok=True)
            head = _U32.pack(self.chunk_rows) + self._fill_item * item
            _atomic_write(path, head + tail)
            offset = len(head)
        else:
            fd = os.open(path, os.O_WRONLY)
            try:
                _pwrite_all(fd, [memoryview(tail)], offset)
                os.ftruncate(fd, offset + len(tail))
            finally:
                os.close(fd)
        self._cursor = (ci, item + len(texts), offset + len(body))

    def drop_chunks_beyond(self, n: int) -> None:
        """Delete chunks past row ``n`` and reset items past it in its chunk to fill.

        Uncommitted items left by a crashed or failed append (possibly a torn tail) would
        otherwise stay in the chunk that zarr decodes whole.
        """
        _drop_chunks_beyond(self.path, self.chunk_rows, n)
        self._cursor = None
        ci, item = divmod(n, self.chunk_rows)
        try:
            raw = self._chunk_path(ci).read_bytes()
        except FileNotFoundError:
            return
        offset = self._item_offset(raw, item)
        if raw[offset:] != self._fill_item * (self.chunk_rows - item):
            self._write_tail(ci, item, [])


class _ZarrArray:
    """Read-only access through zarr, for v2 stores and v3 arrays in other layouts."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.dtype = array.dtype

    @property
    def length(self) -> int:
        return int(self.array.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        values = self.array[start:stop]
        if isinstance(values, np.ndarray) and values.dtype.kind in "OT":
            return values.astype(str)
        return np.asarray(values)


def _meta_kind(name: str, value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int64"
    if isinstance(value, (float, np.floating)):
        return "float64"
    if isinstance(value, str):
        return "string"
    raise ValueError(
        f"meta {name!r}: values must be bool, int, float or str scalars, got {type(value).__name__}"
    )


def _meta_value(name: str, array_kind: str, value: Any) -> Any:
    """``value`` converted to the kind of the existing meta array, or a ValueError."""
    kind = _meta_kind(name, value)
    if kind == array_kind or (array_kind == "float64" and kind == "int64"):
        return value
    raise ValueError(f"meta {name!r}: store holds {array_kind} values, got {kind} ({value!r})")


def _valid_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(
            f"{what} name {name!r}: must be a non-empty str without '/' or leading '.'"
        )


class EpisodeStore:
    """Episodes of robot data in a zarr v3 group; see the module docstring for the layout.

    Create with :meth:`create`, open with :meth:`open` (``"r"`` read-only, ``"a"`` append).
    Only committed episodes (those counted by ``meta/episode_ends``) are ever visible.
    A store has at most one writer at a time.
    """

    def __init__(
        self,
        path: Path,
        attrs: dict,
        data: dict[str, Any],
        meta: dict[str, Any],
        episode_ends: np.ndarray,
        writable: bool,
        closer: Any = None,
    ) -> None:
        self.path = path
        self._attrs = attrs
        self._data = data
        self._meta = meta
        self._ends = episode_ends.astype(np.int64)
        self._writable = writable
        self._closer = closer
        self._ends_array: _RawArray | None = None
        self._counts = [self.n_steps, self.n_episodes]
        if writable:
            self._finalizer = weakref.finalize(self, _trim_quietly, data, meta, self._counts)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls, path: str | os.PathLike, attrs: dict | None = None, overwrite: bool = False
    ) -> EpisodeStore:
        """Create an empty store at ``path`` and return it open for appending.

        ``attrs`` (JSON-serialisable) become the group attributes, with ``schema_version``
        added. An existing path raises FileExistsError unless ``overwrite`` is set.
        """
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace)")
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        group_attrs = {"schema_version": SCHEMA_VERSION, **(attrs or {})}
        group_json = _to_json(
            {"attributes": group_attrs, "zarr_format": 3, "node_type": "group"}, f"{path} attrs"
        )
        sub_json = _to_json({"attributes": {}, "zarr_format": 3, "node_type": "group"}, "")
        for sub in ("data", "meta"):
            (path / sub).mkdir(parents=True)
            _atomic_write(path / sub / "zarr.json", sub_json.encode())
        ends = _array_metadata([0], "int64", _META_CHUNK_ROWS, 0, _bytes_codecs(np.dtype(np.int64)))
        (path / "meta" / _EPISODE_ENDS).mkdir()
        _atomic_write(path / "meta" / _EPISODE_ENDS / "zarr.json", _to_json(ends, "").encode())
        # The root group metadata goes last: until it exists the path is not a store.
        _atomic_write(path / "zarr.json", group_json.encode())
        return cls.open(path, "a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> EpisodeStore:
        """Open an existing store: ``"r"`` read-only, ``"a"`` to append more episodes.

        Also opens Diffusion Policy replay buffers (zarr v2 directory or ``.zip``) read-only.
        Raises StoreError naming the path when it is missing, not a zarr group, lacks
        ``meta/episode_ends`` or has unreadable metadata. ``"a"`` truncates rows left behind
        by a writer that crashed mid-append.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no episode store here (path does not exist)")
        if path.is_dir() and (path / "zarr.json").is_file():
            return cls._open_v3(path, mode)
        if mode == "a":
            raise StoreError(
                f"{path}: only zarr v3 stores written by EpisodeStore can be appended to; "
                "open it with mode='r'"
            )
        return cls._open_with_zarr(path)

    @classmethod
    def _open_v3(cls, path: Path, mode: str) -> EpisodeStore:
        root = cls._read_json(path / "zarr.json", path)
        if root.get("zarr_format") != 3 or root.get("node_type") != "group":
            raise StoreError(
                f"{path}: not a zarr v3 group (zarr.json says {root.get('node_type')})"
            )
        data = cls._v3_arrays(path, "data")
        meta = cls._v3_arrays(path, "meta")
        if _EPISODE_ENDS not in meta:
            raise StoreError(f"{path}: not an episode store (no meta/{_EPISODE_ENDS} array)")
        ends_arr = meta.pop(_EPISODE_ENDS)
        ends = cls._checked_ends(path, ends_arr.read(0, ends_arr.length))
        for name, arr in list(meta.items()):
            first = getattr(arr, "meta", {}).get("attributes", {}).get(_FIRST_EPISODE, -1)
            if isinstance(first, int) and first >= len(ends):
                # Created by a batch that never committed: not part of the store.
                del meta[name]
                if mode == "a":
                    shutil.rmtree(arr.path)
        if mode == "a":
            for name, arr in [*data.items(), *meta.items(), (_EPISODE_ENDS, ends_arr)]:
                if not isinstance(arr, (_RawArray, _StrArray)):
                    raise StoreError(
                        f"{path}: array {name!r} is not in EpisodeStore's layout; "
                        "the store can only be opened read-only"
                    )
        store = cls(path, dict(root.get("attributes", {})), data, meta, ends, mode == "a")
        store._ends_array = ends_arr
        store._check_lengths()
        if mode == "a":
            store._recover()
        return store

    @classmethod
    def _v3_arrays(cls, path: Path, group: str) -> dict[str, Any]:
        arrays: dict[str, Any] = {}
        gdir = path / group
        if not gdir.is_dir():
            return arrays
        zgroup = None
        for entry in sorted(os.scandir(gdir), key=lambda e: e.name):
            meta_path = Path(entry.path) / "zarr.json"
            if not entry.is_dir() or not meta_path.is_file():
                continue
            meta = cls._read_json(meta_path, path)
            if meta.get("node_type") != "array":
                continue
            if _RawArray.supports(meta):
                arrays[entry.name] = _RawArray(Path(entry.path), meta)
            elif _StrArray.supports(meta):
                arrays[entry.name] = _StrArray(Path(entry.path), meta)
            else:
                if zgroup is None:
                    zgroup = cls._zarr_group(path)
                arrays[entry.name] = _ZarrArray(zgroup[f"{group}/{entry.name}"])
        return arrays

    @staticmethod
    def _read_json(meta_path: Path, store_path: Path) -> dict:
        try:
            value = json.loads(meta_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{store_path}: unreadable metadata {meta_path.name} ({exc})"
            ) from None
        if not isinstance(value, dict):
            raise StoreError(f"{store_path}: unreadable metadata {meta_path} (not a JSON object)")
        return value

    @staticmethod
    def _zarr_group(path: Path, store: Any = None) -> Any:
        import zarr

        try:
            return zarr.open_group(store if store is not None else path, mode="r")
        except Exception as exc:  # zarr raises many types for a path that is not a group
            raise StoreError(f"{path}: not a zarr group ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _open_with_zarr(cls, path: Path) -> EpisodeStore:
        closer = None
        store: Any = None
        if path.is_file():
            import zipfile

            import zarr.storage

            if not zipfile.is_zipfile(path):
                raise StoreError(f"{path}: not a zarr group (a file that is not a zip archive)")
            store = closer = zarr.storage.ZipStore(path, mode="r")
        group = cls._zarr_group(path, store)
        try:
            data_group = group["data"] if "data" in group else None
            meta_group = group["meta"] if "meta" in group else None
            if meta_group is None or _EPISODE_ENDS not in meta_group:
                raise StoreError(f"{path}: not an episode store (no meta/{_EPISODE_ENDS} array)")
            ends = cls._checked_ends(path, np.asarray(meta_group[_EPISODE_ENDS][:]))
            data = {k: _ZarrArray(a) for k, a in sorted(data_group.arrays())} if data_group else {}
            meta = {k: _ZarrArray(a) for k, a in sorted(meta_group.arrays()) if k != _EPISODE_ENDS}
            attrs = dict(group.attrs)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{path}: unreadable metadata ({type(exc).__name__}: {exc})") from None
        store_obj = cls(path, attrs, data, meta, ends, writable=False, closer=closer)
        store_obj._check_lengths()
        return store_obj

    @staticmethod
    def _checked_ends(path: Path, ends: np.ndarray) -> np.ndarray:
        if ends.ndim != 1 or ends.dtype.kind not in "iu":
            raise StoreError(f"{path}: meta/{_EPISODE_ENDS} must be a 1-D integer array")
        if len(ends) and (ends[0] < 0 or np.any(np.diff(ends) < 0)):
            raise StoreError(f"{path}: meta/{_EPISODE_ENDS} is not non-decreasing")
        return ends.astype(np.int64)

    def _check_lengths(self) -> None:
        """Every array must cover the committed rows; longer ones hold uncommitted rows."""
        n_steps, n_eps = self.n_steps, self.n_episodes
        if n_eps == 0:
            return
        for group, arrays, need in (("data", self._data, n_steps), ("meta", self._meta, n_eps)):
            for name, arr in arrays.items():
                if arr.length < need:
                    raise StoreError(
                        f"{self.path}: {group}/{name} has {arr.length} rows but "
                        f"meta/{_EPISODE_ENDS} needs {need} (corrupted store)"
                    )

    def _recover(self) -> None:
        """Drop whatever a crashed writer left beyond the last committed episode."""
        for tmp in self.path.rglob(f"*{_PARTIAL}"):
            tmp.unlink(missing_ok=True)
        for group in ("data", "meta"):
            group_dir = self.path / group
            for adir in group_dir.iterdir() if group_dir.is_dir() else ():
                if adir.is_dir() and not (adir / "zarr.json").exists():
                    shutil.rmtree(adir)  # a crash fell between making its folder and metadata
        if self.n_episodes == 0:
            # The first episode defines keys and dtypes: forget a crashed first attempt.
            for arr in [*self._data.values(), *self._meta.values()]:
                shutil.rmtree(arr.path)
            self._data.clear()
            self._meta.clear()
            if self._ends_array.length:
                self._ends_array.set_length(0)
            self._ends_array.drop_chunks_beyond(0)
            return
        self._sync_counts()
        _trim(self._data, self._meta, self._counts)
        n_eps = self.n_episodes
        if self._ends_array.length != n_eps:
            self._ends_array.set_length(n_eps)
        self._ends_array.drop_chunks_beyond(n_eps)

    def _sync_counts(self) -> None:
        self._counts[:] = [self.n_steps, self.n_episodes]

    def close(self) -> None:
        """Finish with the store.

        A writer cuts its arrays to the committed lengths (while appending they grow a chunk
        at a time, so Diffusion Policy's exact-length check holds only after this; it also runs
        when the store is garbage-collected or the interpreter exits). A ``.zip`` store's file
        is released.
        """
        if self._writable:
            self._finalizer()
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ attributes

    @property
    def attrs(self) -> dict:
        """Group attributes (a copy): schema_version, robot spec, control_hz, spaces, ..."""
        return json.loads(json.dumps(self._attrs, default=_json_default))

    def update_attrs(self, **attrs: Any) -> None:
        """Merge ``attrs`` (JSON-serialisable) into the group attributes, atomically."""
        self._require_writable()
        merged = {**self._attrs, **attrs}
        doc = {"attributes": merged, "zarr_format": 3, "node_type": "group"}
        _atomic_write(self.path / "zarr.json", _to_json(doc, f"{self.path} attrs").encode())
        self._attrs = json.loads(json.dumps(merged, default=_json_default))

    # ------------------------------------------------------------------ sizes and keys

    @property
    def episode_ends(self) -> np.ndarray:
        """int64 cumulative exclusive end index of every committed episode (a copy)."""
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        """int64 number of steps of every committed episode."""
        return np.diff(self._ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        """Number of committed episodes."""
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        """Number of committed steps over all episodes."""
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        """Data keys, sorted."""
        return sorted(self._data)

    @property
    def meta_keys(self) -> list[str]:
        """Per-episode meta keys (``episode_ends`` excluded), sorted."""
        return sorted(self._meta)

    def __len__(self) -> int:
        return self.n_episodes

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, keys={self.keys})"
        )

    # ------------------------------------------------------------------ reading

    def _bounds(self, index: int) -> tuple[int, int]:
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"episode {index} out of range for {n} episodes in {self.path}")
        index %= n
        start = int(self._ends[index - 1]) if index else 0
        return start, int(self._ends[index])

    def _resolve_keys(self, keys: Iterable[str] | None) -> list[str]:
        if keys is None:
            return self.keys
        keys = [keys] if isinstance(keys, str) else list(keys)
        for key in keys:
            if key not in self._data:
                raise KeyError(f"{self.path}: no data key {key!r} (keys: {self.keys})")
        return keys

    def get_episode(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The data arrays of one episode (negative indices count from the end)."""
        start, stop = self._bounds(index)
        return {k: self._data[k].read(start, stop) for k in self._resolve_keys(keys)}

    def load(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Every committed step of ``keys`` (default: all data keys), read in bulk into memory."""
        return {k: self._data[k].read(0, self.n_steps) for k in self._resolve_keys(keys)}

    def meta(self, name: str) -> np.ndarray:
        """The per-episode meta array ``name`` (length ``n_episodes``)."""
        if name == _EPISODE_ENDS:
            return self.episode_ends
        if name not in self._meta:
            raise KeyError(f"{self.path}: no meta key {name!r} (meta keys: {self.meta_keys})")
        return self._meta[name].read(0, self.n_episodes)

    def episode_meta(self, index: int) -> dict[str, object]:
        """The meta values of one episode as Python scalars."""
        self._bounds(index)
        index %= self.n_episodes
        return {k: arr.read(index, index + 1)[0].item() for k, arr in sorted(self._meta.items())}

    # ------------------------------------------------------------------ writing

    def _require_writable(self) -> None:
        if not self._writable:
            raise PermissionError(f"{self.path}: store is open read-only (use mode='a')")

    def add_episode(
        self, data: Mapping[str, np.ndarray], meta: Mapping[str, object] | None = None
    ) -> int:
        """Append one episode and commit it; returns its index.

        ``data`` maps every data key to an array whose first axis is time; all have the same
        length. The first episode defines keys, dtypes and trailing shapes; later episodes
        must match them exactly. ``meta`` holds bool/int/float/str scalars; a key missing
        here gets its fill value (False, -1, NaN, ""), a new key gets it for earlier episodes.
        The episode length is recorded as ``meta/length``.

        This is the streaming path used while recording: every call is one durable commit
        (one atomic metadata replace). To write many episodes at once, use
        :meth:`add_episodes`, which commits them all with one.
        """
        return self._append([(data, meta)], "add_episode")[0]

    def add_episodes(
        self, episodes: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, object] | None]]
    ) -> list[int]:
        """Append a batch of ``(data, meta)`` episodes with ONE commit; returns their indices.

        Every episode is validated exactly as by :meth:`add_episode` (in an empty store the
        first one defines the keys) before anything is written; then all rows, meta values
        and episode ends are written in one pass and a single ``episode_ends`` update commits
        them. All or nothing: an invalid episode, an exception or a crash (even SIGKILL)
        midway leaves the store as it was before the call. The batch is held in memory, so
        convert a very large dataset in batches of a few hundred MB (one call, one commit,
        each).
        """
        return self._append(episodes, "add_episodes")

    def _append(
        self,
        episodes: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, object] | None]],
        caller: str,
    ) -> list[int]:
        """The one append path behind :meth:`add_episode` and :meth:`add_episodes`."""
        self._require_writable()
        batch = self._validate_batch(episodes, caller)
        if not batch:
            return []
        index0, start0 = self.n_episodes, self.n_steps
        n_new = len(batch)
        ends = start0 + np.cumsum([length for _, _, length in batch], dtype=np.int64)
        # A streamed episode grows arrays a chunk at a time (amortised over later appends);
        # a batch grows them exactly, sharing one metadata write per array across the batch.
        exact = n_new > 1
        created_data = not self._data
        created_meta: list[str] = []
        try:
            if created_data:
                self._create_data_arrays(batch[0][0], int(ends[-1]), exact)
            for key, arr in self._data.items():
                arr.write(start0, [arrays[key] for arrays, _, _ in batch])
                arr.reserve(int(ends[-1]), exact)

            for _, values, _ in batch:
                for name, (kind, _) in values.items():
                    if name not in self._meta:
                        self._meta[name] = self._create_meta_array(
                            name, kind, index0, index0 + n_new, exact
                        )
                        created_meta.append(name)
            for name, arr in self._meta.items():
                kind = _meta_array_kind(arr)
                column = [
                    values[name][1] if name in values else _META_FILL[kind]
                    for _, values, _ in batch
                ]
                arr.write(index0, column if kind == "string" else np.asarray(column, arr.dtype))
                arr.reserve(index0 + n_new, exact)

            self._ends_array.write(index0, ends)
            _set_shape(self._ends_array, index0 + n_new)  # the commit point
        except BaseException:
            self._forget_new_arrays(created_data, created_meta)
            raise
        self._ends = np.concatenate([self._ends, ends])
        self._sync_counts()
        return list(range(index0, index0 + n_new))

    def _forget_new_arrays(self, data: bool, meta: list[str]) -> None:
        """Undo the arrays an append created before it failed (uncommitted, so unseen)."""
        doomed = [self._meta.pop(name) for name in meta]
        if data:
            doomed += self._data.values()
            self._data = {}
        for arr in doomed:
            shutil.rmtree(arr.path, ignore_errors=True)

    def _validate_batch(
        self,
        episodes: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, object] | None]],
        caller: str,
    ) -> list[tuple[dict[str, np.ndarray], dict[str, tuple[str, Any]], int]]:
        """Validated ``(arrays, meta values, length)`` of every episode, or a ValueError.

        Later episodes of a batch are checked against the keys and meta kinds the earlier ones
        would have created, exactly as if they had been appended one by one.
        """
        schema = {k: (a.dtype, a.row_shape) for k, a in self._data.items()}
        kinds = {name: _meta_array_kind(arr) for name, arr in self._meta.items()}
        batch = []
        for pos, item in enumerate(episodes):
            where = caller if caller == "add_episode" else f"{caller}: episode {pos}"
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"{where}: expected a (data, meta) pair, got {type(item).__name__}")
            data, meta = item
            try:
                arrays = _validate_data(data, schema)
                length = len(next(iter(arrays.values())))
                values = _validate_meta(dict(meta or {}), length, kinds)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if not schema:
                schema = {k: (a.dtype.newbyteorder("<"), a.shape[1:]) for k, a in arrays.items()}
            for name, (kind, _) in values.items():
                kinds.setdefault(name, kind)
            batch.append((arrays, values, length))
        return batch

    def _create_data_arrays(self, arrays: dict[str, np.ndarray], rows: int, exact: bool) -> None:
        """Data arrays shaped like ``arrays``, already ``rows`` long (grown as by ``reserve``)."""
        for key, arr in arrays.items():
            dtype = arr.dtype.newbyteorder("<")
            row_bytes = max(1, dtype.itemsize * math.prod(arr.shape[1:]))
            chunk_rows = int(min(_MAX_CHUNK_ROWS, max(1, _DATA_CHUNK_BYTES // row_bytes)))
            fill = False if dtype.kind == "b" else 0
            shape = [_grown_length(rows, chunk_rows, exact), *arr.shape[1:]]
            meta = _array_metadata(shape, dtype.name, chunk_rows, fill, _bytes_codecs(dtype))
            adir = self.path / "data" / key
            adir.mkdir(parents=True, exist_ok=True)
            _atomic_write(adir / "zarr.json", _to_json(meta, str(adir)).encode())
            self._data[key] = _RawArray(adir, meta)

    def _create_meta_array(
        self, name: str, kind: str, n: int, rows: int, exact: bool
    ) -> _RawArray | _StrArray:
        """A new meta array holding ``n`` fill values for the committed episodes.

        It is already ``rows`` long (grown as by ``reserve``) and records ``n`` as its first
        episode: until episode ``n`` is committed, readers ignore it and the next writer
        deletes it, so a crashed batch leaves no new meta key behind.
        """
        adir = self.path / "meta" / name
        adir.mkdir(parents=True, exist_ok=True)
        if kind == "string":
            codecs = [{"name": "vlen-utf8", "configuration": {}}]
        else:
            codecs = _bytes_codecs(np.dtype(kind))
        shape = [_grown_length(rows, _META_CHUNK_ROWS, exact)]
        meta = _array_metadata(shape, kind, _META_CHUNK_ROWS, _META_FILL[kind], codecs)
        meta["attributes"] = {_FIRST_EPISODE: n}
        _atomic_write(adir / "zarr.json", _to_json(meta, str(adir)).encode())
        return _StrArray(adir, meta) if kind == "string" else _RawArray(adir, meta)


def _validate_data(
    data: Mapping[str, np.ndarray], schema: dict[str, tuple[np.dtype, tuple[int, ...]]]
) -> dict[str, np.ndarray]:
    """``data`` as arrays, checked against ``schema`` (key -> dtype, per-step shape) if any."""
    if not data:
        raise ValueError("data is empty")
    arrays: dict[str, np.ndarray] = {}
    for key, value in data.items():
        if not schema:  # with a schema, the key check below covers the names
            _valid_name(key, "data key")
        arr = np.asarray(value)
        if arr.ndim == 0:
            raise ValueError(f"data {key!r}: needs a leading time axis, got a scalar")
        # dtype.kind, not dtype.name: the name is built on every access, a hot spot in bulk adds.
        kind, size = arr.dtype.kind, arr.dtype.itemsize
        if not ((kind in "biuf" and size <= 8) or (kind == "c" and size <= 16)):
            raise ValueError(f"data {key!r}: dtype {arr.dtype} is not a numeric or bool dtype")
        arrays[key] = arr
    lengths = {k: len(a) for k, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"data arrays differ in length: {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("an episode needs at least one step")
    if schema:
        missing = sorted(set(schema) - set(arrays))
        extra = sorted(set(arrays) - set(schema))
        if missing or extra:
            raise ValueError(f"keys differ from the store's: missing {missing}, unexpected {extra}")
        for key, arr in arrays.items():
            dtype, row_shape = schema[key]
            if arr.dtype.newbyteorder("<") != dtype:
                raise ValueError(
                    f"data {key!r}: dtype {arr.dtype} does not match the store's {dtype}"
                )
            if arr.shape[1:] != row_shape:
                raise ValueError(
                    f"data {key!r}: per-step shape {arr.shape[1:]} does not match the "
                    f"store's {row_shape}"
                )
    return arrays


def _validate_meta(
    meta: dict[str, object], length: int, kinds: dict[str, str]
) -> dict[str, tuple[str, Any]]:
    """name -> (kind, value) of an episode's meta, ``length`` added, checked against ``kinds``."""
    if _EPISODE_ENDS in meta:
        raise ValueError(f"meta {_EPISODE_ENDS!r} is reserved")
    if _LENGTH in meta and meta[_LENGTH] != length:
        raise ValueError(f"meta 'length' is {meta[_LENGTH]!r} but the episode has {length}")
    meta[_LENGTH] = length
    values: dict[str, tuple[str, Any]] = {}
    for name, value in meta.items():
        _valid_name(name, "meta key")
        if name in kinds:
            values[name] = (kinds[name], _meta_value(name, kinds[name], value))
        else:
            values[name] = (_meta_kind(name, value), value)
    return values


def _trim(data: dict[str, Any], meta: dict[str, Any], counts: list[int]) -> None:
    """Cut data and meta arrays to the committed lengths ``counts = [n_steps, n_episodes]``."""
    n_steps, n_eps = counts
    for arrays, need in ((data, n_steps), (meta, n_eps)):
        for arr in arrays.values():
            if arr.length != need:
                arr.set_length(need)
            else:
                arr.drop_chunks_beyond(need)


def _trim_quietly(data: dict[str, Any], meta: dict[str, Any], counts: list[int]) -> None:
    # Runs from a finalizer, possibly after the store directory was deleted.
    with contextlib.suppress(OSError, StoreError):
        _trim(data, meta, counts)


def _meta_array_kind(arr: Any) -> str:
    if isinstance(arr, _StrArray):
        return "string"
    return {"b": "bool", "i": "int64", "u": "int64", "f": "float64"}.get(arr.dtype.kind, "string")
