"""Robot data: the zarr EpisodeStore, the sequence sampler and the normaliser."""

from robolearn.data.normalizer import Normalizer
from robolearn.data.sampler import SequenceSampler, split_episodes
from robolearn.data.store import SCHEMA_VERSION, EpisodeStore, StoreError

__all__ = [
    "SCHEMA_VERSION",
    "EpisodeStore",
    "Normalizer",
    "SequenceSampler",
    "StoreError",
    "split_episodes",
]
