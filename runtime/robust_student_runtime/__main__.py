"""``python -m robust_student_runtime predict model.onnx IMAGES... --jsonl`` (torch-free; also ``pacs run|listen``)."""

import sys

from .cli import entry

sys.exit(entry())
