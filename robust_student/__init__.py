"""robust_student: distil vision-language teachers into compact, adversarially robust students.

The public API is the names below; everything else is importable from its module but not re-exported.
``import robust_student`` never imports gradio, onnxruntime or huggingface_hub (those are extras).
"""

from __future__ import annotations

from .api import RobustDistiller
from .attacks import list_attacks
from .comparison import PairedDifference, paired_difference
from .config import (AttackConfig, ConfigError, DataConfig, DistillConfig, EvalConfig, TeacherSpec, ThreatConfig,
                     TrainConfig)
from .data import build_dataset, list_datasets
from .evaluation import RobustnessReport, evaluate_robustness
from .methods import Method, MethodConfig, TrainState, create_method, list_methods, register_method
from .students import Student, create_student, list_students
from .students.io import load_student, save_student
from .teachers import Teacher, create_teacher, describe_teacher, list_teachers

__version__ = "0.1.0"

__all__ = [
    "RobustDistiller",
    "Method", "MethodConfig", "TrainState", "create_method", "list_methods", "register_method",
    "DistillConfig", "DataConfig", "ThreatConfig", "AttackConfig", "TrainConfig", "EvalConfig", "TeacherSpec",
    "ConfigError",
    "Teacher", "create_teacher", "list_teachers", "describe_teacher",
    "Student", "create_student", "list_students", "load_student", "save_student",
    "build_dataset", "list_datasets",
    "evaluate_robustness", "RobustnessReport", "list_attacks", "paired_difference", "PairedDifference",
    "__version__",
]
