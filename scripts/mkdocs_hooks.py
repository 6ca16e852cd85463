"""mkdocs hook: lay out the installed package for mkdocstrings (griffe reads source statically).

setuptools maps ``robust_student.export`` / ``.demo`` / ``.model_cards`` to the top-level folders ``export/``,
``demo/`` and ``model_cards/`` (``[tool.setuptools.package-dir]``), which a static reader of ``robust_student/``
cannot see. Before the build this writes ``build/api_src/robust_student/``: a symlink per entry of
``robust_student/`` plus one per mapped subpackage, so griffe finds the package as it is installed.
``mkdocs.yml`` points the Python handler at ``build/api_src``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"export": "export", "demo": "demo", "model_cards": "model_cards"}


def layout(target: Path = ROOT / "build" / "api_src") -> Path:
    package = target / "robust_student"
    if target.exists():
        shutil.rmtree(target)
    package.mkdir(parents=True)
    for entry in (ROOT / "robust_student").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(ROOT / folder, target_is_directory=True)
    return target


def on_startup(command: str, dirty: bool) -> None:  # mkdocs hook: runs once, before the config is read
    layout()


def on_pre_build(config) -> None:  # and again for each rebuild of `mkdocs serve`
    layout()


_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):\s*(?=<code)")


def on_page_content(html: str, page, config, files) -> str:
    """Docstrings use Sphinx roles (``:func:`name```); the rendered name keeps its code style, the role goes."""
    return _ROLE.sub("", html)
