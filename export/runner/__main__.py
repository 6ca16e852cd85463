"""``python -m robust_student.export.runner model.onnx IMAGES... --jsonl`` (imports torch through robust_student's
``__init__``; torch-free: ``python -m robust_student_runtime predict ...``)."""

import sys

from robust_student_runtime.cli import main

sys.exit(main())
