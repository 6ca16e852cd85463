"""ONNX export and validation under attack (``import robust_student.export``).

Uses only robust_student's public API plus onnx/onnxruntime (the ``[onnx]`` extra). The functionality
(``export_onnx``, ``validate_onnx``, ``OnnxStudent``) arrives with the ONNX issue; see README.md here.
"""
