"""RAPTOR: a tiny recurrent quadrotor foundation policy (student, exports, released baseline).

``student`` holds the 2084-parameter Dense-GRU-Dense network and its ``Policy``; ``export``
writes it as a standalone numpy module or a C99 header; ``baseline`` wraps the released
checkpoint (``foundation-policy``, imported only when used) as a ``Policy``.
"""

from robolearn.algos.raptor.baseline import ReleasedRaptorPolicy, released_student
from robolearn.algos.raptor.export import export_c_header, export_numpy
from robolearn.algos.raptor.student import RaptorStudent, StudentPolicy

__all__ = [
    "RaptorStudent",
    "ReleasedRaptorPolicy",
    "StudentPolicy",
    "export_c_header",
    "export_numpy",
    "released_student",
]
