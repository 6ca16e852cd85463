"""``python -m robust_student.export.runner model.onnx IMAGES... --jsonl`` (or a copy of this folder: torch-free)."""

import sys

from .cli import main

sys.exit(main())
