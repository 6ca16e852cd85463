"""The recipes of FARE, TeCoA, MMT-ARD, CIARD and HPT-GPD: the paper settings and the offline Fashion-MNIST ones
(every recipe also builds a distiller in tests/test_api.py)."""

from __future__ import annotations

import pytest

from robust_student.api import list_recipes, load_recipe


def test_each_method_has_a_paper_and_a_fashion_mnist_recipe():
    for method in ("fare", "tecoa", "mmt_ard", "ciard", "hpt_gpd"):
        assert {f"{method}_paper", f"{method}_fmnist"} <= set(list_recipes())


def test_paper_settings():
    fare = load_recipe("fare_paper")
    assert (fare.threat.eps, fare.attack.steps, fare.attack.step_size, fare.train.lr) == \
        pytest.approx((2 / 255, 10, 1 / 255, 1e-5))
    assert fare.student == "clip" and fare.method_args["normalize_embeddings"] is False
    mmt = load_recipe("mmt_ard_paper")
    assert (mmt.method_args["lambda_adv"], mmt.method_args["lambda_clean"]) == (3.0, 0.5)
    assert set(mmt.teachers) == {"adv", "clean"} and mmt.train.lr == 2e-5
    ciard = load_recipe("ciard_paper")
    assert (ciard.method_args["teacher_lr"], ciard.method_args["teacher_momentum"]) == (1e-4, 0.1)
    assert ciard.method_args["teacher_warmup_fraction"] == pytest.approx(50 / 300) and ciard.train.epochs == 300
    assert ciard.teachers["adv"].trainable == "head"
    hpt = load_recipe("hpt_gpd_paper")
    assert hpt.method_args["lambda_anchor"] == 0.001 and set(hpt.teachers) == {"target", "proxy"}
    assert (hpt.train.optimizer, hpt.train.lr, hpt.attack.steps) == ("sgd", 5e-5, 5)


def test_the_fashion_mnist_recipes_use_the_built_in_zoo():
    assert load_recipe("mmt_ard_fmnist").teachers["adv"].name == "fmnist-clip-fare"
    assert load_recipe("ciard_fmnist").teachers["nat"].name == "fmnist-clip"
    assert load_recipe("hpt_gpd_fmnist").teachers["proxy"].name == "fmnist-clip-cnn"
    for name in ("fare_fmnist", "tecoa_fmnist", "mmt_ard_fmnist", "ciard_fmnist", "hpt_gpd_fmnist"):
        recipe = load_recipe(name)
        assert recipe.threat.eps == 0.1 and recipe.dataset.name == "fashion-mnist"
