"""A run is never destroyed, two fits never share a folder, and resume refuses what it cannot continue exactly.

Each test feeds a bad input (a folder holding a run, a file as output_dir, a second concurrent fit, a changed
config, a damaged checkpoint, a saved student that does not fit its spec) and checks both the one-line message
and, where data is at stake, that the earlier run is intact afterwards (every file's sha256 unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from robust_student import RobustDistiller, load_student, save_student
from robust_student import api as api_module
from robust_student.config import DistillConfig
from robust_student.data import build_dataset
from robust_student.methods import create_method
from robust_student.students import create_student
from robust_student.training import RunFolderError, Trainer
from robust_student.training import checkpoint as ckpt
from robust_student.training.run_dir import LOCK_FILE, REPLACED, RunDirectory, config_differences, preflight

from conftest import TinyTeacher

TESTS = Path(__file__).resolve().parent


def _config(out: Path, **train) -> DistillConfig:
    overrides = {"train.epochs": 1, "train.batch_size": 8, "train.output_dir": str(out), "train.checkpoint_every": 3,
                 "train.log_every": 2, "train.eval_examples": 8, "attack.steps": 1, "train.val_attack": "pgd:1"}
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return DistillConfig(method="kd", dataset="synthetic:3").with_overrides(overrides)


def _fit(cfg: DistillConfig, resume: bool = False, method=None):
    train, val = build_dataset(cfg.dataset, "train", n=32), build_dataset(cfg.dataset, "val", n=8)
    teacher = TinyTeacher()
    teacher.set_classes(train.prompts.classnames, train.prompts.templates)
    torch.manual_seed(0)
    student = create_student("resnet_tiny", teacher, image_size=16, width=8)
    method = method or create_method(cfg.method, cfg.method_args, threat=cfg.threat, attack=cfg.attack)
    return Trainer(cfg, student, {"teacher": teacher}, method, train, val).fit(resume=resume)


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of the run (the lock file aside), to prove nothing was touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture
def finished_run(tmp_path) -> Path:
    out = tmp_path / "run"
    _fit(_config(out))
    assert ckpt.list_checkpoints(out) and (out / "metrics.jsonl").is_file() and (out / "student").is_dir()
    return out


# -- 1. a run is never destroyed ---------------------------------------------------------------------------

def test_a_folder_holding_a_run_is_refused_and_left_intact(finished_run):
    before = _digests(finished_run)
    with pytest.raises(RunFolderError) as info:
        _fit(_config(finished_run))
    message = str(info.value)
    assert "holds a run (checkpoint step_00000004, metrics.jsonl, student/)" in message
    assert "--resume" in message and "--overwrite" in message and "\n" not in message
    assert _digests(finished_run) == before


def test_the_facade_refuses_before_any_data_or_teacher_loads(finished_run, monkeypatch, tmp_path):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was built although the run folder was going to be refused")

    monkeypatch.setattr(api_module, "build_dataset", no_data)
    distiller = RobustDistiller(teacher="fmnist-clip", method="kd", dataset="synthetic:3",
                                output_dir=str(finished_run))
    with pytest.raises(RunFolderError, match="holds a run"):
        distiller.fit()
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    with pytest.raises(RunFolderError, match=r"is a file, not a folder: choose another train.output_dir"):
        RobustDistiller(teacher="fmnist-clip", method="kd", dataset="synthetic:3", output_dir=str(a_file)).fit()
    under_a_file = a_file / "run"
    with pytest.raises(RunFolderError, match="is not writable"):
        RobustDistiller(teacher="fmnist-clip", method="kd", dataset="synthetic:3", output_dir=str(under_a_file)).fit()
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the file cases cover the check")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    with pytest.raises(RunFolderError, match="is not writable"):
        preflight(folder, resume=False, overwrite=False)


def test_overwrite_keeps_the_old_run_until_the_new_one_commits_a_checkpoint(finished_run):
    before = _digests(finished_run)
    cfg = _config(finished_run, overwrite=True)
    method = create_method("kd", attack=cfg.attack)
    calls = {"n": 0}
    loss = method.loss

    def fails_at_step_two(*args):
        calls["n"] += 1
        if calls["n"] == 2:  # before the first checkpoint (step 3)
            raise RuntimeError("the new run dies")
        return loss(*args)

    method.loss = fails_at_step_two
    with pytest.raises(RuntimeError, match="the new run dies"):
        _fit(cfg, method=method)
    assert _digests(finished_run) == before and not (finished_run / REPLACED).exists()

    result = _fit(cfg)  # now it succeeds: the old run is gone, the new one is complete
    assert not (finished_run / REPLACED).exists() and result.steps == 4
    assert _digests(finished_run) != before
    assert ckpt.read_trainer_state(ckpt.latest_checkpoint(finished_run))["config"]["train"]["overwrite"] is True


def test_a_run_an_interrupted_overwrite_moved_aside_is_put_back(finished_run):
    """A SIGKILL between moving the old run aside and the first checkpoint leaves .replaced-run/."""
    before = _digests(finished_run)
    aside = finished_run / REPLACED
    aside.mkdir()
    for name in ("checkpoints", "metrics.jsonl", "student"):
        os.replace(finished_run / name, aside / name)
    (finished_run / "metrics.jsonl").write_text('{"kind": "train", "step": 2}\n')  # the killed run's partial log
    with pytest.raises(RunFolderError, match="holds a run"):
        _fit(_config(finished_run))  # the next fit restores the old run, then refuses to replace it unasked
    assert _digests(finished_run) == before and not aside.exists()


def test_a_second_concurrent_fit_refuses_at_once_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "slow_fit.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from robust_student.training.run_dir import RunDirectory
        with RunDirectory({str(out)!r}, resume=False, overwrite=False):
            print("locked", flush=True)
            time.sleep(30)
    """), encoding="utf-8")
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(RunFolderError) as info:
            _fit(_config(out))
        assert time.monotonic() - start < 5  # refused at once, not after waiting
        assert f"in use by a running fit (pid {holder.pid} on " in str(info.value)
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            preflight(out, resume=False, overwrite=False)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert _fit(_config(out)).steps == 4  # the lock died with its holder


def test_the_lock_is_released_when_a_fit_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError), RunDirectory(out, resume=False, overwrite=False):
        raise ValueError("boom")
    with RunDirectory(out, resume=False, overwrite=False):
        pass


# -- 2. resume is safe ---------------------------------------------------------------------------------------

def test_resume_with_a_changed_config_lists_the_differing_keys(finished_run):
    before = _digests(finished_run)
    changed = _config(finished_run).with_overrides({"train.lr": 0.5, "attack.steps": 2})
    with pytest.raises(RunFolderError) as info:
        _fit(changed, resume=True)
    message = str(info.value)
    assert "attack.steps: 1 -> 2" in message and "train.lr: 0.1 -> 0.5" in message and "\n" not in message
    assert "Only train.epochs and logging options may change" in message
    assert _digests(finished_run) == before
    # extending the run and changing what it logs are allowed
    longer = _config(finished_run, epochs=2, log_every=1, eval_examples=4)
    assert _fit(longer, resume=True).steps == 8


def test_config_differences_ignore_only_the_resumable_keys():
    a = DistillConfig().to_dict()
    b = DistillConfig().with_overrides({"train.epochs": 99, "train.log_every": 1, "eval.n_examples": 5,
                                        "student": "vit_tiny"}).to_dict()
    assert config_differences(a, b) == ["student: 'resnet_tiny' -> 'vit_tiny'"]


def test_resume_skips_a_damaged_checkpoint_and_reproduces_the_run(tmp_path, caplog):
    reference = tmp_path / "reference"
    full = _fit(_config(reference, epochs=2, checkpoint_every=5, lr=0.05))
    damaged = tmp_path / "damaged"
    _fit(_config(damaged, epochs=2, checkpoint_every=5, lr=0.05))
    names = [p.name for p in ckpt.list_checkpoints(damaged)]
    assert names == ["step_00000005", "step_00000008"]
    newest = ckpt.latest_checkpoint(damaged)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated after its sha256 was recorded
    assert "does not match its recorded sha256" in ckpt.verify(newest)
    (damaged / "student").rename(damaged / "old-student")
    with caplog.at_level("WARNING"):
        resumed = _fit(_config(damaged, epochs=2, checkpoint_every=5, lr=0.05), resume=True)
    assert f"skipped checkpoint {newest}: model.safetensors does not match" in caplog.text
    assert resumed.steps == full.steps == 8
    for (name, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_run_with_nothing_intact_to_continue(finished_run):
    for checkpoint in ckpt.list_checkpoints(finished_run):
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    before = _digests(finished_run)
    with pytest.raises(RunFolderError) as info:
        _fit(_config(finished_run), resume=True)
    message = str(info.value)
    assert message.startswith(f"nothing to resume in {finished_run} (checkpoint step_00000004, metrics.jsonl, "
                              "student/): skipped checkpoint ") and "--overwrite" in message
    assert _digests(finished_run) == before
    for checkpoint in ckpt.list_checkpoints(finished_run):  # a finished run whose checkpoints were pruned
        shutil.rmtree(checkpoint)
    with pytest.raises(RunFolderError, match=r"\(metrics.jsonl, student/\): it has no checkpoint"):
        _fit(_config(finished_run), resume=True)


def test_a_checkpoint_that_does_not_fit_the_model_says_so_in_one_line(finished_run, tmp_path):
    state, _ = ckpt.read_part(ckpt.latest_checkpoint(finished_run), "model")
    odd = {("student.extra." + k if i % 2 else k): v for i, (k, v) in enumerate(state.items())}
    target = tmp_path / "odd"
    target.mkdir()
    ckpt.write_part(target, "model", odd)
    from robust_student.training.trainer import load_checkpoint

    teacher = TinyTeacher()
    teacher.set_classes(["a", "b", "c"], ["{}"])
    student = create_student("resnet_tiny", teacher, image_size=16, width=8)
    (target / ckpt.TRAINER_FILE).write_text(json.dumps({"format": ckpt.FORMAT_VERSION}))
    with pytest.raises(ValueError) as info:
        load_checkpoint(target, None, torch.nn.ModuleDict({"student": student}), None, None)
    message = str(info.value)
    assert "does not fit this run's student/method/teachers" in message and "missing" in message
    assert "\n" not in message and len(message) < 600


# -- saved students: wrong architecture, damaged files --------------------------------------------------------

@pytest.fixture
def saved_student(tmp_path) -> Path:
    teacher = TinyTeacher()
    teacher.set_classes(["a", "b", "c"], ["{}"])
    return save_student(create_student("resnet_tiny", teacher, image_size=16, width=8), tmp_path / "student")


def test_wrong_architecture_on_load_is_one_short_line(saved_student):
    config = json.loads((saved_student / "config.json").read_text())
    config["architecture"].update(name="vit_tiny", args={})
    (saved_student / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        load_student(saved_student)
    message = str(info.value)
    assert message.startswith(f"{saved_student}: config.json says vit_tiny; the weights are for resnet_tiny: ")
    assert re.search(r": \d+ missing, \d+ unexpected keys, 1 of another shape, e.g. missing backbone\.", message)
    assert "\n" not in message and len(message) < 600


def test_a_truncated_weights_file_names_itself(saved_student):
    weights = saved_student / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match=rf"^{weights} is not a readable safetensors file"):
        load_student(saved_student)


def test_an_invalid_config_names_itself_with_line_and_column(saved_student):
    (saved_student / "config.json").write_text('{"format": "robust_student/student",\n  "architecture": }')
    with pytest.raises(ValueError, match=rf"^{saved_student / 'config.json'} is not valid JSON \(line 2, column 19"):
        load_student(saved_student)
    (saved_student / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not a robust_student student config"):
        load_student(saved_student)


@pytest.mark.parametrize("make", ["empty folder", "file", "missing"])
def test_a_path_that_is_not_a_saved_student_says_what_one_is(tmp_path, make):
    path = tmp_path / "x"
    if make == "empty folder":
        path.mkdir()
    elif make == "file":
        path.write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a saved student .*config.json and model.safetensors"):
        load_student(path)
