"""FARE and TeCoA: their losses against hand-computed values, the student that starts as the teacher's own image
tower (a tiny open_clip CLIP at random weights, no download), and the tuned tower as a teacher again.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import robust_student as rs
from robust_student.methods import Method, TrainState, create_method
from robust_student.students import create_student, start_from_teacher
from robust_student.teachers import create_teacher
from robust_student.teachers.distilled import StudentTeacher

TINY_CLIP = {
    "embed_dim": 8,
    "vision_cfg": {"image_size": 8, "patch_size": 4, "width": 16, "layers": 1, "head_width": 8, "mlp_ratio": 2.0,
                   "pool_type": "avg"},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny open_clip CLIP at random weights, written as a local-dir folder (no download anywhere)."""
    import open_clip
    from open_clip.model import CLIP

    from robust_student.teachers.open_clip import export_local_dir

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP)
    open_clip.model.set_model_preprocess_cfg(model, {"size": 8, "mean": (0.4, 0.4, 0.4), "std": (0.3, 0.3, 0.3)})
    return export_local_dir(model, TINY_CLIP, tmp_path_factory.mktemp("tiny_clip"))


def _teacher(folder, classes=("class 0", "class 1", "class 2")):
    teacher = create_teacher(f"open_clip:local-dir:{folder}", license="MIT")
    teacher.set_classes(list(classes), ["a photo of a {}."])
    return teacher


# -- the losses, by hand ---------------------------------------------------------------------------------------

class Linear3(nn.Module):
    """1x1-pixel images -> their 3 channel values times ``scale``: embeddings one can compute by hand."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.ones(()))

    def encode_image(self, x, normalize=True):
        assert normalize is False  # FARE matches raw embeddings by default
        return self.scale * self.weight * x.flatten(1)


def test_fare_loss_is_the_mean_squared_embedding_distance(monkeypatch):
    x = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]]).view(2, 3, 1, 1)
    monkeypatch.setattr(Method, "attack", lambda self, objective, x, student, **kw: x + 0.1)
    method = create_method("fare", {"init_from_teacher": False})
    student, teacher = Linear3(1.0), Linear3(2.0).requires_grad_(False)
    out = method.loss({"image": x, "label": torch.tensor([0, 1])}, student, {"teacher": teacher}, TrainState())
    # phi(x') - phi_orig(x) = (x + 0.1) - 2x = 0.1 - x: rows (0, -0.1, -0.2) and (-0.4, -0.4, -0.4)
    assert out["loss"].item() == pytest.approx((0.05 + 0.48) / 2)
    with_clean = create_method("fare", {"init_from_teacher": False, "clean_weight": 0.25})
    out = with_clean.loss({"image": x, "label": torch.tensor([0, 1])}, student, {"teacher": teacher}, TrainState())
    clean = ((0.01 + 0.04 + 0.09) + 3 * 0.25) / 2  # phi(x) - phi_orig(x) = -x
    assert out["loss"].item() == pytest.approx(0.75 * 0.265 + 0.25 * clean)


def test_fare_attack_maximises_the_embedding_distance(tiny_student, tiny_teacher, batch):
    method = create_method("fare", {"init_from_teacher": False}, attack=rs.AttackConfig(steps=5, step_size=0.01))
    target = tiny_teacher.encode_image(batch["image"], normalize=False)
    encode = lambda x: tiny_student.encode_image(x, normalize=False)  # noqa: E731
    x_adv = method.attack(lambda x: (encode(x) - target).pow(2).sum(1), batch["image"], tiny_student.eval())
    before = (encode(batch["image"]) - target).pow(2).sum(1)
    after = (encode(x_adv) - target).pow(2).sum(1)
    assert (after > before).all() and (x_adv - batch["image"]).abs().max() <= 8 / 255 + 1e-6


def test_tecoa_loss_is_cross_entropy_of_the_zero_shot_logits_at_x_adv(monkeypatch):
    x = torch.zeros(2, 3, 1, 1)
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    monkeypatch.setattr(Method, "attack", lambda self, objective, x, student, **kw: x + 1.0)
    student = lambda images: logits if images.mean() == 1.0 else torch.zeros(2, 2)  # noqa: E731  (only x' counts)
    out = create_method("tecoa", {"init_from_teacher": False}).loss(
        {"image": x, "label": torch.tensor([0, 1])}, student, {"teacher": None}, TrainState())
    assert out["loss"].item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2)


# -- the student that is the teacher's tower ------------------------------------------------------------------

def test_the_clip_student_is_the_teachers_own_tower_and_rebuilds_without_it(tiny_clip_dir, tmp_path):
    teacher = _teacher(tiny_clip_dir)
    student = create_student("clip", teacher, image_size=8)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)
    assert student.spec["args"] == {"tower_cfg": teacher.tower_cfg} and teacher.tower_cfg["embed_dim"] == 8
    rs.save_student(student, tmp_path / "s")
    torch.testing.assert_close(rs.load_student(tmp_path / "s")(x), student(x))  # rebuilt from the config alone
    with pytest.raises(ValueError, match="dataset.image_size=8"):
        create_student("clip", teacher, image_size=16)


def test_start_from_teacher_copies_a_same_architecture_tower_and_catches_an_activation_mismatch(tiny_clip_dir):
    teacher = _teacher(tiny_clip_dir)
    student = create_student("clip", embed_dim=8, num_classes=3, image_size=8, tower_cfg=teacher.tower_cfg)
    student.set_classifier(teacher.classifier, teacher.logit_scale)
    x = torch.rand(4, 3, 8, 8)
    assert not torch.allclose(student(x), teacher(x), atol=1e-3)  # random init
    start_from_teacher(student, teacher)
    torch.testing.assert_close(student(x), teacher(x), atol=1e-5, rtol=1e-5)
    assert not student.head.weight.requires_grad and torch.equal(student.head.weight, torch.eye(8))
    quick = create_student("clip", embed_dim=8, num_classes=3, image_size=8,
                           tower_cfg={**teacher.tower_cfg, "quick_gelu": True})
    with pytest.raises(ValueError, match="QuickGELU"):
        start_from_teacher(quick, teacher)
    with pytest.raises(ValueError, match="student 'clip'"):
        start_from_teacher(create_student("resnet_tiny", teacher, image_size=8, width=8), teacher)


@pytest.mark.parametrize("method", ["fare", "tecoa"])
def test_a_tuned_tower_becomes_a_teacher_again_with_the_original_text_tower(tiny_clip_dir, tmp_path, method):
    from robust_student.teachers import TEACHERS, register_teacher

    if "tiny-clip" not in TEACHERS:  # a registered spec, so the saved student can name its teacher
        register_teacher("tiny-clip", license="MIT", commercial_use=True)(
            lambda arg=None, **kw: create_teacher(f"open_clip:local-dir:{kw.pop('folder')}", **kw))
    original = _teacher(tiny_clip_dir)
    distiller = rs.RobustDistiller(
        teacher="tiny-clip", teacher_args={"folder": str(tiny_clip_dir)}, method=method, student="clip",
        dataset=rs.DataConfig(name="synthetic:3", image_size=8), epochs=1, batch_size=16, max_train_examples=64,
        eval_examples=16, optimizer="adamw", lr=1e-2, output_dir=str(tmp_path / "run"),
        **{"threat.eps": 0.1, "attack.steps": 2, "attack.step_size": 0.05})
    student = distiller.fit()
    tuned = {k: v for k, v in student.backbone.visual.state_dict().items()}
    changed = [k for k, v in original.tunable_tower().state_dict().items() if not torch.equal(v, tuned[k])]
    assert changed, "the tower did not train"
    assert torch.equal(student.head.weight, torch.eye(8)) and torch.equal(student.head.bias, torch.zeros(8))

    teacher = create_teacher(f"student:{tmp_path / 'run' / 'student'}")
    assert isinstance(teacher, StudentTeacher) and teacher.provenance.license == "MIT"
    prompts = rs.build_dataset("synthetic:3", "test").prompts
    teacher.set_classes(prompts.classnames, prompts.templates)
    original.set_classes(prompts.classnames, prompts.templates)
    torch.testing.assert_close(teacher.classifier, original.classifier)  # the original text tower
    torch.testing.assert_close(teacher.classifier, student.classifier)
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(teacher(x), student(x), atol=1e-5, rtol=1e-5)  # the tuned image tower
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


@pytest.mark.parametrize("method", ["mmt-ard", "ciard", "hpt-gpd"])
def test_the_multi_teacher_methods_train_a_clip_student_too(tiny_clip_dir, method):
    teacher = _teacher(tiny_clip_dir)
    student = create_student("clip", teacher, image_size=8).train()
    m = create_method(method, attack=rs.AttackConfig(steps=2, step_size=0.05), threat=rs.ThreatConfig(eps=0.1))
    teachers = {role: teacher for role in m.teacher_roles}
    m.setup(student, teachers)
    batch = {"image": torch.rand(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 0])}
    out = m.loss(batch, student, teachers, TrainState(total_steps=10))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in student.backbone.visual.parameters())
