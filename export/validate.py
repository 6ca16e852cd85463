"""What "validated under attack" means for an ONNX artifact: :func:`validate_onnx` -> :class:`ExportReport`.

On a fixed, seeded set of examples, with the deployed artifact run by :class:`~.runner.OnnxStudent`:

(a) **clean parity**: max |logit difference| and top-1 agreement between the torch student and onnxruntime;
(b) **adversarial parity**: adversarial examples crafted on the torch student (PGD-20, AutoAttack's APGD-CE) for
    every example that either runtime classifies correctly, robust accuracy in both runtimes, top-1 agreement
    and max |logit difference| on those examples;
(c) **black box on the artifact**: Square run directly on the onnxruntime session (queries only, no torch model),
    compared with the white-box number: a black-box attack clearly stronger than the white-box attacks means the
    gradients lie (masking) or the artifact is not the model that was attacked, and fails validation.

An INT8 artifact is validated against the FP32 torch student: its clean and robust accuracy drops are gated
instead of logit parity. Every threshold is a field of :class:`Thresholds` with a strict default.

:func:`validate_artifact` is the weaker check for an artifact without its torch student: clean accuracy, Square
on onnxruntime, and transfer attacks crafted on a stated surrogate model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from robust_student.attacks import attack_mode, get_attack, make_threat
from robust_student.attacks.checks import check_black_box
from robust_student.attacks.named import check_in_threat, robust_correct
from robust_student.attacks.threat import Threat
from robust_student.evaluation import check_inputs, collect_examples, library_versions
from robust_student.formatting import format_eps, format_percent

from .runner import OnnxStudent

DEFAULT_ATTACKS = ("pgd20", "apgd-ce")
DEFAULT_SQUARE_QUERIES = 1000
DEFAULT_EXAMPLES = 200


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits of a validation (accuracies are fractions: 0.01 = one percentage point).

    FP32 artifacts: ``max_logit_diff`` (clean and adversarial, absolute), ``min_label_agreement`` (clean and on
    each attack's examples), ``max_robust_gap`` (|torch - ONNX| robust accuracy per attack). INT8 artifacts:
    ``max_int8_clean_drop``, ``max_int8_robust_drop`` (per attack and for the worst case, which includes Square
    on the artifact), ``min_int8_label_agreement`` (clean). Both: ``max_black_box_gain`` (how far Square on
    the artifact may go below the torch student's white-box worst case).
    """

    max_logit_diff: float = 1e-3
    min_label_agreement: float = 0.99
    max_robust_gap: float = 0.01
    max_black_box_gain: float = 0.02
    max_int8_clean_drop: float = 0.02
    max_int8_robust_drop: float = 0.02
    min_int8_label_agreement: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ExportCheck:
    """One gate: ``value`` compared with ``limit`` (``kind`` "max": value <= limit; "min": value >= limit).

    ``passed`` is None for a check that could not run (``detail`` says why); ``excess`` is how far past the limit
    a failed check is.
    """

    name: str
    passed: bool | None
    value: float | None
    limit: float | None
    kind: str
    detail: str

    @property
    def excess(self) -> float:
        if self.passed is not False or self.value is None or self.limit is None:
            return 0.0
        return self.value - self.limit if self.kind == "max" else self.limit - self.value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excess": self.excess}


def _gate(name: str, value: float, limit: float, kind: str, what: str, percent: bool) -> ExportCheck:
    show = format_percent if percent else (lambda v: f"{v:.3g}")
    passed = value <= limit if kind == "max" else value >= limit
    relation = ("<=" if passed else ">") if kind == "max" else (">=" if passed else "<")
    detail = f"{what} {show(value)} {relation} {show(limit)}"
    check = ExportCheck(name, bool(passed), float(value), float(limit), kind, detail)
    if not passed:
        check.detail += f" (off by {show(check.excess)})"
    return check


@dataclass
class ExportReport:
    """How an ONNX artifact behaved against its torch student, clean and under attack (accuracies are fractions).

    ``clean``: ``accuracy_torch``, ``accuracy_onnx``, ``top1_agreement``, ``max_logit_diff``; ``adversarial``:
    per attack crafted on torch, the same keys plus ``settings`` and ``n_attacked`` (the examples either runtime
    classifies correctly: all of them are attacked); ``black_box``: Square on the artifact
    (``accuracy_onnx``, ``white_box_accuracy_torch``, ``settings``); ``worst_case``: per-example worst case over
    the white-box attacks (torch) and over every attack including Square (ONNX). ``mode`` is ``"full"`` or
    ``"artifact-only"`` (no torch student: transfer from ``surrogate``, whose accuracies are
    ``accuracy_surrogate``; a weaker check, no gates).
    """

    path: str
    model: str
    precision: str
    mode: str
    dataset: str
    n_examples: int
    selection: str
    threat: str
    eps: float
    seed: int
    provider: str
    clean: dict[str, Any]
    adversarial: dict[str, dict[str, Any]]
    black_box: dict[str, Any]
    worst_case: dict[str, Any]
    checks: list[dict[str, Any]]
    thresholds: dict[str, float]
    versions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    surrogate: str | None = None
    note: str = ""

    @property
    def eps_text(self) -> str:
        return format_eps(self.eps, self.threat)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c.get("passed") is False]

    @property
    def passed(self) -> bool | None:
        """True when every gate passed; None for an artifact-only report (it has no gates)."""
        if self.mode != "full":
            return None
        return not self.failed_checks

    def failure_summary(self) -> str:
        """The failed checks and by how much, in one line."""
        return "; ".join(f"{c['name']}: {c['detail']}" for c in self.failed_checks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "eps_text": self.eps_text, "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExportReport":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    def to_markdown(self) -> str:
        norm = {"linf": "L-inf", "l2": "L2"}.get(self.threat, self.threat)
        status = {True: "PASSED", False: "FAILED", None: "measured (artifact-only: no pass/fail)"}[self.passed]
        lines = [f"## ONNX validation of {self.model} ({self.precision}): {status}", ""]
        if self.note:
            lines += [f"> {self.note}", ""]
        lines += [f"Artifact `{Path(self.path).name}` on {self.provider}; {self.dataset}, {self.n_examples} examples "
                  f"({self.selection}); threat {norm} eps {self.eps_text}; seed {self.seed}.", ""]
        ref = "torch" if self.mode == "full" else f"surrogate {self.surrogate}"
        lines += [f"| inputs | accuracy ({ref}) | accuracy (ONNX) | top-1 agreement | max logit diff |",
                  "|---|---|---|---|---|"]
        rows = [("clean", self.clean)] + [(f"{name} (crafted on {ref})", r) for name, r in self.adversarial.items()]
        for label, r in rows:
            lines.append(f"| {label} | {format_percent(r.get('accuracy_torch', r.get('accuracy_surrogate')))} | "
                         f"{format_percent(r.get('accuracy_onnx'))} | {format_percent(r.get('top1_agreement'))} | "
                         f"{_diff(r.get('max_logit_diff'))} |")
        if self.black_box:
            lines.append(f"| {self.black_box['attack']} on the ONNX session | - | "
                         f"{format_percent(self.black_box['accuracy_onnx'])} | - | - |")
        if self.worst_case:
            lines.append(f"| worst case per example | {format_percent(self.worst_case.get('accuracy_torch'))} | "
                         f"{format_percent(self.worst_case.get('accuracy_onnx'))} | - | - |")
        if self.checks:
            lines += ["", "| check | result | detail |", "|---|---|---|"]
            for c in self.checks:
                result = {True: "pass", False: "**FAIL**", None: "not run"}[c.get("passed")]
                lines.append(f"| {c['name']} | {result} | {c['detail']} |")
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()) + ".", ""]
        return "\n".join(lines)

    def to_text(self) -> str:
        """A few lines for a terminal (the quickstart prints these)."""
        c = self.clean
        status = {True: "passed", False: "FAILED", None: "measured"}[self.passed]
        out = [f"{self.precision} ONNX validation {status} ({self.n_examples} examples, {self.threat} eps "
               f"{self.eps_text}, {self.provider})"]
        if self.mode == "full":
            out.append(f"  clean: torch {format_percent(c['accuracy_torch'])}, ONNX {format_percent(c['accuracy_onnx'])}, "
                       f"top-1 agreement {format_percent(c['top1_agreement'])}, max logit diff {_diff(c['max_logit_diff'])}")
        else:
            out.append(f"  clean: ONNX {format_percent(c['accuracy_onnx'])}")
        for name, r in self.adversarial.items():
            where = "torch" if self.mode == "full" else self.surrogate
            reference = r.get("accuracy_torch", r.get("accuracy_surrogate"))
            out.append(f"  {name} crafted on {where}: robust accuracy {where} {format_percent(reference)}, "
                       f"ONNX {format_percent(r['accuracy_onnx'])}, agreement {format_percent(r['top1_agreement'])}")
        if self.black_box:
            b = self.black_box
            white = b.get("white_box_accuracy_torch")
            versus = f" (white-box worst case on torch {format_percent(white)})" if white is not None else ""
            out.append(f"  {b['attack']} on the ONNX session: {format_percent(b['accuracy_onnx'])}{versus}")
        w = self.worst_case
        if self.mode == "full" and w:
            out.append(f"  worst case per example: torch (white-box) {format_percent(w['accuracy_torch'])}, ONNX (all "
                       f"attacks incl. Square) {format_percent(w['accuracy_onnx'])}")
            if self.precision == "int8":
                out.append(f"  INT8 vs FP32 torch: clean {_points(c['accuracy_onnx'] - c['accuracy_torch'])}, "
                           f"robust (worst case) {_points(w['accuracy_onnx'] - w['accuracy_torch'])}")
        for check in self.failed_checks:
            out.append(f"  FAILED {check['name']}: {check['detail']}")
        if self.note:
            out.append(f"  note: {self.note}")
        return "\n".join(out)


def _points(delta: float) -> str:
    return f"{100 * delta:+.2f} points"


def _diff(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


class ExportValidationError(ValueError):
    """An export refused because its artifact failed validation; ``report`` holds every measurement."""

    def __init__(self, report: ExportReport, path: str | Path, detail: str = "") -> None:
        self.report = report
        super().__init__(f"{report.precision} ONNX export of {report.model} failed validation, nothing written to "
                         f"{path}{detail}: {report.failure_summary()} (export with allow_failed=True to write it "
                         "anyway, recorded as failed)")


# -- running the artifact and the student -----------------------------------------------------------------------

def _torch_logits(model: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    out = []
    with attack_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            out.append(model(x[start:start + batch_size]).float().cpu())
    return torch.cat(out)


def _onnx_logits(artifact: OnnxStudent, x: Tensor, batch_size: int) -> Tensor:
    out = [torch.from_numpy(artifact.logits(x[s:s + batch_size].numpy())).float()
           for s in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def _craft(attack_name: str, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, threat: Threat,
           attack_only: Tensor, *, batch_size: int, seed: int) -> Tensor:
    """Adversarial examples for the examples in ``attack_only`` (the others stay clean), batch ``i`` seeded
    ``seed + i`` as in the evaluation loop."""
    attack = get_attack(attack_name)
    x_adv = x.clone()
    todo = attack_only.nonzero().flatten()
    for i, start in enumerate(range(0, todo.numel(), batch_size)):
        idx = todo[start:start + batch_size]
        adv = attack(model, x[idx], y[idx], threat, seed=seed + i)
        check_in_threat(adv, x[idx], threat)
        x_adv[idx] = adv
    return x_adv


def _compare(ref_logits: Tensor, onnx_logits: Tensor, y: Tensor, ref_ok: Tensor, onnx_ok: Tensor) -> dict[str, Any]:
    ref_pred, onnx_pred = ref_logits.argmax(1), onnx_logits.argmax(1)
    return {"accuracy_torch": ((ref_pred == y) & ref_ok).float().mean().item(),
            "accuracy_onnx": ((onnx_pred == y) & onnx_ok).float().mean().item(),
            "top1_agreement": (ref_pred == onnx_pred).float().mean().item(),
            "max_logit_diff": (ref_logits - onnx_logits).abs().max().item(),
            "_ref_correct": (ref_pred == y) & ref_ok, "_onnx_correct": (onnx_pred == y) & onnx_ok}


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _threat(threat: Threat | None, artifact: OnnxStudent) -> Threat:
    if threat is not None:
        return threat
    recorded = artifact.threat
    if isinstance(recorded, dict) and "norm" in recorded and "eps" in recorded:
        return make_threat(recorded["norm"], float(recorded["eps"]))
    return make_threat("linf", 8 / 255)


def _square(artifact: OnnxStudent, x: Tensor, y: Tensor, threat: Threat, onnx_ok: Tensor, *, queries: int,
            num_classes: int, batch_size: int, seed: int) -> tuple[Tensor, dict[str, Any]]:
    """Square run on the onnxruntime session through the query interface (numpy in, logits out)."""
    attack = get_attack(f"square:{queries}", input_format="numpy")
    correct = robust_correct(attack, artifact.logits, x, y, threat, batch_size=batch_size, seed=seed,
                             attack_only=onnx_ok)
    return correct, {"attack": f"square:{queries}", "settings": attack.settings(threat, num_classes)}


def _data_name(data: Any, given: str | None) -> str:
    return given or getattr(data, "name", None) or ("tensors" if isinstance(data, (tuple, list)) else
                                                   type(data).__name__)


# -- full validation ---------------------------------------------------------------------------------------------

def validate_onnx(
    path: str | Path,
    student: torch.nn.Module,
    data: Any,
    *,
    threat: Threat | None = None,
    n_examples: int = DEFAULT_EXAMPLES,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
    thresholds: Thresholds | None = None,
    batch_size: int = 100,
    seed: int = 0,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    dataset_name: str | None = None,
) -> ExportReport:
    """Validate the ONNX artifact at ``path`` against its torch ``student`` on ``n_examples`` of ``data``.

    ``data`` is anything :func:`robust_student.evaluation.collect_examples` takes (a dataset, ``(x, y)`` tensors,
    a DataLoader). ``threat`` defaults to the one in the artifact's metadata. ``attacks`` are the white-box
    attacks crafted on torch (default PGD-20 and APGD-CE); Square runs on the artifact with ``square_queries``
    per image. The checks and their limits (:class:`Thresholds`) depend on the artifact's precision.
    ``providers`` and ``threads`` (onnxruntime intra-op threads; default: onnxruntime's choice) set up the
    artifact's session, as in :class:`~.runner.OnnxStudent`.
    """
    thresholds = thresholds or Thresholds()
    start_all = time.perf_counter()
    artifact = OnnxStudent(path, providers=providers, threads=threads)
    threat = _threat(threat, artifact)
    x, y, selection = collect_examples(data, n_examples, seed)
    device = next((t.device for t in student.parameters()), torch.device("cpu"))
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    torch_clean = _torch_logits(student, x.to(device), batch_size).cpu()
    num_classes = int(torch_clean.shape[1])
    check_inputs(x, y, num_classes)
    onnx_clean = _onnx_logits(artifact, x, batch_size)
    if onnx_clean.shape != torch_clean.shape:
        raise ValueError(f"the artifact returns logits {tuple(onnx_clean.shape)}, the student "
                         f"{tuple(torch_clean.shape)}: they are not the same model")
    everything = torch.ones_like(y, dtype=torch.bool)
    clean = _compare(torch_clean, onnx_clean, y, everything, everything)
    seconds["clean"] = round(time.perf_counter() - start, 3)

    adversarial: dict[str, dict[str, Any]] = {}
    # Attack every example that either runtime classifies correctly: an example only the artifact gets right
    # (INT8 rounding, or a faithful-looking graph of another model) must be attacked too, or it would count as
    # robust for the artifact without ever having been attacked.
    attacked = clean["_ref_correct"] | clean["_onnx_correct"]
    for name in attacks:
        start = time.perf_counter()
        attack = get_attack(name)
        x_adv = _craft(name, student, x.to(device), y.to(device), threat, attacked.to(device),
                       batch_size=batch_size, seed=seed).cpu()
        result = _compare(_torch_logits(student, x_adv.to(device), batch_size), _onnx_logits(artifact, x_adv, batch_size),
                          y, clean["_ref_correct"], clean["_onnx_correct"])
        result["settings"] = attack.settings(threat, num_classes)
        result["n_attacked"] = int(attacked.sum())
        adversarial[name] = result
        seconds[name] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    square_correct, black_box = _square(artifact, x, y, threat, clean["_onnx_correct"], queries=square_queries,
                                        num_classes=num_classes, batch_size=batch_size, seed=seed)
    seconds["square"] = round(time.perf_counter() - start, 3)
    white_torch = torch.stack([clean["_ref_correct"], *(r["_ref_correct"] for r in adversarial.values())]).all(0)
    all_onnx = torch.stack([clean["_onnx_correct"], *(r["_onnx_correct"] for r in adversarial.values()),
                            square_correct]).all(0)
    black_box.update(accuracy_onnx=square_correct.float().mean().item(),
                     white_box_accuracy_torch=white_torch.float().mean().item())
    worst_case = {"accuracy_torch": white_torch.float().mean().item(), "accuracy_onnx": all_onnx.float().mean().item(),
                  "torch_attacks": list(attacks), "onnx_attacks": [*attacks, black_box["attack"]]}

    precision = artifact.precision
    checks = _checks(precision, clean, adversarial, black_box, worst_case, thresholds)
    seconds["total"] = round(time.perf_counter() - start_all, 3)
    versions = {**library_versions(), "onnxruntime": _ort_version()}
    return ExportReport(
        path=str(path), model=_model_name(student, artifact), precision=precision, mode="full",
        dataset=_data_name(data, dataset_name), n_examples=int(x.shape[0]), selection=selection,
        threat=threat.norm, eps=float(threat.eps), seed=seed, provider=artifact.provider, clean=_public(clean),
        adversarial={k: _public(v) for k, v in adversarial.items()}, black_box=black_box, worst_case=worst_case,
        checks=[c.to_dict() for c in checks], thresholds=thresholds.to_dict(), versions=versions, seconds=seconds,
        note="INT8 artifact validated against the FP32 torch student" if precision == "int8" else "",
    )


def _checks(precision: str, clean: dict[str, Any], adversarial: dict[str, dict[str, Any]], black_box: dict[str, Any],
            worst_case: dict[str, Any], t: Thresholds) -> list[ExportCheck]:
    checks: list[ExportCheck] = []
    if precision == "int8":
        checks.append(_gate("clean_accuracy_drop", clean["accuracy_torch"] - clean["accuracy_onnx"],
                            t.max_int8_clean_drop, "max", "clean accuracy FP32 torch - INT8 ONNX", True))
        checks.append(_gate("clean_top1_agreement", clean["top1_agreement"], t.min_int8_label_agreement, "min",
                            "top-1 agreement", True))
        for name, r in adversarial.items():
            checks.append(_gate(f"robust_accuracy_drop[{name}]", r["accuracy_torch"] - r["accuracy_onnx"],
                                t.max_int8_robust_drop, "max", f"{name} robust accuracy FP32 torch - INT8 ONNX", True))
        checks.append(_gate("worst_case_robust_drop", worst_case["accuracy_torch"] - worst_case["accuracy_onnx"],
                            t.max_int8_robust_drop, "max",
                            "worst-case robust accuracy FP32 torch (white-box) - INT8 ONNX (incl. Square)", True))
    else:
        checks.append(_gate("clean_logit_parity", clean["max_logit_diff"], t.max_logit_diff, "max",
                            "max |logit diff| torch vs ONNX", False))
        checks.append(_gate("clean_top1_agreement", clean["top1_agreement"], t.min_label_agreement, "min",
                            "top-1 agreement", True))
        for name, r in adversarial.items():
            checks.append(_gate(f"adversarial_logit_parity[{name}]", r["max_logit_diff"], t.max_logit_diff, "max",
                                f"max |logit diff| on {name} examples", False))
            checks.append(_gate(f"adversarial_top1_agreement[{name}]", r["top1_agreement"], t.min_label_agreement,
                                "min", f"top-1 agreement on {name} examples", True))
            checks.append(_gate(f"robust_accuracy_gap[{name}]", abs(r["accuracy_torch"] - r["accuracy_onnx"]),
                                t.max_robust_gap, "max", f"|{name} robust accuracy torch - ONNX|", True))
    masking = check_black_box(black_box["accuracy_onnx"], black_box["white_box_accuracy_torch"],
                              t.max_black_box_gain, black_name=f"{black_box['attack']} on ONNX",
                              white_name="white-box worst case on torch")
    gap = black_box["white_box_accuracy_torch"] - black_box["accuracy_onnx"]
    check = ExportCheck(masking.name, masking.passed, gap, t.max_black_box_gain, "max", masking.detail)
    if check.passed is False:
        check.detail += f" (Square stronger by {format_percent(gap)}: gradient masking, or the artifact is not the " \
                        f"model that was attacked; off by {format_percent(check.excess)})"
    checks.append(check)
    return checks


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _model_name(student: Any, artifact: OnnxStudent) -> str:
    spec = getattr(student, "spec", None) or {}
    arch = artifact.metadata.get("architecture") or {}
    return str(spec.get("name") or arch.get("name") or type(student).__name__)


# -- artifact-only validation ------------------------------------------------------------------------------------

ARTIFACT_ONLY_NOTE = ("weaker check: no torch student, so no gradients of the artifact's own model; white-box "
                      "attacks are transferred from the surrogate, which finds fewer adversarial examples than "
                      "attacking the model itself")


def validate_artifact(
    path: str | Path,
    data: Any,
    *,
    surrogate: torch.nn.Module | None = None,
    surrogate_name: str | None = None,
    threat: Threat | None = None,
    n_examples: int = DEFAULT_EXAMPLES,
    attacks: Sequence[str] = ("pgd20",),
    square_queries: int = DEFAULT_SQUARE_QUERIES,
    batch_size: int = 100,
    seed: int = 0,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    dataset_name: str | None = None,
) -> ExportReport:
    """Re-check an artifact someone handed you, without its torch student: clean accuracy and Square on the
    onnxruntime session, plus ``attacks`` crafted on ``surrogate`` (a model with the artifact's classes, e.g. the
    teacher in its metadata) and transferred. The report has no gates (``passed`` is None) and says it is weaker.
    ``providers`` and ``threads`` as in :func:`validate_onnx`.
    """
    start_all = time.perf_counter()
    artifact = OnnxStudent(path, providers=providers, threads=threads)
    threat = _threat(threat, artifact)
    x, y, selection = collect_examples(data, n_examples, seed)
    onnx_clean = _onnx_logits(artifact, x, batch_size)
    num_classes = int(onnx_clean.shape[1])
    check_inputs(x, y, num_classes)
    everything = torch.ones_like(y, dtype=torch.bool)
    onnx_ok = onnx_clean.argmax(1) == y
    clean = {"accuracy_onnx": onnx_ok.float().mean().item()}
    seconds: dict[str, float] = {}
    adversarial: dict[str, dict[str, Any]] = {}
    per_example = [onnx_ok]
    if surrogate is not None and attacks:
        surrogate_clean = _torch_logits(surrogate, x, batch_size)
        if surrogate_clean.shape[1] != num_classes:
            raise ValueError(f"the surrogate predicts {surrogate_clean.shape[1]} classes, the artifact {num_classes}")
        surrogate_ok = surrogate_clean.argmax(1) == y
        clean["accuracy_surrogate"] = surrogate_ok.float().mean().item()
        for name in attacks:
            start = time.perf_counter()
            x_adv = _craft(name, surrogate, x, y, threat, onnx_ok, batch_size=batch_size, seed=seed)
            result = _compare(_torch_logits(surrogate, x_adv, batch_size), _onnx_logits(artifact, x_adv, batch_size),
                              y, everything, onnx_ok)
            result.pop("max_logit_diff")  # two different models: their logits are not comparable
            result["accuracy_surrogate"] = result.pop("accuracy_torch")
            result["settings"] = get_attack(name).settings(threat, num_classes)
            adversarial[name] = result
            per_example.append(result["_onnx_correct"])
            seconds[name] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    square_correct, black_box = _square(artifact, x, y, threat, onnx_ok, queries=square_queries,
                                        num_classes=num_classes, batch_size=batch_size, seed=seed)
    seconds["square"] = round(time.perf_counter() - start, 3)
    per_example.append(square_correct)
    black_box["accuracy_onnx"] = square_correct.float().mean().item()
    worst = torch.stack(per_example).all(0).float().mean().item()
    claimed = artifact.validation or {}
    note = ARTIFACT_ONLY_NOTE
    if claimed.get("black_box"):
        note += (f"; the artifact's own export validation recorded {claimed['black_box'].get('attack')} "
                 f"{format_percent(claimed['black_box'].get('accuracy_onnx'))} on {claimed.get('dataset')} "
                 f"({claimed.get('n_examples')} examples)")
    seconds["total"] = round(time.perf_counter() - start_all, 3)
    return ExportReport(
        path=str(path), model=str((artifact.metadata.get("architecture") or {}).get("name", Path(path).stem)),
        precision=artifact.precision, mode="artifact-only", dataset=_data_name(data, dataset_name),
        n_examples=int(x.shape[0]), selection=selection, threat=threat.norm, eps=float(threat.eps), seed=seed,
        provider=artifact.provider, clean=clean, adversarial={k: _public(v) for k, v in adversarial.items()},
        black_box=black_box, worst_case={"accuracy_onnx": worst}, checks=[], thresholds={},
        versions={**library_versions(), "onnxruntime": _ort_version()}, seconds=seconds,
        surrogate=surrogate_name or (type(surrogate).__name__ if surrogate is not None else None), note=note,
    )


__all__ = ["validate_onnx", "validate_artifact", "ExportReport", "ExportCheck", "Thresholds", "ExportValidationError",
           "DEFAULT_ATTACKS", "DEFAULT_SQUARE_QUERIES", "DEFAULT_EXAMPLES"]
