"""What the demo does to one image, as plain functions (tested without a server): read and check the upload,
attack the chosen model, predict with teacher and student on the clean and the adversarial image.

Everything the user sees is what the models saw: images are 8-bit at the model's input size, the adversarial
image is put back on the 8-bit grid inside the eps-ball before anything predicts on it (so a PNG download
holds exactly the attack), and eps is a whole number of 1/255 steps.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from robust_student.attacks import LinfBall, fgsm, objectives, pgd, square_attack
from robust_student.attacks.runtime import QueryFunction, attack_mode

ATTACKS = ("FGSM", "PGD", "CW", "Square")
TARGETS = ("student", "teacher", "onnx")
EPS_RANGE = (1, 64)        # eps in 1/255 steps
STEPS_RANGE = (1, 100)     # PGD / CW steps; Square gets SQUARE_QUERIES_PER_STEP queries per step
SQUARE_QUERIES_PER_STEP = 50
MAX_PIXELS = 40_000_000    # larger uploads are refused (decompression bombs); anything else is resized
DISPLAY_SIZE = 224         # small model inputs are shown enlarged (nearest neighbour: pixels stay pixels)
TOP_K = 3


class DemoInputError(ValueError):
    """An upload or a setting the demo cannot use; the message is shown in the page."""


@dataclass
class DemoModels:
    """The models the page attacks: the student, optionally its teacher (zero-shot on the same classes) and a
    query-only ONNX model (``onnx(x: float32 NCHW numpy) -> logits``)."""

    student: nn.Module
    labels: list[str]
    teacher: nn.Module | None = None
    onnx: Callable[[Any], Any] | None = None

    @property
    def image_size(self) -> int:
        return int(self.student.spec["image_size"])

    def model(self, target: str) -> Callable[[Tensor], Tensor]:
        if target == "student":
            return self.student
        if target == "teacher":
            if self.teacher is None:
                raise DemoInputError("no teacher is loaded: start the demo with --teacher NAME")
            return self.teacher
        if target == "onnx":
            if self.onnx is None:
                raise DemoInputError("no ONNX model is loaded: start the demo with --onnx model.onnx")
            return QueryFunction(self.onnx, input_format="numpy")
        raise DemoInputError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


@dataclass
class DemoResult:
    """One attack's outcome: images as uint8 HxWx3 (display size), top-k predictions, the verdict line."""

    clean: np.ndarray
    adversarial: np.ndarray
    perturbation: np.ndarray
    predictions: dict[str, dict[str, float]]     # "student clean", "student adversarial", "teacher ..." ...
    verdict: str
    linf: float                                  # max |x' - x| in 1/255 steps, measured on the 8-bit images
    notes: list[str] = field(default_factory=list)


# -- reading the upload -----------------------------------------------------------------------------------------

def read_image(source: str | Path | bytes | np.ndarray | Image.Image) -> Image.Image:
    """An upload as an RGB PIL image; grayscale, palette, RGBA (on white) and 16-bit images are converted."""
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            if array.dtype.kind == "f" and np.isfinite(array).all() and 0 <= array.min() and array.max() <= 1:
                array = (array * 255).round().astype(np.uint8)
            elif array.dtype.kind in "ui" and array.max() > 255:
                array = (array / (65535 if array.max() > 4095 else 4095) * 255).round().astype(np.uint8)
            else:
                raise DemoInputError(f"an image array must be uint8, or float in [0, 1]; got {array.dtype}")
        image = Image.fromarray(array)
    elif isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            name = Path(source).name if isinstance(source, (str, Path)) else "the upload"
            raise DemoInputError(f"{name} is not an image the demo can read (PNG, JPEG, TIFF, BMP ...): "
                                 f"{err}") from None
    if image.width * image.height > MAX_PIXELS:
        raise DemoInputError(f"the image is {image.width}x{image.height}: above the demo's limit of "
                             f"{MAX_PIXELS // 1_000_000} megapixels; downscale it first")
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.float32)
        top = 65535.0 if values.max() > 4095 else max(255.0, float(values.max()) or 1.0)
        image = Image.fromarray((values / top * 255).round().clip(0, 255).astype(np.uint8))
    elif image.mode == "F":
        values = np.asarray(image)
        image = Image.fromarray((values / (255.0 if values.max() > 1 else 1.0) * 255).clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def to_tensor(image: Image.Image, size: int) -> Tensor:
    """[1, 3, size, size] float on the 8-bit grid (k / 255), resized with PIL's antialiased bilinear filter."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR) if image.size != (size, size) else image
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float() / 255


def clamp_settings(eps255: Any, steps: Any) -> tuple[int, int, list[str]]:
    """eps (1/255 steps) and steps as bounded integers, with a note for every value that was changed."""
    notes = []
    try:
        eps_value, steps_value = float(eps255), float(steps)
    except (TypeError, ValueError):
        raise DemoInputError(f"eps and steps must be numbers, got {eps255!r} and {steps!r}") from None
    if not (np.isfinite(eps_value) and np.isfinite(steps_value)):
        raise DemoInputError("eps and steps must be finite numbers")
    bounded = min(max(int(round(eps_value)), EPS_RANGE[0]), EPS_RANGE[1])
    if bounded != eps_value:
        notes.append(f"eps {eps_value:g}/255 was set to {bounded}/255 (whole steps from {EPS_RANGE[0]} to "
                     f"{EPS_RANGE[1]})")
    bounded_steps = min(max(int(round(steps_value)), STEPS_RANGE[0]), STEPS_RANGE[1])
    if bounded_steps != steps_value:
        notes.append(f"steps {steps_value:g} was set to {bounded_steps} (from {STEPS_RANGE[0]} to {STEPS_RANGE[1]})")
    return bounded, bounded_steps, notes


# -- attacking and predicting ---------------------------------------------------------------------------------

def quantize_in_ball(x_adv: Tensor, x: Tensor, eps255: int) -> Tensor:
    """``x_adv`` on the 8-bit grid and inside the eps-ball around the (8-bit) clean image."""
    steps = torch.round((x_adv - x) * 255).clamp(-eps255, eps255)
    return ((torch.round(x * 255) + steps).clamp(0, 255)) / 255


def craft(model: Callable[[Tensor], Tensor], x: Tensor, attack: str, eps255: int, steps: int,
          on_step: Callable[[int, int], None] | None = None, seed: int = 0) -> Tensor:
    """Untargeted ``attack`` on ``model`` against its own clean prediction, at L-inf eps255/255, on the 8-bit grid."""
    if attack not in ATTACKS:
        raise DemoInputError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    threat = LinfBall(eps255 / 255)
    with attack_mode(model), torch.no_grad():
        y = model(x).argmax(dim=1)
    callback = (lambda step, _: on_step(step, steps)) if on_step is not None else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if attack == "FGSM":
            with attack_mode(model):
                x_adv = fgsm(objectives.ce(model, y), x, threat)
        elif attack in ("PGD", "CW"):
            objective = objectives.ce(model, y) if attack == "PGD" else objectives.cw_margin(model, y)
            with attack_mode(model):
                x_adv = pgd(objective, x, threat, steps=steps, step_size=max(threat.eps / 4, 1 / 255),
                            random_start="uniform", on_step=callback)
        else:
            x_adv = square_attack(model, x, y, threat, n_queries=steps * SQUARE_QUERIES_PER_STEP, seed=seed)
    return quantize_in_ball(x_adv, x, eps255)


def top_k(model: Callable[[Tensor], Tensor], x: Tensor, labels: Sequence[str], k: int = TOP_K) -> dict[str, float]:
    """``{label: probability}`` of the ``k`` most likely classes (what gradio's Label shows)."""
    with attack_mode(model), torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)[0]
    values, indices = probs.topk(min(k, probs.numel()))
    return {labels[i]: float(v) for v, i in zip(values.tolist(), indices.tolist())}


def _enlarge(x: Tensor) -> np.ndarray:
    image = (x[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    factor = max(1, DISPLAY_SIZE // image.shape[0])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def perturbation_image(x_adv: Tensor, x: Tensor, eps255: int) -> Tensor:
    """The perturbation amplified to the full range: mid-grey is no change, black/white are -eps/+eps."""
    return ((x_adv - x) * 255 / (2 * eps255) + 0.5).clamp(0, 1)


def _flip_text(who: str, before: dict[str, float], after: dict[str, float]) -> str:
    first, then = next(iter(before)), next(iter(after))
    return f"{who} kept '{first}'" if first == then else f"{who} flipped from '{first}' to '{then}'"


def run_attack(models: DemoModels, image: Any, attack: str, eps255: Any, steps: Any, target: str = "student",
               *, transfer_to: str | None = None, on_step: Callable[[int, int], None] | None = None) -> DemoResult:
    """Attack ``target`` (student, teacher or the ONNX model; the ONNX model only with Square, which needs no
    gradients) on ``image`` and predict with the student and the teacher on the clean and adversarial images.
    ``transfer_to`` names the model the verdict is about when the attack was crafted on another one."""
    eps, n_steps, notes = clamp_settings(eps255, steps)
    if target == "onnx" and attack != "Square":
        raise DemoInputError("the ONNX model is attacked through queries only: choose Square (gradient attacks "
                             "need the PyTorch model)")
    x = to_tensor(read_image(image), models.image_size)
    x_adv = craft(models.model(target), x, attack, eps, n_steps, on_step=on_step)
    linf = float(torch.round((x_adv - x).abs() * 255).max())
    predictions: dict[str, dict[str, float]] = {
        "student clean": top_k(models.student, x, models.labels),
        "student adversarial": top_k(models.student, x_adv, models.labels),
    }
    others = [("teacher", models.teacher)] + ([("onnx", models.model("onnx"))] if target == "onnx" else [])
    for who, model in others:
        if model is not None:
            predictions[f"{who} clean"] = top_k(model, x, models.labels)
            predictions[f"{who} adversarial"] = top_k(model, x_adv, models.labels)
    name = f"{attack}-{n_steps}" if attack in ("PGD", "CW") else attack
    parts = [_flip_text(who, predictions[f"{who} clean"], predictions[f"{who} adversarial"])
             for who in ("student", "teacher", "onnx") if f"{who} clean" in predictions]
    if transfer_to:  # the model the attack is meant to fool comes first
        parts.sort(key=lambda text: not text.startswith(transfer_to))
    crafted = f" crafted on the {target}" if transfer_to and transfer_to != target else ""
    verdict = f"{parts[0]} under {name} at eps {eps}/255{crafted}" + "".join(f"; {p}" for p in parts[1:])
    return DemoResult(clean=_enlarge(x), adversarial=_enlarge(x_adv),
                      perturbation=_enlarge(perturbation_image(x_adv, x, eps)), predictions=predictions,
                      verdict=verdict, linf=linf, notes=notes)


__all__ = ["DemoModels", "DemoResult", "DemoInputError", "run_attack", "read_image", "to_tensor", "craft",
           "clamp_settings", "quantize_in_ball", "top_k", "ATTACKS", "TARGETS", "EPS_RANGE", "STEPS_RANGE",
           "MAX_PIXELS"]
