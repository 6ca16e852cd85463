"""Robustness model cards and the Hugging Face Hub (``import robust_student.model_cards``; the ``[hub]`` extra).

    from robust_student.model_cards import save_pretrained, push_to_hub
    save_pretrained("runs/x/student", "hub/x", report=report, export_report=export, onnx="x.onnx")
    push_to_hub("hub/x", "org/x")          # private by default when the teacher's licence is non-commercial

``render_model_card`` builds the card (huggingface_hub's ``ModelCard``) from a saved student's ``config.json``
and its reports; ``robust_student.load_student("hf-hub:org/x")`` reads a published student back.
"""

from __future__ import annotations

from .card import eval_results, is_non_commercial, render_model_card, student_license
from .hub import HubError, default_private, push_to_hub
from .pretrained import ARTIFACTS, load_pretrained, save_pretrained

__all__ = ["render_model_card", "eval_results", "student_license", "is_non_commercial", "save_pretrained",
           "load_pretrained", "push_to_hub", "default_private", "HubError", "ARTIFACTS"]
