"""Does HPT-GPD's proxy see through the student's attack? A diagnostic for the reproduction table's HPT-GPD row.

HPT-GPD trains the student to match the non-robust proxy at x', the student's own adversarial example. If x'
fooled the proxy as well (transfer), the targets would be wrong and the method could not work. This crafts
PGD-5 (the training attack's steps) against ``fmnist-clip``'s tower (the HPT-GPD student at its start) on a
seeded subset of the Fashion-MNIST test set and reports each zoo model's accuracy on x and on x'.

    python benchmarks/proxy_transfer.py      # -> benchmarks/results/proxy_transfer.{json,md} (about a minute)
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from robust_student.cpu_allocator import keep_freed_memory
from robust_student import build_dataset, create_teacher
from robust_student.attacks import LinfBall, get_attack
from robust_student.attacks.named import predict_labels
from robust_student.evaluation import collect_examples
from robust_student.formatting import format_eps

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE, OTHERS = "fmnist-clip", ("fmnist-clip-cnn", "fmnist-clip-fare")


def main() -> None:
    keep_freed_memory()  # this process is the benchmark's: see robust_student.cpu_allocator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 8 / 255])
    parser.add_argument("--output", default=str(RESULTS / "proxy_transfer"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = build_dataset("fashion-mnist", "test")
    x, y, how = collect_examples(test, args.n, args.seed)  # the evaluation's seeded subset (reproduce.py's images)
    models = {}
    for name in (SOURCE, *OTHERS):
        models[name] = create_teacher(name)
        models[name].set_classes(test.prompts.classnames, test.prompts.templates)
        models[name].eval()
    clean = {name: (predict_labels(model, x) == y).float().mean().item() for name, model in models.items()}
    rows = []
    for eps in args.eps:
        x_adv = get_attack(f"pgd:{args.steps}")(models[SOURCE], x, y, LinfBall(eps), seed=0)
        rows += [{"eps": eps, "model": name, "clean": clean[name],
                  "on_x_adv": (predict_labels(model, x_adv) == y).float().mean().item()}
                 for name, model in models.items()]
    result = {"settings": vars(args), "images": how, "machine": f"{platform.machine()}, CPU, 1 thread", "rows": rows}
    lines = ["# Do PGD examples against fmnist-clip's tower fool the other zoo models? (`benchmarks/proxy_transfer.py`)",
             "", f"PGD-{args.steps} (L-inf, the library's step rule) crafted against `{SOURCE}` (HPT-GPD's student at its "
             f"start) on {args.n} test images ({how}); accuracy (%) of each model on x "
             "and on those x'. `fmnist-clip-cnn` is HPT-GPD's proxy: its accuracy on x' is how often the target "
             "HPT-GPD trains towards is right.", "", "| eps | model | clean | on x' |", "|---|---|---:|---:|"]
    lines += [f"| {format_eps(r['eps'])} | `{r['model']}` | {100 * r['clean']:.1f} | {100 * r['on_x_adv']:.1f} |"
              for r in rows]
    output = Path(args.output)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
