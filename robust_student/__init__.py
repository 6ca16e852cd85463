"""robust_student: distil vision-language teachers into compact, adversarially robust students.

The public API is the names below; everything else is importable from its module but not re-exported.
``import robust_student`` never imports gradio, onnxruntime or huggingface_hub (those are extras).
"""

from __future__ import annotations

from .config import DataConfig, DistillConfig, EvalConfig, ThreatConfig, TrainConfig
from .data import build_dataset, list_datasets
from .students import Student, create_student, list_students
from .teachers import Teacher, create_teacher, list_teachers

__version__ = "0.1.0"

__all__ = [
    "DistillConfig", "DataConfig", "ThreatConfig", "TrainConfig", "EvalConfig",
    "Teacher", "create_teacher", "list_teachers",
    "Student", "create_student", "list_students",
    "build_dataset", "list_datasets",
    "__version__",
]
