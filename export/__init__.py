"""robust_student.export: ONNX artifacts validated under attack, INT8 that keeps its robustness, a torch-free runner.

    from robust_student.export import export_onnx, validate_onnx, OnnxStudent

    result = export_onnx(student, "model.onnx", validate=test_set)     # written only if validation passes
    print(result.report.to_markdown())
    OnnxStudent("model.onnx").predict(["scan.dcm", "slide.png"])       # onnxruntime + numpy + pillow only

Uses only robust_student's public API; the library never imports this package. ``runner/`` needs no torch.
"""

from .onnx_export import ExportResult, export_onnx, torch_export
from .quantize import quantize_int8
from .runner import InputError, OnnxStudent, Prediction, Predictions, TamperedModelError
from .validate import ExportCheck, ExportReport, ExportValidationError, Thresholds, validate_artifact, validate_onnx

__all__ = ["export_onnx", "validate_onnx", "validate_artifact", "OnnxStudent", "ExportReport", "ExportResult",
           "ExportCheck", "ExportValidationError", "Thresholds", "quantize_int8", "torch_export", "Prediction",
           "Predictions", "InputError", "TamperedModelError"]
