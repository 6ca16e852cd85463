"""The runner, re-exported from the torch-free ``robust-student-runtime`` distribution (``robust_student_runtime``).

There is one implementation: ``robust_student.export.runner`` *is* ``robust_student_runtime`` (its submodules
``cli``, ``digest``, ``dicom``, ``images`` and ``student`` are the same module objects), so code written
against either name sees the same classes. Where torch must not be imported (an inference host), install
``robust-student-runtime`` alone and ``from robust_student_runtime import OnnxStudent``: importing anything
under ``robust_student`` runs its ``__init__``, which imports torch.
"""

import sys as _sys

import robust_student_runtime as _runtime
from robust_student_runtime import cli, dicom, digest, images, student  # noqa: F401
from robust_student_runtime import *  # noqa: F401,F403

for _name in ("cli", "dicom", "digest", "images", "student"):
    _sys.modules[f"{__name__}.{_name}"] = getattr(_runtime, _name)  # one module, two names

__all__ = list(_runtime.__all__)
