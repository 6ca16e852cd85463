"""Dataclass configs: one place that says what a run is, round-trippable through dicts and YAML.

Every config field is type-checked (and coerced where the meaning is unambiguous: ``"8/255"`` -> float, ``2.0``
-> 2) when the config is built, so a bad value fails at construction in one line that names the field, e.g.
``train.epochs must be an integer, got 1.5``. Every config has ``to_dict()`` / ``from_dict()``; unknown keys raise
a :class:`ConfigError` naming the valid ones. Radii may be written as fractions (``eps: "8/255"``) and are stored
as floats in pixel units ([0, 1] images).

The threat (:class:`ThreatConfig`: norm and radius) is separate from the loop that searches it
(:class:`AttackConfig`: steps, step size, start, the student's mode): evaluation attacks bring their own loop
settings, so an evaluation takes only a threat.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

logger = logging.getLogger(__name__)

C = TypeVar("C", bound="ConfigBase")

NORMS = ("linf", "l2")
SPLITS = ("train", "val", "test")
TRAINABLE = ("none", "head", "all")
MAX_LINF_EPS = 1.0     # the whole [0, 1] pixel range: a larger L-inf radius means nothing
WARN_LINF_EPS = 0.5    # L-inf 0.5 already reaches the mid-grey image from any image


class ConfigError(ValueError):
    """A config value that cannot mean anything; ``key`` is the dotted field name (``train.epochs``)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key} {problem}" if key else problem)

    def within(self, section: str) -> "ConfigError":
        """The same error one level up (``epochs`` -> ``train.epochs``)."""
        return ConfigError(f"{section}.{self.key}" if self.key else section, self.problem)


def parse_number(value: Any, *, name: str = "value") -> float:
    """Parse ``0.03``, ``"0.03"``, ``"1e-3"``, ``"8/255"`` or ``"8 / 255"`` into a finite float."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            try:
                number = float(value)
            except ValueError:
                number = None
    if number is None or not math.isfinite(number):
        raise ConfigError(name, f"must be a number or a fraction like '8/255', got {value!r}")
    return number


def check_radius(norm: str, eps: float, *, name: str = "eps") -> None:
    """Refuse a radius that makes robust accuracy meaningless: negative, or above 1 for L-inf (warn above 0.5)."""
    if eps < 0:
        raise ConfigError(name, f"must be >= 0, got {eps:g}")
    if norm == "linf" and eps > MAX_LINF_EPS:
        raise ConfigError(name, f"must be <= 1 for L-inf on [0, 1] pixels, got {eps:g} (did you mean {eps:g}/255?)")
    if norm == "linf" and eps > WARN_LINF_EPS:
        logger.warning("%s = %g: an L-inf radius above 0.5 reaches the mid-grey image from any image; accuracy "
                       "there says nothing about robustness", name, eps)


# -- the type checker -------------------------------------------------------------------------------------------

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(hint) else "")
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (dict, Mapping):
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        return f"a {hint.__name__} mapping"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, X | None, list[X], dict[str, X], a config class, Any).

    Raises :class:`ConfigError` for ``key`` when the value does not have that type. Conversions are the
    unambiguous ones only: integral floats and integer strings to int, numeric and fraction strings to float,
    ``"true"``/``"false"`` to bool, a single string to a one-element list of strings.
    """
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return coerce_value(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"must be {_describe(hint)}, got {_got(value)}")
    if origin in (list, tuple):
        (item,) = args[:1] or (Any,)
        if isinstance(value, str) and item is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be {_describe(hint)}, got {_got(value)}")
        return [coerce_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping, got {_got(value)}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): coerce_value(v, item, f"{key}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        try:
            return hint.coerce(value)
        except ConfigError as err:
            raise err.within(key) from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[str(value).strip().lower()]
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif hint is float:
        if not isinstance(value, bool):
            try:
                return parse_number(value, name=key)
            except ConfigError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value  # a type this checker does not know: left to the field's own validation
    raise ConfigError(key, f"must be {_describe(hint)}, got {_got(value)}")


class ConfigBase:
    """Mixin for dataclass configs: typed fields checked at construction, strict ``from_dict``, plain ``to_dict``.

    Subclasses put value checks (ranges, choices) in :meth:`validate`, which runs after the type check.
    ``moved_keys`` maps keys that used to live here to where they live now (for a helpful unknown-key error).
    """

    moved_keys: typing.ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, coerce_value(getattr(self, f.name), hints[f.name], f.name))
        self.validate()

    def validate(self) -> None:
        """Value checks beyond the types (ranges, choices); raise :class:`ConfigError` naming the field."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None) -> C:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError("", f"{cls.__name__} expects a mapping, got {_got(data)}")
        data = dict(data or {})
        valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = [k for k in data if k not in valid]
        if unknown:
            key = unknown[0]
            if key in cls.moved_keys:
                raise ConfigError(key, f"is not a {cls.__name__} setting any more: write {cls.moved_keys[key]}")
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(key, f"is not a {cls.__name__} key.{hint} Valid keys: {', '.join(valid)}")
        return cls(**data)

    @classmethod
    def coerce(cls: type[C], value: Any) -> C:
        """Build from a dict (or an instance); subclasses may accept a shorthand such as a name."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError("", f"must be a {cls.__name__} mapping, got {_got(value)}")
        return cls.from_dict(value)


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def require_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


def require_at_least(key: str, value: float | None, low: float) -> None:
    """Raise :class:`ConfigError` if ``value`` (None passes) is below ``low``."""
    if value is not None and value < low:
        raise ConfigError(key, f"must be >= {low:g}, got {value!r}")


def require_positive(key: str, value: float) -> None:
    """Raise :class:`ConfigError` unless ``value > 0``."""
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")


def require_between(key: str, value: float, low: float, high: float) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(key, f"must be in [{low:g}, {high:g}], got {value!r}")




# -- the sections -----------------------------------------------------------------------------------------------

@dataclass
class ThreatConfig(ConfigBase):
    """The threat model: an L-inf or L2 ball of radius ``eps`` around [0, 1] images (pixel units)."""

    moved_keys: typing.ClassVar[dict[str, str]] = {
        "steps": "attack.steps", "step_size": "attack.step_size", "random_start": "attack.random_start",
        "init_std": "attack.init_std"}

    norm: str = "linf"
    eps: float = 8 / 255

    def validate(self) -> None:
        self.norm = self.norm.lower()
        require_choice("norm", self.norm, NORMS)
        check_radius(self.norm, self.eps)


@dataclass
class AttackConfig(ConfigBase):
    """The training attack's loop (every method's inner maximisation searches the run's threat with it).

    ``random_start``: ``"normal"`` starts at ``x + init_std * N(0, 1)`` (the ARD/RSLAD/DGHFA training
    convention), ``"uniform"`` samples uniformly in the ball (Madry PGD), ``"none"`` starts at ``x``.
    ``student_mode``: the student's mode while the attack runs, ``"eval"`` (running batch-norm statistics,
    nothing updated by adversarial batches) or ``"train"`` (ARD's reference code); ``None`` takes the method's
    own default (every method's is ``"eval"`` except ARD's).
    """

    steps: int = 10
    step_size: float = 2 / 255
    random_start: str = "normal"
    init_std: float = 0.001
    student_mode: str | None = None

    def validate(self) -> None:
        require_at_least("steps", self.steps, 0)
        require_at_least("step_size", self.step_size, 0)
        require_at_least("init_std", self.init_std, 0)
        require_choice("random_start", self.random_start, ("normal", "uniform", "none"))
        require_choice("student_mode", self.student_mode, (None, "eval", "train"))


@dataclass
class DataConfig(ConfigBase):
    """Which dataset and how to read it. ``name`` is a dataset spec such as ``"imagefolder:/data/CRC100K"``.

    ``image_size``: resize every image to this square size (required when the images differ in size).
    ``max_train_examples``: use only the first N training images (they are in a seeded random order).
    ``classes``: keep only these classes (label names), relabelled 0..k-1 in the dataset's order, in every
    split: train on a subset and evaluate on the others zero-shot (``evaluate(classes=...)``).
    """

    name: str = "fashion-mnist"
    image_size: int | None = None
    prompts: str | None = None
    skip_corrupt: bool = False
    num_workers: int = 0
    max_train_examples: int | None = None
    seed: int = 0
    classes: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific, e.g. {"label_column": "Target"}

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("name", "must name a dataset, e.g. 'fashion-mnist' or 'imagefolder:/data/x'")
        if self.classes is not None:
            if not self.classes:
                raise ConfigError("classes", "is empty; name the classes to keep, or null for all of them")
            if len(set(self.classes)) != len(self.classes):
                raise ConfigError("classes", f"names a class twice: {self.classes}")
        require_at_least("image_size", self.image_size, 1)
        require_at_least("num_workers", self.num_workers, 0)
        require_at_least("max_train_examples", self.max_train_examples, 1)

    @classmethod
    def coerce(cls, value: Any) -> "DataConfig":
        if isinstance(value, str):
            return cls(name=value)
        return super().coerce(value)


@dataclass
class TrainConfig(ConfigBase):
    """Optimisation and bookkeeping for :class:`robust_student.training.Trainer`.

    ``optimizer``: ``"sgd"`` or ``"adamw"``. ``scheduler``: ``"cosine"``, ``"step"`` (lr times ``gamma`` at each
    epoch in ``milestones``) or ``"constant"``, after ``warmup_epochs`` of linear warm-up. ``log_with``:
    accelerate trackers (``["tensorboard"]``, ``["wandb"]`` ...) besides ``metrics.jsonl``. ``overwrite``:
    replace a run already in ``output_dir`` (it is removed only once the new run has committed its first
    checkpoint); without it such a folder is refused unless the fit resumes. ``val_attack``: the named attack
    of the per-epoch validation (at the run's threat) on ``eval_examples`` validation images.
    ``channels_last``: keep the student's 4-D weights in channels-last memory format (timm's
    ``--channels-last``): the same math, faster convolutions (``benchmarks/results/train_speed_cpu.md``);
    saved weights stay ordinary contiguous tensors. ``ema_decay``: keep an exponential moving average of the
    student's weights (timm's ``ModelEmaV3``): validation, the saved student and the returned one are the average
    (weight averaging curbs the robust overfitting of adversarial training); null (the default) trains and saves
    the weights as they are. ``ema_warmup``: timm's ``--model-ema-warmup``, a decay that grows from 0 towards
    ``ema_decay`` (1 - (1 + step)^(-2/3)), so a run from random weights does not carry them into its average;
    off unless true.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    mixed_precision: str = "no"
    grad_accum_steps: int = 1
    grad_clip: float | None = None
    seed: int = 0
    output_dir: str = "runs/default"
    overwrite: bool = False
    log_every: int = 20
    eval_every: int = 1
    eval_examples: int = 500
    val_attack: str = "pgd:10"
    checkpoint_every: int = 200
    cache_teacher_outputs: bool = False
    channels_last: bool = False
    log_with: list[str] = field(default_factory=list)
    ema_decay: float | None = None
    ema_warmup: bool | None = None  # null is off; null, not false, so runs saved before the field still resume

    def validate(self) -> None:
        require_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        require_choice("scheduler", self.scheduler, ("cosine", "step", "constant"))
        require_choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        for key in ("epochs", "batch_size", "grad_accum_steps", "log_every"):
            require_at_least(key, getattr(self, key), 1)
        for key in ("lr", "momentum", "weight_decay", "warmup_epochs", "eval_every", "eval_examples",
                    "checkpoint_every", "gamma"):
            require_at_least(key, getattr(self, key), 0)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("grad_clip", f"must be > 0 (or null for no clipping), got {self.grad_clip!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError("ema_decay", f"must be in (0, 1), e.g. 0.999 (or null for no averaging), got "
                                           f"{self.ema_decay!r}")
        if not self.output_dir:
            raise ConfigError("output_dir", "must name a folder")


@dataclass
class EvalConfig(ConfigBase):
    """Which attacks to run after training, at which radius, on how many test examples."""

    attacks: list[str] = field(default_factory=lambda: ["clean", "fgsm", "pgd20", "cw20", "autoattack"])
    norm: str = "linf"
    eps: float = 8 / 255
    n_examples: int = 1000
    batch_size: int = 256
    split: str = "test"
    seed: int = 0

    def validate(self) -> None:
        self.norm = self.norm.lower()
        require_choice("norm", self.norm, NORMS)
        check_radius(self.norm, self.eps)
        if self.eps == 0 and any(a != "clean" for a in self.attacks):
            raise ConfigError("eps", "is 0, which turns every attack into clean accuracy; set eps > 0 "
                                     "(an eps curve's 0 point is clean accuracy)")
        if not self.attacks:
            raise ConfigError("attacks", "is empty; name at least one attack, e.g. ['clean', 'pgd20']")
        require_at_least("n_examples", self.n_examples, 1)
        require_at_least("batch_size", self.batch_size, 1)
        require_choice("split", self.split, SPLITS)

    @property
    def threat(self) -> ThreatConfig:
        return ThreatConfig(norm=self.norm, eps=self.eps)


@dataclass
class TeacherSpec(ConfigBase):
    """One teacher role: which teacher (a registered name/spec), its factory arguments, and whether it trains.

    ``trainable``: ``"none"`` (frozen: eval mode, no gradients, outside DDP), ``"head"`` (its projection / last
    block trains), ``"all"``, or ``None`` for the method's default (``"head"`` for the roles the method trains,
    such as CIARD's ``adv``, else ``"none"``). ``lr``: the trainable teacher's learning rate (default: the
    method's, else ``train.lr``). A bare string is shorthand for ``TeacherSpec(name=...)``.
    """

    name: str = "fmnist-clip"
    args: dict[str, Any] = field(default_factory=dict)
    trainable: str | None = None
    lr: float | None = None

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("name", "must name a teacher")
        require_choice("trainable", self.trainable, (None, *TRAINABLE))
        require_at_least("lr", self.lr, 0)

    @classmethod
    def coerce(cls, value: Any) -> "TeacherSpec":
        if isinstance(value, str):
            return cls(name=value)
        return super().coerce(value)


@dataclass
class DistillConfig(ConfigBase):
    """A whole distillation run: teacher(s), student, method, data, threat, attack, training and evaluation.

    ``teacher`` fills the method's first teacher role; ``teachers`` names roles explicitly
    (``{"adv": "open_clip:hf-hub:chs20/fare2-clip", "clean": {"name": "fmnist-clip", "trainable": "none"}}``) and
    wins over ``teacher`` for a role it names. ``teacher_args`` go to every role's factory (a role's own
    ``args`` override them). ``method_args`` are validated by the method's own config class.
    ``student_init``: start the student from a saved student of the same architecture instead of random
    weights (a folder, a run folder, a built-in zoo entry such as ``fmnist-clip-robust``, or ``hf-hub:org/name``):
    its image encoder is loaded, the classifier stays the teacher's text embeddings of this run's classes.
    """

    teacher: str = "fmnist-clip"
    student: str = "resnet_tiny"
    method: str = "rslad"
    dataset: DataConfig = field(default_factory=DataConfig)
    teachers: dict[str, TeacherSpec] = field(default_factory=dict)
    teacher_args: dict[str, Any] = field(default_factory=dict)
    student_args: dict[str, Any] = field(default_factory=dict)
    student_init: str | None = None
    method_args: dict[str, Any] = field(default_factory=dict)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        for key in ("teacher", "student", "method"):
            if not getattr(self, key):
                raise ConfigError(key, "must be a non-empty name")

    def teacher_spec(self, role: str, first_role: bool) -> TeacherSpec | None:
        """The spec of ``role``: ``teachers[role]``, else (for the method's first role) ``teacher``, else None."""
        if role in self.teachers:
            return self.teachers[role]
        return TeacherSpec(name=self.teacher) if first_role else None

    # -- YAML and dotted overrides ------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "DistillConfig":
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: {_yaml_error(err)}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    def with_overrides(self, *overrides: str | list[str] | dict[str, Any]) -> "DistillConfig":
        """Return a copy with dotted overrides applied: ``with_overrides("train.epochs=3", "threat.eps=4/255")``.

        Each argument is one ``key=value`` string, a list of them, or a ``{key: value}`` dict. String values
        are parsed as YAML scalars (``3`` -> int, ``true`` -> bool, ``[a, b]`` -> list).
        """
        items: list[tuple[str, Any]] = []
        for group in overrides:
            if isinstance(group, dict):
                items.extend(group.items())
            elif isinstance(group, str):
                items.append(_split_override(group))
            else:
                items.extend(_split_override(o) for o in group)
        data = self.to_dict()
        for key, value in items:
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(key, f"cannot be set: {part!r} is not a config section")
                node = node[part]
            if len(parts) == 1 and parts[0] == "dataset" and isinstance(value, str):
                value = {**data["dataset"], "name": value}
            node[parts[-1]] = value
        return type(self).from_dict(data)


def _yaml_error(err: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: ``line L, column C: problem``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}YAML syntax error: {problem}"


def _split_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError("", f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(key.strip(), f"= {raw!r} is not a value: {_yaml_error(err)}") from None
    return key.strip(), value


__all__ = ["ConfigBase", "ConfigError", "ThreatConfig", "AttackConfig", "DataConfig", "TrainConfig", "EvalConfig",
           "TeacherSpec", "DistillConfig", "parse_number", "check_radius", "coerce_value", "require_choice",
           "require_at_least", "require_positive", "require_between", "NORMS", "SPLITS", "TRAINABLE"]
