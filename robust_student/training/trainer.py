"""The training loop: one linear accelerate loop shared by every method.

The student, the method (its own parameters and buffers, built in ``method.setup``) and any trainable teachers
form one ``nn.Module`` whose ``forward`` calls ``method.loss``; that unit, the optimiser and the data loader go
through ``accelerator.prepare``. Frozen teachers are only moved to the device, never DDP-wrapped. Methods run
their attacks on the raw student inside that forward. Everything a method does not do lives here: which
teachers train, device placement, mixed precision, gradient accumulation, the optimiser and its schedule,
seeded data order, logging (``metrics.jsonl`` + accelerate trackers + a progress bar), per-epoch validation
through the evaluation module, atomic checkpoints from which ``fit(resume=True)`` continues bit for bit, the
run folder's safety (:mod:`.run_dir`) and the final saved student.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list, set_seed
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..config import DistillConfig, TrainConfig
from ..evaluation import evaluate_robustness
from ..fileio import state_mismatch
from ..methods.base import Method, TrainState, cached_embedding_key, cached_logits_key
from ..students.base import Student
from ..students.io import save_student
from ..teachers.base import Teacher
from . import checkpoint as ckpt
from .run_dir import RunDirectory, check_resumable

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the trained student, per-epoch validation records, where files are."""

    student: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str = ""
    steps: int = 0
    seconds: float = 0.0


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch (``seed + epoch``), so a resumed run replays the same order.

    The trainer sets ``epoch`` itself; the name ``set_epoch`` is avoided on purpose so accelerate's loader
    wrappers (which call ``set_epoch`` with their own iteration counter) leave it alone.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self) -> Iterator[int]:
        order = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=order).tolist())

    def __len__(self) -> int:
        return self.n


class CachedTeacherOutputs(Dataset):
    """A dataset whose items also carry frozen teachers' clean outputs: logits under ``teacher_logits/<role>`` and
    L2-normalised image embeddings under ``teacher_embedding/<role>``."""

    def __init__(self, dataset: Dataset, logits: Mapping[str, Tensor], embeddings: Mapping[str, Tensor]) -> None:
        self.dataset, self.logits, self.embeddings = dataset, dict(logits), dict(embeddings)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item.update({cached_logits_key(role): logits[index] for role, logits in self.logits.items()})
        item.update({cached_embedding_key(role): emb[index] for role, emb in self.embeddings.items()})
        return item


class _TrainUnit(nn.Module):
    """Student + method + trainable teachers: the one module accelerate prepares (and DDP wraps)."""

    def __init__(self, student: nn.Module, method: Method, trainable_teachers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.method = method
        self.teachers = nn.ModuleDict(dict(trainable_teachers))

    def forward(self, batch: Mapping[str, Tensor], frozen_teachers: Mapping[str, nn.Module],
                state: TrainState) -> dict[str, Tensor]:
        return self.method.loss(batch, self.student, {**frozen_teachers, **self.teachers}, state)

    def param_groups(self, lr: float, teacher_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The student's group, the method's groups, then one group per trainable teacher; each group is named
        (``"student"``, ``"method"`` unless the method names its own, ``"teacher:<role>"``) for
        :meth:`Method.lr_factor`."""
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "lr": lr, "name": "student"}]
        groups += [{"name": "method", **group} for group in self.method.param_groups(lr)]
        for group in teacher_groups:
            if not group["params"]:
                raise ValueError("a trainable teacher has no parameter to train")
        return groups + teacher_groups


# -- optimiser and schedule --------------------------------------------------------------------------------

def build_optimizer(param_groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over ``param_groups``; weight decay on every parameter, as the papers do."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after ``step`` optimiser steps: linear warm-up, then cosine / step / constant.

    This is the run's schedule (``train.scheduler``, ``train.warmup_epochs``); :func:`group_lr_factor` lets the
    method change it per param group.
    """
    epoch = step / max(1, steps_per_epoch)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return (step + 1) / max(1.0, cfg.warmup_epochs * steps_per_epoch)
    if cfg.scheduler == "cosine":
        span = max(1e-12, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - cfg.warmup_epochs) / span)))
    if cfg.scheduler == "step":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


def group_lr_factor(step: int, *, group: str, method: Method, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The lr multiplier of param group ``group`` after ``step`` optimiser steps: the run's schedule
    (:func:`lr_factor`) as the method's :meth:`~Method.lr_factor` declares it for that group (default: unchanged).

    A pure function of the step, so a resumed run (whose scheduler restores its step count) follows the same
    schedule exactly.
    """
    default = lr_factor(step, cfg, steps_per_epoch)
    state = TrainState(step=step, epoch=step // max(1, steps_per_epoch), total_steps=cfg.epochs * steps_per_epoch,
                       total_epochs=cfg.epochs)
    factor = float(method.lr_factor(group, state, default))
    if not factor >= 0 or not math.isfinite(factor):
        raise ValueError(f"method {method.name!r} declared lr factor {factor!r} for {group!r} at step {step}")
    return factor


# -- the trainer -------------------------------------------------------------------------------------------

class Trainer:
    """Fit ``student`` with ``method`` on ``train_set``; validate on ``val_set`` after each epoch.

    Args:
        config: the run's :class:`DistillConfig` (``train`` drives the loop, ``threat`` and ``train.val_attack``
            the validation; ``teachers`` says which roles train, see :class:`~robust_student.config.TeacherSpec`).
        student: the model to train (its parameters with ``requires_grad`` are optimised).
        teachers: one teacher per role in ``method.teacher_roles``. A role trains when its spec's ``trainable``
            is ``"head"`` or ``"all"`` (default: ``"head"`` for ``method.trainable_teacher_roles``): it joins the
            trainable unit with its own param group and is checkpointed. Every other role is frozen: eval mode,
            no gradients, outside DDP.
        method: the objective (:class:`Method`); its :meth:`~Method.setup` runs before the optimiser exists.
        train_set / val_set: map-style datasets of ``{"image", "label"}`` items.
        save_student_to: where the main process saves the final student in the one saved format (default
            ``<output_dir>/student``; ``None`` in ``TrainConfig`` terms: pass ``False`` to skip).
    """

    def __init__(self, config: DistillConfig, student: nn.Module, teachers: Mapping[str, nn.Module],
                 method: Method, train_set: Dataset, val_set: Dataset | None = None, *,
                 save_student_to: str | Path | bool | None = None) -> None:
        missing = [role for role in method.teacher_roles if role not in teachers]
        if missing:
            raise ValueError(f"method {method.name!r} needs teacher role(s) {missing}; got {sorted(teachers)}")
        self.config, self.student, self.method = config, student, method
        self.teachers = {role: teachers[role] for role in method.teacher_roles}
        self.train_set, self.val_set = train_set, val_set
        if save_student_to is None or save_student_to is True:
            save_student_to = Path(config.train.output_dir) / "student"
        self.save_student_to = Path(save_student_to) if save_student_to else None

    def trainable_parts(self) -> dict[str, str]:
        """``{role: "head" | "all"}`` for the roles that train (see :class:`TeacherSpec`); others are frozen."""
        parts = {}
        for index, role in enumerate(self.method.teacher_roles):
            spec = self.config.teacher_spec(role, first_role=index == 0)
            part = spec.trainable if spec is not None and spec.trainable is not None else None
            if part is None:
                part = "head" if role in self.method.trainable_teacher_roles else "none"
            if part != "none":
                parts[role] = part
        return parts

    def fit(self, resume: bool = False) -> TrainResult:
        """Train for ``train.epochs``; with ``resume`` continue from the newest intact checkpoint in ``output_dir``.

        The folder is locked for the whole fit; a run already in it is refused unless ``resume`` or
        ``train.overwrite`` (see :mod:`robust_student.training.run_dir`).
        """
        acc = make_accelerator(self.config.train)
        with RunDirectory(self.config.train.output_dir, resume=resume, overwrite=self.config.train.overwrite,
                          main_process=acc.is_main_process) as run:
            return self._fit(acc, run, resume)

    def _fit(self, acc: Accelerator, run: RunDirectory, resume: bool) -> TrainResult:
        cfg = self.config.train
        started = time.perf_counter()
        out_dir = Path(cfg.output_dir)
        set_seed(cfg.seed, device_specific=True)  # attack noise etc.; the data order has its own seed

        if cfg.channels_last:
            self.student.to(memory_format=torch.channels_last)  # in place; a no-op for weights that are not 4-D
        parts = self.trainable_parts()
        trainable = {r: t for r, t in self.teachers.items() if r in parts}
        frozen = {r: _freeze(t).to(acc.device) for r, t in self.teachers.items() if r not in parts}
        teacher_params = {r: _unfreeze(t, parts[r]) for r, t in trainable.items()}
        self.method.setup(self.student, {**frozen, **trainable})
        train_set = self.train_set
        if cfg.cache_teacher_outputs and frozen:
            train_set = cache_teacher_outputs(train_set, frozen, batch_size=cfg.batch_size, accelerator=acc)
        sampler = EpochSampler(len(train_set), cfg.seed)  # type: ignore[arg-type]
        # Its own generator: iterating a DataLoader draws a base seed, which must not come from (and shift)
        # the global RNG stream that the attacks use, or a resumed run would diverge.
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=self.config.dataset.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed))
        unit = _TrainUnit(self.student, self.method, trainable)
        optimizer = build_optimizer(unit.param_groups(cfg.lr, self._teacher_groups(teacher_params)), cfg)
        unit, optimizer, loader = acc.prepare(unit, optimizer, loader)
        # The schedule counts this process's optimiser steps and is stepped by hand: a prepared scheduler
        # would step num_processes times per step, which only suits schedules defined on the unsharded loader.
        steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum_steps)
        scheduler = LambdaLR(optimizer.optimizer, [
            partial(group_lr_factor, group=group.get("name", f"group {index}"), method=self.method, cfg=cfg,
                    steps_per_epoch=steps_per_epoch)
            for index, group in enumerate(optimizer.optimizer.param_groups)])
        raw_unit: _TrainUnit = acc.unwrap_model(unit)
        ema = _weight_average(raw_unit.student, cfg)

        start_epoch, start_batch, step = 0, 0, 0
        history: list[dict[str, Any]] = []
        clock = _RunClock()
        latest = ckpt.latest_intact_checkpoint(out_dir)[0] if resume else None
        if latest is not None:
            check_resumable(latest, self.config.to_dict())
            position = load_checkpoint(latest, acc, raw_unit, optimizer, scheduler, ema)
            start_epoch, start_batch, step = position["epoch"], position["batch"], position["step"]
            history = position.get("history", [])
            clock = _RunClock(position.get("train_seconds", 0.0), position.get("cpu_seconds", 0.0))
            logger.info("resuming from %s (epoch %d, batch %d, step %d)", latest, start_epoch, start_batch, step)
        elif resume:
            logger.info("no checkpoint in %s; starting from scratch", out_dir)
        acc.wait_for_everyone()
        metrics = _MetricsLog(out_dir / METRICS_FILE, acc, keep_until=(step, start_epoch) if latest else None)
        if cfg.log_with:
            acc.init_trackers(out_dir.name or "robust_student", config=_flat_config(self.config.to_dict()))

        total_steps = cfg.epochs * steps_per_epoch
        for epoch in range(start_epoch, cfg.epochs):
            sampler.epoch = epoch
            skip = start_batch if epoch == start_epoch else 0
            batches = acc.skip_first_batches(loader, skip) if skip else loader
            unit.train()
            running: dict[str, Tensor] = {}
            window = 0
            bar = tqdm(batches, total=len(loader), initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not acc.is_local_main_process, leave=False, dynamic_ncols=True)
            for batch_index, batch in enumerate(bar, start=skip):
                state = TrainState(step=step, epoch=epoch, total_steps=total_steps, total_epochs=cfg.epochs)
                with acc.accumulate(unit):
                    out = unit(batch, frozen, state)
                    acc.backward(out["loss"])
                    raw_unit.method.after_backward()
                    if cfg.grad_clip and acc.sync_gradients:
                        acc.clip_grad_norm_(unit.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                outputs = {k: v.detach().float() for k, v in out.items()}
                for key, value in outputs.items():
                    running[key] = running[key] + value if key in running else value
                window += 1
                if not acc.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                if ema is not None:
                    ema.update(raw_unit.student, step=step)
                raw_unit.method.on_step_end(outputs, state)
                if step % cfg.log_every == 0 or batch_index + 1 == len(loader):
                    record = _mean_terms(acc, running, window)
                    running, window = {}, 0
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()}, refresh=False)
                    metrics.write({"kind": "train", "epoch": epoch, "step": step,
                                   "lr": scheduler.get_last_lr()[0], **record}, acc)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    self._save(acc, raw_unit, optimizer, scheduler, epoch, batch_index + 1, step, history, run,
                               clock, ema)
            bar.close()
            if acc.num_processes > 1:
                # DDP syncs parameters, but each replica updated its BN running stats on its own shard since
                # the last forward: take process 0's so validation and checkpoints see one model.
                for buffer in raw_unit.buffers():
                    torch.distributed.broadcast(buffer.data, src=0)
                if ema is not None:
                    for buffer in ema.module.buffers():
                        torch.distributed.broadcast(buffer.data, src=0)

            raw_unit.method.on_epoch_end(TrainState(step=step, epoch=epoch, total_steps=total_steps,
                                                    total_epochs=cfg.epochs))
            last = epoch + 1 == cfg.epochs
            if self._validates() and cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or last):
                # The main process validates; every process keeps the same record in its history.
                shipped = raw_unit.student if ema is None else ema.module  # what the run will save
                found = [{**clock.read(), **validate(shipped, self.val_set, self.config, acc.device)}
                         if acc.is_main_process else None]
                record = {"kind": "eval", "epoch": epoch, "step": step, **broadcast_object_list(found)[0]}
                history.append(record)
                metrics.write(record, acc)
                logger.info("epoch %d: clean %.4f, %s %.4f", epoch + 1, record["val_clean_acc"],
                            record["val_attack"], record["val_robust_acc"])
            self._save(acc, raw_unit, optimizer, scheduler, epoch + 1, 0, step, history, run, clock, ema)

        acc.wait_for_everyone()
        if cfg.log_with:
            acc.end_training()
        if ema is not None:  # the averaged weights are the run's result (checkpoints keep both)
            raw_unit.student.load_state_dict(ema.module.state_dict())
        student = raw_unit.student.eval()
        if acc.is_main_process and self.save_student_to is not None and isinstance(student, Student):
            save_student(student, self.save_student_to, teachers=self._provenance(),
                         run={"method": self.method.name, "threat": self.config.threat.to_dict(),
                              "config": self.config.to_dict(), "history": history})
        acc.wait_for_everyone()
        return TrainResult(student=student, history=history, output_dir=str(out_dir), steps=step,
                           seconds=time.perf_counter() - started)

    # -- helpers -----------------------------------------------------------------------------------------
    def _validates(self) -> bool:
        return self.val_set is not None and self.config.train.eval_examples > 0 and len(self.val_set) > 0

    def _teacher_groups(self, params: Mapping[str, list[nn.Parameter]]) -> list[dict[str, Any]]:
        """One optimiser group per trainable teacher: the method's options for it, then the spec's lr."""
        groups = []
        for index, role in enumerate(self.method.teacher_roles):
            if role not in params:
                continue
            spec = self.config.teacher_spec(role, first_role=index == 0)
            options = {"lr": self.config.train.lr, **self.method.teacher_optimizer_options(role)}
            if spec is not None and spec.lr is not None:
                options["lr"] = spec.lr
            groups.append({"params": params[role], **options, "name": f"teacher:{role}"})
        return groups

    def _provenance(self) -> dict[str, dict[str, Any]]:
        out = {}
        for role, teacher in self.teachers.items():
            provenance = getattr(teacher, "provenance", None)
            out[role] = {"role": role, **(provenance.to_dict() if provenance is not None else
                                          {"spec": type(teacher).__name__})}
            out[role]["trained"] = self.trainable_parts().get(role, "none")
        return out

    def _save(self, acc: Accelerator, unit: "_TrainUnit", optimizer: Any, scheduler: LambdaLR, epoch: int,
              batch: int, step: int, history: list[dict[str, Any]], run: RunDirectory, clock: "_RunClock",
              ema: Any = None) -> None:
        """Write an atomic checkpoint: every process its RNG state, the main process everything else."""
        out_dir = Path(self.config.train.output_dir)
        staging = ckpt.staging_dir(out_dir, step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        ckpt.write_part(staging, f"rng_{acc.process_index}", *ckpt.capture_rng_state())
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.write_part(staging, "model", unit.state_dict())
            if ema is not None:
                ckpt.write_part(staging, "ema", ema.module.state_dict())
            ckpt.write_part(staging, "optimizer", *ckpt.flatten_optimizer_state(optimizer.state_dict()))
            ckpt.write_part(staging, "scheduler", meta=scheduler.state_dict())  # numbers only (see test)
            ckpt.write_part(staging, "trainer", meta={
                "format": ckpt.FORMAT_VERSION, "epoch": epoch, "batch": batch, "step": step,
                "num_processes": acc.num_processes, "history": history, "config": self.config.to_dict(),
                **clock.read(),
            })
            ckpt.commit(staging)
            run.committed()
        acc.wait_for_everyone()


def _freeze(teacher: nn.Module) -> nn.Module:
    """A frozen role: no parameter trains, eval mode."""
    if isinstance(teacher, Teacher):
        return teacher.freeze()
    return teacher.requires_grad_(False).eval()


def _unfreeze(teacher: nn.Module, part: str) -> list[nn.Parameter]:
    """A trainable role: unfreeze ``part`` and return its parameters."""
    if isinstance(teacher, Teacher):
        return teacher.make_trainable(part)
    if part != "all":
        raise ValueError(f"{type(teacher).__name__} is not a Teacher, so it has no declared head: use "
                         "trainable='all'")
    return [p.requires_grad_(True) for p in teacher.parameters()]


def _weight_average(student: nn.Module, cfg: TrainConfig) -> Any:
    """timm's ``ModelEmaV3`` of the student when ``train.ema_decay`` is set (stepped with the optimiser), else
    None."""
    if cfg.ema_decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(student, decay=cfg.ema_decay, use_warmup=bool(cfg.ema_warmup))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The run's Accelerator (precision, accumulation, trackers)."""
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        # accelerate pins the first run's precision for the whole process; one process may start afresh
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
                       log_with=list(cfg.log_with) or None, project_dir=cfg.output_dir)


def load_checkpoint(path: Path, acc: Accelerator, unit: nn.Module, optimizer: Any,
                    scheduler: LambdaLR, ema: Any = None) -> dict[str, Any]:
    """Restore unit, optimiser, scheduler, the weight average (if the run keeps one) and this process's RNG from
    ``path``; return ``trainer.json``."""
    position = ckpt.read_trainer_state(path)
    model_state, _ = ckpt.read_part(path, "model")
    mismatch = state_mismatch(unit.state_dict(), model_state)
    if mismatch is not None:
        raise ValueError(f"{path} does not fit this run's student/method/teachers: {mismatch}")
    unit.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(ckpt.unflatten_optimizer_state(*ckpt.read_part(path, "optimizer")))
    _, sched_state = ckpt.read_part(path, "scheduler")
    scheduler.load_state_dict(sched_state)
    if ema is not None:
        ema.module.load_state_dict(ckpt.read_part(path, "ema")[0], strict=True)
    rng_name = f"rng_{acc.process_index}"
    if not (path / f"{rng_name}.json").is_file():
        logger.warning("%s has no RNG state for process %d; using process 0's", path, acc.process_index)
        rng_name = "rng_0"
    ckpt.restore_rng_state(*ckpt.read_part(path, rng_name))
    return position


def cache_teacher_outputs(dataset: Dataset, teachers: Mapping[str, nn.Module], *, batch_size: int,
                          accelerator: Accelerator) -> CachedTeacherOutputs:
    """Run each frozen teacher once over ``dataset`` and attach its clean logits and embeddings to every item.

    Valid only for a deterministic data pipeline (the same index always yields the same image), which is
    checked on the first item; the built-in datasets apply no random augmentation.
    """
    first, again = dataset[0]["image"], dataset[0]["image"]
    if not torch.equal(first, again):
        raise ValueError("train.cache_teacher_outputs needs a deterministic data pipeline, but dataset[0] "
                         "returned two different images (random augmentation?); set it to false")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    logits: dict[str, list[Tensor]] = {role: [] for role in teachers}
    embeddings: dict[str, list[Tensor]] = {role: [] for role in teachers if isinstance(teachers[role], Teacher)}
    with torch.no_grad(), accelerator.autocast():
        for batch in tqdm(loader, desc="caching teacher outputs", disable=not accelerator.is_local_main_process,
                          leave=False):
            x = batch["image"].to(accelerator.device)
            for role, teacher in teachers.items():
                if role in embeddings:
                    embedding = teacher.encode_image(x)
                    embeddings[role].append(embedding.float().cpu())
                    logits[role].append(teacher.classify(embedding).float().cpu())
                else:
                    logits[role].append(teacher(x).float().cpu())
    return CachedTeacherOutputs(dataset, {role: torch.cat(parts) for role, parts in logits.items()},
                                {role: torch.cat(parts) for role, parts in embeddings.items()})


def validate(student: nn.Module, val_set: Dataset, config: DistillConfig,
             device: torch.device | str | None = None) -> dict[str, Any]:
    """Clean and robust accuracy on ``train.eval_examples`` validation images, through the evaluation module:
    ``train.val_attack`` at the run's threat, seeded by ``eval.seed`` (the training RNG stream is untouched)."""
    cfg = config.train
    n = min(cfg.eval_examples, len(val_set))  # type: ignore[arg-type]
    report = evaluate_robustness(student, val_set, attacks=["clean", cfg.val_attack], threat=config.threat,
                                 n_examples=n, batch_size=cfg.batch_size, seed=config.eval.seed, checks=False,
                                 device=device, progress=False)
    return {"val_clean_acc": report.clean_accuracy, "val_robust_acc": report.robust_accuracy[cfg.val_attack],
            "val_attack": f"{cfg.val_attack} {report.threat} eps={report.eps_text}", "val_examples": report.n_examples}


# -- logging -----------------------------------------------------------------------------------------------

class _RunClock:
    """Training time of a run across resumes, for learning curves against compute: wall seconds and this
    (main) process's CPU seconds (all its threads), each continued from the checkpoint a run resumes from.
    Measurements, not state: a resumed run's numbers differ from an uninterrupted one's."""

    def __init__(self, wall_before: float = 0.0, cpu_before: float = 0.0) -> None:
        self.wall_before, self.cpu_before = wall_before, cpu_before
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {"train_seconds": round(self.wall_before + time.perf_counter() - self.wall_start, 1),
                "cpu_seconds": round(self.cpu_before + time.process_time() - self.cpu_start, 1)}


class _MetricsLog:
    """``metrics.jsonl`` (main process) plus accelerate trackers. On resume, records after the checkpoint
    (written by the interrupted run) are dropped so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, acc: Accelerator, keep_until: tuple[int, int] | None) -> None:
        self.path = path
        if acc.is_main_process and keep_until is not None and path.is_file():
            step, epoch = keep_until
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _before(json.loads(line), step, epoch)]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any], acc: Accelerator) -> None:
        if acc.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        numbers = {f"{record['kind']}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and k not in ("step", "epoch")}
        acc.log(numbers, step=record["step"])


def _before(record: dict[str, Any], step: int, epoch: int) -> bool:
    return record["step"] <= step if record.get("kind") == "train" else record["epoch"] < epoch


def _mean_terms(acc: Accelerator, running: Mapping[str, Tensor], count: int) -> dict[str, float]:
    """Average the summed loss terms over the window and over processes (one collective per log step)."""
    keys = sorted(running)
    values = torch.stack([running[k] for k in keys]) / max(1, count)
    values = acc.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


def _flat_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"train.lr": 0.1, ...}`` with scalar values, as trackers expect."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat_config(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


__all__ = ["Trainer", "TrainResult", "EpochSampler", "CachedTeacherOutputs", "build_optimizer", "lr_factor",
           "group_lr_factor",
           "make_accelerator", "load_checkpoint", "cache_teacher_outputs", "validate", "METRICS_FILE"]
