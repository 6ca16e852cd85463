"""The README and the documentation site say only what the code does.

* Every shell command in a fenced ``bash`` block of README.md and docs/**.md is checked against the code
  (:func:`check_command`): ``robust-student`` commands are parsed by the real argument parser, ``fit`` recipes and
  ``--set`` overrides are built into a config, benchmark and script flags must exist in the script, extras must
  exist in pyproject.toml, make targets in the Makefile; and each must be *exercised*: run by CI (``.ci/run`` ->
  ``make test``), or by a named test that runs the same command or the function it calls. Commands CI cannot
  run (a GPU, several machines) are listed in :data:`NEEDS_HARDWARE` with the reason.
* The troubleshooting guide's errors are produced for real: each ``bash`` block followed by a ``text`` block is
  run in-process and must print exactly that line.
* Python blocks compile, and what they import exists.
* The teacher pages are what ``scripts/docs_teachers.py`` writes from the registry, and each is in the nav.
* README is a user's guide: <= 200 lines, no session or machine history, no commit hashes, no broken links.
* The site builds with ``mkdocs build --strict`` (broken links and missing references fail).
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TROUBLESHOOTING = DOCS / "guides" / "troubleshooting.md"


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


# -- extracting blocks and commands ------------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.M | re.S)


def blocks(text: str) -> list[tuple[str, str, int, int]]:
    """(language, dedented body, start offset, end offset) of every fenced block."""
    out = []
    for m in FENCE.finditer(text):
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines())
        out.append((m.group("lang"), body, m.start(), m.end()))
    return out


SHELL_LANGS = ("bash", "sh", "shell", "console")
# In a block of another language (text, none), a line is a command when it starts with one of these programs.
PROGRAMS = {"make", "robust-student", "robust-student-runtime", "python", "python3", ".venv/bin/python", "pip",
            "pip3", "accelerate", "bash", "apt-get", "sudo", "mkdocs", "export", ".", "source", "cd", "git", "curl",
            "wget", "docker", "conda", "uv", "pytest"}
OPERATORS = ("&&", "||", ";", "|")


def commands(body: str, *, only_programs: bool = False) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blank lines dropped, ``a && b`` split.
    ``only_programs``: keep only lines that start with a known program (a text block mixes commands and output;
    ``robust-student fit: error: ...`` is output)."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split, lexer.commenters = True, "#"
            words = list(lexer)
        except ValueError:  # not shell (unbalanced quotes in output text)
            if only_programs:
                continue
            raise
        parts, current = [], []
        for word in words:
            if word in OPERATORS:
                parts.append(current)
                current = []
            else:
                current.append(word)
        parts.append(current)
        for part in (p for p in parts if p):
            first = next((w for w in part if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)), "")
            if only_programs and (first not in PROGRAMS or (len(part) > 1 and part[1].endswith(":"))):
                break  # output, not a command (and not the rest of that line either)
            out.append(shlex.join(part))
    return out


def bash_commands(path: Path) -> list[str]:
    """Every shell command shown in a file: all of a bash block, and the command lines of text blocks."""
    out = []
    for lang, body, *_ in blocks(path.read_text(encoding="utf-8")):
        if lang in SHELL_LANGS:
            out += commands(body)
        elif lang in ("text", ""):
            out += commands(body, only_programs=True)
    return out


def troubleshooting_pairs(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for each bash block directly followed by a text block."""
    found = blocks(text)
    pairs = []
    for (lang, body, _, end), (next_lang, next_body, next_start, _) in zip(found, found[1:]):
        if lang == "bash" and next_lang == "text" and not text[end:next_start].strip():
            (command,) = commands(body)
            pairs.append((command, next_body.strip()))
    return pairs


# -- what CI and the tests run -----------------------------------------------------------------------------------

def _read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def _tests_source() -> str:
    files = [*sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "runtime" / "tests").glob("*.py"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in files if p.name != "test_docs.py")


def _code_source() -> str:
    folders = ("robust_student", "export", "demo", "model_cards", "runtime/robust_student_runtime")
    return "\n".join(p.read_text(encoding="utf-8") for folder in folders for p in sorted((ROOT / folder).rglob("*.py")))


def make_targets() -> dict[str, tuple[list[str], str]]:
    """target -> (prerequisites, recipe) of the Makefile."""
    targets: dict[str, tuple[list[str], str]] = {}
    current = None
    for line in _read("Makefile").splitlines():
        m = re.match(r"^([A-Za-z][\w.-]*)\s*:(?!=)\s*(.*)$", line)
        if m and not line.startswith("\t"):
            current = m.group(1)
            targets[current] = (m.group(2).split(), "")
        elif line.startswith("\t") and current:
            deps, recipe = targets[current]
            targets[current] = (deps, recipe + line + "\n")
        elif not line.strip().startswith("#"):
            current = None if not line.strip() else current
    return targets


def ci_make_targets() -> set[str]:
    """Targets `.ci/run` runs, with every prerequisite they pull in."""
    targets = make_targets()
    todo = [t for line in _read(".ci/run").splitlines() if re.match(r"^\s*make\b", line)
            for t in line.split()[1:] if not t.startswith("-") and "=" not in t]
    seen: set[str] = set()
    while todo:
        t = todo.pop()
        if t in targets and t not in seen:
            seen.add(t)
            todo.extend(d for d in targets[t][0] if not d.startswith("$"))
    return seen


# A CLI subcommand whose handler calls a function a test runs (rather than the test calling main([...])).
CLI_VIA = {
    "quickstart": ("run_quickstart(", "tests/test_api.py"),
    "demo": ("build_demo(", "tests/test_demo.py"),
}
# Commands CI cannot run, and why; they are still parsed and their flags checked.
NEEDS_HARDWARE = {
    "accelerate launch --multi_gpu --num_processes 8": "8 GPUs (tests/test_distributed.py runs the same CLI on 2 CPU processes)",
    "accelerate launch --multi_gpu --num_processes 16": "2 machines (tests/test_distributed.py runs the same CLI on 2 CPU processes)",
    "bash benchmarks/gpu.sh": "a GPU machine (benchmarks/gpu.sh is the script the lent GPU machines run)",
}


def cli_exercised(sub: str, tests_source: str) -> str | None:
    """Which test runs the subcommand, or None."""
    if re.search(rf"main\(\[\s*(\*\w+,\s*)?\"{re.escape(sub)}\"", tests_source) or \
            re.search(rf"\"robust_student\.cli\",\s*\"{re.escape(sub)}\"", tests_source) or \
            re.search(rf"^\s*{re.escape(sub)}\w* = \[\"{re.escape(sub)}\"", tests_source, re.M):
        return "a test calls it"
    if sub in CLI_VIA:
        function, test = CLI_VIA[sub]
        if function in _read("robust_student/cli.py") and function in _read(test):
            return f"its handler calls {function.rstrip('(')}, which {test} runs"
    return None


# -- checking one command ----------------------------------------------------------------------------------------

def check_robust_student(argv: list[str], tests_source: str, *, semantic: bool = True) -> list[str]:
    from robust_student.cli import build_parser

    problems = []
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        return [f"the CLI parser refuses {shlex.join(argv)}"]
    if semantic and args.command == "fit":
        from robust_student.api import load_recipe

        try:
            load_recipe(args.recipe).with_overrides(args.overrides)
        except Exception as err:  # noqa: BLE001 - report any failure to build the config
            problems.append(f"its config does not build: {err}")
    if semantic and args.command == "eval":
        from robust_student.attacks import list_attacks

        names = set(list_attacks())
        bad = [a for a in args.attacks if a.split(":")[0] not in names and a not in names]
        if bad:
            problems.append(f"unknown attacks {bad}")
    if cli_exercised(args.command, tests_source) is None:
        problems.append(f"no test runs `robust-student {args.command}`")
    return problems


RUNTIME_EXERCISED = {  # how the tests call each runtime command
    "predict": (r"runner_main\(|runner_cli\.main\(", "the runner's CLI"),
    "run": (r"pacs_cli\.main\(\[\s*\"run\"|\"pacs\",\s*\"run\"", "pacs run"),
    "listen": (r"pacs_cli\.main\(\[\s*\"listen\"|\"pacs\",\s*\"listen\"", "pacs listen"),
}


def check_runtime(argv: list[str], tests_source: str) -> list[str]:
    """``robust-student-runtime ...`` and the SDK's ``robust-student predict|pacs ...`` (the same code)."""
    import argparse

    from robust_student_runtime import cli as runtime_cli

    if argv[:1] == ["pacs"]:
        from robust_student_runtime.pacs.cli import build_parser

        parser, rest = build_parser("robust-student-runtime pacs"), argv[1:]
    else:
        parser = argparse.ArgumentParser(prog="robust-student-runtime predict")
        runtime_cli.add_arguments(parser)
        rest = argv[1:] if argv[:1] == ["predict"] else argv
    try:
        args = parser.parse_args(rest)
    except SystemExit:
        return [f"the runtime's parser refuses {shlex.join(argv)}"]
    command = getattr(args, "command", None) or "predict"
    pattern, what = RUNTIME_EXERCISED[command]
    return [] if re.search(pattern, tests_source) else [f"no test runs {what}"]


def _script_flags_exist(script: Path, flags: list[str]) -> list[str]:
    source = script.read_text(encoding="utf-8")
    return [f"{script.relative_to(ROOT)} has no option {f}" for f in flags if f'"{f}"' not in source]


def check_command(command: str, tests_source: str | None = None, *, semantic: bool = True) -> list[str]:
    """Problems with one documented shell command (empty: it is right and something runs it)."""
    tests_source = _tests_source() if tests_source is None else tests_source
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    if words and words[0] == "sudo":
        words = words[1:]
    if not words:
        return ["empty command"]
    program, rest = words[0], words[1:]
    flags = [w.split("=")[0] for w in rest if w.startswith("--")]
    hardware = next((why for prefix, why in NEEDS_HARDWARE.items() if command.startswith(prefix)), None)

    if program == "make":
        targets, ci = make_targets(), ci_make_targets()
        problems = [f"the Makefile has no target {t}" for t in rest if t not in targets]
        for t in (t for t in rest if t in targets):
            deps, recipe = targets[t]
            sub = re.search(r"robust_student\.cli (\S+)", recipe)
            if t in ci:
                continue
            if sub and cli_exercised(sub.group(1), tests_source):
                continue
            if "mkdocs serve" in recipe and "docs-build" in deps and "docs-build" in ci:
                continue  # serves what CI builds
            problems.append(f"neither CI nor a test runs `make {t}`")
        return problems
    if program == "robust-student-runtime" or (program == "robust-student" and rest[:1] in (["predict"], ["pacs"])):
        return check_runtime(rest, tests_source)
    if program == "robust-student":
        return check_robust_student(rest, tests_source, semantic=semantic)
    if program == "export":
        names = [w.split("=")[0] for w in rest]
        return [f"nothing in the code reads {n}" for n in names if n not in _code_source()]
    if program in (".", "source"):
        return [] if len(rest) == 1 and rest[0].endswith("/bin/activate") else ["only activating a virtualenv is documented"]
    if program in ("python", "python3") and rest[:2] == ["-m", "venv"]:
        return [] if "-m venv" in _read(".ci/run") + _read("Makefile") else ["CI never makes a virtualenv"]
    if program in ("python", "python3") and rest[:1] == ["-c"]:
        def plain(code: str) -> str:  # `import x as y, z` and `import x, z` import the same
            return re.sub(r" as \w+", "", code)

        where = plain(_read(".ci/run") + _read("Makefile") + tests_source)
        return [f"neither CI nor a test runs {stmt.strip()!r}" for stmt in plain(rest[1]).split(";")
                if stmt.strip() not in where]
    if program in ("python", "python3", ".venv/bin/python"):
        if rest[:2] == ["-m", "robust_student.cli"]:
            return check_robust_student(rest[2:], tests_source, semantic=semantic)
        script = ROOT / rest[0]
        if not script.is_file():
            return [f"no such script {rest[0]}"]
        problems = _script_flags_exist(script, flags)
        if script.name not in tests_source and script.stem not in tests_source and not hardware:
            problems.append(f"no test runs {rest[0]}")
        return problems
    if program == "accelerate":
        if rest[:1] != ["launch"] or "-m" not in rest or rest[rest.index("-m") + 1] != "robust_student.cli":
            return ["an accelerate command must be `accelerate launch ... -m robust_student.cli ...`"]
        cli = rest[rest.index("-m") + 2:]
        problems = check_robust_student(cli, tests_source, semantic=semantic)
        if '"launch"' not in _read("tests/test_distributed.py") or hardware is None:
            problems.append("no test runs accelerate launch with this CLI command, and it is not listed as needing hardware")
        return problems
    if program == "bash":
        script = ROOT / rest[0]
        if not script.is_file():
            return [f"no such script {rest[0]}"]
        return [] if hardware else [f"neither CI nor a test runs {rest[0]}"]
    if program in ("pip", "pip3") or (program.endswith("/pip")):
        if rest[:1] != ["install"]:
            return ["only `pip install` is documented"]
        pyproject, code = _read("pyproject.toml"), "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "robust_student").rglob("*.py"))
        extras = set(re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0], re.M))
        problems = []
        for arg in rest[1:]:
            if arg.startswith("-"):
                continue
            m = re.match(r"^(\.|robust-student)\[([\w,]+)\]$", arg)
            local = re.match(r"^\./([\w-]+)(?:\[([\w,]+)\])?$", arg)
            if m:
                problems += [f"pyproject.toml has no extra {e!r}" for e in m.group(2).split(",") if e not in extras]
            elif local:
                sub = ROOT / local.group(1) / "pyproject.toml"
                if not sub.is_file():
                    problems.append(f"no project in ./{local.group(1)}")
                else:
                    sub_extras = set(re.findall(r"^(\w+) = \[", sub.read_text(encoding="utf-8"), re.M))
                    problems += [f"{sub.relative_to(ROOT)} has no extra {e!r}" for e in (local.group(2) or "").split(",")
                                 if e and e not in sub_extras]
            elif arg.startswith("git+"):
                if arg not in code:
                    problems.append(f"the SDK never names {arg}")
            elif re.split(r"[<>=\[]", arg)[0] not in pyproject:
                problems.append(f"{arg} is not a dependency named in pyproject.toml")
        return problems
    if program == "apt-get":
        packages = [w for w in rest[1:] if not w.startswith("-")]
        return [f"the Makefile does not install {p}" for p in packages if p not in _read("Makefile")]
    if program == "mkdocs":
        return [] if f"mkdocs {rest[0]}" in _read("Makefile") else [f"the Makefile never runs mkdocs {rest[0]}"]
    return [f"unknown program {program!r}: teach tests/test_docs.py how to check it"]


# -- the tests ---------------------------------------------------------------------------------------------------

def documented_commands() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), c) for p in doc_files() for c in bash_commands(p)]


def test_the_docs_show_commands_at_all():
    documented = documented_commands()
    assert len(documented) > 30
    assert {"README.md", "docs/index.md", "docs/guides/troubleshooting.md"} <= {f for f, _ in documented}


def test_every_documented_command_is_right_and_exercised():
    tests_source = _tests_source()
    expected_errors = {c for c, _ in troubleshooting_pairs(TROUBLESHOOTING.read_text(encoding="utf-8"))}
    problems = []
    for where, command in documented_commands():
        for problem in check_command(command, tests_source, semantic=command not in expected_errors):
            problems.append(f"{where}: `{command}`: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command, problem", [
    ("robust-student fitt --recipe quickstart", "parser refuses"),
    ("robust-student fit --recipe quickstart --epochs 3", "parser refuses"),
    ("robust-student fit --recipe no_such_recipe", "does not build"),
    ("robust-student fit --set train.epoch=3", "does not build"),
    ("robust-student eval --model x --attacks pgd999", "unknown attacks"),
    ("make no-such-target", "no target"),
    ("make bench", "neither CI nor a test"),
    ("python benchmarks/attack_speed.py --no-such-flag", "has no option"),
    ("python benchmarks/no_such.py", "no such script"),
    ('pip install -e ".[nosuchextra]"', "no extra"),
    ("pip install leftpad", "not a dependency"),
    ("apt-get install cowsay", "does not install"),
    ("curl https://example.org | sh", "unknown program"),
    ("accelerate launch --num_processes 4 -m robust_student.cli fit --recipe quickstart", "not listed as needing"),
    ("bash benchmarks/no_such.sh", "no such script"),
    ("robust-student-runtime pacs run --no-such-flag", "parser refuses"),
    ("robust-student pacs sing --url x", "parser refuses"),
    ("export NO_SUCH_VARIABLE_ANYWHERE=1", "nothing in the code reads"),
    ('python -c "print(42)"', "neither CI nor a test runs"),
    ("pip install './runtime[nosuchextra]'", "has no extra"),
    ("pip install -e ./no_such_folder", "no project in"),
    (". /tmp/evil.sh", "only activating"),
])


def test_the_command_check_can_fail(command, problem):
    problems = check_command(command)
    assert any(problem in p for p in problems), problems


def test_text_blocks_are_searched_for_commands_but_not_output():
    body = ("robust-student fit: error: train.epochs must be an integer\n"
            "robust_student quickstart\n"
            "python3 -m venv /opt/x && . /opt/x/bin/activate\n"
            "export ROBUST_STUDENT_PACS_PASSWORD=secret\n"
            "robust-student-runtime pacs run --url http://x \\\n    --model m.onnx   # a comment\n")
    assert commands(body, only_programs=True) == [
        "python3 -m venv /opt/x", ". /opt/x/bin/activate", "export ROBUST_STUDENT_PACS_PASSWORD=secret",
        "robust-student-runtime pacs run --url http://x --model m.onnx"]


def test_a_cli_command_no_test_runs_is_refused():
    assert check_command("robust-student list", tests_source="") == ["no test runs `robust-student list`"]


def test_troubleshooting_errors_are_the_real_ones(tmp_path, monkeypatch, capsys):
    from robust_student.cli import main

    pairs = troubleshooting_pairs(TROUBLESHOOTING.read_text(encoding="utf-8"))
    assert len(pairs) >= 10
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUST_STUDENT_MALLOC", "system")
    for command, expected in pairs:
        argv = shlex.split(command)
        assert argv[0] == "robust-student"
        code = main(argv[1:])
        err = capsys.readouterr().err.strip().splitlines()
        pattern = ".*".join(re.escape(part) for part in expected.split("..."))
        assert code == 2 and err and re.fullmatch(pattern, err[-1]), f"{command}\nexpected: {expected}\ngot: {err}"


def test_python_blocks_compile_and_their_imports_exist():
    checked = 0
    for path in doc_files():
        for lang, body, *_ in blocks(path.read_text(encoding="utf-8")):
            if lang != "python":
                continue
            compile(body, str(path), "exec")
            for module, names in re.findall(r"^from (robust_student[\w.]*) import ([\w, ]+)$", body, re.M):
                mod = importlib.import_module(module)
                missing = [n.strip() for n in names.split(",") if not hasattr(mod, n.strip())]
                assert not missing, f"{path.relative_to(ROOT)}: {module} has no {missing}"
            for attr in re.findall(r"\brobust_student\.(\w+)\(", body):
                assert hasattr(importlib.import_module("robust_student"), attr), f"robust_student.{attr}"
            checked += 1
    assert checked >= 8


def test_teacher_pages_are_generated_from_the_registry_and_in_the_nav():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import docs_teachers
    finally:
        sys.path.pop(0)
    from robust_student import describe_teacher

    assert docs_teachers.main(["--check"]) == 0, "run python scripts/docs_teachers.py"
    nav = _read("mkdocs.yml")
    names = docs_teachers.builtin_teachers()
    assert {"fmnist-clip", "fmnist-clip-fare", "conch", "cxr-clip", "open_clip"} <= set(names)
    for name in names:
        assert f"teachers/{name}.md" in nav
        licence = describe_teacher(name)["license"]
        assert licence is None or licence in (DOCS / "teachers" / f"{name}.md").read_text(encoding="utf-8")
    assert "CC-BY-NC-ND-4.0" in (DOCS / "teachers" / "conch.md").read_text(encoding="utf-8")


def test_readme_is_a_users_guide():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "session" not in text.lower()
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"\d", h) and re.search(r"[a-f]", h)]
    assert not hashes, f"commit hashes in README: {hashes}"
    for heading in ("## Install", "## The two commands", "## Status", "## Results"):
        assert heading in text
    assert len(re.findall(r"^## Example \d", text, re.M)) == 3
    # every headline result names the command that makes it and links its results file
    results = text.split("## Results")[1].split("\n## ")[0]
    rows = [r for r in results.splitlines() if r.startswith("| ") and not r.startswith("| what") and "---" not in r]
    assert len(rows) >= 5
    for row in rows:
        assert re.search(r"`(python|robust-student|make) [^`]+`", row) and "](benchmarks/results/" in row, row


def test_links_in_readme_and_docs_resolve():
    broken = []
    for path in [README, ROOT / "benchmarks" / "README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_make_test_runs_what_ci_runs():
    targets = make_targets()
    ci = _read(".ci/run")
    # CI does nothing but set up the shell and run make test: what else it ran, a user's make test would not
    steps = [line.strip() for line in ci.splitlines()
             if line.strip() and not line.lstrip().startswith("#") and not re.match(r"^(set|cd|export) ", line.strip())]
    assert steps == ["make test"], steps
    assert {"install", "data", "browser", "docs-build"} <= set(targets["test"][0])
    assert "chromium chromium-driver" in targets["browser"][1] and "mkdocs build --strict" in targets["docs-build"][1]
    assert "runtime-test" in ci_make_targets() or "runtime-test" not in targets


def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    result = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    # every public name has its entry in the API reference
    for module, page in (("robust_student", "api"), ("robust_student.export", "export"),
                         ("robust_student.model_cards", "model_cards"), ("robust_student.demo", "demo"),
                         ("robust_student_runtime", "runtime")):
        html = (tmp_path / "site" / "reference" / page / "index.html").read_text(encoding="utf-8")
        ids = set(re.findall(r'id="([\w.]+)"', html))
        public = [n for n in importlib.import_module(module).__all__ if n != "__version__"]
        missing = [n for n in public if f"{module}.{n}" not in ids]
        assert public and not missing, f"docs/reference/{page}.md lacks {missing}"
