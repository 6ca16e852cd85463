"""The Gradio app: clean vs attacked, teacher vs student, PyTorch vs the deployed ONNX model.

    from robust_student.demo import build_demo, launch
    demo = build_demo(student="runs/quickstart/hub", teacher="fmnist-clip")   # a gr.Blocks, to embed
    launch(demo)                                                             # 127.0.0.1 unless told otherwise

Three tabs: **Attack** (upload or pick an image, choose the attack, eps in /255, steps and whom to attack; see
the clean and adversarial images and the amplified perturbation, both models' top-3 predictions on both
images and a one-line verdict), **Robustness report** (the student's saved ``robustness.json`` and eps curve)
and **Transfer** (an attack crafted on the teacher, applied to the student). Every image is PNG: WebP, gradio's
default, is lossy and would destroy the perturbation. Errors are shown in the page, which keeps serving; a
queue runs at most ``concurrency`` attacks at once and holds at most ``max_queue`` waiting ones.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from robust_student import load_student
from robust_student.evaluation import RobustnessReport

from .attack import (ATTACKS, EPS_RANGE, MAX_PIXELS, STEPS_RANGE, DemoInputError, DemoModels, read_image,
                     run_attack)

logger = logging.getLogger(__name__)

DEFAULT_TEACHER = "fmnist-clip"
N_EXAMPLES = 6
LABEL_KEYS = ("student clean", "student adversarial", "teacher clean", "teacher adversarial")
# The upload is a file the demo decodes itself, so a file that is not an image gets the demo's own message
# (an image component would fail inside gradio before the demo could say what is wrong).
UPLOAD_LABEL = "image file (PNG, JPEG, TIFF, BMP; grayscale, RGBA and 16-bit are converted)"


def load_models(student: Any, teacher: Any = DEFAULT_TEACHER, onnx: Any = None) -> tuple[DemoModels, Path | None]:
    """The models of the page and the student's folder (for its report): ``student`` is a saved-student folder,
    an ``hf-hub:org/name`` id or a Student; ``teacher`` a teacher name or a Teacher (its classes are set to the
    student's); ``onnx`` an ONNX file (run with ``robust_student.export.OnnxStudent``) or a callable."""
    from robust_student.data.base import resolve_prompts
    from robust_student.students.io import saved_student_folder

    folder = None
    if isinstance(student, (str, Path)):
        folder = saved_student_folder(student)
        student = load_student(folder)
    labels = student.labels
    teacher_model = None
    if teacher is not None:
        from robust_student.teachers import create_teacher

        teacher_model = create_teacher(teacher) if isinstance(teacher, str) else teacher
        prompts = resolve_prompts(None, labels)
        teacher_model.set_classes(prompts.classnames, prompts.templates)
    runner = None
    if onnx is not None:
        runner = onnx if callable(onnx) else _onnx_runner(Path(onnx))
    return DemoModels(student=student.eval(), labels=labels, teacher=teacher_model, onnx=runner), folder


def _onnx_runner(path: Path) -> Any:
    """A numpy -> logits function over an exported student (the export package's runner)."""
    from robust_student.export import OnnxStudent

    model = OnnxStudent(path)
    return model.logits


def example_images(models: DemoModels, n: int = N_EXAMPLES) -> list[str]:
    """A few test images as PNG files (Fashion-MNIST's when the student was trained on it; else none)."""
    from robust_student.data import build_dataset

    try:
        data = build_dataset("fashion-mnist", "test")
    except (FileNotFoundError, ValueError):
        return []
    if [c.lower() for c in data.labels] != [c.lower() for c in models.labels]:
        return []
    folder = Path(tempfile.mkdtemp(prefix="robust_student_demo_"))
    paths = []
    for index in range(n):
        item = data[index * 997 % len(data)]
        array = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = folder / f"{data.labels[item['label']].replace('/', '-')}_{index}.png"
        from PIL import Image

        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


class PngOutbox:
    """Each answer's images as PNG files of their own, written whole before gradio sees them.

    Handing gradio arrays makes it write each image to a file named by its content; two concurrent requests
    with the same image (the same example's clean view) rewrite that file in place while the first is being
    served, and its download arrives empty. A file per answer, which gradio copies into its cache atomically,
    has no such race. Files older than ``keep_s`` are removed at the next write, so the folder stays small.
    """

    def __init__(self, keep_s: float = 600.0) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="robust_student_demo_out_"))
        self.keep_s = keep_s

    def write(self, array: np.ndarray) -> str:
        from PIL import Image

        self._prune()
        path = self.folder / f"{uuid.uuid4().hex}.png"
        staging = path.with_suffix(".part")
        Image.fromarray(array).save(staging, format="PNG")
        staging.replace(path)
        return str(path)

    def _prune(self) -> None:
        cutoff = time.time() - self.keep_s
        for old in self.folder.glob("*.png"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:  # removed by a concurrent prune
                pass


def report_markdown(folder: Path | None) -> tuple[str, str | None]:
    """The Robustness-report tab: the saved report as Markdown and the eps-curve image, or what is missing."""
    if folder is None:
        return "No saved folder was given, so there is no report to show.", None
    from robust_student.teachers.builtin import recorded_report

    evidence = folder / "robustness.json"
    if evidence.is_file():
        report = json.loads(evidence.read_text(encoding="utf-8")).get("robustness")
    else:  # a built-in zoo entry ships its evaluation in training.json
        report = recorded_report(folder)
        if report is None:
            return (f"{folder} has no robustness.json: write the folder with `save_pretrained` (or run "
                    "`make quickstart`) to see its report here."), None
    text = (RobustnessReport.from_dict(report).to_markdown() if report
            else "The saved folder records no robustness evaluation.")
    curve = folder / "eps_curve.png"
    return text, str(curve) if curve.is_file() else None


def build_demo(student: Any = None, teacher: Any = DEFAULT_TEACHER, onnx: Any = None, *,
               examples: list[str] | None = None, concurrency: int = 2, max_queue: int = 16) -> Any:
    """The Gradio Blocks of the demo (see the module docstring); ``student=None`` opens on the best shipped
    student (:func:`default_student`)."""
    import gradio as gr

    if student is None:
        student = default_student()
    models, folder = load_models(student, teacher, onnx)
    examples = example_images(models) if examples is None else examples
    threat = (getattr(models.student, "spec", {}) or {})
    default_eps = _default_eps(folder)
    targets = ["student"] + (["teacher"] if models.teacher is not None else []) + (["onnx"] if models.onnx else [])
    description = (f"Student `{threat.get('name', 'student')}` ({models.image_size}x{models.image_size} px, "
                   f"{len(models.labels)} classes){' and teacher `' + models.teacher.name + '`' if models.teacher else ''}"
                   f". eps is in 1/255 steps on [0, 1] pixels ({EPS_RANGE[0]}-{EPS_RANGE[1]}); steps "
                   f"{STEPS_RANGE[0]}-{STEPS_RANGE[1]}. Uploads are resized to the model's input size; images above "
                   f"{MAX_PIXELS // 1_000_000} megapixels are refused. Images are PNG, so the perturbation you "
                   "download is exactly the one the models saw.")
    outbox = PngOutbox()

    def attack(image: Any, attack_name: str, eps: Any, steps: Any, target: str,
               progress: Any = gr.Progress()) -> tuple[Any, ...]:
        if image is None:
            raise gr.Error("Upload an image or pick an example first.")
        try:
            result = run_attack(models, image, attack_name, eps, steps, target,
                                on_step=lambda step, total: progress((step, total), desc=attack_name))
        except DemoInputError as err:
            raise gr.Error(str(err)) from None
        labels = [result.predictions.get(key) for key in LABEL_KEYS]
        verdict = result.verdict + "".join(f"\n\n_{note}_" for note in result.notes)
        images = (outbox.write(result.clean), outbox.write(result.adversarial), outbox.write(result.perturbation))
        return (*images, *labels, verdict)

    def transfer(image: Any, attack_name: str, eps: Any, steps: Any, progress: Any = gr.Progress()) -> tuple[Any, ...]:
        if models.teacher is None:
            raise gr.Error("The transfer case needs a teacher: start the demo with --teacher NAME.")
        if image is None:
            raise gr.Error("Upload an image or pick an example first.")
        try:
            result = run_attack(models, image, attack_name, eps, steps, "teacher", transfer_to="student",
                                on_step=lambda step, total: progress((step, total), desc=attack_name))
        except DemoInputError as err:
            raise gr.Error(str(err)) from None
        return (outbox.write(result.adversarial), result.predictions["teacher adversarial"],
                result.predictions["student adversarial"], result.verdict)

    with gr.Blocks(title="robust_student: clean vs attacked") as demo:
        gr.Markdown("# Clean vs attacked: does the robust student keep its prediction?\n\n" + description)
        with gr.Tab("Attack"):
            with gr.Row():
                with gr.Column():
                    image = gr.File(type="filepath", file_types=["image"], label=UPLOAD_LABEL)
                    if examples:
                        gr.Examples(examples=examples, inputs=image, label="test images")
                    attack_name = gr.Dropdown(list(ATTACKS), value="PGD", label="attack")
                    eps = gr.Slider(EPS_RANGE[0], EPS_RANGE[1], value=default_eps, step=1, label="eps (x 1/255)")
                    steps = gr.Slider(STEPS_RANGE[0], STEPS_RANGE[1], value=10, step=1, label="steps")
                    target = gr.Radio(targets, value="student", label="attack whom")
                    run = gr.Button("Run the attack", variant="primary")
                with gr.Column():
                    verdict = gr.Markdown(elem_id="verdict")
                    with gr.Row():
                        clean_out = gr.Image(format="png", label="clean", interactive=False)
                        adv_out = gr.Image(format="png", label="adversarial", interactive=False)
                        delta_out = gr.Image(format="png", label="perturbation (amplified)", interactive=False)
                    labels = []
                    for pair in (LABEL_KEYS[:2], LABEL_KEYS[2:]):  # student, then teacher: clean | adversarial
                        with gr.Row():
                            labels += [gr.Label(num_top_classes=3, label=key) for key in pair]
            run.click(attack, [image, attack_name, eps, steps, target],
                      [clean_out, adv_out, delta_out, *labels, verdict], api_name="attack")
        with gr.Tab("Robustness report"):
            text, curve = report_markdown(folder)
            gr.Markdown(text)
            if curve:
                gr.Image(curve, format="png", label="robust accuracy vs eps", interactive=False)
        with gr.Tab("Transfer"):
            gr.Markdown("An attack crafted on the teacher, applied to the student: does a perturbation that fools "
                        "the teacher also fool the student?")
            with gr.Row():
                with gr.Column():
                    t_image = gr.File(type="filepath", file_types=["image"], label=UPLOAD_LABEL)
                    if examples:
                        gr.Examples(examples=examples, inputs=t_image, label="test images")
                    t_attack = gr.Dropdown([a for a in ATTACKS if a != "Square"], value="PGD", label="attack")
                    t_eps = gr.Slider(EPS_RANGE[0], EPS_RANGE[1], value=default_eps, step=1, label="eps (x 1/255)")
                    t_steps = gr.Slider(STEPS_RANGE[0], STEPS_RANGE[1], value=10, step=1, label="steps")
                    t_run = gr.Button("Attack the teacher, test the student", variant="primary")
                with gr.Column():
                    t_verdict = gr.Markdown()
                    t_adv = gr.Image(format="png", label="adversarial (crafted on the teacher)", interactive=False)
                    with gr.Row():
                        t_teacher = gr.Label(num_top_classes=3, label="teacher adversarial")
                        t_student = gr.Label(num_top_classes=3, label="student adversarial")
            t_run.click(transfer, [t_image, t_attack, t_eps, t_steps], [t_adv, t_teacher, t_student, t_verdict],
                        api_name="transfer")
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo


def _default_eps(folder: Path | None) -> int:
    """The student's training threat in 1/255 steps (8 when it is not recorded)."""
    try:
        eps = json.loads((folder / "config.json").read_text(encoding="utf-8"))["threat"]["eps"]  # type: ignore[operator]
        return min(max(int(round(float(eps) * 255)), EPS_RANGE[0]), EPS_RANGE[1])
    except (OSError, TypeError, KeyError, ValueError):
        return 8


def default_student() -> Path:
    """The best shipped student: the built-in zoo entry with the highest recorded AutoAttack accuracy."""
    from robust_student.teachers.builtin import WEIGHTS_DIR, best_shipped

    return WEIGHTS_DIR / best_shipped()


def launch(demo: Any, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
           **kwargs: Any) -> tuple[Any, str]:
    """Serve ``demo`` on ``host`` (127.0.0.1: this machine only, unless told otherwise); returns (app, url)."""
    kwargs.setdefault("share", False)
    kwargs.setdefault("quiet", True)
    kwargs.setdefault("ssr_mode", False)
    kwargs.setdefault("show_error", True)  # errors appear in the page
    app, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, **kwargs)
    return app, url


__all__ = ["build_demo", "launch", "load_models", "example_images", "report_markdown", "default_student",
           "read_image"]
