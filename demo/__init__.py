"""The Gradio clean-vs-attacked demo (``import robust_student.demo``; needs the ``[demo]`` extra).

``build_demo(student=..., teacher=..., onnx=...)`` returns the Blocks (to embed or test), ``launch(demo)`` serves
it on 127.0.0.1; ``robust-student demo`` does both, by default with the best shipped student (the built-in zoo
entry with the highest recorded AutoAttack accuracy). The attack logic is in :mod:`.attack` as plain functions.
"""

from __future__ import annotations

from .app import build_demo, default_student, launch, load_models
from .attack import DemoInputError, DemoModels, DemoResult, run_attack

__all__ = ["build_demo", "launch", "load_models", "default_student", "run_attack", "DemoModels", "DemoResult",
           "DemoInputError"]
