"""The quickstart job behind ``make quickstart``: the main path on the built-in default, fully offline.

It loads the built-in teacher and measures its zero-shot accuracy on Fashion-MNIST, distils it into a student
in the teacher's embedding space with DGHFA (``recipes/quickstart.yaml``: a short CPU run), evaluates the student
under the recipe's attacks (clean, FGSM, PGD-20, CW-20 and AutoAttack on a seeded test subset, with the
gradient-masking checks), exports it to ONNX (FP32 and INT8), each validated under attack before it is written
(``RobustDistiller.export_onnx``), measures robust accuracy against eps, and writes the Hub-ready folder with the
model card. Everything goes under ``runs/quickstart/``; :class:`QuickstartSummary` is what it prints.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .formatting import attack_title, format_percent

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "runs/quickstart"  # where `make quickstart` writes (the demo looks for its student there)


@dataclass
class QuickstartSummary:
    """What the quickstart did and measured; ``to_text()`` is what the command prints."""

    teacher: str
    dataset: str
    teacher_zero_shot_accuracy: float
    n_test: int
    student: str
    student_parameters: int
    teacher_parameters: int
    output_dir: str
    seconds: float = 0.0
    method: str = ""
    student_init: str = ""  # the saved student the run started from ("": random weights)
    train_steps: int = 0
    train_seconds: float = 0.0
    student_clean_accuracy: float | None = None
    student_pgd20_accuracy: float | None = None
    student_robust_accuracy: dict[str, float] = field(default_factory=dict)  # attack name -> robust accuracy
    eval_threat: str = ""
    n_eval: int = 0
    onnx: list[dict[str, Any]] = field(default_factory=list)  # the exported artifacts and their validation reports
    hub_folder: str = ""  # the Hub-ready folder with the model card
    checks_passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [
            "robust_student quickstart",
            f"  teacher  {self.teacher}: {self.teacher_parameters / 1e6:.2f} M parameters, "
            f"zero-shot accuracy on {self.dataset} test (n={self.n_test}): {format_percent(self.teacher_zero_shot_accuracy)}",
            f"  student  {self.student}: {self.student_parameters / 1e6:.2f} M parameters, "
            f"projects into the teacher's embedding space and classifies with its text embeddings",
        ]
        if self.student_clean_accuracy is not None:
            attacked = ", ".join(f"{attack_title(name)} {format_percent(value)}"
                                 for name, value in self.student_robust_accuracy.items())
            start = f"from {self.student_init}" if self.student_init else "from random weights"
            lines.append(f"  distilled with {self.method} {start} ({self.train_steps} steps, "
                         f"{self.train_seconds:.0f} s)")
            lines.append(f"  test accuracy on {self.n_eval} test images ({self.eval_threat}): clean "
                         f"{format_percent(self.student_clean_accuracy)}" + (f", {attacked}" if attacked else ""))
        for artifact in self.onnx:
            lines.append(f"  exported {artifact['path']}" if artifact["written"] else
                         f"  refused {artifact['path']} ({artifact['error']})")
            lines += [f"    {line}" for line in artifact["report_text"].splitlines()]
        if self.checks_passed is not None:
            lines.append("  gradient-masking checks: " + ("all passed" if self.checks_passed else
                                                          "FAILED (see the model card)"))
        if self.hub_folder:
            lines.append(f"  model card {self.hub_folder}/README.md: the Hub-ready folder {self.hub_folder}/ "
                         f"(upload: robust-student push {self.hub_folder} org/name)")
        lines += [f"  {key}: {value}" for key, value in self.extra.items()]
        lines += [f"  where everything is ({self.output_dir}/):",
                  f"    run (checkpoints, metrics.jsonl, student/)  {self.output_dir}/run/"]
        lines += [f"    ONNX {artifact['report']['precision']:<5}                                 {artifact['path']}"
                  for artifact in self.onnx if artifact["written"]]
        if self.hub_folder:
            lines.append(f"    Hub-ready folder (card, weights, eps curve)  {self.hub_folder}/")
        lines.append(f"    this summary                                {self.output_dir}/summary.json")
        if self.hub_folder:
            lines.append(f"  demo: robust-student demo --student {self.hub_folder}")
        lines.append(f"  done in {self.seconds:.0f} s")
        return "\n".join(lines)


EXPORTS = (("student.onnx", None), ("student.int8.onnx", "int8"))
CHECK_EXAMPLES = 100  # the gradient-masking checks run on (at most) the first 100 evaluation images,
CHECK_SQUARE_QUERIES = 300  # with a 300-query Square (the full 5000 is the export validation's and AutoAttack's)
CURVE_EPS = (0, "2/255", "4/255", "8/255", "16/255", 0.1, 0.2)  # the model card's robust accuracy vs eps
CURVE_EXAMPLES = 100
EXPORT_EXAMPLES = 50  # each ONNX artifact is validated under attack on 50 test images (the evaluation's count)


def _export(distiller: Any, path: Path, quantize: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Export and validate one artifact; a refused one (validation failed) is reported, not raised."""
    logger.info("exporting %s (validated under attack before it is written)", path)
    path.unlink(missing_ok=True)  # the quickstart's own artifact from an earlier run: never report a stale file
    try:
        result = distiller.export_onnx(path, quantize=quantize, **options)
    except ValueError as err:  # ExportValidationError: nothing was written; its report says why
        report = getattr(err, "report", None)
        if report is None:
            raise
        return {"path": str(path), "written": False, "error": "validation failed", "report": report.to_dict(),
                "report_text": report.to_text()}
    return {"path": str(path), "written": True, "error": None, "report": result.report.to_dict(),
            "report_text": result.report.to_text()}


def run_quickstart(teacher: str | None = None, student: str | None = None, data: str = "fashion-mnist",
                   output_dir: str | Path = DEFAULT_OUTPUT, recipe: str = "quickstart",
                   overrides: dict[str, Any] | None = None,
                   export_options: dict[str, Any] | None = None, check_examples: int = CHECK_EXAMPLES,
                   check_square_queries: int = CHECK_SQUARE_QUERIES,
                   curve_examples: int = CURVE_EXAMPLES) -> QuickstartSummary:
    """Run the quickstart and write ``summary.json`` into ``output_dir``.

    ``teacher`` and ``student`` default to the recipe's; a student other than the recipe's starts from random
    weights (the recipe's ``student_init`` is a saved student of its own architecture).
    ``recipe`` and ``overrides`` (``RobustDistiller`` keywords) set the distillation run and its evaluation
    (``eval.attacks``, ``eval.n_examples``); its checkpoints, metrics and final student go to ``<output_dir>/run``. The student is exported to ``student.onnx`` and
    ``student.int8.onnx``, each validated under attack (``export_options`` go to ``RobustDistiller.export_onnx``,
    e.g. ``{"n_examples": 50}``); an artifact that fails validation is reported and not written.
    """
    from .api import RobustDistiller, load_recipe
    from .data import build_dataset
    from .evaluation import eps_curve
    from .teachers import create_teacher
    from .teachers.zeroshot import zero_shot_accuracy

    start = time.perf_counter()
    config = load_recipe(recipe)
    teacher = teacher or config.teacher
    overrides = dict(overrides or {})
    if "student_init" in overrides or (student and student != config.student):  # None clears it (not dropped)
        config = config.with_overrides({"student_init": overrides.pop("student_init", None)})
    student = student or config.student
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)

    test_set = build_dataset(data, "test")
    logger.info("loading teacher %s", teacher)
    teacher_model = create_teacher(teacher)
    teacher_model.set_classes(test_set.prompts.classnames, test_set.prompts.templates)
    accuracy = zero_shot_accuracy(teacher_model, test_set)

    # Distil (DGHFA by default) and attack the result with the recipe's attacks on a seeded test subset.
    distiller = RobustDistiller(config=config, teacher=teacher_model, student=student, dataset=data,
                                            **{"train.output_dir": str(output / "run"), "train.overwrite": True,
                                               **overrides})
    student_model = distiller.fit()
    logger.info("evaluating the student: %s", ", ".join(distiller.config.eval.attacks))
    report = distiller.evaluate(check_examples=check_examples, check_square_queries=check_square_queries,
                                progress=False)
    options = {"n_examples": EXPORT_EXAMPLES, **(export_options or {})}
    onnx = [_export(distiller, output / name, quantize, dict(options)) for name, quantize in EXPORTS]
    curve = eps_curve(student_model, test_set, eps_list=CURVE_EPS, n_examples=curve_examples, progress=False)
    hub = distiller.save_pretrained(output / "hub", eps_curve=curve, overwrite=True)  # card, ONNX, reports

    summary = QuickstartSummary(
        teacher=teacher, dataset=data, teacher_zero_shot_accuracy=accuracy, n_test=len(test_set),
        student=student, student_parameters=sum(p.numel() for p in student_model.parameters()),
        teacher_parameters=sum(p.numel() for p in teacher_model.parameters()), output_dir=str(output),
        method=distiller.config.method, student_init=distiller.config.student_init or "",
        train_steps=distiller.result.steps,
        train_seconds=distiller.result.seconds, student_clean_accuracy=report.clean_accuracy,
        student_pgd20_accuracy=report.robust_accuracy.get("pgd20"),
        student_robust_accuracy=dict(report.robust_accuracy), eval_threat=f"{report.threat} eps {report.eps_text}",
        n_eval=report.n_examples, onnx=onnx, hub_folder=str(hub), checks_passed=report.checks_passed,
    )
    summary.seconds = time.perf_counter() - start
    (output / "summary.json").write_text(json.dumps(asdict(summary), indent=2), encoding="utf-8")
    return summary
