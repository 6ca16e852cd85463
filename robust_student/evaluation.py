"""Robustness evaluation: run named attacks on a fixed, seeded set of test examples and return a report.

    report = evaluate_robustness(student, test_set, attacks=["clean", "fgsm", "pgd20", "cw20", "autoattack"],
                                 threat=LinfBall(8 / 255), n_examples=1000)
    print(report.to_markdown())

Every robust accuracy is stated with its threat (norm, eps), number of examples, attack settings, seed and library
versions, and comes with the gradient-masking checks of :mod:`robust_student.attacks.checks`. A report whose
checks fail says so at the top of its markdown. :func:`eps_curve` measures robust accuracy against eps and
saves it as JSON and PNG (matplotlib, imported only there).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks.autoattack import captured_warnings
from .attacks.checks import gradient_masking_checks
from .attacks.named import get_attack, predict_labels, robust_correct
from .attacks.runtime import as_logits_fn, attack_mode
from .attacks.threat import LinfBall, Threat, make_threat, threat_from_config
from .config import ThreatConfig, check_radius, parse_number
from .formatting import format_eps, format_percent

logger = logging.getLogger(__name__)

Model = Callable[[Tensor], Tensor]
DEFAULT_ATTACKS = ("clean", "fgsm", "pgd20", "cw20")


# -- the report ------------------------------------------------------------------------------------------------

@dataclass
class RobustnessReport:
    """Clean and robust accuracy of one model on one dataset under one threat model, with everything needed
    to reproduce and trust it. Accuracies are fractions in [0, 1]; ``per_class[name]`` holds ``n`` and the
    accuracy under ``clean`` and each attack. ``checks`` are ``{name, passed, detail}`` dicts (``passed`` None =
    could not run). ``per_example[name]`` is one ``"0"``/``"1"`` character per example (in selection order) for
    ``clean`` and each attack: what a paired comparison of two models on the same images needs
    (:func:`robust_student.comparison.paired_difference`)."""

    dataset: str
    model: str
    threat: str
    eps: float
    n_examples: int
    clean_accuracy: float
    robust_accuracy: dict[str, float]
    per_class: dict[str, dict[str, float]]
    attack_settings: dict[str, dict[str, Any]]
    checks: list[dict[str, Any]]
    seed: int
    versions: dict[str, str]
    num_classes: int = 0
    worst_case_accuracy: float | None = None
    selection: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sanity_sweep: dict[str, Any] = field(default_factory=dict)
    per_example: dict[str, str] = field(default_factory=dict)

    @property
    def eps_text(self) -> str:
        return format_eps(self.eps, self.threat)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c.get("passed") is False]

    @property
    def checks_passed(self) -> bool:
        """True when no gradient-masking check failed (checks that could not run do not count as failures)."""
        return not self.failed_checks

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "eps_text": self.eps_text, "checks_passed": self.checks_passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RobustnessReport":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def to_markdown(self) -> str:
        norm = {"linf": "L-inf", "l2": "L2"}.get(self.threat, self.threat)
        lines = [f"## Robustness of {self.model} on {self.dataset}", ""]
        if self.failed_checks:
            names = ", ".join(c["name"] for c in self.failed_checks)
            lines += [f"> **WARNING: {len(self.failed_checks)} gradient-masking check(s) FAILED ({names}). "
                      "The robust accuracies below are probably overestimates; do not report them without an "
                      "adaptive attack.**", ""]
        lines += [f"Threat: {norm}, eps = {self.eps_text}; {self.n_examples} examples ({self.selection}); "
                  f"seed {self.seed}.", "",
                  "| attack | accuracy | settings |", "|---|---|---|",
                  f"| clean | {format_percent(self.clean_accuracy)} | |"]
        for name, acc in self.robust_accuracy.items():
            lines.append(f"| {name} | {format_percent(acc)} | {_settings_text(self.attack_settings.get(name, {}))} |")
        if self.worst_case_accuracy is not None and len(self.robust_accuracy) > 1:
            lines.append(f"| worst case (per example, all attacks) | {format_percent(self.worst_case_accuracy)} | |")
        if self.per_class:
            columns = ["clean", *self.robust_accuracy]
            lines += ["", "Per-class accuracy:", "",
                      "| class | n | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
            for cls_name, row in self.per_class.items():
                values = " | ".join(format_percent(row[c]) if row.get(c) is not None else "-" for c in columns)
                lines.append(f"| {cls_name} | {int(row['n'])} | {values} |")
        if self.checks:
            lines += ["", "Gradient-masking checks:", "", "| check | result | detail |", "|---|---|---|"]
            for check in self.checks:
                result = {True: "pass", False: "**FAIL**", None: "not run"}[check.get("passed")]
                lines.append(f"| {check['name']} | {result} | {check['detail']} |")
        if self.warnings:
            lines += ["", "Attack library warnings:", ""] + [f"- {w}" for w in self.warnings]
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()) + ".", ""]
        return "\n".join(lines)


def _settings_text(settings: dict[str, Any]) -> str:
    skip = {"package", "note", "norm"}
    text = ", ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in settings.items() if k not in skip)
    return f"{settings['package']}: {text}" if "package" in settings else text


def library_versions() -> dict[str, str]:
    """Versions that determine an evaluation's numbers (python, torch, numpy, robust_student, pyautoattack)."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for dist in ("robust-student", "pyautoattack"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- data ------------------------------------------------------------------------------------------------------

def collect_examples(data: Any, n_examples: int, seed: int = 0) -> tuple[Tensor, Tensor, str]:
    """Materialise ``n_examples`` as CPU tensors ``(x [N, C, H, W] in [0, 1], y [N], how they were chosen)``.

    ``data`` is a map-style dataset of ``{"image", "label"}`` dicts or ``(image, label)`` pairs, a pair of
    tensors ``(x, y)``, or an iterable of such batches (a DataLoader). From a dataset or tensors larger than
    ``n_examples`` a seeded random subset is drawn (test sets are often sorted by class), in index order;
    from an iterable the first ``n_examples``.
    """
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        idx, how = _subset(len(x), n_examples, seed)
        return x[idx].detach().float().cpu(), y[idx].long().cpu(), how
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        idx, how = _subset(len(data), n_examples, seed)
        items = [_split_item(data[int(i)]) for i in idx]
        _check_same_size([i[0] for i in items], data, idx)
        return (torch.stack([i[0] for i in items]).float(), torch.tensor([int(i[1]) for i in items]), how)
    xs, ys, count = [], [], 0
    for batch in data:
        xb, yb = _split_item(batch)
        xs.append(xb.float().cpu())
        ys.append(torch.as_tensor(yb).long().cpu())
        count += xs[-1].shape[0]
        if count >= n_examples:
            break
    if not xs:
        raise ValueError("data yielded no examples")
    x, y = torch.cat(xs)[:n_examples], torch.cat(ys)[:n_examples]
    return x, y, f"first {x.shape[0]} of the iterable"


def _check_same_size(images: Sequence[Tensor], data: Any, indices: Tensor) -> None:
    """Images of different sizes cannot form one batch: name one that differs and the option that fixes it."""
    first = tuple(images[0].shape)
    for image, index in zip(images, indices.tolist()):
        if tuple(image.shape) != first:
            files = getattr(data, "files", None)
            where = f" ({files[index]})" if files is not None and index < len(files) else ""
            raise ValueError(f"images differ in size: item {index}{where} is {tuple(image.shape)}, the first is "
                             f"{first}; set the dataset's image_size (dataset.image_size / --image-size)")


def _subset(total: int, n: int, seed: int) -> tuple[Tensor, str]:
    if total == 0:
        raise ValueError("the data has no examples (an empty split?)")
    if n >= total:
        return torch.arange(total), f"all {total}"
    order = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    return torch.from_numpy(order), f"seeded random subset (seed {seed}) of {total}"


def _split_item(item: Any) -> tuple[Tensor, Any]:
    if isinstance(item, dict):
        return item["image"], item["label"]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise ValueError(f"expected {{'image', 'label'}} dicts or (image, label) pairs, got {type(item).__name__}")


def _as_threat(threat: Threat | ThreatConfig | None) -> Threat:
    if threat is None:
        return LinfBall(8 / 255)
    if isinstance(threat, ThreatConfig):
        return threat_from_config(threat)
    return threat


def _model_device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


def _num_classes(model: Model, x: Tensor, device: torch.device) -> int:
    with attack_mode(model), torch.no_grad():
        return int(as_logits_fn(model)(x[:1].to(device)).shape[1])


def _name(obj: Any, given: str | None, fallback: str) -> str:
    """A display name: given, else ``.name``, else a student's ``spec["name"]``, else ``fallback``."""
    return given or getattr(obj, "name", None) or (getattr(obj, "spec", None) or {}).get("name") or fallback


def check_request(attacks: Sequence[str], threat: Threat, *, n_examples: int, batch_size: int) -> None:
    """Refuse an evaluation whose numbers would mean nothing, before any data or model work.

    ``batch_size`` and ``n_examples`` >= 1; eps >= 0, at most 1 for L-inf (a warning above 0.5); eps 0 only
    with ``clean`` alone (an eps curve's 0 point is clean accuracy); every attack name registered.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(n_examples) < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    check_radius(threat.norm, float(threat.eps))
    attacking = [a for a in attacks if a != "clean"]
    if threat.eps == 0 and attacking:
        raise ValueError(f"eps is 0, so {', '.join(attacking)} would only measure clean accuracy; give eps > 0 "
                         "(an eps curve's 0 point is clean accuracy)")
    if not attacks:
        raise ValueError("no attacks requested; name at least one, e.g. ['clean', 'pgd20']")


def check_inputs(x: Tensor, y: Tensor, num_classes: int) -> None:
    """Refuse images that are not finite [0, 1] pixels and labels outside [0, C) (they would make accuracy
    meaningless); the message says "divide by 255" when the pixels look like 0-255 values."""
    finite = torch.isfinite(x)
    if not finite.all():
        bad_images = int((~finite).flatten(1).any(dim=1).sum())
        raise ValueError(f"{int((~finite).sum())} pixel(s) in {bad_images} image(s) are NaN or infinite; "
                         "evaluation needs finite pixels in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        hint = (" They look like 0-255 values: divide by 255." if low >= 0 and 1 < high <= 255
                else " Images must be float pixels in [0, 1] (normalisation happens inside the model).")
        raise ValueError(f"pixels range over [{low:g}, {high:g}], outside [0, 1].{hint}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)].unique()[:5].tolist()
        raise ValueError(f"labels must be in [0, {num_classes}) for a model with {num_classes} classes; found "
                         f"{bad}")


def _names(names: Sequence[Any]) -> list[str]:
    return [str(n).strip().lower() for n in names]


def check_classes(model: Any, data: Any, num_classes: int) -> None:
    """Refuse a model whose classes are not the dataset's: a different count, or different class names.

    A dataset's classes are its ``labels`` (folder / CSV names) or its prompt class names; a student or teacher
    names its classes in ``classnames`` (the prompt class names it was built with). Either spelling matches.
    """
    labels = getattr(data, "labels", None)
    if labels is None:
        return
    if len(labels) != num_classes:
        raise ValueError(f"the model predicts {num_classes} classes but the dataset has {len(labels)} "
                         f"({', '.join(map(str, labels[:10]))}); evaluate it on the data it was trained for, or "
                         "give it a classifier for these classes (student.set_classifier / teacher.set_classes)")
    model_names = getattr(model, "classnames", None)
    if not model_names:
        return
    prompts = getattr(data, "prompts", None)
    spellings = [_names(labels)]
    if prompts is not None:
        spellings.append(_names([c if isinstance(c, str) else c[0] for c in prompts.classnames]))
    if _names(model_names) not in spellings:
        raise ValueError(f"the model's classes {list(model_names)} are not the dataset's {list(labels)}; "
                         "evaluate it on the data it was trained for, or give it a classifier for these classes")


def _classnames(data: Any, model: Any, num_classes: int) -> list[str]:
    for source in (getattr(data, "labels", None), getattr(model, "classnames", None)):
        if source is not None and len(source) == num_classes:
            return [str(c) for c in source]
    return [str(i) for i in range(num_classes)]


# -- evaluation ------------------------------------------------------------------------------------------------

def evaluate_robustness(
    model: Model,
    data: Any,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    threat: Threat | ThreatConfig | None = None,
    n_examples: int = 1000,
    batch_size: int = 256,
    *,
    seed: int = 0,
    checks: bool = True,
    check_examples: int = 200,
    check_square_queries: int = 1000,
    large_eps: float | None = None,
    attack_options: dict[str, dict[str, Any]] | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> RobustnessReport:
    """Evaluate ``model`` ([0, 1] images -> logits) on ``n_examples`` of ``data`` under each named attack.

    Only correctly classified clean examples are attacked (the others are never robust); robust accuracy is
    over all ``n_examples``. ``attack_options`` passes options per attack name, e.g.
    ``{"autoattack": {"square_queries": 1000}}``. With ``checks`` the gradient-masking checks run on the first
    ``check_examples`` examples (plus Square with ``check_square_queries`` when Square is not among the attacks).
    The model is evaluated in eval mode with frozen parameters; both are restored afterwards.
    """
    threat = _as_threat(threat)
    check_request(attacks, threat, n_examples=n_examples, batch_size=batch_size)
    attack_options = dict(attack_options or {})
    unknown_options = set(attack_options) - set(attacks)
    if unknown_options:
        raise ValueError(f"attack_options for attacks not requested: {sorted(unknown_options)}")
    named = {name: get_attack(name, **attack_options.get(name, {})) for name in attacks if name != "clean"}
    device = torch.device(device) if device is not None else _model_device(model)
    x, y, selection = collect_examples(data, n_examples, seed)
    n = int(x.shape[0])
    num_classes = _num_classes(model, x, device)
    check_classes(model, data, num_classes)
    check_inputs(x, y, num_classes)

    n_check = min(n, check_examples) if checks else 0
    clean = predict_labels(model, x, batch_size=batch_size, device=device) == y
    n_batches = -(-int(clean.sum()) // batch_size)
    n_check_batches = -(-int(clean[:n_check].sum()) // batch_size)
    total = n_batches * len(named) + (n_check_batches * 5 if checks else 0)
    correct: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    with tqdm(total=total, desc="robustness", disable=not progress, leave=False) as bar, \
            captured_warnings() as aa_warnings:
        for name, attack in named.items():
            bar.set_description(name)
            start = time.perf_counter()
            correct[name] = robust_correct(attack, model, x, y, threat, batch_size=batch_size, seed=seed,
                                           device=device, attack_only=clean, on_batch=lambda: bar.update())
            seconds[name] = round(time.perf_counter() - start, 3)
            logger.info("%s: robust accuracy %s (%s, %d examples, %.1f s)", name,
                        format_percent(correct[name].float().mean().item()), threat, n, seconds[name])
        robust_accuracy = {name: c.float().mean().item() for name, c in correct.items()}
        check_results: list[dict[str, Any]] = []
        sweep: dict[str, Any] = {}
        if checks:
            bar.set_description("checks")
            start = time.perf_counter()
            run = gradient_masking_checks(model, x[:n_check], y[:n_check], threat, robust_accuracy, n_main=n,
                                          batch_size=batch_size, seed=seed, device=device, large_eps=large_eps,
                                          square_queries=check_square_queries, on_batch=lambda: bar.update())
            seconds["checks"] = round(time.perf_counter() - start, 3)
            check_results = [c.to_dict() for c in run.checks]
            sweep = run.sweep
        warnings = list(dict.fromkeys(aa_warnings))  # de-duplicated, in order

    classnames = _classnames(data, model, num_classes)
    per_class: dict[str, dict[str, float]] = {}
    for c, cls_name in enumerate(classnames):
        mask = y == c
        if not mask.any():
            continue
        row: dict[str, float] = {"n": int(mask.sum()), "clean": clean[mask].float().mean().item()}
        row.update({name: flags[mask].float().mean().item() for name, flags in correct.items()})
        per_class[cls_name] = row
    worst = None
    if correct:
        worst = torch.stack(list(correct.values())).all(dim=0).float().mean().item()
    report = RobustnessReport(
        dataset=_name(data, dataset_name, "tensors" if isinstance(data, (tuple, list)) else type(data).__name__),
        model=_name(model, model_name, type(model).__name__),
        threat=threat.norm, eps=float(threat.eps), n_examples=n,
        clean_accuracy=clean.float().mean().item(), robust_accuracy=robust_accuracy, per_class=per_class,
        attack_settings={name: attack.settings(threat, num_classes) for name, attack in named.items()},
        checks=check_results, seed=seed, versions=library_versions(), num_classes=num_classes,
        worst_case_accuracy=worst, selection=selection, seconds=seconds, warnings=warnings, sanity_sweep=sweep,
        per_example={name: _bits(flags) for name, flags in {"clean": clean, **correct}.items()},
    )
    if report.failed_checks:
        logger.warning("robustness report for %s: %d gradient-masking check(s) FAILED: %s", report.model,
                       len(report.failed_checks), ", ".join(c["name"] for c in report.failed_checks))
    return report


def _bits(flags: Tensor) -> str:
    """Per-example outcomes as a compact string: ``"1"`` correct, ``"0"`` wrong, in example order."""
    return "".join("1" if f else "0" for f in flags.bool().tolist())


# -- robust accuracy against eps ------------------------------------------------------------------------------

DEFAULT_EPS = {"linf": [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "l2": [0.0, 0.125, 0.25, 0.5, 1.0, 2.0]}


def eps_curve(
    model: Model,
    data: Any,
    attack: str = "pgd20",
    eps_list: Iterable[float | str] | None = None,
    *,
    norm: str = "linf",
    n_examples: int = 500,
    batch_size: int = 256,
    seed: int = 0,
    attack_options: dict[str, Any] | None = None,
    output: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Robust accuracy of ``model`` under ``attack`` at each eps (eps 0 = clean) on a seeded example set.

    Returns ``{"attack", "norm", "eps", "eps_text", "accuracy", "n_examples", "seed", "settings", ...}``; with
    ``output`` (a path stem) also writes ``<output>.json`` and ``<output>.png``.
    """
    values = sorted(parse_number(e, name="eps") for e in (eps_list if eps_list is not None else DEFAULT_EPS[norm]))
    for eps in values:
        check_request(["clean"], make_threat(norm, eps), n_examples=n_examples, batch_size=batch_size)
    named = get_attack(attack, **(attack_options or {}))
    device = torch.device(device) if device is not None else _model_device(model)
    x, y, selection = collect_examples(data, n_examples, seed)
    num_classes = _num_classes(model, x, device)
    check_classes(model, data, num_classes)
    check_inputs(x, y, num_classes)
    clean = predict_labels(model, x, batch_size=batch_size, device=device) == y
    accuracy, settings = [], {}
    for eps in tqdm(values, desc=f"{attack} vs eps", disable=not progress, leave=False):
        if eps == 0:
            accuracy.append(clean.float().mean().item())
            continue
        threat = make_threat(norm, eps)
        flags = robust_correct(named, model, x, y, threat, batch_size=batch_size, seed=seed, device=device,
                               attack_only=clean)
        accuracy.append(flags.float().mean().item())
        settings[format_eps(eps, norm)] = named.settings(threat, num_classes)
    curve = {"attack": attack, "norm": norm, "eps": values, "eps_text": [format_eps(e, norm) for e in values],
             "accuracy": accuracy, "n_examples": int(x.shape[0]), "selection": selection, "seed": seed,
             "model": _name(model, None, type(model).__name__), "settings": settings,
             "versions": library_versions()}
    if output is not None:
        save_eps_curve(curve, output)
    return curve


def save_eps_curve(curve: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Write ``curve`` to ``<output>.json`` and plot it to ``<output>.png`` (matplotlib, no pyplot state)."""
    from matplotlib.figure import Figure

    stem = Path(output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".png")
    json_path.write_text(json.dumps(curve, indent=2) + "\n", encoding="utf-8")
    scale = 255 if curve["norm"] == "linf" else 1
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    ax.plot([e * scale for e in curve["eps"]], [100 * a for a in curve["accuracy"]], marker="o")
    ax.set_xlabel("eps (x 1/255)" if scale == 255 else "eps (L2)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{curve['model']}: {curve['attack']}, {curve['norm']}, n={curve['n_examples']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    return json_path, png_path


__all__ = ["RobustnessReport", "evaluate_robustness", "eps_curve", "save_eps_curve", "collect_examples",
           "check_request", "check_inputs", "check_classes", "library_versions"]
