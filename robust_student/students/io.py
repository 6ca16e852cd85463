"""The one saved-student format, read by evaluation, export, model cards and the Hub.

A folder with

* ``model.safetensors`` — the student's state dict (metadata names the architecture it belongs to);
* ``config.json`` — everything needed to rebuild and trust it, as plain JSON: ``architecture`` (registered name,
  factory arguments without download flags, embedding size, image size), ``class_names`` and ``labels``,
  ``normalization`` (mean/std inside the model), ``input`` (layout, channels, size, [0, 1] range),
  ``logit_scale``, the ``teacher`` it was distilled from and every teacher ``role`` (spec, arguments, licence:
  ``license``, ``license_url``, ``commercial_use``), and, for a trained student, the ``method``, ``threat``,
  the run's full ``config`` and its validation ``history``.

Nothing is unpickled and nothing is downloaded on load: the backbone is built at random init from the spec and
its weights come from the safetensors file, so loading a downloaded student is safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..fileio import read_json, read_safetensors, state_mismatch, write_json, write_safetensors
from . import DOWNLOAD_ARGS, create_student
from .base import Student

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "robust_student/student"
FORMAT_VERSION = 1
ARCH_KEY = "robust_student.architecture"  # safetensors metadata: which architecture the weights are for


def student_config(student: Student, *, teachers: Mapping[str, Mapping[str, Any]] | None = None,
                   run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``student``: ``teachers`` maps roles to provenance dicts (default: the teacher the
    student was built from); ``run`` may hold ``method``, ``threat``, ``config`` and ``history`` of its training."""
    from .. import __version__

    spec = student.spec
    mean, std = student.mean_std
    size = int(spec["image_size"])
    roles = {role: dict(p) for role, p in (teachers or {}).items()}
    if not roles and student.teacher_provenance:
        roles = {"teacher": dict(student.teacher_provenance)}
    primary = next(iter(roles.values()), {})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "robust_student_version": __version__,
        "architecture": {"name": spec["name"],
                         "args": {k: v for k, v in spec.get("args", {}).items() if k not in DOWNLOAD_ARGS},
                         "embed_dim": int(spec["embed_dim"]), "image_size": size},
        "num_classes": student.num_classes, "class_names": list(student.classnames), "labels": student.labels,
        "normalization": {"mean": mean, "std": std},
        "input": {"layout": "NCHW", "channels": len(mean), "height": size, "width": size, "range": [0.0, 1.0],
                  "dtype": "float32"},
        "logit_scale": float(student.logit_scale),
        "teacher": primary, "teachers": roles,
        **dict(run or {}),
    }


def save_student(student: Student, directory: str | Path, *, teachers: Mapping[str, Mapping[str, Any]] | None = None,
                 run: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (see :func:`student_config`) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = student_config(student, teachers=teachers, run=run)
    write_safetensors(directory / WEIGHTS, student.state_dict(),
                      metadata={ARCH_KEY: student.spec["name"], "format": FORMAT})
    write_json(directory / CONFIG, config)
    return directory


def read_student_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a saved student folder, checked to be one."""
    directory = Path(directory)
    if not directory.is_dir() or not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        what = "a folder" if directory.is_dir() else ("a file" if directory.exists() else "no such path")
        raise FileNotFoundError(f"{directory} is not a saved student ({what}): a saved student is a folder with "
                                f"{CONFIG} and {WEIGHTS}, written by fit() or save_student()")
    config = read_json(directory / CONFIG, "saved student's config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{directory / CONFIG} is not a robust_student student config (format {found!r}, "
                         f"expected {FORMAT!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG} has format version {config['format_version']}; this robust_student "
                         f"reads up to {FORMAT_VERSION}: upgrade robust-student")
    return config


HUB_PREFIX = "hf-hub:"


def fetch_from_hub(spec: str, files: tuple[str, ...] = (CONFIG, WEIGHTS), *, revision: str | None = None,
                   cache_dir: str | Path | None = None, token: str | None = None) -> Path:
    """The local snapshot folder of ``hf-hub:org/name`` holding ``files`` (downloaded once into the Hugging Face
    cache; with ``HF_HUB_OFFLINE=1`` read from the cache only). ``HF_ENDPOINT`` is read at call time."""
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id = spec.removeprefix(HUB_PREFIX)
    if repo_id.count("/") != 1:
        raise ValueError(f"{spec!r}: a Hub student is written hf-hub:org/name")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        folder = snapshot_download(repo_id, allow_patterns=list(files), revision=revision, cache_dir=cache_dir,
                                   token=token, endpoint=endpoint.rstrip("/") if endpoint else None)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{repo_id} is not in the local Hugging Face cache and the Hub cannot be reached "
                                "(offline?): download it once with network access") from None
    except HfHubHTTPError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FileNotFoundError(f"cannot fetch {repo_id} from the Hub ({first})") from None
    return Path(folder)


def saved_student_folder(spec: str | Path) -> Path:
    """The folder of the saved student ``spec`` names: a saved-student folder, a run folder holding one in
    ``student/`` (written by ``fit``), a built-in zoo entry (``fmnist-clip-robust``: ``robust-student list
    teachers``) or ``hf-hub:org/name`` (fetched into the Hugging Face cache). Anything else is refused in one line."""
    from ..teachers.builtin import WEIGHTS_DIR, ZOO

    text = str(spec)
    if text.startswith(HUB_PREFIX):
        return fetch_from_hub(text)
    if text in ZOO:
        return WEIGHTS_DIR / text
    path = Path(spec).expanduser()
    for folder in (path, path / "student"):
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise FileNotFoundError(f"{spec}: neither a saved student (a folder with {CONFIG} and {WEIGHTS}), a run folder "
                            f"with one in student/ (written by robust-student fit), a built-in one ({', '.join(ZOO)}) "
                            "nor hf-hub:org/name")


def check_init_source(spec: str, student: str, student_args: Mapping[str, Any]) -> Path:
    """The folder of ``student_init`` ``spec``, checked (before any data loads) to hold a ``student`` built with
    the same ``student_args`` it records: anything else could not be loaded into this run's student."""
    folder = saved_student_folder(spec)
    arch = read_student_config(folder)["architecture"]
    if arch["name"] != student:
        raise ValueError(f"student_init {spec} is a {arch['name']} and this run's student is {student}: set "
                         f"student={arch['name']} (or start from a {student})")
    recorded = arch.get("args", {})
    differing = {k: v for k, v in student_args.items() if k not in DOWNLOAD_ARGS and recorded.get(k, v) != v}
    if differing:
        raise ValueError(f"student_init {spec} was built with {recorded} and student_args ask for {differing}: "
                         "drop those student_args (or start from a student built with them)")
    return folder


def init_from_saved(student: Student, folder: str | Path) -> Student:
    """Load the image encoder (backbone, projection, normalisation) of the saved student in ``folder`` into
    ``student``; its classifier and logit scale (this run's classes) are kept. A state that does not fit says
    so in one line."""
    kept = ("classifier", "logit_scale")
    state, _ = read_safetensors(Path(folder) / WEIGHTS, device=str(student.mean.device))
    state = {k: v for k, v in state.items() if k not in kept}
    expected = {k: v for k, v in student.state_dict().items() if k not in kept}
    mismatch = state_mismatch(expected, state)
    if mismatch is not None:
        raise ValueError(f"student_init {folder} does not fit this run's student: {mismatch}")
    student.load_state_dict(state, strict=False)
    return student


def load_student(directory: str | Path, map_location: str = "cpu") -> Student:
    """Rebuild a student saved by :func:`save_student` (a folder, or ``"hf-hub:org/name"`` fetched into the
    Hugging Face cache): built from its spec (never downloading a backbone), then its weights (strict). A spec
    and weights that do not fit say so in one line."""
    if isinstance(directory, str) and directory.startswith(HUB_PREFIX):
        directory = fetch_from_hub(directory)
    directory = Path(directory)
    config = read_student_config(directory)
    arch = config["architecture"]
    state, metadata = read_safetensors(directory / WEIGHTS, device=map_location)
    try:
        student = create_student(arch["name"], embed_dim=arch["embed_dim"], num_classes=config["num_classes"],
                                 image_size=arch["image_size"], logit_scale=config.get("logit_scale"),
                                 **arch.get("args", {}))
    except (TypeError, KeyError) as err:
        raise ValueError(f"{directory / CONFIG}: cannot rebuild architecture {arch.get('name')!r}: {err}") from None
    mismatch = state_mismatch(student.state_dict(), state)
    if mismatch is not None:
        weights_for = metadata.get(ARCH_KEY)
        for_text = f"the weights are for {weights_for}" if weights_for else "the weights do not fit it"
        raise ValueError(f"{directory}: {CONFIG} says {arch['name']}; {for_text}: {mismatch}")
    student.load_state_dict(state, strict=True)
    student.classnames = list(config.get("class_names", []))
    student.labels = list(config.get("labels", []))
    student.teacher_provenance = dict(config.get("teacher", {}))
    return student.eval()


__all__ = ["save_student", "load_student", "saved_student_folder", "check_init_source", "init_from_saved",
           "read_student_config", "student_config", "fetch_from_hub", "WEIGHTS",
           "CONFIG", "FORMAT", "HUB_PREFIX"]
