"""``robust-student --help`` lists every command a user can run, the torch-free ones included: ``predict`` and
``pacs`` are run by the runtime (robust_student_runtime.cli.sdk_main) before the SDK's parser is reached."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robust_student_runtime.cli import sdk_main


def _commands(help_text: str) -> set[str]:
    """The command names argparse lists under COMMAND (one per line, indented four spaces)."""
    return set(re.findall(r"^    ([a-z][a-z-]+)(?:\s|$)", help_text, flags=re.MULTILINE))


def test_robust_student_help_lists_predict_and_pacs(capsys):
    with pytest.raises(SystemExit) as exit_:
        sdk_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert {"predict", "pacs", "export", "validate"} <= _commands(out)
    assert "pacs run | pacs listen" in " ".join(out.split())


def test_the_installed_command_lists_them_and_pacs_help_is_the_runtimes():
    exe = Path(sys.executable).with_name("robust-student")
    command = [str(exe)] if exe.exists() else [shutil.which("robust-student") or "robust-student"]
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert {"predict", "pacs"} <= _commands(out.stdout)
    pacs = subprocess.run([*command, "pacs", "--help"], capture_output=True, text=True, timeout=120)
    assert pacs.returncode == 0 and "robust-student pacs" in pacs.stdout and "{run,listen}" in pacs.stdout


def test_pacs_through_the_sdk_parser_reaches_the_runtime(capsys):
    from robust_student.cli import main

    assert main(["pacs", "run", "--model", "/nonexistent.onnx", "--url", "http://127.0.0.1:9/dicom-web"]) == 2
    assert "robust-student pacs run: error" in capsys.readouterr().err
