"""GPU checks (marked ``gpu``; skipped with a reason where there is no CUDA device, as in CI).

They run on a lent GPU machine through ``benchmarks/gpu.sh`` (``pytest -m gpu``): every method trains a few
steps in bf16 through ``RobustDistiller``, and an exported student runs on onnxruntime's CUDA provider with the
same logits as torch.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from robust_student import RobustDistiller
from robust_student.methods import list_methods

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")]

ROLES = {"mmt-ard": {"adv": "fmnist-clip", "clean": "fmnist-clip"},
         "ciard": {"adv": {"name": "fmnist-clip", "trainable": "head"}, "nat": "fmnist-clip"},
         "hpt-gpd": {"target": "fmnist-clip", "proxy": "fmnist-clip"}}
STUDENT = {"fare": "clip", "tecoa": "clip", "hpt-gpd": "clip"}


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_in_bf16_on_the_gpu(method, tmp_path):
    distiller = RobustDistiller(
        teacher=ROLES.get(method, "fmnist-clip"), method=method, student=STUDENT.get(method, "resnet_tiny"),
        dataset={"name": "synthetic:10", "image_size": 28}, epochs=1, batch_size=16, max_train_examples=64, eval_examples=16,
        mixed_precision="bf16", output_dir=str(tmp_path / "run"), log_every=1,
        method_args={"num_intermediate": 2} if method == "dghfa" else {}, **{"attack.steps": 2})
    distiller.fit()
    assert distiller.result.steps == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert losses and all(math.isfinite(v) for v in losses)
    assert 0 <= distiller.history[-1]["val_robust_acc"] <= distiller.history[-1]["val_clean_acc"] <= 1


def test_onnx_on_the_cuda_provider_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    from robust_student import create_student, create_teacher
    from robust_student.export import OnnxStudent, export_onnx

    teacher = create_teacher("fmnist-clip")
    teacher.set_classes([f"class {i}" for i in range(10)], ["a photo of a {}."])
    student = create_student("resnet_tiny", teacher, image_size=28).eval()
    path = tmp_path / "student.onnx"
    export_onnx(student, path)
    runner = OnnxStudent(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runner.providers[0] == "CUDAExecutionProvider"  # not a silent fall-back to the CPU
    x = torch.rand(8, 3, 28, 28)
    with torch.no_grad():
        expected = student(x).numpy()
    assert abs(runner.logits(x.numpy()) - expected).max() < 1e-3
