"""The robustness model card: huggingface_hub's ``ModelCard`` rendered from a saved student's ``config.json``,
its ``RobustnessReport`` and (when exported) its ONNX ``ExportReport``.

The front matter comes from ``ModelCardData`` (``library_name: robust_student``, licence, tags, datasets,
``base_model``) with a ``model-index`` holding one ``EvalResult`` per attack at the report's threat, plus clean
accuracy, each with its number of examples. The body (``card_template.md``) states the threat model, the
gradient-masking checks and their outcome, ONNX/INT8 parity, intended and out-of-scope use, the teacher's
licence carried over, and the method's citation. Nothing is invented: a missing report or export says so, a
failed check is shown as failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from robust_student.formatting import attack_title, format_eps, format_percent
from robust_student.methods import method_paper

TEMPLATE = Path(__file__).resolve().parent / "card_template.md"
NORM_NAMES = {"linf": "Linf", "l2": "L2"}
# Datasets whose Hugging Face Hub id is known (a local folder has none).
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist"}
# Licence ids the Hub knows (a subset; anything else is written as "other" with its own name).
HUB_LICENSES = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
                "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc-by-nd-4.0", "gpl-3.0", "lgpl-3.0", "openrail"}
NON_COMMERCIAL_NOTE = ("This model was distilled from a teacher released for non-commercial use only; the "
                       "student inherits those terms.")


def student_license(config: Mapping[str, Any]) -> tuple[str, str | None]:
    """The student's licence: the most restrictive of its teachers' (a non-commercial one wins), as a Hub
    licence id, and the teacher spec it came from; ``("other", None)`` when a teacher's licence is unknown."""
    teachers = list((config.get("teachers") or {}).values()) or [config.get("teacher") or {}]
    non_commercial = [t for t in teachers if t.get("commercial_use") is False]
    if non_commercial:
        return str(non_commercial[0]["license"]).lower(), non_commercial[0].get("spec")
    unknown = [t for t in teachers if not t.get("license")]
    if unknown:
        return "other", None
    return str(teachers[0]["license"]).lower(), teachers[0].get("spec")


def is_non_commercial(config: Mapping[str, Any]) -> bool | None:
    """True if any teacher forbids commercial use, None if any teacher's terms are unknown, else False."""
    teachers = list((config.get("teachers") or {}).values()) or [config.get("teacher") or {}]
    if any(t.get("commercial_use") is False for t in teachers):
        return True
    if any(t.get("commercial_use") is None for t in teachers):
        return None
    return False


def _base_model(teacher: Mapping[str, Any]) -> str | None:
    spec = str(teacher.get("spec", ""))
    if spec.startswith("open_clip:hf-hub:"):
        return spec.removeprefix("open_clip:hf-hub:")
    if spec.startswith("conch"):
        return "MahmoodLab/conch"
    return None


def eval_results(report: Mapping[str, Any], dataset: str, model_name: str) -> list[Any]:
    """One ``EvalResult`` per attack at the report's threat, plus clean accuracy; values in percent, rounded to
    two decimals as in the card's table, each with its number of examples and attack settings."""
    from huggingface_hub import EvalResult

    norm, eps = report["threat"], float(report["eps"])
    eps_text = format_eps(eps, norm)
    common = dict(task_type="image-classification", task_name="Image classification under adversarial attack",
                  dataset_type=HUB_DATASETS.get(dataset.split(" ")[0], dataset.split(" ")[0]),
                  dataset_name=dataset, metric_type="accuracy")
    results = [EvalResult(**common, metric_value=round(100 * report["clean_accuracy"], 2), metric_name="Clean accuracy",
                          metric_config="clean", metric_args={"n_examples": report["n_examples"],
                                                              "selection": report.get("selection", "")})]
    for attack, accuracy in report["robust_accuracy"].items():
        results.append(EvalResult(
            **common, metric_value=round(100 * accuracy, 2),
            metric_name=f"Robust accuracy ({attack_title(attack)}, {NORM_NAMES.get(norm, norm)}, eps={eps_text})",
            metric_config=f"{attack}-{norm}-{eps_text.replace('/', '_')}",
            metric_args={"attack": attack, "norm": norm, "eps": eps, "n_examples": report["n_examples"],
                         "seed": report.get("seed"), **_plain(report.get("attack_settings", {}).get(attack, {}))}))
    return results


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if isinstance(v, (str, int, float, bool, list))}


def render_model_card(config: Mapping[str, Any], report: Mapping[str, Any] | None = None,
                      export: Mapping[str, Any] | None = None, *, repo_id: str | None = None,
                      eps_curve_image: str | None = None, model_name: str | None = None,
                      export_int8: Mapping[str, Any] | None = None) -> Any:
    """The model card (a ``huggingface_hub.ModelCard``) of a saved student.

    Args:
        config: the saved student's ``config.json`` (``robust_student.students.io.read_student_config``).
        report: ``RobustnessReport.to_dict()`` of its evaluation, or None (the card says it is missing).
        export: the ONNX ``ExportReport`` as a dict, or None (not exported); ``export_int8`` the INT8 one.
        repo_id: the Hub id it is published under (for the usage snippets; default: a local folder).
        eps_curve_image: file name of the robust-accuracy-vs-eps plot next to the card.
    """
    from huggingface_hub import ModelCard, ModelCardData

    arch = config["architecture"]
    teacher = dict(config.get("teacher") or {})
    method = config.get("method")
    run = config.get("config") or {}
    dataset = (run.get("dataset") or {}).get("name") or (report or {}).get("dataset", "unknown data")
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"{arch['name']}-{method or 'student'}")
    licence, licence_source = student_license(config)
    tags = ["robust_student", "adversarial-robustness", "knowledge-distillation", "image-classification"]
    tags += [t for t in (method, "onnx" if export else None) if t]
    data = ModelCardData(
        model_name=name, license=licence, library_name="robust_student", tags=tags,
        datasets=[HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else None,
        base_model=_base_model(teacher), pipeline_tag="image-classification",
        eval_results=eval_results(report, dataset, name) if report else None,
    )
    if licence not in HUB_LICENSES:
        data.license = "other"
        data.license_name = "unknown-teacher-terms" if licence == "other" else licence
    paper = method_paper(method) if method else None
    context = {
        "name": name, "config": config, "arch": arch, "teacher": teacher, "teachers": config.get("teachers") or {},
        "other_roles": _other_roles(config, teacher),
        "method": method, "paper": paper, "bibtex": paper.bibtex(f"{method.replace('-', '')}{paper.year}") if paper
        else None, "run": run, "report": report, "export": export, "repo_id": repo_id,
        "load_from": f"hf-hub:{repo_id}" if repo_id else "path/to/this/folder", "onnx_from": repo_id or
        "path/to/this/folder", "eps_curve_image": eps_curve_image, "non_commercial": is_non_commercial(config),
        "non_commercial_note": NON_COMMERCIAL_NOTE, "licence": licence, "licence_source": licence_source,
        "threat": _threat_facts(config, report), "rows": _rows(report), "checks": _checks(report),
        "export_rows": _export_rows(export), "export_int8": export_int8, "int8_rows": _export_rows(export_int8),
        "training": _training(run, config),
    }
    return ModelCard.from_template(data, template_str=TEMPLATE.read_text(encoding="utf-8"), **context)


def _other_roles(config: Mapping[str, Any], teacher: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The teacher roles besides the primary one (its ``role``, else the first listed)."""
    roles = dict(config.get("teachers") or {})
    primary = teacher.get("role") or next(iter(roles), None)
    return [(role, spec) for role, spec in roles.items() if role != primary]


def _threat_facts(config: Mapping[str, Any], report: Mapping[str, Any] | None) -> dict[str, Any]:
    size = config.get("input") or {}
    source = report or {"threat": (config.get("threat") or {}).get("norm", "linf"),
                         "eps": (config.get("threat") or {}).get("eps")}
    eps = source.get("eps")
    norm = source.get("threat", "linf")
    return {"norm": NORM_NAMES.get(norm, norm), "eps": None if eps is None else format_eps(float(eps), norm),
            "eps_value": eps, "height": size.get("height"), "width": size.get("width"),
            "channels": size.get("channels", 3)}


def _rows(report: Mapping[str, Any] | None) -> list[dict[str, str]]:
    if not report:
        return []
    rows = [{"attack": "clean", "accuracy": format_percent(report["clean_accuracy"]), "settings": ""}]
    for attack, accuracy in report["robust_accuracy"].items():
        settings = report.get("attack_settings", {}).get(attack, {})
        text = ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("note", "package", "norm")
                         and not isinstance(v, (dict, list)))
        rows.append({"attack": attack_title(attack), "accuracy": format_percent(accuracy), "settings": text})
    return rows


def _checks(report: Mapping[str, Any] | None) -> list[dict[str, str]]:
    if not report:
        return []
    result = {True: "pass", False: "**FAILED**", None: "not run"}
    return [{"name": c["name"], "result": result[c.get("passed")], "detail": c.get("detail", "")}
            for c in report.get("checks", [])]


def _export_rows(export: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The ONNX validation's checks as rows (whatever checks the export report carries)."""
    if not export:
        return []
    checks = export.get("checks") or []
    result = {True: "pass", False: "**FAILED**", None: "not run"}
    return [{"name": c.get("name", "?"), "result": result.get(c.get("passed")), "detail": c.get("detail", "")}
            for c in checks]


def _training(run: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    train, attack, data = run.get("train") or {}, run.get("attack") or {}, run.get("dataset") or {}
    history = config.get("history") or []
    return {"epochs": train.get("epochs"), "batch_size": train.get("batch_size"), "optimizer": train.get("optimizer"),
            "lr": train.get("lr"), "scheduler": train.get("scheduler"), "max_train_examples":
            data.get("max_train_examples"), "attack_steps": attack.get("steps"), "attack_step_size":
            None if attack.get("step_size") is None else format_eps(float(attack["step_size"]),
                                                                    (run.get("threat") or {}).get("norm", "linf")),
            "seed": train.get("seed"), "validation": history[-1] if history else None, "known": bool(train)}


__all__ = ["render_model_card", "eval_results", "student_license", "is_non_commercial", "attack_title"]
