"""The seams the multi-teacher methods, export and cards build on: ``Method.setup``, typed per-role teachers that
can train, one saved-student format with the teacher's provenance and licence, and the import rules.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import robust_student as rs
from robust_student.config import AttackConfig, DistillConfig, TeacherSpec
from robust_student.data import build_dataset
from robust_student.losses import kl_div, soft_targets
from robust_student.methods import Method, MethodConfig, TrainState, create_method
from robust_student.methods.base import Batch
from robust_student.students import create_student
from robust_student.students.io import read_student_config
from robust_student.teachers import TEACHERS, register_teacher
from robust_student.training import Trainer
from robust_student.training import checkpoint as ckpt

from conftest import TinyTeacher

PACKAGE = Path(rs.__file__).resolve().parent


def _datasets():
    return build_dataset("synthetic:3", "train", n=32), build_dataset("synthetic:3", "val", n=8)


def _config(out: Path, teachers: dict | None = None, **train) -> DistillConfig:
    overrides = {"train.epochs": 2, "train.batch_size": 8, "train.output_dir": str(out), "train.checkpoint_every": 3,
                 "train.eval_examples": 0, "train.lr": 0.05, "attack.steps": 1}
    overrides.update({f"train.{k}": v for k, v in train.items()})
    config = DistillConfig(method="kd", dataset="synthetic:3").with_overrides(overrides)
    return config.with_overrides({"teachers": teachers}) if teachers else config


def _teacher(seed: int, classes) -> TinyTeacher:
    teacher = TinyTeacher(seed=seed)
    teacher.set_classes(classes.classnames, classes.templates)
    return teacher


def _student(teacher) -> nn.Module:
    torch.manual_seed(0)
    return create_student("resnet_tiny", teacher, image_size=16, width=8)


# -- 6. Method.setup ------------------------------------------------------------------------------------------

class AnchoredKD(Method):
    """KD plus an L2 pull towards a frozen copy of the student's initial weights, and a trainable temperature,
    both built in ``setup`` (the pattern HPT-GPD's anchor and MMT-ARD's heads follow)."""

    name = "anchored-kd"
    Config = MethodConfig

    def setup(self, student: nn.Module, teachers: Mapping[str, nn.Module]) -> None:
        self.setup_calls = getattr(self, "setup_calls", 0) + 1
        self.anchor = _frozen_copy(student)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def loss(self, batch: Batch, student: nn.Module, teachers: Mapping[str, nn.Module],
             state: TrainState) -> dict[str, Tensor]:
        x = batch["image"]
        with torch.no_grad():
            target = soft_targets(teachers["teacher"](x))
        kl = kl_div(target, student(x) / self.log_temperature.exp(), reduction="batchmean")
        pull = sum((p - a).pow(2).sum() for p, a in zip(student.parameters(), self.anchor.parameters()))
        return {"loss": kl + 1e-3 * pull, "kl": kl.detach()}


def _frozen_copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).requires_grad_(False).eval()


def test_setup_builds_method_modules_before_the_optimiser_with_stable_keys(tmp_path):
    train, val = _datasets()
    teacher = _teacher(0, train.prompts)
    student = _student(teacher)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    method = AnchoredKD()
    result = Trainer(_config(tmp_path / "run"), student, {"teacher": teacher}, method, train, val).fit()
    assert method.setup_calls == 1
    model, _ = ckpt.read_part(ckpt.latest_checkpoint(tmp_path / "run"), "model")
    assert "method.log_temperature" in model and any(k.startswith("method.anchor.backbone.") for k in model)
    for key, value in initial.items():  # the anchor is the student's initial weights, untouched by training
        assert torch.equal(model[f"method.anchor.{key}"], value), key
    assert method.log_temperature.item() != 0.0  # the method's own parameter was optimised
    _, optimizer = ckpt.read_part(ckpt.latest_checkpoint(tmp_path / "run"), "optimizer")
    optimised = sum(len(group["params"]) for group in optimizer["param_groups"])
    assert optimised == len(list(result.student.parameters())) + 1  # student + temperature, never the anchor


def test_dghfa_sizes_its_class_weights_in_setup(tiny_student, tiny_teacher, batch):
    method = create_method("dghfa", {"num_intermediate": 1}, attack=AttackConfig(steps=1))
    assert method.tau.numel() == 0
    with pytest.raises(RuntimeError, match="call method.setup"):
        method.loss(batch, tiny_student, {"teacher": tiny_teacher}, TrainState())
    method.setup(tiny_student, {"teacher": tiny_teacher})
    assert method.tau.tolist() == [1.0, 1.0, 1.0] and method.risk_sum.shape == (3,)
    assert torch.isfinite(method.loss(batch, tiny_student, {"teacher": tiny_teacher}, TrainState())["loss"])


# -- 7. per-role teachers, typed, trainable ----------------------------------------------------------------------

class TrainsAdv(Method):
    """Distil from a frozen ``nat`` teacher while the ``adv`` teacher trains on CE (CIARD's pattern)."""

    name = "trains-adv"
    Config = MethodConfig
    teacher_roles = ("adv", "nat")
    trainable_teacher_roles = ("adv",)

    def teacher_optimizer_options(self, role: str) -> dict:
        return {"lr": 0.01, "momentum": 0.1}  # the method's defaults; TeacherSpec.lr overrides the lr

    def loss(self, batch, student, teachers, state):
        x, y = batch["image"], batch["label"]
        adv = teachers["adv"]
        self.modes = {"head": adv.image_tower[6].training, "trunk": adv.image_tower[0].training,
                      "nat": teachers["nat"].training}
        with torch.no_grad():
            target = soft_targets(teachers["nat"](x))
        kl = kl_div(target, student(x), reduction="batchmean")
        ce = F.cross_entropy(adv(x), y)
        return {"loss": kl + ce, "kl": kl.detach(), "ce_adv_teacher": ce.detach()}


def _fit_roles(out: Path, part: str | None, resume: bool = False, lr: float | None = 0.02):
    train, val = _datasets()
    adv, nat = _teacher(1, train.prompts), _teacher(2, train.prompts)
    spec = {"adv": {"name": "tiny", "trainable": part, "lr": lr}, "nat": "tiny"}
    method = TrainsAdv()
    result = Trainer(_config(out, spec), _student(nat), {"adv": adv, "nat": nat}, method, train, val).fit(resume)
    return result, adv, nat, method


@pytest.mark.parametrize("part", ["head", "all", None])
def test_a_trainable_role_trains_and_every_frozen_teacher_stays_bit_identical(tmp_path, part):
    train, _ = _datasets()
    adv0, nat0 = _teacher(1, train.prompts).state_dict(), _teacher(2, train.prompts).state_dict()
    result, adv, nat, method = _fit_roles(tmp_path / "run", part)
    changed = {k for k, v in adv.state_dict().items() if not torch.equal(v, adv0[k])}
    if part == "all":
        assert {"image_tower.0.weight", "image_tower.6.weight"} <= changed  # the whole image tower trained
        assert not any(k.startswith("text_tower") for k in changed)  # no gradient reaches the text tower
    else:  # "head", and the method's default for its trainable role
        assert changed == {"image_tower.6.weight", "image_tower.6.bias"}
        assert method.modes == {"head": True, "trunk": False, "nat": False}
    assert all(torch.equal(v, nat0[k]) for k, v in nat.state_dict().items())
    assert not nat.training and not any(p.requires_grad for p in nat.parameters())
    latest = ckpt.latest_checkpoint(tmp_path / "run")
    model, _ = ckpt.read_part(latest, "model")
    assert any(k.startswith("teachers.adv.image_tower.6") for k in model) and not any("nat" in k for k in model)
    _, optimizer = ckpt.read_part(latest, "optimizer")
    groups = optimizer["param_groups"]
    assert len(groups) == 2 and groups[1]["initial_lr"] == 0.02 and groups[1]["momentum"] == 0.1
    saved = read_student_config(tmp_path / "run" / "student")
    assert saved["teachers"]["adv"]["trained"] == (part or "head") and saved["teachers"]["nat"]["trained"] == "none"


def test_a_trainable_role_resumes_exactly(tmp_path):
    full, adv_full, _, _ = _fit_roles(tmp_path / "full", "head")
    partial = tmp_path / "partial"
    _fit_roles(partial, "head")
    checkpoints = ckpt.list_checkpoints(partial)
    assert [p.name for p in checkpoints] == ["step_00000006", "step_00000008"]
    shutil.rmtree(checkpoints[-1])  # back to the mid-run checkpoint (epoch 1, batch 2)
    shutil.rmtree(partial / "student")
    resumed, adv_resumed, _, _ = _fit_roles(partial, "head", resume=True)
    assert resumed.steps == full.steps == 8
    for name, value in full.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[name]), name
    for name, value in adv_full.state_dict().items():
        assert torch.equal(value, adv_resumed.state_dict()[name]), name


def test_teacher_specs_are_typed_and_a_bare_name_still_works():
    config = DistillConfig.from_dict({"teachers": {"adv": "fmnist-clip", "nat": {"name": "tiny", "trainable": "all",
                                                                                 "lr": "1e-4"}}})
    assert config.teachers["adv"] == TeacherSpec("fmnist-clip")
    assert config.teachers["nat"] == TeacherSpec("tiny", trainable="all", lr=1e-4)
    assert config.teacher_spec("adv", first_role=False).name == "fmnist-clip"
    assert config.teacher_spec("teacher", first_role=True) == TeacherSpec(config.teacher)
    assert config.teacher_spec("other", first_role=False) is None


def test_teacher_args_reach_every_role_and_a_roles_args_win(monkeypatch):
    from robust_student.methods.kd import KD

    seen: list[dict] = []
    if "tiny-args" not in TEACHERS:
        register_teacher("tiny-args", license="MIT", commercial_use=True)(
            lambda arg=None, **kw: seen.append(kw) or TinyTeacher(seed=kw.get("seed", 0)))
    monkeypatch.setattr(KD, "teacher_roles", ("teacher", "clean"))
    roles = {"teacher": "tiny-args", "clean": {"name": "tiny-args", "args": {"seed": 3}}}
    distiller = rs.RobustDistiller(teacher=roles, method="kd", dataset="synthetic:3",
                                   teacher_args={"input_size": 16, "seed": 1})
    assert distiller.config.teacher == "tiny-args" and set(distiller.config.teachers) == {"teacher", "clean"}
    teachers = distiller._teachers_for_roles(build_dataset("synthetic:3", "train").prompts)
    assert seen[-2:] == [{"input_size": 16, "seed": 1}, {"input_size": 16, "seed": 3}]
    assert teachers["clean"].provenance.args == {"input_size": 16, "seed": 3}
    assert teachers["clean"].provenance.license == "MIT" and teachers["teacher"].num_classes == 3


# -- 9. one saved student format -----------------------------------------------------------------------------

def test_the_saved_student_carries_everything_export_and_cards_read(tmp_path):
    distiller = rs.RobustDistiller(teacher="fmnist-clip", method="kd", student="resnet_tiny", dataset="synthetic:3",
                                   epochs=1, batch_size=32, eval_examples=8, student_args={"width": 8},
                                   image_size=28, output_dir=str(tmp_path / "run"))
    student = distiller.fit()
    folder = tmp_path / "run" / "student"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "robust_student/student" and config["format_version"] == 1
    assert config["architecture"] == {"name": "resnet_tiny", "args": {"width": 8}, "embed_dim": 64, "image_size": 28}
    assert config["class_names"] == ["class 0", "class 1", "class 2"] == config["labels"]
    assert config["num_classes"] == 3 and config["input"] == {"layout": "NCHW", "channels": 3, "height": 28,
                                                              "width": 28, "range": [0.0, 1.0], "dtype": "float32"}
    assert len(config["normalization"]["mean"]) == 3 and config["logit_scale"] == pytest.approx(student.logit_scale)
    teacher = config["teacher"]
    assert (teacher["role"], teacher["spec"], teacher["license"], teacher["commercial_use"]) == \
        ("teacher", "fmnist-clip", "Apache-2.0", True)
    assert teacher["license_url"].startswith("https://") and config["teachers"] == {"teacher": teacher}
    assert config["method"] == "kd" and config["threat"] == {"norm": "linf", "eps": 8 / 255}
    assert config["config"]["student_args"] == {"width": 8} and config["history"][0]["val_examples"] == 8
    loaded = rs.load_student(folder)
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(loaded(x), student(x))
    assert loaded.classnames == student.classnames and loaded.teacher_provenance["license"] == "Apache-2.0"


def test_loading_never_downloads_a_backbone(tmp_path, monkeypatch):
    from robust_student import students as students_module

    calls: list[dict] = []
    real = students_module._timm

    def spy(model_name, **kwargs):
        calls.append(kwargs)
        return real(model_name, **{**kwargs, "pretrained": False})  # nothing can be fetched offline anyway

    monkeypatch.setattr(students_module, "_timm", spy)
    teacher = TinyTeacher()
    teacher.set_classes(["a", "b"], ["{}"])
    student = create_student("resnet18", teacher, image_size=32, pretrained=True)
    assert student.spec["args"] == {} and calls[-1]["pretrained"] is True  # the spec keeps no download flag
    rs.save_student(student, tmp_path / "s")
    assert "pretrained" not in json.loads((tmp_path / "s" / "config.json").read_text())["architecture"]["args"]
    rs.load_student(tmp_path / "s")
    assert not calls[-1].get("pretrained")


@pytest.mark.parametrize("name", sorted(TEACHERS.names()))
def test_every_teacher_backend_declares_its_licence_at_registration(name):
    if name.startswith("tiny"):
        pytest.skip("a test-only teacher")
    assert TEACHERS.metadata(name) is not None
    terms = rs.describe_teacher(name)
    assert set(terms) >= {"license", "license_url", "commercial_use", "usage"}
    if name in ("conch", "cxr-clip"):
        assert terms["commercial_use"] is False and terms["license"].startswith("CC-BY-NC")
    elif name == "student":  # a saved student: the licence of the teacher it records (see test_fare_tecoa)
        assert "distilled from" in terms["note"]
    elif name != "open_clip":
        assert terms["license"] and terms["commercial_use"] is True


# -- 8. one of each: the import rules ---------------------------------------------------------------------------

def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Modules a file imports, with relative imports resolved against the package (``top_level_only``: those
    outside any function, i.e. imported when the module is)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if top_level_only:
        nodes = [n for n in ast.walk(tree) if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        nodes = [n for n in nodes if id(n) not in inside]
    else:
        nodes = list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(f"{base}.{node.module}" if node.level and node.module else (node.module or base))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_data_does_not_import_teachers_and_methods_do_not_import_each_other():
    for path in (PACKAGE / "data").glob("*.py"):
        assert not any(m.startswith("robust_student.teachers") for m in _imports(path)), path.name
    method_modules = {p.stem for p in (PACKAGE / "methods").glob("*.py")} - {"__init__", "base"}
    for path in (PACKAGE / "methods").glob("*.py"):
        if path.stem in ("__init__", "base"):
            continue
        others = {m.rsplit(".", 1)[-1] for m in _imports(path) if m.startswith("robust_student.methods.")}
        assert not (others & method_modules), f"{path.name} imports {others & method_modules}"


APPLICATIONS = (["robust_student", "export"], ["robust_student", "demo"], ["robust_student", "model_cards"])
# The facade and the CLI present the applications (RobustDistiller.export_onnx, robust-student export): they reach
# them lazily, inside the one function that needs each, never when the library is imported.
PRESENTATION = ("api.py", "cli.py")


def test_the_library_never_imports_its_applications():
    """No library module depends on export/, demo/ or model_cards/ when it is imported; the facade and the CLI
    may reach them inside a function (``RobustDistiller.export_onnx``, ``robust-student export``)."""
    for path in PACKAGE.rglob("*.py"):
        lazily_allowed = path.parent == PACKAGE and path.name in PRESENTATION
        bad = [m for m in _imports(path, top_level_only=lazily_allowed) if m.split(".")[:2] in APPLICATIONS]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
