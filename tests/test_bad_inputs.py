"""Bad input never yields a number: config errors surface at construction, evaluation refuses meaningless
input, degenerate data refuses to train, and the CLI answers every user error in one line with exit code 2.

Each test feeds one bad input and asserts the message (what is wrong and what to do), not only that it raised.
"""

from __future__ import annotations

import logging

import pytest
import torch

from robust_student import RobustDistiller, evaluate_robustness
from robust_student import api as api_module
from robust_student.attacks import LinfBall, make_threat
from robust_student.cli import main
from robust_student.config import ConfigError, DistillConfig, ThreatConfig
from robust_student.data import build_dataset
from robust_student.students import create_student
from robust_student.students.io import save_student

from conftest import TinyTeacher
from test_data import make_folder, truncate, write_image


def _no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded although the input could be refused without it")

    monkeypatch.setattr(api_module, "build_dataset", refuse)


@pytest.fixture
def student3():
    """A student whose classes are synthetic:3's (``class 0`` ... ``class 2``)."""
    teacher = TinyTeacher()
    prompts = build_dataset("synthetic:3", "test").prompts
    teacher.set_classes(prompts.classnames, prompts.templates)
    torch.manual_seed(0)
    return create_student("resnet_tiny", teacher, image_size=16, width=8).eval()


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


# -- 3. config errors surface at construction, in one line ---------------------------------------------------

@pytest.mark.parametrize("method_args, message", [
    ({"betta": 3.0}, "method_args.betta is not a TRADESConfig key. Did you mean 'beta'?"),
    ({"beta": "high"}, "method_args.beta must be a number, got 'high' (str) (method 'trades')"),
    ({"reduction": "mean"}, "method_args: reduction must be one of ('batchmean', 'sum'), got 'mean'"),
])
def test_method_args_are_validated_when_the_distiller_is_built(method_args, message, monkeypatch):
    _no_data(monkeypatch)
    with pytest.raises(ConfigError) as info:
        RobustDistiller(teacher="fmnist-clip", method="trades", dataset="synthetic:3", method_args=method_args)
    assert str(info.value).startswith(message)


def test_a_method_that_cannot_run_with_the_attack_loop_is_refused_at_construction(monkeypatch):
    _no_data(monkeypatch)
    with pytest.raises(ValueError, match=r"num_intermediate <= PGD steps.*raise attack.steps"):
        RobustDistiller(teacher="fmnist-clip", method="dghfa", dataset="synthetic:3", **{"attack.steps": 3})
    with pytest.raises(ValueError, match="Unknown attack 'pgd200'"):
        RobustDistiller(teacher="fmnist-clip", method="kd", dataset="synthetic:3",
                        **{"eval.attacks": ["clean", "pgd200"]})


@pytest.mark.parametrize("override, message", [
    ("train.epochs=1.5", "train.epochs must be an integer, got 1.5 (float)"),
    ("train.epochs=abc", "train.epochs must be an integer, got 'abc' (str)"),
    ("train.lr=fast", "train.lr must be a number, got 'fast' (str)"),
    ("attack.steps=2.7", "attack.steps must be an integer, got 2.7 (float)"),
    ("threat.steps=3", "threat.steps is not a ThreatConfig setting any more: write attack.steps"),
])
def test_cli_config_errors_are_one_line_with_exit_code_2(override, message, capsys, tmp_path):
    code, err = _cli(capsys, "fit", "--set", override, f"train.output_dir={tmp_path / 'run'}")
    assert code == 2 and err == f"robust-student fit: error: {message}"
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_yaml_errors_give_file_line_and_column(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: rslad\ntrain:\n  epochs: [1, 2\n")
    code, err = _cli(capsys, "fit", "--recipe", str(recipe))
    assert code == 2 and err.startswith(f"robust-student fit: error: {recipe}: line ") and "column" in err
    assert "YAML syntax error" in err and "\n" not in err


def test_cli_tracebacks_only_with_verbose(capsys, monkeypatch):
    from robust_student import cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "list", (cli.COMMANDS["list"][0], broken, "list"))
    code, err = _cli(capsys, "list")
    assert code == 1 and "internal error (ZeroDivisionError: a bug); rerun with -v" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["-v", "list"])


@pytest.mark.parametrize("kind", ["empty folder", "file", "missing path"])
def test_eval_of_a_path_that_is_not_a_saved_student_says_so(kind, capsys, tmp_path):
    path = tmp_path / "model"
    if kind == "empty folder":
        path.mkdir()
    elif kind == "file":
        path.write_text("x")
    code, err = _cli(capsys, "eval", "--model", str(path), "--data", "synthetic:3", "--attacks", "clean")
    assert code == 2 and "Unknown teacher" not in err and "\n" not in err
    expected = "no such folder" if kind == "missing path" else "is not a saved student"
    assert expected in err and "config.json and model.safetensors" in err


# -- 4. evaluation refuses input that makes its numbers meaningless ------------------------------------------

def _data(x, y):
    return (x, y)


@pytest.mark.parametrize("make, message", [
    (lambda x, y: (x.masked_fill(x > 0.9, float("nan")), y), "are NaN or infinite"),
    (lambda x, y: (x * 255, y), r"pixels range over \[.*\], outside \[0, 1\]\. They look like 0-255 values: "
                               r"divide by 255\."),
    (lambda x, y: (x - 0.5, y), r"outside \[0, 1\]\. Images must be float pixels in \[0, 1\]"),
    (lambda x, y: (x, y + 3), r"labels must be in \[0, 3\) for a model with 3 classes; found \[3, 4, 5\]"),
    (lambda x, y: (x, y - 1), r"labels must be in \[0, 3\).*found \[-1\]"),
])
def test_evaluation_refuses_bad_pixels_and_labels(make, message, student3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 3, 16, 16, generator=g), torch.arange(12) % 3
    with pytest.raises(ValueError, match=message):
        evaluate_robustness(student3, make(x, y), ["clean", "fgsm"], LinfBall(0.03), n_examples=12, checks=False,
                            progress=False)


def test_a_model_whose_classes_are_not_the_datasets_is_refused(student3, tmp_path):
    root = make_folder(tmp_path / "two", classes=("benign", "malignant"), n=4)
    data = build_dataset(f"imagefolder:{root}", "train", image_size=16)
    with pytest.raises(ValueError, match=r"the model predicts 3 classes but the dataset has 2 \(benign, malignant\)"):
        evaluate_robustness(student3, data, ["clean"], n_examples=4, checks=False, progress=False)
    renamed = make_folder(tmp_path / "three", classes=("x", "y", "z"), n=4)
    data = build_dataset(f"imagefolder:{renamed}", "train", image_size=16)
    with pytest.raises(ValueError, match=r"the model's classes \['class 0', 'class 1', 'class 2'\] are not the "
                                         r"dataset's \['x', 'y', 'z'\]"):
        evaluate_robustness(student3, data, ["clean"], n_examples=4, checks=False, progress=False)
    same = build_dataset("synthetic:3", "test")  # the classes it was built for: fine
    assert evaluate_robustness(student3, same, ["clean"], n_examples=4, checks=False, progress=False).n_examples == 4


@pytest.mark.parametrize("threat, attacks, message", [
    (LinfBall(-0.1), ["clean", "pgd20"], "eps must be >= 0, got -0.1"),
    (LinfBall(0.0), ["clean", "pgd20"], "eps is 0, so pgd20 would only measure clean accuracy"),
    (LinfBall(2.0), ["clean", "fgsm"],
     r"eps must be <= 1 for L-inf on \[0, 1\] pixels, got 2 \(did you mean 2/255\?\)"),
    (make_threat("l2", -1.0), ["clean"], "eps must be >= 0"),
])
def test_evaluation_refuses_a_meaningless_radius(threat, attacks, message, student3):
    with pytest.raises(ValueError, match=message):
        evaluate_robustness(student3, build_dataset("synthetic:3", "test"), attacks, threat, n_examples=4,
                            checks=False, progress=False)


def test_evaluation_warns_above_half_and_refuses_a_zero_batch(student3, caplog):
    data = build_dataset("synthetic:3", "test")
    with caplog.at_level(logging.WARNING):
        evaluate_robustness(student3, data, ["clean", "fgsm"], LinfBall(0.7), n_examples=4, checks=False,
                            progress=False)
    assert "above 0.5" in caplog.text
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate_robustness(student3, data, ["clean"], n_examples=4, batch_size=0, checks=False, progress=False)
    with pytest.raises(ValueError, match="n_examples must be >= 1, got 0"):
        evaluate_robustness(student3, data, ["clean"], n_examples=0, checks=False, progress=False)


def test_an_eps_curve_may_start_at_zero_but_not_go_negative(student3):
    from robust_student.evaluation import eps_curve

    data = build_dataset("synthetic:3", "test")
    curve = eps_curve(student3, data, eps_list=[0, "2/255"], n_examples=4, progress=False)
    assert curve["eps_text"] == ["0", "2/255"]
    with pytest.raises(ValueError, match="eps must be >= 0"):
        eps_curve(student3, data, eps_list=[-0.01, 0.1], n_examples=4, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--eps", "-0.1"], "eps must be >= 0, got -0.1"),
    (["--eps", "0"], "eps is 0, so fgsm would only measure clean accuracy"),
    (["--eps", "2"], "eps must be <= 1 for L-inf"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--attacks", "clean", "pgd-20"], "Unknown attack 'pgd-20'"),
])
def test_cli_eval_refuses_before_loading_anything(argv, message, capsys, tmp_path, monkeypatch):
    from robust_student.students import io

    monkeypatch.setattr(io, "load_student", lambda *a: pytest.fail("the model was loaded"))
    full = ["eval", "--model", str(tmp_path), "--data", "synthetic:3", "--attacks", "clean", "fgsm", *argv]
    try:
        code, err = _cli(capsys, *full)
    except SystemExit as exit_:  # argparse's own errors exit 2 with a usage line
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2 and message in err


def test_eval_and_zeroshot_skip_corrupt_images_on_request(student3, capsys, tmp_path, monkeypatch):
    root = tmp_path / "data"
    for k, name in enumerate(("class 0", "class 1", "class 2")):
        for i in range(4):
            write_image(root / name / f"{i}.png", seed=10 * k + i, size=(16, 16))
    truncate(root / "class 1" / "2.png")
    save_student(student3, tmp_path / "student")
    argv = ["eval", "--model", str(tmp_path / "student"), "--data", f"imagefolder:{root}", "--split", "train",
            "--attacks", "clean", "--no-checks"]
    code, err = _cli(capsys, *argv)
    assert code == 2 and "Cannot read image" in err and "2.png" in err and "skip_corrupt" in err
    assert main([*argv, "--skip-corrupt"]) == 0
    assert "| clean |" in capsys.readouterr().out

    from robust_student import teachers

    teacher = TinyTeacher()
    monkeypatch.setattr(teachers, "create_teacher", lambda name: teacher)
    monkeypatch.setitem(teachers.TEACHERS._items, "tiny-zs", None)
    zs = ["zeroshot", "--teacher", "tiny-zs", "--data", f"imagefolder:{root}", "--split", "train"]
    code, err = _cli(capsys, *zs)
    assert code == 2 and "2.png" in err
    assert main([*zs, "--skip-corrupt", "--json"]) == 0
    assert '"zero_shot_accuracy"' in capsys.readouterr().out


# -- 5. degenerate data refuses to train ---------------------------------------------------------------------

def _distiller(tmp_path, dataset: str, **extra) -> RobustDistiller:
    return RobustDistiller(teacher=TinyTeacher(), method="kd", student="resnet_tiny", dataset=dataset,
                           epochs=1, batch_size=8, eval_examples=4, student_args={"width": 8},
                           output_dir=str(tmp_path / "run"), **extra)


def test_fewer_than_two_classes_refuses(tmp_path):
    root = make_folder(tmp_path / "one", classes=("tumour",), n=12)
    with pytest.raises(ValueError, match=r"has 1 class\(es\) \(tumour\); a classifier needs at least two"):
        _distiller(tmp_path, f"imagefolder:{root}").fit()


def test_an_empty_training_split_after_skipping_corrupt_files_refuses(tmp_path):
    root = make_folder(tmp_path / "broken", classes=("a", "b"), n=6)
    for path in root.rglob("*.png"):
        path.write_bytes(b"not an image")
    distiller = _distiller(tmp_path, f"imagefolder:{root}", **{"dataset.skip_corrupt": True})
    with pytest.raises(ValueError, match=r"the train split of .* is empty \(\d+ unreadable image\(s\) were skipped\)"):
        distiller.fit()


def test_an_empty_validation_split_refuses_unless_validation_is_off(tmp_path):
    root = make_folder(tmp_path / "tiny", classes=("a", "b"), n=2)  # 2 per class: nothing left for val
    with pytest.raises(ValueError, match=r"validation split of .* is empty.*train.eval_examples=0"):
        _distiller(tmp_path, f"imagefolder:{root}").fit()


def test_max_train_examples_zero_and_a_negative_image_size_are_config_errors(monkeypatch):
    _no_data(monkeypatch)
    with pytest.raises(ConfigError, match=r"^dataset.max_train_examples must be >= 1, got 0"):
        RobustDistiller(teacher="fmnist-clip", method="kd", dataset="synthetic:3", max_train_examples=0)
    with pytest.raises(ConfigError, match=r"^dataset.image_size must be >= 1, got -28"):
        RobustDistiller(teacher="fmnist-clip", method="kd", dataset="synthetic:3", image_size=-28)


def test_mixed_image_sizes_name_a_file_and_the_option(tmp_path):
    root = tmp_path / "mixed"
    for i in range(6):
        write_image(root / "a" / f"{i}.png", seed=i, size=(16, 16))
        write_image(root / "b" / f"{i}.png", seed=10 + i, size=(16, 16) if i else (24, 20))
    with pytest.raises(ValueError) as info:
        build_dataset(f"imagefolder:{root}", "train")
    message = str(info.value)
    assert "images differ in size: " in message and "is 24x20 but " in message and "1" in message
    assert "set dataset.image_size (e.g. --set dataset.image_size=" in message
    assert len(build_dataset(f"imagefolder:{root}", "train", image_size=16)) > 0  # with the option it works


def test_a_student_from_a_teacher_without_classes_refuses():
    with pytest.raises(ValueError, match=r"teacher 'tiny' has no classes yet.*call teacher.set_classes"):
        create_student("resnet_tiny", TinyTeacher(), image_size=16)


def test_threat_configs_take_no_loop_settings():
    with pytest.raises(TypeError):
        ThreatConfig(eps=0.1, step_size=0.01)  # the loop settings live in AttackConfig; nothing is ignored
    assert DistillConfig().threat.to_dict() == {"norm": "linf", "eps": 8 / 255}
