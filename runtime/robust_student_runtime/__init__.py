"""robust-student-runtime: the torch-free deployment side of robust_student.

``OnnxStudent(path).predict(images)`` runs an exported student with onnxruntime, numpy and pillow only; the
``robust-student-runtime`` command classifies files (``predict``) and serves a PACS (``pacs run`` over DICOMweb,
``pacs listen`` as a C-STORE SCP). Nothing here imports torch or ``robust_student`` (whose ``__init__`` imports
torch); the SDK depends on this distribution and re-exports it as ``robust_student.export.runner``, so there is
one runner. DICOM: ``pip install 'robust-student-runtime[dicom]'``; PACS: ``[pacs]``.
"""

from .cli import write_predictions
from .digest import DigestError, model_digests
from .images import ImageSpec, InputError
from .student import FILENAMES, FORMAT, OnnxStudent, Prediction, Predictions, TamperedModelError

__version__ = "0.1.0"

__all__ = ["OnnxStudent", "Prediction", "Predictions", "InputError", "TamperedModelError", "ImageSpec",
           "model_digests", "DigestError", "write_predictions", "FORMAT", "FILENAMES", "__version__"]
