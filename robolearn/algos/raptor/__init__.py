"""RAPTOR: a tiny recurrent quadrotor foundation policy (student, exports, released baseline).

``student`` holds the 2084-parameter Dense-GRU-Dense network and its ``Policy``; ``export``
writes it as a standalone numpy module or a C99 header; ``baseline`` wraps the released
checkpoint (``foundation-policy``) as a ``Policy`` for side-by-side evaluation.
"""

from robolearn.algos.raptor.student import RaptorStudent, StudentPolicy

__all__ = ["RaptorStudent", "StudentPolicy"]
