"""Mapping ``sensor_msgs/JointState`` arrays onto a robot spec's joint order, by name.

Drivers publish joints in their own order (joint_state_broadcaster: its ``joints`` parameter,
else interface registration order) and often add joints the policy does not use (grippers,
conveyors, a second arm). Adapters therefore never index by position: :class:`JointNameMap`
looks every wanted joint up by name, caches the lookup per name list, and says which joints
are missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class MissingJointsError(ValueError):
    """A message lacks joints the robot needs; the message names them."""


class JointNameMap:
    """Picks ``wanted`` joints out of name-indexed arrays, in ``wanted``'s order.

    Args:
        wanted: The joint names in the order the caller uses (a robot spec's ``joint_names``).
    """

    def __init__(self, wanted: Sequence[str]) -> None:
        self.wanted = tuple(wanted)
        if len(set(self.wanted)) != len(self.wanted):
            raise ValueError(f"duplicate joint names in {self.wanted}")
        self._names: tuple[str, ...] | None = None
        self._index: np.ndarray | None = None

    def indices(self, names: Sequence[str]) -> np.ndarray:
        """Index into ``names`` of every wanted joint (extra names are ignored).

        Raises:
            MissingJointsError: naming the wanted joints that ``names`` lacks.
        """
        names = tuple(names)
        if names != self._names:
            position = {name: i for i, name in enumerate(names)}
            missing = [name for name in self.wanted if name not in position]
            if missing:
                raise MissingJointsError(
                    f"joint_states lacks joints {missing} (it has {list(names)})"
                )
            self._index = np.array([position[name] for name in self.wanted], dtype=np.intp)
            self._names = names
        assert self._index is not None
        return self._index

    def pick(self, names: Sequence[str], values: Sequence[float]) -> np.ndarray:
        """``values`` (one per name) reordered to the wanted joints, as float64."""
        if len(values) != len(names):
            raise ValueError(f"{len(names)} joint names but {len(values)} values")
        return np.asarray(values, dtype=np.float64)[self.indices(names)]
