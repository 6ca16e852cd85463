"""RobustDistiller: one object from names (or your own models) to a trained, evaluated robust student.

    d = RobustDistiller(teacher="fmnist-clip", method="rslad", student="resnet_tiny", dataset="fashion-mnist",
                        epochs=3, **{"threat.eps": 0.1})
    student = d.fit()
    report = d.evaluate(["clean", "pgd20"])

Everything the run does is in ``d.config`` (a :class:`DistillConfig`), the single source of truth; recipes
(``robust_student/recipes/*.yaml``) and ``robust-student fit --recipe ... --set key=value`` build the same object.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.state import PartialState
from accelerate.utils import parse_flag_from_env
from torch import nn

from .attacks import get_attack, threat_from_config
from .config import AttackConfig, DataConfig, DistillConfig, EvalConfig, TeacherSpec, ThreatConfig, TrainConfig
from .data import DATASETS, build_dataset, check_training_data
from .evaluation import RobustnessReport, check_request, evaluate_robustness
from .methods import METHODS, Method, create_method
from .students import STUDENTS, Student, create_student, for_classes
from .students.io import check_init_source, init_from_saved
from .teachers import TEACHERS, Teacher, create_teacher
from .training import Trainer, TrainResult, preflight

logger = logging.getLogger(__name__)


def _process_state() -> PartialState:
    """This process's place in the launch, made the way the trainer's ``Accelerator`` will make it.

    ``accelerate launch`` on CPUs sets ``ACCELERATE_USE_CPU``; accelerate's ``AcceleratorState`` honours it, a
    bare ``PartialState()`` does not, and the first state made is the one every later call shares. Without the
    flag a CPU launch saw two lone processes, and the second refused the run folder as "in use".
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
# Sections whose fields may be passed to RobustDistiller as bare keywords (``epochs=3`` -> ``train.epochs``).
SECTIONS: dict[str, type] = {"train": TrainConfig, "threat": ThreatConfig, "attack": AttackConfig, "eval": EvalConfig,
                             "dataset": DataConfig}


def list_recipes() -> list[str]:
    """Names of the recipes that ship with the package (``robust_student/recipes/<name>.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> DistillConfig:
    """A :class:`DistillConfig` from a recipe name (see :func:`list_recipes`) or a YAML file path."""
    path = Path(name_or_path)
    if path.is_file():
        return DistillConfig.from_yaml(path)
    if (RECIPES_DIR / f"{name_or_path}.yaml").is_file():
        return DistillConfig.from_yaml(RECIPES_DIR / f"{name_or_path}.yaml")
    raise ValueError(f"Unknown recipe {str(name_or_path)!r}: not a file, and not one of the packaged recipes "
                     f"({', '.join(list_recipes())})")


def apply_overrides(config: DistillConfig, overrides: dict[str, Any]) -> DistillConfig:
    """Apply keyword overrides: dotted keys (``"threat.eps"``), top-level fields (``method_args={...}``, a section
    as a dict merges into it), or a bare field name of one section (``epochs=3``; names shared with ``train``,
    such as ``batch_size`` and ``seed``, mean the training ones). ``None`` values are dropped so defaults stay
    in effect. Ambiguous names (``eps``: training threat or evaluation?) raise ``ValueError``."""
    top = {f.name for f in dataclasses.fields(DistillConfig)}
    dotted: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key or (key in top and not (key in SECTIONS and isinstance(value, dict))):
            dotted[key] = value
        elif key in SECTIONS:
            dotted.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
            if "train" in owners:  # batch_size, seed: the training loop's (write eval.batch_size for the other)
                owners = ["train"]
            if len(owners) != 1:
                where = f"it is a field of {owners}" if owners else "no config section has it"
                raise ValueError(f"Cannot place override {key!r}: {where}. Use a dotted name such as "
                                 f"**{{'{(owners or ['train'])[0]}.{key}': ...}}. Top-level fields: {sorted(top)}")
            dotted[f"{owners[0]}.{key}"] = value
    return config.with_overrides(dotted) if dotted else config


class RobustDistiller:
    """Distil ``teacher`` into ``student`` with ``method`` on ``dataset``; the facade over the whole SDK.

    Args:
        teacher: a registered teacher name/spec (:func:`list_teachers`) or a :class:`Teacher` instance, which
            fills the method's first teacher role; or a dict of roles, ``{"adv": "fmnist-clip-fare",
            "clean": "fmnist-clip"}`` (values: names or :class:`TeacherSpec` dicts), which sets
            ``config.teachers``.
        method: a registered method name (:func:`list_methods`).
        student: a registered student name (:func:`list_students`) or a :class:`Student` instance.
        dataset: a dataset spec (:func:`list_datasets`), e.g. ``"fashion-mnist"``, ``"imagefolder:/data/x"``.
        config: a starting :class:`DistillConfig` (default: the defaults).
        **overrides: config overrides, see :func:`apply_overrides` (``epochs=3``, ``**{"threat.eps": "4/255"}``,
            ``method_args={"beta": 3}``).
    """

    def __init__(self, teacher: str | Teacher | dict[str, Any] | None = None, method: str | None = None,
                 student: str | Student | None = None, dataset: str | DataConfig | None = None, *,
                 config: DistillConfig | None = None, **overrides: Any) -> None:
        self._teacher = teacher if isinstance(teacher, nn.Module) else None
        self._student = student if isinstance(student, nn.Module) else None
        names: dict[str, Any] = {"method": method, "dataset": dataset}
        if isinstance(teacher, dict):
            roles = {role: TeacherSpec.coerce(spec).to_dict() for role, spec in teacher.items()}
            names["teachers"] = roles
            names["teacher"] = next(iter(roles.values()))["name"] if roles else None
        else:
            names["teacher"] = (getattr(teacher, "name", type(teacher).__name__) if self._teacher is not None
                                else teacher)
        names["student"] = (self._student.spec.get("name", type(student).__name__)
                            if isinstance(self._student, Student) else student)
        if isinstance(dataset, DataConfig):
            names["dataset"] = dataset.to_dict()
        self._config = apply_overrides(config or DistillConfig(), {**names, **overrides})
        self._validate()
        self.history: list[dict[str, Any]] = []
        self.result: TrainResult | None = None
        self.report: RobustnessReport | None = None  # the last evaluate()'s
        self.onnx: Path | None = None  # the last export_onnx's file and report (FP32; *_int8 for INT8)
        self.export_report: Any = None
        self.onnx_int8: Path | None = None
        self.export_report_int8: Any = None

    @classmethod
    def from_config(cls, recipe: str | Path, **overrides: Any) -> "RobustDistiller":
        """Build from a recipe name or YAML path, with optional keyword overrides."""
        return cls(config=load_recipe(recipe), **overrides)

    @property
    def config(self) -> DistillConfig:
        """The run's complete configuration (a copy is made by every override, so this one is stable)."""
        return self._config

    @property
    def student(self) -> Student | None:
        """The student being trained (``None`` before :meth:`fit` unless one was passed in)."""
        return self._student

    def fit(self, resume: bool = False, overwrite: bool | None = None) -> Student:
        """Train the student; with ``resume`` continue from the newest intact checkpoint in ``train.output_dir``.

        A folder that already holds a run is refused unless ``resume`` or ``overwrite`` (default
        ``train.overwrite``); the old run is removed only once the new one has committed a checkpoint. Writes
        checkpoints and ``metrics.jsonl`` to ``train.output_dir`` and the final student to
        ``<output_dir>/student`` (:func:`load_student` reads it back).
        """
        if overwrite is not None:
            self._config = self._config.with_overrides({"train.overwrite": bool(overwrite)})
        cfg = self._config
        # Everything that needs no data is checked before any data or teacher loads.
        if _process_state().is_main_process:
            preflight(cfg.train.output_dir, resume=resume, overwrite=cfg.train.overwrite, config=cfg.to_dict())
        train_set = build_dataset(cfg.dataset, "train")
        val_set = build_dataset(cfg.dataset, "val")
        check_training_data(train_set, val_set, cfg)
        prompts = train_set.prompts
        teachers = self._teachers_for_roles(prompts)
        if teachers:
            primary = next(iter(teachers.values()))
        else:  # a method with no teacher role (pgd-at, trades) still classifies with the teacher's text
            primary = self._teacher or create_teacher(cfg.teacher, **cfg.teacher_args)
            primary.set_classes(prompts.classnames, prompts.templates)
        if self._student is None:
            image_size = cfg.dataset.image_size or int(train_set[0]["image"].shape[-1])
            torch.manual_seed(cfg.train.seed)
            self._student = create_student(cfg.student, primary, image_size=image_size, **cfg.student_args)
            if cfg.student_init:
                init_from_saved(self._student, check_init_source(cfg.student_init, cfg.student, cfg.student_args))
            self._student.labels = train_set.labels
        method = create_method(cfg.method, cfg.method_args, threat=cfg.threat, attack=cfg.attack,
                               num_classes=train_set.num_classes, embed_dim=self._student.embed_dim)
        logger.info("fitting %s -> %s with %s on %s", cfg.teacher, cfg.student, cfg.method, cfg.dataset.name)
        self.result = Trainer(cfg, self._student, teachers, method, train_set, val_set).fit(resume=resume)
        self._student, self.history = self.result.student, self.result.history
        return self._student

    def evaluate(self, attacks: Sequence[str] | None = None, *, n_examples: int | None = None,
                 split: str | None = None, classes: Sequence[str] | None = None, **kwargs: Any) -> RobustnessReport:
        """Evaluate the student under ``attacks`` (default ``config.eval.attacks``) at ``config.eval``'s threat.

        ``classes`` (label names): evaluate on those classes only, scored through the teacher's text encoder
        (:func:`~robust_student.students.for_classes`) - zero-shot to classes the student never trained on when
        it was fitted with ``dataset.classes`` naming the others. Extra keyword arguments go to
        :func:`evaluate_robustness` (``checks=False``, ``attack_options=...``).
        """
        if self._student is None:
            raise RuntimeError("There is no student to evaluate yet: call fit() first (or pass student=...)")
        ev = self._config.eval
        kwargs.setdefault("threat", ev.threat)
        kwargs.setdefault("seed", ev.seed)  # which test images (a seeded subset); a caller may choose another
        attacks = list(attacks or ev.attacks)
        threat = kwargs["threat"]
        check_request(attacks, threat_from_config(threat) if isinstance(threat, ThreatConfig) else threat,
                      n_examples=n_examples or ev.n_examples, batch_size=ev.batch_size)
        model, model_name = self._student, f"{self._config.student} ({self._config.method})"
        data_config, dataset_name = self._config.dataset, self._config.dataset.name
        if classes is not None:
            data_config = DataConfig.from_dict({**data_config.to_dict(), "classes": list(classes)})
        data = build_dataset(data_config, split or ev.split)
        if classes is not None:
            model = for_classes(self._student, self._text_teacher(), data.prompts.classnames, data.prompts.templates,
                                labels=data.labels)
            model_name += ", zero-shot through the teacher's text encoder"
            dataset_name += f" classes {', '.join(data.labels)}"
        report = evaluate_robustness(
            model, data, attacks=attacks, n_examples=n_examples or ev.n_examples,
            batch_size=ev.batch_size, model_name=model_name, dataset_name=dataset_name, **kwargs,
        )
        if classes is None:  # the report the model card shows (a held-out-class one is not the model's)
            self.report = report
        return report

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> Path:
        """Write the Hub-ready folder (weights, config, ONNX when exported, robustness.json, eps curve, model
        card) with :func:`robust_student.model_cards.save_pretrained` (the ``[hub]`` extra); the card's numbers
        are the last :meth:`evaluate` report unless ``report=`` is given."""
        from .model_cards import save_pretrained  # an application of the library: imported only when used

        source: Student | Path | None = self._student
        if self.result is not None and (Path(self.result.output_dir) / "student").is_dir():
            source = Path(self.result.output_dir) / "student"  # keeps the run's config and history
        if source is None:
            raise RuntimeError("There is no student to save yet: call fit() first (or pass student=...)")
        kwargs.setdefault("report", self.report)
        for key in ("export_report", "export_report_int8", "onnx", "onnx_int8"):
            if getattr(self, key, None) is not None:
                kwargs.setdefault(key, getattr(self, key))
        return save_pretrained(source, directory, **kwargs)

    def push_to_hub(self, repo_id: str, *, directory: str | Path | None = None, private: bool | None = None,
                    token: str | None = None, commit_message: str | None = None) -> str:
        """Save the Hub-ready folder (to ``directory``, default ``<output_dir>/hub``) and upload it to
        ``repo_id``; private by default when a teacher's licence is non-commercial or unknown."""
        from .model_cards import push_to_hub

        folder = Path(directory or Path(self._config.train.output_dir) / "hub")
        self.save_pretrained(folder, repo_id=repo_id, overwrite=True)
        return push_to_hub(folder, repo_id, private=private, token=token, commit_message=commit_message)

    def export_onnx(self, path: str | Path, *, quantize: str | None = None, validate: bool = True,
                    n_examples: int | None = None, allow_failed: bool = False, overwrite: bool = False,
                    **kwargs: Any) -> Any:
        """Export the student to the ONNX file ``path``, validated under attack before it is written.

        Validation runs at ``config.eval``'s threat on ``n_examples`` (default 200) of the evaluation split;
        ``quantize="int8"`` calibrates on the training split. The file is moved into place only when validation
        passes (``allow_failed=True`` writes it anyway, marked failed). Other keyword arguments go to
        ``robust_student.export.export_onnx``; returns its ``ExportResult`` (``.report`` is the ``ExportReport``).
        """
        if self._student is None:
            raise RuntimeError("There is no student to export yet: call fit() first (or pass student=...)")
        from .export import export_onnx  # the facade reaches the export application lazily, only here
        from .students.io import read_student_config

        cfg = self._config
        saved = Path(self.result.output_dir) / "student" if self.result is not None else None
        record = read_student_config(saved) if saved is not None and (saved / "config.json").is_file() else None
        if n_examples is not None:
            kwargs["n_examples"] = n_examples
        result = export_onnx(
            self._student, path, quantize=quantize, allow_failed=allow_failed, overwrite=overwrite,
            validate=build_dataset(cfg.dataset, cfg.eval.split) if validate else None,
            calibration=build_dataset(cfg.dataset, "train") if quantize else None,
            threat={"norm": cfg.eval.norm, "eps": cfg.eval.eps}, method=cfg.method, config=record,
            dataset_name=f"{cfg.dataset.name} ({cfg.eval.split})", **kwargs)
        suffix = "_int8" if quantize == "int8" else ""  # what save_pretrained puts in the Hub-ready folder
        setattr(self, f"onnx{suffix}", Path(path))
        setattr(self, f"export_report{suffix}", result.report)
        return result

    def __repr__(self) -> str:
        c = self._config
        return (f"RobustDistiller(teacher={c.teacher!r}, method={c.method!r}, student={c.student!r}, "
                f"dataset={c.dataset.name!r}, output_dir={c.train.output_dir!r})")

    # -- helpers -----------------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Fail on a typo or a meaningless value now, not after the dataset has loaded: every name resolves, the
        method (with its ``method_args``, threat and attack loop) builds, every role has a teacher, and the
        evaluation attacks exist."""
        cfg = self._config
        method_cls: type[Method] = METHODS.get(cfg.method)
        create_method(cfg.method, cfg.method_args, threat=cfg.threat, attack=cfg.attack)
        DATASETS.resolve(cfg.dataset.name)
        if self._teacher is None:
            TEACHERS.resolve(cfg.teacher)
        if self._student is None:
            STUDENTS.resolve(cfg.student)
            if cfg.student_init:
                check_init_source(cfg.student_init, cfg.student, cfg.student_args)
        elif cfg.student_init:
            raise ValueError("student_init starts a student built by the run; a Student was passed in: load its "
                             "weights yourself, or pass the student's name")
        unknown_roles = sorted(set(cfg.teachers) - set(method_cls.teacher_roles))
        if unknown_roles:
            raise ValueError(f"teachers names role(s) {unknown_roles} that method {cfg.method!r} does not use; its "
                             f"roles are {list(method_cls.teacher_roles) or 'none'}")
        for index, role in enumerate(method_cls.teacher_roles):
            spec = cfg.teacher_spec(role, first_role=index == 0)
            if spec is None:
                raise ValueError(f"method {cfg.method!r} needs a teacher for role {role!r} (roles: "
                                 f"{list(method_cls.teacher_roles)}); set it with teachers={{'{role}': '<name>'}}")
            if index > 0 or role in cfg.teachers or self._teacher is None:
                TEACHERS.resolve(spec.name)
        for attack in cfg.eval.attacks:
            if attack != "clean":
                get_attack(attack)
        if cfg.train.eval_examples > 0:
            get_attack(cfg.train.val_attack)

    def _text_teacher(self) -> Teacher:
        """The teacher whose text embeddings are the student's classifier: the one passed in, else the method's
        first role (``teacher`` / ``teachers``)."""
        cfg = self._config
        if self._teacher is not None:
            return self._teacher
        roles = METHODS.get(cfg.method).teacher_roles
        spec = cfg.teacher_spec(roles[0], first_role=True) if roles else TeacherSpec(name=cfg.teacher)
        return create_teacher(spec.name, **{**cfg.teacher_args, **spec.args})

    def _teachers_for_roles(self, prompts: Any) -> dict[str, Teacher]:
        """One teacher per method role (``teacher_args`` reach every role; a role's own ``args`` win), with the
        dataset's classes set."""
        cfg = self._config
        roles = METHODS.get(cfg.method).teacher_roles
        teachers: dict[str, Teacher] = {}
        for index, role in enumerate(roles):
            spec = cfg.teacher_spec(role, first_role=index == 0)
            if index == 0 and self._teacher is not None and role not in cfg.teachers:
                teachers[role] = self._teacher
            else:
                teachers[role] = create_teacher(spec.name, **{**cfg.teacher_args, **spec.args})
            teachers[role].set_classes(prompts.classnames, prompts.templates)
        return teachers


__all__ = ["RobustDistiller", "load_recipe", "list_recipes", "apply_overrides"]
