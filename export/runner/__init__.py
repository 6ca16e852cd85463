"""The torch-free runner: ``OnnxStudent(path).predict(images)`` with onnxruntime, numpy and pillow only.

Nothing in this folder imports torch or the rest of robust_student (a test enforces it), so it also works
copied on its own into a pipeline that has only onnxruntime: ``sys.path.insert(0, "<folder above it>");
from runner import OnnxStudent``. DICOM needs pydicom (``pip install 'robust-student[dicom]'``).
"""

from .cli import write_predictions
from .digest import DigestError, model_digests
from .images import ImageSpec, InputError
from .student import FILENAMES, FORMAT, OnnxStudent, Prediction, Predictions, TamperedModelError

__all__ = ["OnnxStudent", "Prediction", "Predictions", "InputError", "TamperedModelError", "ImageSpec",
           "model_digests", "DigestError", "write_predictions", "FORMAT", "FILENAMES"]
