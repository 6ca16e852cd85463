"""``save_pretrained``: a Hub-ready folder of a robust student, in the one saved format plus its evidence.

    <dir>/model.safetensors   the weights                   (robust_student.load_student reads these two)
    <dir>/config.json         architecture, classes, normalisation, teacher provenance and licence, the run
    <dir>/model.onnx          the validated ONNX export, when given (model.int8.onnx for the INT8 one)
    <dir>/robustness.json     {"robustness": RobustnessReport, "export": ExportReport of model.onnx,
                              "export_int8": ExportReport of model.int8.onnx} (null when missing)
    <dir>/eps_curve.png/.json robust accuracy against eps, when given
    <dir>/README.md           the model card

A folder that holds something else is refused; an earlier ``save_pretrained`` folder is replaced only with
``overwrite=True``, and then only the files listed above are removed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from robust_student import Student, load_student, save_student
from robust_student.evaluation import RobustnessReport, save_eps_curve
from robust_student.fileio import read_json
from robust_student.students.io import CONFIG, WEIGHTS, read_student_config

from .card import render_model_card

logger = logging.getLogger(__name__)

ROBUSTNESS = "robustness.json"
CARD = "README.md"
ONNX, ONNX_INT8 = "model.onnx", "model.int8.onnx"
EPS_CURVE = "eps_curve"
ARTIFACTS = (WEIGHTS, CONFIG, ONNX, ONNX_INT8, ROBUSTNESS, f"{EPS_CURVE}.png", f"{EPS_CURVE}.json", CARD)


def _as_dict(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    if hasattr(report, "to_dict"):
        return report.to_dict()
    return dict(report)


def _prepare(directory: Path, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; save_pretrained writes a folder")
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if not present:
        directory.mkdir(parents=True, exist_ok=True)
        return
    foreign = [name for name in present if name not in ARTIFACTS]
    if foreign:
        raise FileExistsError(f"{directory} holds other files ({', '.join(foreign[:5])}); save_pretrained writes "
                              "into an empty folder or one it wrote before")
    if not overwrite:
        raise FileExistsError(f"{directory} already holds a saved model ({', '.join(present)}); pass "
                              "overwrite=True to replace it")
    for name in present:
        (directory / name).unlink()


def save_pretrained(student: Student | str | Path, directory: str | Path, *,
                    report: RobustnessReport | Mapping[str, Any] | None = None,
                    export_report: Any = None, export_report_int8: Any = None, onnx: str | Path | None = None,
                    onnx_int8: str | Path | None = None,
                    eps_curve: Mapping[str, Any] | None = None, repo_id: str | None = None,
                    overwrite: bool = False) -> Path:
    """Write the Hub-ready folder of ``student`` (a :class:`Student`, or a saved-student folder such as
    ``runs/x/student``, whose ``config.json`` keeps the training run) with its card; return the folder.

    ``report`` is its :class:`RobustnessReport` (the card's numbers), ``export_report`` / ``export_report_int8``
    the ONNX validation reports and ``onnx`` / ``onnx_int8`` the validated files to include, ``eps_curve`` the dict of
    :func:`robust_student.evaluation.eps_curve`, ``repo_id`` the Hub id the card's usage snippets name.
    """
    directory = Path(directory)
    source = Path(student) if isinstance(student, (str, Path)) else None
    if source is not None:
        read_student_config(source)  # a folder that is not a saved student says so before anything is written
        if source.resolve() == directory.resolve():
            raise ValueError("save_pretrained needs a new folder, not the saved student's own folder")
    for given in (onnx, onnx_int8):
        if given is not None and not Path(given).is_file():
            raise FileNotFoundError(f"ONNX file {given} does not exist")
    _prepare(directory, overwrite)
    if source is not None:
        shutil.copyfile(source / WEIGHTS, directory / WEIGHTS)
        shutil.copyfile(source / CONFIG, directory / CONFIG)
    else:
        save_student(student, directory)
    if onnx is not None:
        shutil.copyfile(onnx, directory / ONNX)
    if onnx_int8 is not None:
        shutil.copyfile(onnx_int8, directory / ONNX_INT8)
    report_dict, export_dict, int8_dict = _as_dict(report), _as_dict(export_report), _as_dict(export_report_int8)
    evidence = {"robustness": report_dict, "export": export_dict, "export_int8": int8_dict}
    (directory / ROBUSTNESS).write_text(json.dumps(evidence, indent=2) + "\n", encoding="utf-8")
    image = None
    if eps_curve is not None:
        save_eps_curve(dict(eps_curve), directory / EPS_CURVE)
        image = f"{EPS_CURVE}.png"
    config = read_student_config(directory)
    card = render_model_card(config, report_dict, export_dict, repo_id=repo_id, eps_curve_image=image,
                             export_int8=int8_dict)
    card.save(directory / CARD)
    logger.info("saved %s with its model card", directory)
    return directory


def load_pretrained(directory: str | Path) -> tuple[Student, dict[str, Any]]:
    """The student of a ``save_pretrained`` folder and its ``robustness.json`` (``{"robustness", "export"}``)."""
    directory = Path(directory)
    student = load_student(directory)
    path = directory / ROBUSTNESS
    evidence = read_json(path, "robustness evidence") if path.is_file() else {"robustness": None, "export": None}
    return student, evidence


__all__ = ["save_pretrained", "load_pretrained", "ARTIFACTS"]
