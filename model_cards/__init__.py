"""Robustness model cards and Hugging Face Hub push/pull (``import robust_student.model_cards``).

Needs the ``[hub]`` extra. ``render_model_card``, ``save_pretrained`` and ``push_to_hub`` arrive with the
model-card issue; see README.md here for its role.
"""
