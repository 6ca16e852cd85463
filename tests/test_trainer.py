"""The accelerate training loop: metrics, checkpoints, schedules, accumulation, precision, teacher caching."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robust_student.config import DistillConfig, TrainConfig
from robust_student.data import build_dataset
from robust_student.methods import create_method
from robust_student.students import create_student
from robust_student.training import Trainer, build_optimizer, lr_factor
from robust_student.training import checkpoint as ckpt
from robust_student.training.trainer import EpochSampler, cache_teacher_outputs, make_accelerator, validate


def _config(tmp_path: Path, method: str = "rslad", **train) -> DistillConfig:
    overrides = {"train.epochs": 2, "train.batch_size": 8, "train.output_dir": str(tmp_path / "run"),
                 "train.checkpoint_every": 3, "train.log_every": 2, "train.eval_examples": 16, "attack.steps": 2}
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return DistillConfig(method=method, dataset="synthetic:3").with_overrides(overrides)


def _fit(cfg: DistillConfig, teacher, n_train: int = 48, resume: bool = False, method_args=None):
    train, val = build_dataset(cfg.dataset, "train", n=n_train), build_dataset(cfg.dataset, "val", n=16)
    teacher.set_classes(train.prompts.classnames, train.prompts.templates)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", teacher, image_size=16, width=8)
    method = create_method(cfg.method, method_args or cfg.method_args, threat=cfg.threat, attack=cfg.attack)
    teachers = {role: teacher for role in method.teacher_roles}
    return Trainer(cfg, student, teachers, method, train, val).fit(resume=resume)


def test_fit_logs_metrics_and_writes_pickle_free_atomic_checkpoints(tmp_path, tiny_teacher):
    cfg = _config(tmp_path)
    result = _fit(cfg, tiny_teacher)
    run = Path(cfg.train.output_dir)
    assert result.steps == 2 * math.ceil(48 / 8)

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert all({"loss", "kl_adv", "kl_nat", "lr"} <= r.keys() and math.isfinite(r["loss"]) for r in train)
    assert evals == result.history and [r["epoch"] for r in evals] == [0, 1]
    assert all(0 <= r["val_clean_acc"] <= 1 and 0 <= r["val_robust_acc"] <= r["val_clean_acc"] for r in evals)
    assert evals[-1]["val_examples"] == 16 and evals[-1]["val_attack"] == "pgd:10 linf eps=8/255"

    # the two newest checkpoints survive; only safetensors and JSON; no staging folder left behind
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_00000009", "step_00000012"]
    files = {p.suffix for p in (run / "checkpoints").rglob("*") if p.is_file()}
    assert files == {".safetensors", ".json"}
    assert all(ckpt.verify(p) is None for p in ckpt.list_checkpoints(run))  # every file's sha256 recorded
    state = ckpt.read_trainer_state(ckpt.latest_checkpoint(run))
    assert (state["epoch"], state["batch"], state["step"]) == (2, 0, 12)
    assert state["config"] == cfg.to_dict()
    model = ckpt.read_part(ckpt.latest_checkpoint(run), "model")[0]
    assert all(torch.equal(model[f"student.{k}"], v) for k, v in result.student.state_dict().items())


def test_frozen_teacher_is_untouched_and_not_optimised(tmp_path, tiny_teacher):
    before = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    cfg = _config(tmp_path, epochs=1)
    result = _fit(cfg, tiny_teacher)
    assert all(torch.equal(before[k], v) for k, v in tiny_teacher.state_dict().items())
    assert not tiny_teacher.training and not any(p.requires_grad for p in tiny_teacher.parameters())
    _, optimizer_meta = ckpt.read_part(ckpt.latest_checkpoint(cfg.train.output_dir), "optimizer")
    optimised = sum(len(group["params"]) for group in optimizer_meta["param_groups"])
    assert optimised == len(list(result.student.parameters()))
    model = ckpt.read_part(ckpt.latest_checkpoint(cfg.train.output_dir), "model")[0]
    assert all(key.startswith("student.") for key in model)  # rslad has no buffers; teachers are not saved


def test_gradient_accumulation_counts_optimiser_steps(tmp_path, tiny_teacher):
    # 9 batches per epoch, accumulating 2: steps after batches 2, 4, 6, 8 and at the end of the loader
    result = _fit(_config(tmp_path, method="kd", grad_accum_steps=2, epochs=2), tiny_teacher, n_train=72)
    assert result.steps == 2 * 5


def test_bf16_mixed_precision_trains(tmp_path, tiny_teacher):
    result = _fit(_config(tmp_path, method="pgd-at", mixed_precision="bf16", epochs=1), tiny_teacher)
    records = [json.loads(x) for x in (Path(result.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    assert next(result.student.parameters()).dtype == torch.float32  # autocast, not a cast of the weights
    make_accelerator(TrainConfig())  # a later run in the same process may pick another precision


def test_teacher_output_cache_gives_the_same_training(tmp_path, tiny_teacher):
    calls = {"n": 0}
    tiny_teacher.image_tower.register_forward_hook(lambda m, i, o: calls.__setitem__("n", calls["n"] + 1))
    plain = _fit(_config(tmp_path / "plain", method="kd", epochs=2), tiny_teacher)
    calls["n"] = 0
    cached = _fit(_config(tmp_path / "cached", method="kd", epochs=2, cache_teacher_outputs=True), tiny_teacher)
    assert calls["n"] == math.ceil(48 / 8)  # one pass over the training set, then never again
    for (name, a), b in zip(plain.student.state_dict().items(), cached.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_the_teacher_cache_holds_embeddings_too(tiny_teacher):
    from robust_student.methods.base import cached_embedding_key, cached_logits_key, clean_teacher_embeddings

    data = build_dataset("synthetic:3", "train", n=10)
    cached = cache_teacher_outputs(data, {"teacher": tiny_teacher}, batch_size=4,
                                   accelerator=make_accelerator(TrainConfig()))
    item = cached[3]
    with torch.no_grad():
        embedding = tiny_teacher.encode_image(data[3]["image"][None])[0]
        logits = tiny_teacher(data[3]["image"][None])[0]
    torch.testing.assert_close(item[cached_embedding_key("teacher")], embedding)
    torch.testing.assert_close(item[cached_logits_key("teacher")], logits)
    batch = {"image": data[3]["image"][None], cached_embedding_key("teacher"): embedding[None]}
    assert torch.equal(clean_teacher_embeddings(batch, {"teacher": None}), embedding[None])


def test_teacher_cache_refuses_a_random_pipeline(tiny_teacher):
    class Random(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.rand(3, 16, 16), "label": 0}

    with pytest.raises(ValueError, match="deterministic"):
        cache_teacher_outputs(Random(), {"teacher": tiny_teacher}, batch_size=2,
                             accelerator=make_accelerator(TrainConfig()))


def test_overwrite_replaces_an_old_run_and_resume_without_a_checkpoint_starts_fresh(tmp_path, tiny_teacher):
    cfg = _config(tmp_path, method="kd", epochs=1, checkpoint_every=0, overwrite=True)
    stale = ckpt.checkpoint_root(cfg.train.output_dir) / "step_00000099"
    stale.mkdir(parents=True)
    (stale / ckpt.TRAINER_FILE).write_text("{}")
    result = _fit(cfg, tiny_teacher, resume=False)
    assert [p.name for p in ckpt.list_checkpoints(cfg.train.output_dir)] == ["step_00000006"]
    assert not (Path(cfg.train.output_dir) / ".replaced-run").exists()
    cfg2 = _config(tmp_path / "other", method="kd", epochs=1)
    assert _fit(cfg2, tiny_teacher, resume=True).steps == result.steps


def test_resume_after_the_last_epoch_trains_further_epochs_only(tmp_path, tiny_teacher):
    cfg = _config(tmp_path, method="kd", epochs=1)
    _fit(cfg, tiny_teacher)
    longer = cfg.with_overrides({"train.epochs": 2})
    result = _fit(longer, tiny_teacher, resume=True)
    records = [json.loads(x) for x in (Path(result.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 12 and [r["epoch"] for r in records if r["kind"] == "eval"] == [0, 1]


# -- pieces ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_state_round_trips_without_pickle(name, tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = build_optimizer([{"params": model.parameters(), "lr": 0.1}], TrainConfig(optimizer=name))
    for _ in range(2):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    ckpt.write_part(tmp_path, "opt", *ckpt.flatten_optimizer_state(optimizer.state_dict()))
    fresh = build_optimizer([{"params": model.parameters(), "lr": 0.1}], TrainConfig(optimizer=name))
    fresh.load_state_dict(ckpt.unflatten_optimizer_state(*ckpt.read_part(tmp_path, "opt")))
    a, b = optimizer.state_dict(), fresh.state_dict()
    assert json.dumps(a["param_groups"]) == json.dumps(b["param_groups"])  # tuples come back as lists
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key])), (index, key)


def test_rng_state_round_trips(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    np.random.randn()  # leave a cached gaussian in numpy's state
    ckpt.write_part(tmp_path, "rng", *ckpt.capture_rng_state())
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    ckpt.restore_rng_state(*ckpt.read_part(tmp_path, "rng"))
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_learning_rate_schedules():
    cosine = TrainConfig(epochs=10, scheduler="cosine")
    assert lr_factor(0, cosine, 10) == 1.0 and lr_factor(50, cosine, 10) == pytest.approx(0.5)
    assert lr_factor(100, cosine, 10) == pytest.approx(0.0)
    step = TrainConfig(epochs=10, scheduler="step", milestones=[5, 8], gamma=0.1)
    assert [lr_factor(s, step, 10) for s in (49, 50, 79, 80)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    warm = TrainConfig(epochs=10, scheduler="constant", warmup_epochs=1)
    assert lr_factor(0, warm, 10) == pytest.approx(0.1) and lr_factor(9, warm, 10) == 1.0
    with pytest.raises(ValueError, match="scheduler"):
        TrainConfig(scheduler="linear")


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.epoch = 1
    assert list(sampler) != first


def test_trainer_names_a_missing_teacher_role(tiny_student):
    with pytest.raises(ValueError, match=r"teacher role\(s\) \['teacher'\]"):
        Trainer(DistillConfig(), tiny_student, {}, create_method("rslad"), train_set=[])


def test_channels_last_trains_the_same_student_and_saves_plain_weights(tmp_path, tiny_teacher):
    # kd: without an attack's sign steps, which turn rounding differences into other adversarial examples
    plain = _fit(_config(tmp_path / "plain", method="kd", epochs=1), tiny_teacher)
    fast = _fit(_config(tmp_path / "fast", method="kd", epochs=1, channels_last=True), tiny_teacher)
    convs = [p for p in fast.student.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # 3x3 kernels: the layout really changed
    for (name, a), b in zip(plain.student.state_dict().items(), fast.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)  # the same math, other kernels
    from safetensors.torch import load_file

    newest = sorted((Path(fast.output_dir) / "checkpoints").iterdir())[-1]
    saved = {k: v for f in newest.rglob("*.safetensors") for k, v in load_file(str(f)).items()}
    assert saved and all(v.is_contiguous() for v in saved.values())


def test_a_weight_average_is_what_validates_saves_and_returns(tmp_path, tiny_teacher, monkeypatch):
    from robust_student.training import trainer as trainer_module

    validated = []  # the weights each validation measured

    def recording_validate(student, *args, **kwargs):
        validated.append({k: v.clone() for k, v in student.state_dict().items()})
        return validate(student, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "validate", recording_validate)
    cfg = _config(tmp_path, ema_decay=0.9, ema_warmup=True)
    result = _fit(cfg, tiny_teacher)
    latest = ckpt.latest_checkpoint(Path(cfg.train.output_dir))
    average = ckpt.read_part(latest, "ema")[0]
    raw = ckpt.read_part(latest, "model")[0]
    final = result.student.state_dict()
    assert all(torch.equal(final[k], average[k]) for k in final)  # the result is the average...
    weights = [k for k, v in final.items() if v.is_floating_point() and "weight" in k]
    assert any(not torch.equal(final[k], raw[f"student.{k}"]) for k in weights)  # ...not the last iterate
    assert len(validated) == len(result.history) == 2  # and the last validation measured the average
    assert all(torch.equal(validated[-1][k], final[k]) for k in final)
    # the same seed without averaging ends at the checkpoint's raw weights
    plain = _fit(_config(tmp_path / "plain"), tiny_teacher).student.state_dict()
    assert all(torch.equal(plain[k], raw[f"student.{k}"]) for k in weights)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1])
def test_ema_decay_outside_zero_one_is_refused(decay):
    from robust_student.config import ConfigError

    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=decay).validate()
