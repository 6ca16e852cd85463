"""MMT-ARD: teacher confidence ratio and sigmoid weights (eqs. 3-6), the code's cosine weighting, the two inner
maximisations and the outer loss, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robust_student.config import AttackConfig
from robust_student.methods import Method, TrainState, create_method
from robust_student.methods.mmt_ard import confidence_ratio, sigmoid_weights, true_class_cosine

LN3 = math.log(3.0)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_confidence_ratio_and_sigmoid_weights_by_hand():
    adv = torch.tensor([[0.0, 0.0], [LN3, 0.0]])     # max softmax: 1/2, 3/4
    clean = torch.tensor([[LN3, 0.0], [LN3, 0.0]])   # 3/4, 3/4
    rho = confidence_ratio(adv, clean)
    expected_rho = [0.5 / (0.75 + 1e-5), 0.75 / (0.75 + 1e-5)]
    assert rho.tolist() == pytest.approx(expected_rho, rel=1e-6)
    w_adv, w_clean = sigmoid_weights(rho, slope=5.0, offset=1.0)
    assert w_adv.tolist() == pytest.approx([sigmoid(5 * (r - 1)) for r in expected_rho], rel=1e-6)
    assert w_adv[0].item() == pytest.approx(0.158869, abs=1e-5)  # sigmoid(-5/3): the adv teacher is less sure
    assert w_adv[1].item() == pytest.approx(0.5, abs=1e-4)       # equal confidence -> equal weights
    torch.testing.assert_close(w_clean, 1 - w_adv)


def test_the_codes_weights_are_raw_cosines_to_the_true_class_text_embedding():
    embeddings = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    classifier = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [D, C]
    assert true_class_cosine(embeddings, classifier, torch.tensor([0, 1])).tolist() == pytest.approx([1.0, 0.8])
    assert true_class_cosine(embeddings, classifier, torch.tensor([1, 0])).tolist() == pytest.approx([0.0, 0.6])


def test_paper_defaults():
    cfg = create_method("mmt-ard").config
    assert (cfg.lambda_adv, cfg.lambda_clean, cfg.slope, cfg.offset) == (3.0, 0.5, 5.0, 1.0)
    assert cfg.attack_objective == "embedding" and cfg.weighting == "paper"
    assert create_method("mmt-ard").teacher_roles == ("adv", "clean")
    with pytest.raises(ValueError, match="weighting"):
        create_method("mmt-ard", {"weighting": "sigmoid"})


def _kl(target_logits, pred_logits):
    """Per-sample KL(softmax(target) || softmax(pred)) written out."""
    p = F.softmax(target_logits, 1)
    return (p * (p.log() - F.log_softmax(pred_logits, 1))).sum(1)


@pytest.mark.parametrize("weighting", ["paper", "code"])
def test_outer_loss_matches_eq_1_with_the_weights(weighting, tiny_student, tiny_teacher, batch, monkeypatch):
    from conftest import TinyTeacher

    x, y = batch["image"], batch["label"]
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    monkeypatch.setattr(Method, "attack", lambda self, objective, x, student, **kw: x_adv)
    adv = TinyTeacher(seed=5)
    adv.set_classes(tiny_teacher.classnames, ["a photo of a {}."])
    teachers = {"adv": adv, "clean": tiny_teacher}
    method = create_method("mmt-ard", {"weighting": weighting})
    student = tiny_student.train()
    got = method.loss(batch, student, teachers, TrainState())
    with torch.no_grad():
        t_adv, t_clean, s_adv, s = adv(x_adv), tiny_teacher(x), student(x_adv), student(x)
        if weighting == "paper":
            conf_adv = F.softmax(t_adv, 1).max(1).values
            conf_clean = F.softmax(t_clean, 1).max(1).values
            w_adv = torch.sigmoid(5 * (conf_adv / (conf_clean + 1e-5) - 1))
            w_clean = 1 - w_adv
        else:
            w_adv = (adv.encode_image(x_adv) * adv.classifier[:, y].t()).sum(1)
            w_clean = (tiny_teacher.encode_image(x) * tiny_teacher.classifier[:, y].t()).sum(1)
        expected = (3.0 * w_adv * _kl(t_adv, s_adv) + 0.5 * w_clean * _kl(t_clean, s)).mean()
    torch.testing.assert_close(got["loss"].detach(), expected, rtol=1e-4, atol=1e-6)
    assert got["w_adv"].item() == pytest.approx(w_adv.mean().item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["embedding", "kl"])
def test_the_inner_maximisation_is_the_papers_embedding_distance_or_the_codes_kl(objective, tiny_student,
                                                                                tiny_teacher, batch, monkeypatch):
    seen = {}

    def capture(self, objective_fn, x, student, **kw):
        seen["value"] = objective_fn(x).detach()
        return x

    monkeypatch.setattr(Method, "attack", capture)
    method = create_method("mmt-ard", {"attack_objective": objective})
    student = tiny_student.eval()
    method.loss(batch, student, {"adv": tiny_teacher, "clean": tiny_teacher}, TrainState())
    x = batch["image"]
    with torch.no_grad():
        if objective == "embedding":  # || E_S(x) - E_clean(x) ||^2, both L2-normalised
            expected = (student.encode_image(x) - tiny_teacher.encode_image(x)).pow(2).sum(1)
        else:                          # KL(p_clean(x) || p_S(x))
            expected = _kl(tiny_teacher(x), student(x))
    torch.testing.assert_close(seen["value"], expected, rtol=1e-5, atol=1e-6)


def test_the_embedding_attack_moves_the_student_away_from_the_clean_teacher(tiny_student, tiny_teacher, batch):
    method = create_method("mmt-ard", attack=AttackConfig(steps=5, step_size=0.01))
    x = batch["image"]
    target = tiny_teacher.encode_image(x)
    student = tiny_student.eval()
    x_adv = method.attack(lambda z: (student.encode_image(z) - target).pow(2).sum(1), x, student)
    with torch.no_grad():
        before = (student.encode_image(x) - target).pow(2).sum(1)
        after = (student.encode_image(x_adv) - target).pow(2).sum(1)
    assert (after > before).all()


def test_an_embedding_attack_across_embedding_spaces_is_refused(tiny_student):
    from conftest import TinyTeacher

    other = TinyTeacher(embed_dim=8)
    with pytest.raises(ValueError, match="attack_objective='kl'"):
        create_method("mmt-ard").setup(tiny_student, {"adv": other, "clean": other})
    create_method("mmt-ard", {"attack_objective": "kl"}).setup(tiny_student, {"adv": other, "clean": other})
