"""Dataclass configs: one place that says what a run is, round-trippable through dicts and YAML.

Every config has ``to_dict()`` / ``from_dict()``; unknown keys raise ``ValueError`` naming the valid ones.
Radii may be written as fractions (``eps: "8/255"``) and are stored as floats in pixel units ([0, 1] images).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C", bound="ConfigBase")

NORMS = ("linf", "l2")


def parse_number(value: Any, *, name: str = "value") -> float:
    """Parse ``0.03``, ``"0.03"``, ``"8/255"`` or ``"8 / 255"`` into a float."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or a fraction like '8/255', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"{name} must be a number or a fraction like '8/255', got {value!r}")


def format_eps(eps: float) -> str:
    """Show a radius as ``k/255`` when it is one (how the literature writes it), else as a decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


class ConfigBase:
    """Mixin for dataclass configs: strict ``from_dict``, plain ``to_dict``, nested configs."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, (list, tuple)):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
        data = dict(data or {})
        valid = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} for {cls.__name__}. Valid keys: {', '.join(sorted(valid))}."
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            sub = _config_type(hints.get(name))
            if sub is not None and not isinstance(value, ConfigBase):
                value = sub.coerce(value)
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def coerce(cls: type[C], value: Any) -> C:
        """Build from a dict (or an instance); subclasses may accept a shorthand such as a name."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{cls.__name__} expects a mapping, got {value!r}")
        return cls.from_dict(value)


def _config_type(hint: Any) -> type[ConfigBase] | None:
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        return hint
    return None


@dataclass
class ThreatConfig(ConfigBase):
    """An L-inf or L2 ball of radius ``eps`` around [0, 1] images, and the PGD that searches it.

    ``random_start``: ``"normal"`` starts at ``x + init_std * N(0, 1)`` (the ARD/RSLAD/DGHFA training
    convention), ``"uniform"`` samples uniformly in the ball (Madry PGD, used for evaluation), ``"none"``
    starts at ``x``.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: str = "normal"
    init_std: float = 0.001

    def __post_init__(self) -> None:
        self.norm = self.norm.lower()
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        self.eps = parse_number(self.eps, name="eps")
        self.step_size = parse_number(self.step_size, name="step_size")
        self.init_std = parse_number(self.init_std, name="init_std")
        if self.eps < 0 or self.step_size < 0:
            raise ValueError("eps and step_size must be >= 0")
        if self.random_start not in ("normal", "uniform", "none"):
            raise ValueError(f"random_start must be 'normal', 'uniform' or 'none', got {self.random_start!r}")
        if int(self.steps) < 0:
            raise ValueError("steps must be >= 0")
        self.steps = int(self.steps)


@dataclass
class DataConfig(ConfigBase):
    """Which dataset and how to read it. ``name`` is a dataset spec such as ``"imagefolder:/data/CRC100K"``."""

    name: str = "fashion-mnist"
    image_size: int | None = None
    prompts: str | None = None
    skip_corrupt: bool = False
    num_workers: int = 0
    max_train_examples: int | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific, e.g. {"label_column": "Target"}

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
    accelerate trackers (``["tensorboard"]``, ``["wandb"]`` ...) besides ``metrics.jsonl``.
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
    log_every: int = 20
    eval_every: int = 1
    eval_examples: int = 500
    checkpoint_every: int = 200
    cache_teacher_outputs: bool = False
    log_with: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "step", "constant"):
            raise ValueError(f"scheduler must be 'cosine', 'step' or 'constant', got {self.scheduler!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("epochs, batch_size and grad_accum_steps must be >= 1")


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

    def __post_init__(self) -> None:
        self.eps = parse_number(self.eps, name="eps")
        self.norm = self.norm.lower()
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")


@dataclass
class DistillConfig(ConfigBase):
    """A whole distillation run: teacher(s), student, method, data, threat, training and evaluation.

    ``teacher`` fills the method's first teacher role; ``teachers`` names the others explicitly
    (``{"adv": "open_clip:hf-hub:chs20/fare2-clip", "clean": "open_clip:ViT-B-32-quickgelu/openai"}``).
    ``method_args`` are validated by the method's own config class.
    """

    teacher: str = "fmnist-clip"
    student: str = "resnet_tiny"
    method: str = "rslad"
    dataset: DataConfig = field(default_factory=DataConfig)
    teachers: dict[str, str] = field(default_factory=dict)
    teacher_args: dict[str, Any] = field(default_factory=dict)
    student_args: dict[str, Any] = field(default_factory=dict)
    method_args: dict[str, Any] = field(default_factory=dict)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.dataset, str):
            self.dataset = DataConfig(name=self.dataset)

    # -- YAML and dotted overrides ------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "DistillConfig":
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

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
                    raise ValueError(f"Cannot set {key!r}: {part!r} is not a config section")
                node = node[part]
            if len(parts) == 1 and parts[0] == "dataset" and isinstance(value, str):
                value = {**data["dataset"], "name": value}
            node[parts[-1]] = value
        return type(self).from_dict(data)


def _split_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"Override {text!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None
