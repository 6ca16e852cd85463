"""The Method contract: a robust-distillation objective that computes losses and nothing else.

A method is one file: a config dataclass, a :class:`Method` subclass whose docstring cites its paper, and
``@register_method("name")``. The trainer owns devices, precision, accumulation, optimisers, logging and
checkpoints; a method never calls ``.backward()`` or ``optimizer.step()``. Adaptive state (class weights,
temperatures) lives in buffers so checkpoints carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from ..attacks.pgd import Objective, pgd
from ..attacks.threat import threat_from_config
from ..config import AttackConfig, ConfigBase, ConfigError, ThreatConfig
from ..registry import Registry

Batch = Mapping[str, Tensor]  # {"image": [B, 3, H, W] in [0, 1], "label": [B]}


@dataclass
class MethodConfig(ConfigBase):
    """Base for per-method hyper-parameters; subclasses add documented fields with the paper defaults."""


@dataclass(frozen=True)
class TrainState:
    """Where training is: global optimiser step, epoch, and the totals (for schedules such as HPFA's)."""

    step: int = 0
    epoch: int = 0
    total_steps: int = 1
    total_epochs: int = 1

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


class Method(nn.Module):
    """Base class. Subclasses set ``Config`` and implement :meth:`loss`.

    ``teacher_roles`` names the teachers the method needs (the first is filled by ``DistillConfig.teacher``);
    ``trainable_teacher_roles`` the ones it trains by default (the trainer unfreezes them, gives them a param
    group and checkpoints them; ``TeacherSpec.trainable`` chooses which part). ``attack_student_mode`` is the
    student's mode during :meth:`attack` unless ``AttackConfig.student_mode`` says otherwise.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    teacher_roles: ClassVar[tuple[str, ...]] = ("teacher",)
    trainable_teacher_roles: ClassVar[tuple[str, ...]] = ()
    attack_student_mode: ClassVar[str] = "eval"

    def __init__(self, config: MethodConfig | None = None, *, threat: ThreatConfig | None = None,
                 attack: AttackConfig | None = None, num_classes: int = 0, embed_dim: int = 0) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__}, got {type(self.config).__name__}")
        self.threat_config = threat if threat is not None else ThreatConfig()
        self.attack_config = attack if attack is not None else AttackConfig()
        self.threat = threat_from_config(self.threat_config)
        self.num_classes = num_classes
        self.embed_dim = embed_dim

    def setup(self, student: nn.Module, teachers: Mapping[str, nn.Module]) -> None:
        """Build method-owned modules and size state from the models, once, before the optimiser exists.

        Called by the trainer before ``accelerator.prepare``, so whatever is assigned here (a frozen copy of
        the student, per-teacher heads, per-class buffers) has stable state-dict keys under ``method.``.
        """

    # -- the inner maximisation -----------------------------------------------------------------------------
    @property
    def student_mode(self) -> str:
        """``"eval"`` or ``"train"``: the student's mode while :meth:`attack` runs."""
        return self.attack_config.student_mode or self.attack_student_mode

    def attack_modules(self, student: nn.Module) -> tuple[nn.Module, ...]:
        """The modules held in eval mode during the attack (the student, unless the mode is ``"train"``)."""
        return (student,) if self.student_mode == "eval" else ()

    def attack(self, objective: Objective, x: Tensor, student: nn.Module, **overrides: Any) -> Tensor:
        """The method's inner maximisation: :func:`pgd` on the run's threat with the run's attack loop.

        ``student`` is held in :attr:`student_mode`; ``overrides`` replace loop settings (``steps=``,
        ``on_step=`` ...).
        """
        cfg = self.attack_config
        settings: dict[str, Any] = dict(steps=cfg.steps, step_size=cfg.step_size, random_start=cfg.random_start,
                                        init_std=cfg.init_std, eval_modules=self.attack_modules(student))
        settings.update(overrides)
        return pgd(objective, x, self.threat, **settings)

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        """Return ``{"loss": scalar to back-propagate, <term>: detached scalars to log}``."""
        raise NotImplementedError

    def teacher_optimizer_options(self, role: str) -> dict[str, Any]:
        """Optimiser options (``lr``, ``momentum`` ...) for a trainable teacher's param group; ``TeacherSpec.lr``
        overrides the lr. Default: none (the run's lr and optimiser settings)."""
        return {}

    def lr_factor(self, group: str, state: TrainState, default: float) -> float:
        """The lr multiplier of param group ``group`` at ``state.step``: ``default`` is the run's schedule
        (``train.scheduler`` with ``train.warmup_epochs``). Groups: ``"student"``, ``"method"`` (or the names
        :meth:`param_groups` gives), ``"teacher:<role>"``. A method whose paper prescribes a schedule overrides
        this (HPT-GPD's two phases, CIARD's teacher warm-up); it must depend on ``state`` only, so resume is exact.
        """
        return default

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups for method-owned parameters (none by default)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr}] if params else []

    def after_backward(self) -> None:
        """Called after every backward, before the optimiser step (AWP puts the unperturbed weights back here)."""

    def on_step_end(self, outputs: Mapping[str, Tensor], state: TrainState) -> None:
        """Called after each optimiser step with the (detached) outputs of :meth:`loss`."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called once at the end of every epoch (e.g. DGHFA's class-weight update)."""


@dataclass(frozen=True)
class Paper:
    """The paper a method comes from (registry metadata: model cards cite it and link to it)."""

    title: str
    authors: tuple[str, ...]
    venue: str
    year: int
    url: str | None = None

    def bibtex(self, key: str) -> str:
        """A BibTeX entry for the paper (``@inproceedings`` unless it is only an arXiv preprint)."""
        kind = "misc" if self.venue.lower().startswith("arxiv") else "inproceedings"
        where = "howpublished" if kind == "misc" else "booktitle"
        fields = [f"  title = {{{self.title}}}", f"  author = {{{' and '.join(self.authors)}}}",
                  f"  {where} = {{{self.venue}}}", f"  year = {{{self.year}}}"]
        if self.url:
            fields.append(f"  url = {{{self.url}}}")
        return f"@{kind}{{{key},\n" + ",\n".join(fields) + "\n}"


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str, *, paper: Paper | None = None) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a Method subclass under ``name`` (and set ``cls.name``); ``paper`` is the
    publication it implements (model cards cite it)."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name, metadata=paper)(cls)

    return decorator


def method_paper(name: str) -> Paper | None:
    """The paper a registered method declares (``None`` if it declares none)."""
    return METHODS.metadata(name)


def create_method(name: str, config: MethodConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> Method:
    """Build a registered method; ``config`` may be a dict validated by the method's ``Config``."""
    cls = METHODS.get(name)
    if config is None or isinstance(config, Mapping):
        try:
            config = cls.Config.from_dict(dict(config or {}))
        except ConfigError as err:
            raise ConfigError(f"method_args.{err.key}" if err.key else "method_args",
                              f"{err.problem} (method {name!r})") from None
        except ValueError as err:
            raise ConfigError("method_args:", f"{err} (method {name!r})") from None
    return cls(config, **kwargs)


def list_methods() -> list[str]:
    return METHODS.names()


def no_grad_outputs(fn: Callable[..., Tensor], *args: Any) -> Tensor:
    """Run a (frozen teacher) forward without building a graph and return float32 outputs."""
    with torch.no_grad():
        return fn(*args).float()


def cached_logits_key(role: str) -> str:
    """Batch key under which the trainer puts a frozen teacher's cached clean logits."""
    return f"teacher_logits/{role}"


def cached_embedding_key(role: str) -> str:
    """Batch key under which the trainer puts a frozen teacher's cached clean image embeddings."""
    return f"teacher_embedding/{role}"


def clean_teacher_logits(batch: Batch, teachers: Mapping[str, nn.Module], role: str = "teacher") -> Tensor:
    """A frozen teacher's logits on the clean images, float32 without a graph.

    Read from the batch when the trainer cached them (``train.cache_teacher_outputs``), else computed.
    """
    cached = batch.get(cached_logits_key(role))
    if cached is not None:
        return cached.detach().float()
    return no_grad_outputs(teachers[role], batch["image"])


def clean_teacher_embeddings(batch: Batch, teachers: Mapping[str, nn.Module], role: str = "teacher") -> Tensor:
    """A frozen teacher's L2-normalised image embeddings of the clean images (cached like the logits)."""
    cached = batch.get(cached_embedding_key(role))
    if cached is not None:
        return cached.detach().float()
    return no_grad_outputs(teachers[role].encode_image, batch["image"])
