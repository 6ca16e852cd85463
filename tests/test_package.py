"""Packaging contracts: the light import, the installed subpackages, the CLI entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_does_not_pull_applications():
    code = ("import sys, robust_student; "
            "bad = [m for m in ('gradio', 'onnxruntime', 'huggingface_hub', 'matplotlib', 'pyautoattack') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("sub", ["export", "demo", "model_cards"])
def test_application_subpackages_are_namespaced(sub):
    module = __import__(f"robust_student.{sub}", fromlist=["_"])
    assert module.__name__ == f"robust_student.{sub}"


def test_public_listers():
    import robust_student as rs

    assert "fashion-mnist" in rs.list_datasets() and "resnet_tiny" in rs.list_students()
    assert "conch" in rs.list_teachers() and "cxr-clip" in rs.list_teachers() and "open_clip" in rs.list_teachers()
    assert rs.describe_teacher("conch")["usage"] == "conch[:WEIGHTS]"
    assert rs.describe_teacher("cxr-clip")["commercial_use"] is False
    assert rs.describe_teacher("open_clip:ViT-B-32/openai")["license"] == "MIT"
    assert rs.describe_teacher("fmnist-clip")["license"] == "Apache-2.0"


def test_cli_lists_registries(capsys):
    from robust_student.cli import main

    assert main(["list", "students"]) == 0
    assert "resnet18" in capsys.readouterr().out


def test_cli_bad_input_is_one_clear_line(capsys):
    from robust_student.cli import main

    assert main(["zeroshot", "--teacher", "no-such-teacher", "--data", "synthetic:3"]) == 2
    err = capsys.readouterr().err
    assert "Unknown teacher 'no-such-teacher'" in err and "Traceback" not in err
