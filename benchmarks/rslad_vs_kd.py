"""RSLAD vs KD on Fashion-MNIST with the built-in teacher (issue 4's acceptance comparison).

fmnist-clip -> resnet_tiny, 4,000 training images, 2 epochs, batch 64, AdamW 3e-3, training PGD 3 steps of 0.04
at eps 0.1; clean and PGD-20 accuracy on 1,000 test images at eps 0.1 and 8/255.

    python benchmarks/rslad_vs_kd.py rslad      # -> benchmarks/results/rslad_vs_kd_rslad.json
    python benchmarks/rslad_vs_kd.py kd
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from robust_student.cpu_allocator import keep_freed_memory
from robust_student import RobustDistiller, ThreatConfig

RESULTS = Path(__file__).resolve().parent / "results"


def main(method: str) -> None:
    keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    torch.set_num_threads(1)
    distiller = RobustDistiller(
        teacher="fmnist-clip", method=method, student="resnet_tiny", dataset="fashion-mnist", epochs=2,
        batch_size=64, optimizer="adamw", lr=0.003, max_train_examples=4000, output_dir=f"runs/rslad_vs_kd/{method}",
        overwrite=True,
        **{"threat.eps": 0.1, "attack.steps": 3, "attack.step_size": 0.04},
    )
    distiller.fit()
    results = {}
    for eps in (0.1, 8 / 255):
        report = distiller.evaluate(["clean", "pgd20"], n_examples=1000, checks=False,
                                    threat=ThreatConfig(norm="linf", eps=eps))
        results[f"{eps:.6f}"] = report.to_dict()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"rslad_vs_kd_{method}.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "rslad")
