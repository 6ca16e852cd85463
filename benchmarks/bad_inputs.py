"""Bad-input audit: feed the SDK what a new user gets wrong and record what it does.

Each case runs in a fresh subprocess (``python -m robust_student.cli ...`` or a Python snippet that calls the
public API), in its own temporary working directory, with a timeout. For every case the audit records the exit
code, whether a Python traceback was printed, the one-line message, the wall time, for data-loss cases whether
the earlier run's files are intact afterwards (sha256 of every file before/after), and a verdict:

    ok             valid input (a control case) that succeeded
    clear error    nonzero exit, no traceback, the message matches the case's ``expect`` regex, is not too long
                   (and not over ``max_lines``), and does not match ``reject``
    unclear error  nonzero exit, no traceback, but the message misses the point (or is a dump)
    late error     the right refusal, but only after the data / teacher loaded (a tripwire dataset of
                   undecodable images was read first, or a snippet's object was constructed without complaint)
    traceback      a Python traceback was printed (CLI) -- the user sees a crash, not an error
    silent         exit 0 although the input is bad (for ``want="warning"`` cases: no matching warning either)
    warned         exit 0 with a warning matching ``expect`` (the wanted outcome of ``want="warning"`` cases)
    data lost      the earlier run's files changed or vanished (checked before anything else)
    timeout        the subprocess ran past its limit
    failed         a control case (valid input) did not succeed
    skipped (...)  the case cannot run here (e.g. permission checks as root)

Usage::

    python benchmarks/bad_inputs.py --label before --out benchmarks/results/bad_inputs_before.json
    python benchmarks/bad_inputs.py --source /path/to/other/tree --label after --out after.json
    python benchmarks/bad_inputs.py --only 1.01 3.14          # a few cases, printed
    python benchmarks/bad_inputs.py --list                     # the case ids and what they feed
    python benchmarks/bad_inputs.py --compare before.json after.json --markdown bad_inputs.md

How ``--source DIR`` is made reliable. The venv holds an *editable* install of the main checkout, done by a
meta-path finder (``__editable___robust_student_*_finder``) that setuptools *appends* to ``sys.meta_path``,
i.e. after the normal ``PathFinder``. Each subprocess therefore gets ``PYTHONPATH=DIR:BOOT`` (any inherited
PYTHONPATH is dropped), so ``DIR/robust_student`` is found by ``PathFinder`` before the editable finder is asked.
``BOOT`` is a temporary folder holding a ``sitecustomize.py`` (the venv has none) that runs in every
subprocess at start-up and (1) repoints the editable finder's mapping of the optional subpackages
(``robust_student.export`` / ``.demo`` / ``.model_cards``, which live outside ``robust_student/``) into ``DIR``
when ``DIR`` has them, and (2) asserts that ``importlib.util.find_spec("robust_student")`` resolves inside
``DIR``; if not, the subprocess exits 97 with ``AUDIT-SOURCE-MISMATCH`` and the audit aborts. Before any case
runs, a pre-flight subprocess imports ``robust_student`` and ``robust_student.cli`` and the audit asserts their
``__file__`` is under ``DIR`` (recorded as ``imported_from`` in the results). The working directory of every
case is a fresh temporary folder, so ``sys.path[0]`` (cwd / ``''``) never holds another ``robust_student``.

The harness itself never imports robust_student (only the standard library, numpy, PIL and yaml), so it runs
unchanged against any source tree. All "tiny run" settings are the constants just below (``STEPS_KEY``,
``FAST``, ``SEED_EXTRA``, ``SLOW``, ``EVAL_FAST`` ...): edit them there when config keys move. Cases find saved
files by globbing (any ``*.json`` next to ``model.safetensors``, any ``step_*`` checkpoint folder), not by
hard-coded names.

Data-loss cases copy a seed run (made once per audit with the audited code) into the case folder, hash every
file in it (sha256), feed the bad input, and hash again: ``kept`` is true when every earlier file is still
there with its content. Files deleted and written again with identical bytes are listed separately
(``extra.rewritten``); the refit cases use another seed so a destroyed run cannot reappear bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# -- the one place for "fast tiny run" settings ------------------------------------------------------------
# The config key of the training attack's PGD steps (used by FAST, SLOW* and case 3.04): ``threat.steps`` up to
# commit 918bbba, ``attack.steps`` since the threat / attack-loop split. ``main`` picks it from the audited
# source (see ``steps_key``) and rewrites the lists below with ``use_steps_key``.
STEPS_KEY = "threat.steps"
# `--set` overrides that make `robust-student fit` finish in a few seconds on two CPU cores. Every fit case
# starts from the packaged `quickstart` recipe plus FAST, then adds its own bad setting (later ones win).
FAST: list[str] = [
    "dataset.name=synthetic:10",
    "student=resnet_tiny",
    "train.epochs=1",
    "train.batch_size=16",
    "dataset.max_train_examples=32",
    f"{STEPS_KEY}=1",
    "train.eval_examples=16",
    "train.checkpoint_every=0",
    "train.log_every=1",
    "train.output_dir=run",
]
RECIPE = "quickstart"
# The seed run that data-loss / resume / load cases start from (copied into each case's folder as ./run):
# FAST plus a checkpoint every step, so it holds two checkpoints (step 1 and step 2) and a saved student.
# Resume cases (and "same settings" refits) use FAST + SEED_EXTRA, so the case's own change is the only
# difference from the config stored in the checkpoint.
SEED_EXTRA: list[str] = ["train.checkpoint_every=1"]
# A slower fit (~15-25 s) for the concurrency and kill cases: it must still be running while the audit acts.
SLOW: list[str] = ["dataset.max_train_examples=256", "train.epochs=6", f"{STEPS_KEY}=10", "train.checkpoint_every=4"]
# One long epoch with no mid-epoch checkpoint: killed before its first checkpoint.
SLOW_NO_CHECKPOINT: list[str] = ["dataset.max_train_examples=256", "train.batch_size=8", f"{STEPS_KEY}=20",
                                 "train.checkpoint_every=0"]
# `robust-student eval` options for a fast evaluation (of the seed student, or of EVAL_MODEL in class 4).
EVAL_FAST: list[str] = ["--attacks", "clean", "pgd20", "--n-examples", "16", "--batch-size", "16", "--no-checks"]
# Keyword arguments of evaluate_robustness in API cases (besides model, data, attacks, threat).
EVAL_KW: dict[str, Any] = {"n_examples": 16, "batch_size": 16, "checks": False}

TIMEOUT = 120  # seconds per subprocess
MAX_MESSAGE_CHARS = 1000  # a longer error message is a dump, not a clear error
SIZE = 16  # image size of every generated picture (the synthetic dataset's default)
THREADS = "1"  # tiny tensors run fastest on one thread; also keeps runs comparable

REPO = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"
CLI_ERROR = re.compile(r"^robust-student(?: [\w-]+)?: error: ")
EXC_MARK = "AUDIT-EXCEPTION "
CONSTRUCTED = "AUDIT-CONSTRUCTED"


# -- the subprocess environment ----------------------------------------------------------------------------

SITECUSTOMIZE = r'''
# Written by benchmarks/bad_inputs.py: make BAD_INPUTS_SOURCE's robust_student the one imported, or exit 97.
import importlib.util as _u, os as _os, sys as _sys
_src = _os.path.realpath(_os.environ["BAD_INPUTS_SOURCE"])
for _mod in list(_sys.modules.values()):
    _map = getattr(_mod, "MAPPING", None)
    if (getattr(_mod, "__name__", "").startswith("__editable__") and isinstance(_map, dict)
            and "robust_student" in _map):
        _root = _os.path.dirname(_map["robust_student"])
        for _key, _path in list(_map.items()):
            _new = _os.path.join(_src, _os.path.relpath(_path, _root))
            if _os.path.exists(_new):
                _map[_key] = _new
_spec = _u.find_spec("robust_student")
_origin = _os.path.realpath(_spec.origin) if _spec is not None and _spec.origin else None
if _origin is None or not _origin.startswith(_src + _os.sep):
    _sys.stderr.write(f"AUDIT-SOURCE-MISMATCH robust_student resolves to {_origin}, not under {_src}\n")
    _sys.stderr.flush()
    _os._exit(97)
'''

SNIPPET_WRAPPER = r'''
import json, logging, os, sys, traceback
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
CTX = json.loads(os.environ["BAD_INPUTS_CTX"])
def show(**values):
    print("RESULT " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
def constructed():
    print("AUDIT-CONSTRUCTED", flush=True)
_path = "snippet.py"
_code = open(_path, encoding="utf-8").read()
try:
    exec(compile(_code, _path, "exec"), {"__name__": "__main__", "CTX": CTX, "show": show,
                                         "constructed": constructed})
except Exception as _exc:
    _frames = traceback.extract_tb(_exc.__traceback__)
    _src = os.path.realpath(os.environ["BAD_INPUTS_SOURCE"])
    def _short(frame):
        name = os.path.realpath(frame.filename)
        for marker in (_src + os.sep, os.sep + "site-packages" + os.sep):
            if marker in name:
                name = name.split(marker, 1)[1]
        return f"{name}:{frame.lineno}"
    _sdk = [f for f in _frames if os.path.realpath(f.filename).startswith(_src + os.sep)]
    _text = str(_exc) or repr(_exc)
    _info = {"type": type(_exc).__name__, "where": _short(_frames[-1]) if _frames else "?",
             "sdk_frame": _short(_sdk[-1]) if _sdk else None, "message": _text[:20000],
             "lines": _text.count("\n") + 1, "chars": len(_text)}
    sys.stdout.flush()
    print("AUDIT-EXCEPTION " + json.dumps(_info), file=sys.stderr, flush=True)
    sys.exit(1)
'''


class Env:
    """Subprocess environment that imports ``source``'s robust_student (see the module docstring)."""

    def __init__(self, source: Path, python: str) -> None:
        self.source = source.resolve()
        self.python = python
        self.boot = Path(tempfile.mkdtemp(prefix="bad_inputs_boot_"))
        (self.boot / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        env.update(PYTHONPATH=os.pathsep.join([str(self.source), str(self.boot)]),
                   BAD_INPUTS_SOURCE=str(self.source), OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS,
                   TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.vars = env

    def preflight(self) -> dict[str, str]:
        code = ("import json, robust_student, robust_student.cli; "
                "print(json.dumps({'init': robust_student.__file__, 'cli': robust_student.cli.__file__}))")
        with tempfile.TemporaryDirectory(prefix="bad_inputs_pre_") as tmp:
            proc = subprocess.run([self.python, "-c", code], cwd=tmp, env=self.vars, capture_output=True,
                                  text=True, timeout=TIMEOUT)
        if proc.returncode != 0:
            raise SystemExit(f"pre-flight import failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        files = json.loads(proc.stdout.strip().splitlines()[-1])
        for path in files.values():
            if not os.path.realpath(path).startswith(str(self.source) + os.sep):
                raise SystemExit(f"pre-flight: robust_student imported from {path}, not from {self.source}")
        return files

    def close(self) -> None:
        shutil.rmtree(self.boot, ignore_errors=True)


# -- running one command -----------------------------------------------------------------------------------

@dataclass
class Proc:
    """What one subprocess did."""

    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    killed: str | None = None  # why the audit killed it (simulated crash)
    snippet: str | None = None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


class Ctx:
    """One case's sandbox: a temporary working folder plus helpers to run the SDK in it."""

    def __init__(self, audit: "Audit", tmp: Path) -> None:
        self.audit, self.tmp = audit, tmp
        self.extra: dict[str, Any] = {}
        self.kept: bool | None = None
        self.lost: list[str] = []
        self.skip: str | None = None

    # running ---------------------------------------------------------------------------------------------
    def _argv_cli(self, args: list[str]) -> list[str]:
        return [self.audit.env.python, "-m", "robust_student.cli", *args]

    def cli(self, *args: str, timeout: float = TIMEOUT) -> Proc:
        return self.run(self._argv_cli(list(args)), timeout=timeout)

    def fit(self, *overrides: str, extra_args: tuple[str, ...] = (), recipe: str = RECIPE,
            timeout: float = TIMEOUT) -> Proc:
        """``robust-student fit --recipe RECIPE --set FAST... overrides...``."""
        return self.cli("fit", "--recipe", recipe, *extra_args, "--set", *FAST, *overrides, timeout=timeout)

    def fit_args(self, *overrides: str) -> list[str]:
        return self._argv_cli(["fit", "--recipe", RECIPE, "--set", *FAST, *overrides])

    def eval(self, model: str | Path, *args: str) -> Proc:
        return self.cli("eval", "--model", str(model), *EVAL_FAST, *args)

    def py(self, code: str, timeout: float = TIMEOUT, **ctx: Any) -> Proc:
        """Run a snippet (``CTX``, ``show(...)``, ``constructed()`` are predefined; see SNIPPET_WRAPPER)."""
        code = textwrap.dedent(code).strip() + "\n"
        (self.tmp / "snippet.py").write_text(code, encoding="utf-8")
        values = {"overrides": self.audit.fast_dict, "seed_extra": self.audit.seed_extra_dict, "fast": FAST,
                  "recipe": RECIPE, "eval_kw": EVAL_KW, "size": SIZE,
                  **{k: str(v) if isinstance(v, Path) else v for k, v in ctx.items()}}
        proc = self.run([self.audit.env.python, "-c", SNIPPET_WRAPPER], timeout=timeout,
                        env={"BAD_INPUTS_CTX": json.dumps(values)})
        proc.snippet = code
        return proc

    def run(self, argv: list[str], timeout: float = TIMEOUT, env: dict[str, str] | None = None) -> Proc:
        started = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=self.tmp, env={**self.audit.env.vars, **(env or {})},
                                  capture_output=True, text=True, timeout=timeout)
            proc = Proc(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - started)
        except subprocess.TimeoutExpired as err:
            proc = Proc(argv, None, _decode(err.stdout), _decode(err.stderr), time.perf_counter() - started,
                        timed_out=True)
        self._check_source(proc)
        return proc

    def background(self, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` without waiting; stdout and stderr go to one log that :meth:`finish` reads."""
        log = self.tmp / f"bg_{len(list(self.tmp.glob('bg_*.log')))}.log"
        with open(log, "w", encoding="utf-8") as out:
            popen = subprocess.Popen(argv, cwd=self.tmp, env=self.audit.env.vars, stdout=out,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        popen.log_path = log  # type: ignore[attr-defined]
        return popen

    def finish(self, popen: subprocess.Popen, started: float, timeout: float = TIMEOUT,
               killed: str | None = None) -> Proc:
        try:
            popen.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            timed_out = True
        text = popen.log_path.read_text(encoding="utf-8", errors="replace")  # type: ignore[attr-defined]
        proc = Proc(list(popen.args), popen.returncode, "", text, time.perf_counter() - started,
                    timed_out=timed_out, killed=killed)
        self._check_source(proc)
        return proc

    def _check_source(self, proc: Proc) -> None:
        if proc.rc == 97 and "AUDIT-SOURCE-MISMATCH" in proc.stderr:
            raise SystemExit(f"subprocess imported the wrong robust_student: {proc.stderr.strip()}")

    # fixtures --------------------------------------------------------------------------------------------
    def seed_run(self, name: str = "run") -> Path:
        """A copy of the seed run (two checkpoints, metrics.jsonl, a saved student) at ./name."""
        src = self.audit.seed()
        dst = self.tmp / name
        shutil.copytree(src, dst, symlinks=True)
        return dst

    def saved_student(self, run: Path) -> Path:
        """The saved student folder of a run: a folder with model.safetensors outside the checkpoints."""
        found = [p.parent for p in sorted(run.rglob("model.safetensors")) if not _in_checkpoint(p, run)]
        if not found:
            raise RuntimeError(f"no saved student under {run}")
        return found[0]

    def student(self) -> Path:
        return self.saved_student(self.seed_run())

    def protect(self, folder: Path) -> dict[str, str]:
        """sha256 of every file under ``folder`` (to compare after the bad command)."""
        self._protected = (folder, hashes(folder), stats(folder))
        return self._protected[1]

    def check_kept(self) -> bool:
        """kept = every protected file still has its sha256. Files with the same content but a new inode or
        mtime (deleted and written again, e.g. by a bit-identical rerun) are listed in extra["rewritten"]."""
        folder, before, before_stats = self._protected
        after = hashes(folder)
        self.lost = sorted(rel for rel, digest in before.items() if after.get(rel) != digest)
        self.kept = not self.lost
        now = stats(folder)
        self.extra["rewritten"] = sorted(rel for rel, st in before_stats.items()
                                         if rel not in self.lost and now.get(rel) != st)[:10]
        return self.kept


def hashes(folder: Path) -> dict[str, str]:
    out = {}
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                try:
                    out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError:
                    pass
    return out


def stats(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_ino, st.st_mtime_ns)
    return out


def _in_checkpoint(path: Path, run: Path) -> bool:
    return any(part.startswith("step_") or part.startswith(".") for part in path.relative_to(run).parts[:-1])


def checkpoints(run: Path) -> list[Path]:
    """Checkpoint folders (``step_*``) anywhere under ``run``, oldest first."""
    return sorted((p for p in run.rglob("step_*") if p.is_dir()), key=lambda p: p.name)


def weights_file(folder: Path) -> Path:
    """The model weights in ``folder``: model.safetensors if present, else the largest *.safetensors."""
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    if not files:
        raise RuntimeError(f"no .safetensors in {folder}")
    return files[-1]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_tensor_bytes(path: Path, count: int = 4096) -> None:
    """Overwrite ``count`` bytes in the middle of a safetensors file's tensor data (header left valid)."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    start = header + (len(data) - header) // 2
    rng = np.random.default_rng(0)
    data[start:start + count] = rng.integers(0, 256, size=min(count, len(data) - start), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def student_jsons(folder: Path) -> list[Path]:
    """The JSON files next to a saved student's weights (student.json today; whatever it becomes later)."""
    return sorted(folder.glob("*.json"))


# -- pictures ----------------------------------------------------------------------------------------------

def png(path: Path, size: int | tuple[int, int] = SIZE, seed: int = 0, mode: str = "RGB") -> Path:
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    array = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(path)
    return path


def corrupt_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 8)
    return path


def image_folder(root: Path, classes: dict[str, int], size: int = SIZE, start_seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with ``classes[name]`` random pictures each."""
    seed = start_seed
    for name, count in classes.items():
        for i in range(count):
            png(root / name / f"{i}.png", size, seed)
            seed += 1
    return root


def tripwire_folder(root: Path) -> Path:
    """A 2-class image folder of undecodable files named TRIPWIRE_*: reading any image fails naming one."""
    for name in ("a", "b"):
        for i in range(4):
            corrupt_png(root / name / f"TRIPWIRE_{name}{i}.png")
    return root


# -- cases -------------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    cls: int
    desc: str
    run: Callable[[Ctx], Proc]
    expect: str | None = None  # a good message (or wanted warning) matches this (case-insensitive)
    reject: str | None = None  # a message matching this misses the point
    late: str | None = None  # a message matching this means the data were read before refusing
    want: str = "error"  # "error", "warning" or "success"
    protect: bool = False  # data-loss case: ctx.protect() / ctx.check_kept() decide "kept"
    max_lines: int | None = None


CASES: list[Case] = []


def case(id: str, cls: int, desc: str, **kw: Any) -> Callable[[Callable[[Ctx], Proc]], Callable[[Ctx], Proc]]:
    def register(fn: Callable[[Ctx], Proc]) -> Callable[[Ctx], Proc]:
        CASES.append(Case(id, cls, desc, fn, **kw))
        return fn
    return register


# 1. A run is never destroyed ------------------------------------------------------------------------------

@case("1.01", 1, "`fit` without --resume into a folder that holds a run (a new run: same settings, another seed)",
      expect=r"resume|overwrite", protect=True)
def _(ctx: Ctx) -> Proc:
    ctx.protect(ctx.seed_run())
    proc = ctx.fit(*SEED_EXTRA, "train.seed=1")
    ctx.check_kept()
    return proc


@case("1.02", 1, "API `RobustDistiller(...).fit()` (resume=False) into a folder that holds a run (another seed)",
      expect=r"resume|overwrite", protect=True)
def _(ctx: Ctx) -> Proc:
    ctx.protect(ctx.seed_run())
    proc = ctx.py("""
        import robust_student as rs
        d = rs.RobustDistiller.from_config(CTX["recipe"], **{**CTX["overrides"], **CTX["seed_extra"], "train.seed": 1})
        d.fit()
        show(steps=d.result.steps)
    """)
    ctx.check_kept()
    return proc


@case("1.03", 1, "`fit` without --resume into a folder holding a finished run's saved student and metrics "
      "(checkpoints already pruned)", expect=r"resume|overwrite", protect=True)
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    for ckpt in checkpoints(run):
        shutil.rmtree(ckpt)
    ctx.protect(run)
    proc = ctx.fit()
    ctx.check_kept()
    return proc


@case("1.04", 1, "`fit` without --resume into a folder holding a run, killed (SIGKILL) before the new run's "
      "first checkpoint (a crash)", expect=r"resume|overwrite", protect=True)
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    before = ctx.protect(run)
    started = time.perf_counter()
    popen = ctx.background(ctx.fit_args(*SLOW_NO_CHECKPOINT))
    why = None
    while popen.poll() is None:
        elapsed = time.perf_counter() - started
        now = hashes(run)
        if any(now.get(k) != v for k, v in before.items()):
            time.sleep(0.2)
            why = f"killed by the audit {elapsed:.1f} s in, when the earlier run's files changed"
        elif elapsed > 20:
            why = f"killed by the audit after {elapsed:.0f} s"
        if why:
            os.killpg(popen.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    proc = ctx.finish(popen, started, killed=why)
    ctx.check_kept()
    ctx.extra["new_checkpoints"] = [p.name for p in checkpoints(run)]
    return proc


@case("1.05", 1, "two concurrent `fit`s into one folder (the second starts while the first is training)",
      expect=r"lock|running|pid|in use|busy", protect=True)
def _(ctx: Ctx) -> Proc:
    run = ctx.tmp / "run"
    started = time.perf_counter()
    first = ctx.background(ctx.fit_args(*SLOW, "train.lr=0.0111"))
    while first.poll() is None and time.perf_counter() - started < 60:
        if any(any(p.iterdir()) for p in checkpoints(run)):
            break
        time.sleep(0.1)
    ctx.extra["first_running_when_second_started"] = first.poll() is None
    ctx.extra["checkpoints_when_second_started"] = [p.name for p in checkpoints(run)]
    second = ctx.fit("train.lr=0.0222")
    first_proc = ctx.finish(first, started)
    ctx.extra["first_rc"] = first_proc.rc
    ctx.extra["first_message"] = summarize(first_proc)[0]
    ctx.extra["both_succeeded"] = first_proc.rc == 0 and second.rc == 0
    # The first run's results are intact iff nothing in the folder comes from the second run (lr 0.0222) and
    # the first run's saved student (lr 0.0111) is there.
    texts = {str(p.relative_to(run)): p.read_text(errors="replace") for p in run.rglob("*.json*") if p.is_file()}
    from_second = sorted(k for k, t in texts.items() if "0.0222" in t)
    first_student = any("0.0111" in t for k, t in texts.items() if not _in_checkpoint(run / k, run))
    ctx.kept = not from_second and first_student
    ctx.lost = from_second + ([] if first_student else ["(first run's saved student missing)"])
    ctx.extra["files_from_second_run"] = from_second
    ctx.extra["checkpoints_after"] = [p.name for p in checkpoints(run)]
    metrics = [line for p in run.glob("*.jsonl") for line in p.read_text(errors="replace").splitlines()]
    ctx.extra["log_lines_first_second"] = [sum("0.0111" in l for l in metrics), sum("0.0222" in l for l in metrics)]
    return second


@case("1.06", 1, "`fit` with train.output_dir naming an existing file", expect=r"output_dir|not a (folder|directory)")
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "afile").write_text("not a folder\n")
    return ctx.fit("train.output_dir=afile")


@case("1.07", 1, "`fit` with train.output_dir a file, on a dataset whose images are all undecodable (tripwire: "
      "is output_dir checked before data loads?)", expect=r"output_dir|not a (folder|directory)",
      late=r"TRIPWIRE")
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "afile").write_text("not a folder\n")
    tripwire_folder(ctx.tmp / "trip")
    return ctx.fit("train.output_dir=afile", f"dataset.name=imagefolder:{ctx.tmp / 'trip'}")


@case("1.08", 1, "`fit` with train.output_dir not writable even for root (/proc/robust_student_out)",
      expect=r"output_dir|writable|permission|cannot create|read-only")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("train.output_dir=/proc/robust_student_out")


@case("1.09", 1, "`fit` with train.output_dir unwritable (/proc/...), tripwire dataset: refused before data loads?",
      expect=r"output_dir|writable|permission|cannot create|read-only", late=r"TRIPWIRE")
def _(ctx: Ctx) -> Proc:
    tripwire_folder(ctx.tmp / "trip")
    return ctx.fit("train.output_dir=/proc/robust_student_out", f"dataset.name=imagefolder:{ctx.tmp / 'trip'}")


@case("1.10", 1, "`fit` with train.output_dir a chmod 0500 folder (skipped when running as root)",
      expect=r"output_dir|writ|permission")
def _(ctx: Ctx) -> Proc:
    folder = ctx.tmp / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits: the case would measure nothing
        ctx.skip = "root"
        return Proc([], None, "", "", 0.0)
    return ctx.fit(f"train.output_dir={folder}/run")


@case("1.11", 1, "`fit` with train.output_dir under a file (afile/run)",
      expect=r"output_dir|not a (folder|directory)|afile")
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "afile").write_text("not a folder\n")
    return ctx.fit("train.output_dir=afile/run")


# 2. Resume is safe ----------------------------------------------------------------------------------------

def _resume(ctx: Ctx, *overrides: str) -> Proc:
    ctx.seed_run()
    return ctx.fit(*SEED_EXTRA, *overrides, extra_args=("--resume",))


@case("2.01", 2, "`fit --resume` with a different learning rate (train.lr=0.5)", expect=r"\blr\b")
def _(ctx: Ctx) -> Proc:
    return _resume(ctx, "train.lr=0.5")


@case("2.02", 2, "`fit --resume` with a different student (vit_tiny; the checkpoint is resnet_tiny)",
      expect=r"vit_tiny|resnet_tiny|student")
def _(ctx: Ctx) -> Proc:
    return _resume(ctx, "student=vit_tiny")


@case("2.03", 2, "`fit --resume` with a different method (kd; the checkpoint is rslad)", expect=r"method")
def _(ctx: Ctx) -> Proc:
    return _resume(ctx, "method=kd")


@case("2.04", 2, "`fit --resume` with a different threat.eps (0.3)", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _resume(ctx, "threat.eps=0.3")


@case("2.05", 2, "`fit --resume` on a different dataset (synthetic:5; the checkpoint has 10 classes)",
      expect=r"dataset|synthetic")
def _(ctx: Ctx) -> Proc:
    return _resume(ctx, "dataset.name=synthetic:5")


@case("2.06", 2, "control: `fit --resume` with only train.epochs raised (extending a run)", want="success")
def _(ctx: Ctx) -> Proc:
    return _resume(ctx, "train.epochs=2")


@case("2.07", 2, "control: `fit --resume` with only a logging option changed (train.log_every=5)", want="success")
def _(ctx: Ctx) -> Proc:
    return _resume(ctx, "train.log_every=5")


@case("2.08", 2, "`fit --resume`, newest checkpoint's model.safetensors truncated (an older intact one exists)",
      expect=r"step_0*2|model\.safetensors|skip|corrupt|intact", want="warning")
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    truncate(weights_file(checkpoints(run)[-1]))
    return ctx.fit(*SEED_EXTRA, extra_args=("--resume",))


@case("2.09", 2, "`fit --resume`, newest checkpoint's model.safetensors has 4 KiB overwritten (size and header "
      "unchanged)", expect=r"step_0*2|sha256|checksum|skip|corrupt|intact", want="warning")
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    flip_tensor_bytes(weights_file(checkpoints(run)[-1]))
    return ctx.fit(*SEED_EXTRA, extra_args=("--resume",))


@case("2.10", 2, "`fit --resume`, every checkpoint's model.safetensors truncated", expect=r"model\.safetensors")
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    for ckpt in checkpoints(run):
        truncate(weights_file(ckpt))
    return ctx.fit(*SEED_EXTRA, extra_args=("--resume",))


@case("2.11", 2, "`fit --resume`, newest checkpoint's trainer state JSON is not valid JSON",
      expect=r"step_0*2|\.json|skip|corrupt|intact", want="warning")
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    newest = checkpoints(run)[-1]
    target = newest / "trainer.json" if (newest / "trainer.json").is_file() else max(
        newest.glob("*.json"), key=lambda p: p.stat().st_size)
    target.write_text('{"format": 1, "epoch": ', encoding="utf-8")
    ctx.extra["broken_file"] = target.name
    return ctx.fit(*SEED_EXTRA, extra_args=("--resume",))


@case("2.12", 2, "`fit --resume`, newest checkpoint's model.safetensors deleted",
      expect=r"step_0*2|model\.safetensors|missing|skip|intact", want="warning")
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    weights_file(checkpoints(run)[-1]).unlink()
    return ctx.fit(*SEED_EXTRA, extra_args=("--resume",))


@case("2.13", 2, "`fit --resume`, newest checkpoint's optimizer state (*optimizer*.safetensors) truncated",
      expect=r"step_0*2|optimizer|skip|corrupt|intact", want="warning")
def _(ctx: Ctx) -> Proc:
    run = ctx.seed_run()
    files = sorted(checkpoints(run)[-1].glob("*optim*.safetensors"))
    if not files:
        ctx.skip = "no optimizer .safetensors in the checkpoint"
        return Proc([], None, "", "", 0.0)
    truncate(files[0])
    return ctx.fit(*SEED_EXTRA, extra_args=("--resume",))


def _mislabel(student: Path) -> None:
    """Make the saved student's JSON name vit_tiny while the weights stay resnet_tiny."""
    for path in student_jsons(student):
        path.write_text(path.read_text(encoding="utf-8").replace("resnet_tiny", "vit_tiny"), encoding="utf-8")


ARCH = r"(?s)(vit_tiny.*resnet_tiny|resnet_tiny.*vit_tiny)"


@case("2.14", 2, "API `load_student` of a folder whose JSON names vit_tiny but whose weights are resnet_tiny",
      expect=ARCH)
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    _mislabel(student)
    return ctx.py("""
        from robust_student.students.io import load_student
        m = load_student(CTX["student"])
        show(loaded=type(m).__name__, outputs=m.num_classes)
    """, student=student)


@case("2.15", 2, "`eval --model` of a folder whose JSON names vit_tiny but whose weights are resnet_tiny",
      expect=ARCH)
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    _mislabel(student)
    return ctx.eval(student, "--data", "synthetic:10")


@case("2.16", 2, "API `load_student` with model.safetensors truncated to half", expect=r"model\.safetensors")
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    truncate(weights_file(student))
    return ctx.py("""
        from robust_student.students.io import load_student
        m = load_student(CTX["student"])
        show(loaded=type(m).__name__)
    """, student=student)


@case("2.17", 2, "`eval --model` with model.safetensors truncated to half", expect=r"model\.safetensors")
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    truncate(weights_file(student))
    return ctx.eval(student, "--data", "synthetic:10")


@case("2.18", 2, "API `load_student` whose JSON file is not valid JSON", expect=r"\.json")
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    for path in student_jsons(student):
        path.write_text('{"spec": {"name": "resnet_tiny",', encoding="utf-8")
    return ctx.py("""
        from robust_student.students.io import load_student
        m = load_student(CTX["student"])
        show(loaded=type(m).__name__)
    """, student=student)


@case("2.19", 2, "`eval --model` whose JSON file is not valid JSON", expect=r"\.json")
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    for path in student_jsons(student):
        path.write_text('{"spec": {"name": "resnet_tiny",', encoding="utf-8")
    return ctx.eval(student, "--data", "synthetic:10")


@case("2.20", 2, "API `load_student` whose JSON is a valid but empty object {}", expect=r"\.json")
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    for path in student_jsons(student):
        path.write_text("{}", encoding="utf-8")
    return ctx.py("""
        from robust_student.students.io import load_student
        m = load_student(CTX["student"])
        show(loaded=type(m).__name__)
    """, student=student)


# 3. Config errors surface at construction, in one line ----------------------------------------------------

INT_FIELD = r"(?s)(epochs.*int|int.*epochs)"


@case("3.01", 3, "`fit --set train.epochs=1.5`", expect=INT_FIELD)
def _(ctx: Ctx) -> Proc:
    return ctx.fit("train.epochs=1.5")


@case("3.02", 3, "`fit --set train.epochs=abc`", expect=INT_FIELD)
def _(ctx: Ctx) -> Proc:
    return ctx.fit("train.epochs=abc")


@case("3.03", 3, "`fit --set train.lr=fast`", expect=r"(?s)\blr\b.*(float|number)|(float|number).*\blr\b")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("train.lr=fast")


@case("3.04", 3, "`fit --set <attack steps>=2.7` (threat.steps before the split, attack.steps after)",
      expect=r"(?s)steps.*int|int.*steps")
def _(ctx: Ctx) -> Proc:
    return ctx.fit(f"{STEPS_KEY}=2.7")


@case("3.05", 3, "`fit --set train.batch_size=0`", expect=r"batch_size")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("train.batch_size=0")


@case("3.06", 3, "`fit --set dataset.max_train_examples=ten`", expect=r"max_train_examples")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("dataset.max_train_examples=ten")


@case("3.07", 3, "`fit --set dataset.skip_corrupt=maybe` (a bool field given a word)",
      expect=r"(?s)skip_corrupt.*(bool|true or false)|bool.*skip_corrupt")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("dataset.skip_corrupt=maybe")


@case("3.08", 3, "API `DistillConfig.from_dict({'train': {'epochs': 1.5}})` (is it refused at construction?)",
      expect=INT_FIELD)
def _(ctx: Ctx) -> Proc:
    return ctx.py("""
        from robust_student.config import DistillConfig
        c = DistillConfig.from_dict({"train": {"epochs": 1.5}})
        show(constructed=True, epochs=repr(c.train.epochs))
    """)


@case("3.09", 3, "API `RobustDistiller(epochs='abc')` (construction only)", expect=INT_FIELD)
def _(ctx: Ctx) -> Proc:
    return ctx.py("""
        import robust_student as rs
        d = rs.RobustDistiller(dataset="synthetic:10", epochs="abc")
        show(constructed=True, epochs=repr(d.config.train.epochs))
    """)


@case("3.10", 3, "API `RobustDistiller(**{'train.lr': 'fast'})` (construction only)",
      expect=r"(?s)\blr\b.*(float|number)|(float|number).*\blr\b")
def _(ctx: Ctx) -> Proc:
    return ctx.py("""
        import robust_student as rs
        d = rs.RobustDistiller(dataset="synthetic:10", **{"train.lr": "fast"})
        show(constructed=True, lr=repr(d.config.train.lr))
    """)


@case("3.11", 3, "API `RobustDistiller(method='rslad', method_args={'bogus_key': 1})`: refused at construction, "
      "or only in fit() after the data and teacher load?", expect=r"bogus_key")
def _(ctx: Ctx) -> Proc:
    return ctx.py("""
        import time, robust_student as rs
        t = time.perf_counter()
        d = rs.RobustDistiller.from_config(CTX["recipe"], method="rslad", method_args={"bogus_key": 1},
                                           **CTX["overrides"])
        constructed()
        d.fit()
        show(fitted=True)
    """)


@case("3.12", 3, "API `method_args={'adv_weight': 'high'}` for rslad (wrong type): refused at construction?",
      expect=r"adv_weight")
def _(ctx: Ctx) -> Proc:
    return ctx.py("""
        import robust_student as rs
        d = rs.RobustDistiller.from_config(CTX["recipe"], method="rslad", method_args={"adv_weight": "high"},
                                           **CTX["overrides"])
        constructed()
        d.fit()
        show(fitted=True)
    """)


@case("3.13", 3, "`fit --set method_args.bogus_key=1` on a tripwire dataset (undecodable images): does the "
      "error come before the data are read?", expect=r"bogus_key", late=r"TRIPWIRE")
def _(ctx: Ctx) -> Proc:
    tripwire_folder(ctx.tmp / "trip")
    return ctx.fit("method_args.bogus_key=1", f"dataset.name=imagefolder:{ctx.tmp / 'trip'}")


@case("3.14", 3, "`fit --set method_args.bogus_key=1` on normal data (is the message clear? 3.13 says when)",
      expect=r"bogus_key")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("method_args.bogus_key=1")


BROKEN_YAML = "teacher: fmnist-clip\ntrain:\n  epochs: 1\n  lr: [0.1, 0.2\nthreat:\n  eps: 0.1\n"
YAML_WHERE = r"broken_recipe\.yaml.*line \d+.*column \d+"


@case("3.15", 3, "`fit --recipe broken_recipe.yaml` with a YAML syntax error (unclosed [)",
      expect=YAML_WHERE, max_lines=1)
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "broken_recipe.yaml").write_text(BROKEN_YAML)
    return ctx.cli("fit", "--recipe", "broken_recipe.yaml", "--set", *FAST)


@case("3.16", 3, "API `RobustDistiller.from_config('broken_recipe.yaml')` with a YAML syntax error",
      expect=YAML_WHERE, max_lines=1)
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "broken_recipe.yaml").write_text(BROKEN_YAML)
    return ctx.py("""
        import robust_student as rs
        d = rs.RobustDistiller.from_config("broken_recipe.yaml")
        show(constructed=True)
    """)


@case("3.17", 3, "`fit --recipe` a YAML recipe with an unknown key (trian: ...)", expect=r"trian")
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "typo.yaml").write_text("teacher: fmnist-clip\ntrian:\n  epochs: 1\n")
    return ctx.cli("fit", "--recipe", "typo.yaml", "--set", *FAST)


@case("3.18", 3, "`fit --recipe` a YAML file that is a list, not a mapping", expect=r"mapping")
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "list.yaml").write_text("- teacher: fmnist-clip\n- student: resnet_tiny\n")
    return ctx.cli("fit", "--recipe", "list.yaml", "--set", *FAST)


@case("3.19", 3, "`fit --recipe no_such_recipe`", expect=r"no_such_recipe")
def _(ctx: Ctx) -> Proc:
    return ctx.cli("fit", "--recipe", "no_such_recipe", "--set", *FAST)


@case("3.20", 3, "`fit --set train.epoch=1` (typo of a key)", expect=r"epoch")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("train.epoch=1")


@case("3.21", 3, "`fit --set trainepochs1` (override without '=')", expect=r"key=value|=")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("trainepochs1")


@case("3.22", 3, "`fit --set train.optimizer=adam`", expect=r"optimizer")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("train.optimizer=adam")


@case("3.23", 3, "`fit --set teacher=no-such-teacher`", expect=r"no-such-teacher")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("teacher=no-such-teacher")


@case("3.24", 3, "`eval --model EMPTY_DIR` (an empty folder)", expect=r"saved student|not a|no .*student")
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "empty").mkdir()
    return ctx.eval("empty", "--data", "synthetic:10")


@case("3.25", 3, "`eval --model notes.txt` (a text file)", expect=r"saved student|not a .*(folder|directory)",
      reject=r"^Unknown teacher|Unknown teacher 'notes")
def _(ctx: Ctx) -> Proc:
    (ctx.tmp / "notes.txt").write_text("hello\n")
    return ctx.eval("notes.txt", "--data", "synthetic:10")


@case("3.26", 3, "`eval --model ./no_such_student` (a path that does not exist)",
      expect=r"saved student|does not exist|no such|not found", reject=r"Unknown teacher")
def _(ctx: Ctx) -> Proc:
    return ctx.eval("./no_such_student", "--data", "synthetic:10")


@case("3.27", 3, "`eval --model run/student/model.safetensors` (the weights file instead of the folder)",
      expect=r"saved student|folder|directory", reject=r"Unknown teacher")
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    return ctx.eval(str(weights_file(student).relative_to(ctx.tmp)), "--data", "synthetic:10")


@case("3.28", 3, "`eval --model run` (the run folder instead of its saved student)",
      expect=r"saved student|student")
def _(ctx: Ctx) -> Proc:
    ctx.seed_run()
    return ctx.eval("run", "--data", "synthetic:10")


@case("3.29", 3, "`eval --eps abc`", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return ctx.eval(ctx.student(), "--data", "synthetic:10", "--eps", "abc")


@case("3.30", 3, "`eval --batch-size many` (argparse type error)", expect=r"batch-size|batch_size")
def _(ctx: Ctx) -> Proc:
    return ctx.eval(ctx.student(), "--data", "synthetic:10", "--batch-size", "many")


@case("3.31", 3, "`eval --attacks pgd999` (unknown attack)", expect=r"pgd999")
def _(ctx: Ctx) -> Proc:
    return ctx.cli("eval", "--model", str(ctx.student()), "--data", "synthetic:10", "--attacks", "pgd999",
                   "--n-examples", "16", "--no-checks")


@case("3.32", 3, "`zeroshot --data imagefolder:/no/such/folder`", expect=r"/no/such/folder")
def _(ctx: Ctx) -> Proc:
    return ctx.cli("zeroshot", "--data", "imagefolder:/no/such/folder")


@case("3.33", 3, "`fit --set dataset.name=nosuch`", expect=r"nosuch")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("dataset.name=nosuch")


# 4. Evaluation refuses input that makes its numbers meaningless -----------------------------------------

# Evaluation cases use a model that gets most examples right (the built-in teacher on Fashion-MNIST), so the
# attacks really run (only correctly classified examples are attacked) and a wrong number is visible.
EVAL_TENSORS = """
    import torch, robust_student as rs
    m = rs.create_teacher("fmnist-clip")
    data = rs.build_dataset("fashion-mnist", "test", image_size=m.input_size)
    m.set_classes(data.prompts.classnames, data.prompts.templates)
    items = [data[i] for i in range(16)]
    x = torch.stack([item["image"] for item in items])
    y = torch.tensor([item["label"] for item in items])
"""
EVAL_CALL = """
    r = rs.evaluate_robustness(m, (x, y), attacks=["clean", "pgd20"], threat=threat, **kw)
    show(clean=round(r.clean_accuracy, 4), pgd20=round(r.robust_accuracy["pgd20"], 4), n=r.n_examples)
"""
# `robust-student eval` of the same model (a teacher name is evaluated zero-shot on the dataset's prompts).
EVAL_MODEL: list[str] = ["--model", "fmnist-clip", "--data", "fashion-mnist"]


def _eval_api(ctx: Ctx, change: str, threat: str = "rs.ThreatConfig(norm='linf', eps=8/255)",
              kw: str = "CTX['eval_kw']") -> Proc:
    code = (textwrap.dedent(EVAL_TENSORS) + textwrap.dedent(change) + f"\nthreat = {threat}\nkw = {kw}\n"
            + textwrap.dedent(EVAL_CALL))
    return ctx.py(code)


def _eval_cli(ctx: Ctx, *args: str) -> Proc:
    return ctx.cli("eval", *EVAL_MODEL, *EVAL_FAST, *args)


@case("4.01", 4, "API `evaluate_robustness` with a NaN pixel", expect=r"finite|nan")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "x[0, 0, 0, 0] = float('nan')")


@case("4.02", 4, "API `evaluate_robustness` with pixels in 0-255",
      expect=r"divid\w* by 255|0 ?[-–] ?255|\[0, ?255\]")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "x = (x * 255).round()")


@case("4.03", 4, "API `evaluate_robustness` with pixels in [-1, 1] (already normalised)",
      expect=r"(pixel|image|input)s?\b.*\[0, ?1\]|outside \[0, ?1\]")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "x = x * 2 - 1")


@case("4.04", 4, "API `evaluate_robustness` with labels outside [0, C) (C=10, labels 10..12)", expect=r"label")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "y = torch.randint(10, 13, (16,), generator=torch.Generator().manual_seed(0))")


@case("4.05", 4, "API `evaluate_robustness` with negative labels (-1)", expect=r"label")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "y = torch.full((16,), -1)")


@case("4.06", 4, "API `evaluate_robustness` with eps 0 and a PGD attack", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "", threat="rs.ThreatConfig(norm='linf', eps=0)")


@case("4.07", 4, "API `evaluate_robustness` with L-inf eps 2 (> 1: the whole pixel range)", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "", threat="rs.attacks.LinfBall(2.0)")  # a Threat object: the same in every version


@case("4.08", 4, "API `evaluate_robustness` with eps -0.1 (as a ThreatConfig)", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "", threat="rs.ThreatConfig(norm='linf', eps=-0.1)")


@case("4.09", 4, "API `evaluate_robustness` with batch_size=0", expect=r"batch_size")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "", kw="{**CTX['eval_kw'], 'batch_size': 0}")


@case("4.10", 4, "API `evaluate_robustness` with n_examples=0", expect=r"n_examples")
def _(ctx: Ctx) -> Proc:
    return _eval_api(ctx, "", kw="{**CTX['eval_kw'], 'n_examples': 0}")


def _two_class_folder(ctx: Ctx, corrupt: bool = False) -> Path:
    root = image_folder(ctx.tmp / "two", {"cat": 12, "dog": 12})
    if corrupt:
        corrupt_png(root / "cat" / "broken.png")
    return root


@case("4.11", 4, "`eval` of a 10-class student on a 2-class image folder", expect=r"class")
def _(ctx: Ctx) -> Proc:
    student = ctx.student()
    return ctx.eval(student, "--data", f"imagefolder:{_two_class_folder(ctx)}", "--split", "train")


@case("4.12", 4, "`eval` of a 10-class student on synthetic:3 (3 classes)", expect=r"class")
def _(ctx: Ctx) -> Proc:
    return ctx.eval(ctx.student(), "--data", "synthetic:3")


@case("4.13", 4, "`eval` of a student trained on synthetic (class 0..9) on fashion-mnist (10 classes, other "
      "names)", expect=r"class")
def _(ctx: Ctx) -> Proc:
    return ctx.eval(ctx.student(), "--data", "fashion-mnist")


@case("4.14", 4, "`eval --eps -0.1`", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--eps", "-0.1")


@case("4.15", 4, "`eval --eps 0 --attacks clean pgd20` (eps 0 for an attack)", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--eps", "0")


@case("4.16", 4, "`eval --eps 2` (L-inf eps > 1)", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--eps", "2")


@case("4.17", 4, "`eval --eps 0.7` (L-inf eps > 0.5: wants a warning)", expect=r"eps|0\.7", want="warning")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--eps", "0.7")


@case("4.18", 4, "`eval --batch-size 0`", expect=r"batch.size")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--batch-size", "0")


@case("4.19", 4, "`eval --n-examples 0`", expect=r"n.examples")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--n-examples", "0")


@case("4.20", 4, "`eval` on an image folder with one corrupt PNG (is --skip-corrupt offered?)",
      expect=r"--skip-corrupt")
def _(ctx: Ctx) -> Proc:
    root = _two_class_folder(ctx, corrupt=True)
    return ctx.cli("eval", "--model", str(ctx.student()), "--data", f"imagefolder:{root}", "--split", "train",
                   "--attacks", "clean", "--n-examples", "100", "--no-checks")


@case("4.21", 4, "`zeroshot` on an image folder with one corrupt PNG (is --skip-corrupt offered?)",
      expect=r"--skip-corrupt")
def _(ctx: Ctx) -> Proc:
    root = _two_class_folder(ctx, corrupt=True)
    return ctx.cli("zeroshot", "--data", f"imagefolder:{root}", "--split", "train")


@case("4.22", 4, "`eval --norm l2 --eps 0` (eps 0 for an attack, L2)", expect=r"eps")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--norm", "l2", "--eps", "0")


@case("4.23", 4, "`eval --eps 8` (meant 8/255: L-inf eps > 1)", expect=r"eps|255")
def _(ctx: Ctx) -> Proc:
    return _eval_cli(ctx, "--eps", "8")


# 5. Degenerate data refuses to train ---------------------------------------------------------------------

CLASSES = r"class"


@case("5.01", 5, "`fit` on a 1-class image folder", expect=CLASSES)
def _(ctx: Ctx) -> Proc:
    root = image_folder(ctx.tmp / "one", {"only": 20})
    return ctx.fit(f"dataset.name=imagefolder:{root}")


@case("5.02", 5, "`fit` on synthetic:1 (one class)", expect=CLASSES)
def _(ctx: Ctx) -> Proc:
    return ctx.fit("dataset.name=synthetic:1")


@case("5.03", 5, "`fit` on synthetic:0 (no class)", expect=CLASSES)
def _(ctx: Ctx) -> Proc:
    return ctx.fit("dataset.name=synthetic:0")


@case("5.04", 5, "`fit` on a CSV whose labels are all the same", expect=CLASSES)
def _(ctx: Ctx) -> Proc:
    rows = ["image,label"]
    for i in range(20):
        png(ctx.tmp / "imgs" / f"{i}.png", seed=i)
        rows.append(f"imgs/{i}.png,tumour")
    (ctx.tmp / "labels.csv").write_text("\n".join(rows) + "\n")
    return ctx.fit(f"dataset.name=csv:{ctx.tmp / 'labels.csv'}")


@case("5.05", 5, "`fit --set dataset.skip_corrupt=true` on a folder whose images are all corrupt (empty train "
      "split after skipping)", expect=r"empty|no (usable |readable )?images|0 (train|images)|all .*skipped")
def _(ctx: Ctx) -> Proc:
    for name in ("a", "b"):
        for i in range(10):
            corrupt_png(ctx.tmp / "bad" / name / f"{i}.png")
    return ctx.fit(f"dataset.name=imagefolder:{ctx.tmp / 'bad'}", "dataset.skip_corrupt=true")


@case("5.06", 5, "`fit --set dataset.skip_corrupt=true` with train/ good and val/ all corrupt (empty validation "
      "split after skipping)", expect=r"val")
def _(ctx: Ctx) -> Proc:
    image_folder(ctx.tmp / "data" / "train", {"a": 10, "b": 10})
    for name in ("a", "b"):
        for i in range(3):
            corrupt_png(ctx.tmp / "data" / "val" / name / f"{i}.png")
    image_folder(ctx.tmp / "data" / "test", {"a": 3, "b": 3}, start_seed=100)
    return ctx.fit(f"dataset.name=imagefolder:{ctx.tmp / 'data'}", "dataset.skip_corrupt=true")


@case("5.07", 5, "`fit` on an image folder with 2 images per class (the 15 % validation split rounds to empty)",
      expect=r"val")
def _(ctx: Ctx) -> Proc:
    root = image_folder(ctx.tmp / "tiny", {"a": 2, "b": 2})
    return ctx.fit(f"dataset.name=imagefolder:{root}")


@case("5.08", 5, "`fit --set dataset.max_train_examples=0`", expect=r"max_train_examples")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("dataset.max_train_examples=0")


def _mixed_folder(ctx: Ctx) -> Path:
    root = ctx.tmp / "mixed"
    for name in ("a", "b"):
        for i in range(10):
            png(root / name / f"{i}.png", size=SIZE if i % 2 else (SIZE + 8, SIZE + 4), seed=i)
    return root


@case("5.09", 5, "`fit` on an image folder of mixed sizes (16x16 and 24x20) without dataset.image_size",
      expect=r"(?s)(image_size.*\.png|\.png.*image_size)")
def _(ctx: Ctx) -> Proc:
    return ctx.fit(f"dataset.name=imagefolder:{_mixed_folder(ctx)}", "dataset.max_train_examples=64")


@case("5.10", 5, "control: the same mixed-size folder with dataset.image_size=16", want="success")
def _(ctx: Ctx) -> Proc:
    return ctx.fit(f"dataset.name=imagefolder:{_mixed_folder(ctx)}", "dataset.max_train_examples=64",
                   f"dataset.image_size={SIZE}")


@case("5.11", 5, "`fit --set dataset.image_size=-8` on an image folder", expect=r"image_size",
      reject=r"Cannot read image")
def _(ctx: Ctx) -> Proc:
    root = image_folder(ctx.tmp / "imgs", {"a": 10, "b": 10})
    return ctx.fit(f"dataset.name=imagefolder:{root}", "dataset.image_size=-8")


@case("5.12", 5, "`fit --set dataset.image_size=0` on an image folder", expect=r"image_size",
      reject=r"Cannot read image")
def _(ctx: Ctx) -> Proc:
    root = image_folder(ctx.tmp / "imgs", {"a": 10, "b": 10})
    return ctx.fit(f"dataset.name=imagefolder:{root}", "dataset.image_size=0")


@case("5.13", 5, "`fit --set dataset.image_size=-8` on synthetic", expect=r"image_size")
def _(ctx: Ctx) -> Proc:
    return ctx.fit("dataset.image_size=-8")


@case("5.14", 5, "API `create_student('resnet_tiny', teacher)` from a teacher whose classes were never set, then "
      "forward", expect=r"class")
def _(ctx: Ctx) -> Proc:
    return ctx.py("""
        import torch, robust_student as rs
        t = rs.create_teacher("fmnist-clip")
        s = rs.create_student("resnet_tiny", t, image_size=CTX["size"])
        out = s(torch.rand(2, 3, CTX["size"], CTX["size"]))
        show(logits_shape=tuple(out.shape))
    """)


@case("5.15", 5, "API `RobustDistiller(dataset=imagefolder with 1 class).fit()`", expect=CLASSES)
def _(ctx: Ctx) -> Proc:
    root = image_folder(ctx.tmp / "one", {"only": 20})
    return ctx.py("""
        import robust_student as rs
        d = rs.RobustDistiller.from_config(CTX["recipe"], **{**CTX["overrides"], "dataset.name": CTX["data"]})
        d.fit()
        show(steps=d.result.steps, classes=d.student.num_classes)
    """, data=f"imagefolder:{root}")


@case("5.16", 5, "control: `fit` on an image folder whose class folder holds no images", expect=r"no images")
def _(ctx: Ctx) -> Proc:
    root = image_folder(ctx.tmp / "imgs", {"a": 10})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("x\n")
    return ctx.fit(f"dataset.name=imagefolder:{root}")


# -- judging -----------------------------------------------------------------------------------------------

def summarize(proc: Proc) -> tuple[str, str, dict[str, Any]]:
    """(one-line message, full message text, details) of a finished subprocess."""
    details: dict[str, Any] = {}
    err_lines = _lines(proc.stderr)
    out_lines = _lines(proc.stdout)
    exc_line = next((l for l in reversed(err_lines) if l.startswith(EXC_MARK)), None)
    if exc_line is not None:  # a snippet raised: the wrapper recorded the exception
        info = json.loads(exc_line[len(EXC_MARK):])
        details.update(exception=info["type"], where=info["where"], sdk_frame=info["sdk_frame"])
        full = info["message"]
        first = next((l for l in _lines(full)), "")
        return f"{info['type']}: {first}", full, {**details, "message_lines": info["lines"],
                                                   "message_chars": info["chars"]}
    if proc.killed:
        full = proc.killed
        return full, full, details
    raw_err = [l for l in re.split(r"\r\n|\r|\n", proc.stderr)]
    start = next((i for i, l in enumerate(raw_err) if CLI_ERROR.match(l.strip())), None)
    if start is not None and proc.rc != 0:  # the CLI's own error line, and whatever follows it
        tail = [l for l in raw_err[start:] if l.strip()]
        full = "\n".join(tail)
        return tail[0].strip(), full, {"message_lines": len(tail), "message_chars": len(full)}
    tb = max((i for i, l in enumerate(raw_err) if l.startswith(TRACEBACK)), default=None)
    if tb is not None and proc.rc != 0:  # an uncaught exception: its unindented "Type: message" line onwards
        exc = next((i for i in range(tb + 1, len(raw_err)) if raw_err[i].strip() and not raw_err[i][0].isspace()),
                   None)
        if exc is not None:
            tail = [l for l in raw_err[exc:] if l.strip()]
            full = "\n".join(tail)
            return tail[0].strip(), full, {"message_lines": len(tail), "message_chars": len(full)}
    if proc.rc == 0 and proc.stdout:
        text = success_summary(proc.stdout)
        return text, text, {"message_lines": 1, "message_chars": len(text)}
    if proc.rc == 0:
        lines = out_lines or err_lines
    else:
        lines = err_lines or out_lines
    last = lines[-1] if lines else ""
    return last, last, {"message_lines": 1 if last else 0, "message_chars": len(last)}


def success_summary(stdout: str) -> str:
    """What a successful command reported, in one line: an eval report's threat, accuracies and per-class
    names; otherwise the output lines joined (fit prints three; the "student saved to" one is dropped)."""
    threat = re.search(r"^Threat: (.*)$", stdout, re.M)
    accuracies = re.findall(r"^\| ([\w:]+) \| ([\d.]+ %) \|", stdout, re.M)
    if threat and accuracies:
        n = re.search(r"(\d+) examples", threat.group(1))
        text = (f"{threat.group(1).split(';')[0].strip()}, n={n.group(1) if n else '?'}: "
                + ", ".join(f"{name} {acc}" for name, acc in accuracies))
        per_class = stdout.split("Per-class accuracy:", 1)
        if len(per_class) == 2:
            rows = re.findall(r"^\| ([^|]+?) \| \d+ \|", per_class[1].split("\n\n\n")[0], re.M)
            text += "; classes: " + ", ".join(r for r in rows if r != "class")
        return text
    return " / ".join(l for l in _lines(stdout) if not l.startswith(("student saved to", "report written to")))


def warnings_in(proc: Proc) -> list[str]:
    return [l for l in _lines(proc.stderr) if re.search(r"\bWARNING\b|Warning:", l)
            and not l.startswith(EXC_MARK)]


def judge(c: Case, r: dict[str, Any]) -> str:
    """The verdict, in this order: skipped, timeout, data lost, exit 0 cases, then the kind of error."""
    if r.get("skipped"):
        return f"skipped ({r['skipped']})"
    if r["timed_out"]:
        return "timeout"
    if c.protect and r.get("kept") is False:
        return "data lost"
    if r.get("killed"):
        return "killed, kept"
    text = r["message_full"]
    if r["rc"] == 0:
        if c.want == "success":
            return "ok"
        if c.want == "warning" and c.expect and any(re.search(c.expect, w, re.I) for w in r["warnings"]):
            return "warned"
        return "silent"
    if r["traceback"]:
        return "traceback"
    if c.want == "success":
        return "failed"
    if r.get("constructed") or (c.late and re.search(c.late, text, re.I)):
        return "late error"
    if c.expect and not re.search(c.expect, text, re.I):
        return "unclear error"
    if c.reject and re.search(c.reject, text, re.I | re.M):
        return "unclear error"
    if r.get("message_chars", 0) > MAX_MESSAGE_CHARS or (c.max_lines and r.get("message_lines", 0) > c.max_lines):
        return "unclear error"
    return "clear error"


# -- the audit ---------------------------------------------------------------------------------------------

class Audit:
    def __init__(self, env: Env, keep: bool = False) -> None:
        self.env = env
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
        self._seed: Path | None = None
        self.seed_info: dict[str, Any] = {}
        import yaml

        self.fast_dict = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in FAST)}
        self.seed_extra_dict = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in SEED_EXTRA)}

    def seed(self) -> Path:
        """Make the seed run once (with the --source code), then hand out copies."""
        if self._seed is None:
            folder = self.root / "_seed"
            folder.mkdir()
            ctx = Ctx(self, folder)
            started = time.perf_counter()
            proc = ctx.fit(*SEED_EXTRA)
            self.seed_info = {"rc": proc.rc, "seconds": round(time.perf_counter() - started, 1),
                              "files": sorted(hashes(folder / "run"))}
            if proc.rc != 0 or not (folder / "run").is_dir():
                raise RuntimeError(f"the seed run failed (rc {proc.rc}): {summarize(proc)[0]}\n{proc.stderr[-2000:]}")
            self._seed = folder / "run"
        return self._seed

    def run_case(self, c: Case) -> dict[str, Any]:
        tmp = Path(tempfile.mkdtemp(prefix=f"case_{c.id}_", dir=self.root))
        ctx = Ctx(self, tmp)
        started = time.perf_counter()
        try:
            proc = c.run(ctx)
            setup_error = None
        except SystemExit:
            raise
        except Exception as err:  # the audit's own set-up failed: say so, do not blame the SDK
            proc, setup_error = Proc([], None, "", "", 0.0), f"{type(err).__name__}: {err}"
        seconds = time.perf_counter() - started
        message, full, details = summarize(proc)
        message, full = (_anonymise(t, tmp, self.root) for t in (message, full))
        both = proc.stdout + proc.stderr
        r: dict[str, Any] = {
            "id": c.id, "class": c.cls, "description": c.desc, "want": c.want,
            "command": _show_argv(proc.argv, tmp, self.env), "snippet": proc.snippet,
            "rc": proc.rc, "traceback": TRACEBACK in both, "message": message[:200], "message_full": full[:4000],
            **details, "warnings": [w[:200] for w in warnings_in(proc)][:5],
            "seconds": round(proc.seconds, 2), "case_seconds": round(seconds, 2), "timed_out": proc.timed_out,
            "kept": ctx.kept if c.protect else None, "changed_or_lost_files": ctx.lost[:10] if c.protect else None,
            "constructed": CONSTRUCTED in proc.stdout, "killed": proc.killed, "expect": c.expect,
            **({"extra": ctx.extra} if ctx.extra else {}),
        }
        if ctx.skip:
            r["skipped"] = ctx.skip
        if setup_error:
            r["skipped"] = f"audit set-up failed: {setup_error}"
        r["verdict"] = judge(c, r)
        if not self.keep:
            _rmtree(tmp)
        return r

    def close(self) -> None:
        if not self.keep:
            _rmtree(self.root)


def _anonymise(text: str, tmp: Path, root: Path) -> str:
    """Replace the random temporary folders in a message, so runs compare line by line."""
    return text.replace(str(tmp), "$CASE").replace(str(root), "$AUDIT")


def _rmtree(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        try:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o700)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def _show_argv(argv: list[str], tmp: Path, env: Env) -> str:
    if not argv:
        return ""
    parts = ["python" if i == 0 else a for i, a in enumerate(argv)]
    if len(parts) > 2 and parts[1] == "-c" and "AUDIT-EXCEPTION" in parts[2]:
        parts = ["python", "snippet.py"]
    return " ".join(parts).replace(str(tmp), "$CASE")


def git_state(source: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


# -- comparing two runs ------------------------------------------------------------------------------------

def _cell(r: dict[str, Any] | None, width: int = 150) -> str:
    if r is None:
        return "(not run)"
    msg = r.get("message", "")
    if r.get("message_chars", 0) > 300:
        msg = f"[{r.get('message_lines')} lines, {r['message_chars']} chars] {msg}"
    if r.get("kept") is not None:
        msg = f"kept={r['kept']}; {msg}"
    if (r.get("extra") or {}).get("both_succeeded"):
        msg = f"both fits exited 0; {msg}"
    if len(msg) > width:
        msg = msg[: width - 3] + "..."
    rc = "" if r.get("rc") is None else f" (rc {r['rc']})"
    text = f"**{r['verdict']}**{rc}: {msg}" if msg else f"**{r['verdict']}**{rc}"
    return text.replace("|", "\\|").replace("\n", " ")


def compare(before_path: Path, after_path: Path, out: Path) -> None:
    before, after = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (before_path, after_path))
    rows_b = {r["id"]: r for r in before["cases"]}
    rows_a = {r["id"]: r for r in after["cases"]}
    ids = list(rows_b) + [i for i in rows_a if i not in rows_b]
    lb, la = before.get("label", "before"), after.get("label", "after")
    lines = [f"# Bad-input audit: {lb} vs {la}", "",
             f"{lb}: `{before.get('source')}` (commit {before.get('git', {}).get('commit', '?')[:10]}), "
             f"{len(before['cases'])} cases in {before.get('seconds_total', '?')} s. "
             f"{la}: `{after.get('source')}` (commit {after.get('git', {}).get('commit', '?')[:10]}), "
             f"{len(after['cases'])} cases in {after.get('seconds_total', '?')} s. "
             "Generated by `python benchmarks/bad_inputs.py --compare`.", "",
             f"| # | class | bad input | {lb} | {la} |", "|---|---|---|---|---|"]
    for i in ids:
        ref = rows_b.get(i) or rows_a[i]
        desc = ref["description"].replace("|", "\\|")
        lines.append(f"| {i} | {ref['class']} | {desc} | {_cell(rows_b.get(i))} | {_cell(rows_a.get(i))} |")
    verdicts = sorted({r["verdict"] for r in [*rows_b.values(), *rows_a.values()]})
    lines += ["", "Summary (cases per verdict):", "", f"| verdict | {lb} | {la} |", "|---|---|---|"]
    for v in verdicts:
        nb = sum(r["verdict"] == v for r in rows_b.values())
        na = sum(r["verdict"] == v for r in rows_a.values())
        lines.append(f"| {v} | {nb} | {na} |")
    lines.append(f"| total | {len(rows_b)} | {len(rows_a)} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")


# -- entry point -------------------------------------------------------------------------------------------

def steps_key(source: Path) -> str:
    """The attack-steps key of the audited tree, read from its config.py as text (nothing is imported)."""
    config = (source / "robust_student" / "config.py").read_text(encoding="utf-8")
    return "attack.steps" if "class AttackConfig" in config else "threat.steps"


def use_steps_key(key: str) -> None:
    """Point FAST and the SLOW lists (and case 3.04) at ``key``."""
    global STEPS_KEY
    for settings in (FAST, SLOW, SLOW_NO_CHECKPOINT):
        settings[:] = [f"{key}={o.partition('=')[2]}" if o.startswith(f"{STEPS_KEY}=") else o for o in settings]
    STEPS_KEY = key


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REPO, help="source tree whose robust_student is audited "
                   f"(default: {REPO})")
    p.add_argument("--label", default="run", help="name of this run in the results (e.g. before / after)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these case ids (e.g. 1.01 3.14)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the subprocesses (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary case folders (prints where)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE.json", "AFTER.json"))
    p.add_argument("--markdown", type=Path, help="with --compare: the Markdown file to write")
    args = p.parse_args(argv)

    if args.compare:
        if not args.markdown:
            p.error("--compare needs --markdown OUT.md")
        compare(*args.compare, args.markdown)
        return 0
    if args.list:
        for c in CASES:
            print(f"{c.id}  [{c.cls}]  {c.desc}")
        return 0
    cases = CASES
    if args.only:
        unknown = sorted(set(args.only) - {c.id for c in CASES})
        if unknown:
            p.error(f"unknown case id(s) {unknown}; see --list")
        cases = [c for c in CASES if c.id in args.only]

    use_steps_key(steps_key(args.source))
    env = Env(args.source, args.python)
    try:
        imported = env.preflight()
    except BaseException:
        env.close()
        raise
    print(f"auditing robust_student from {imported['init']} ({len(cases)} cases)", flush=True)
    audit = Audit(env, keep=args.keep)
    started = time.perf_counter()
    results = []
    try:
        for c in cases:
            r = audit.run_case(c)
            results.append(r)
            kept = "" if r["kept"] is None else f" kept={r['kept']}"
            print(f"{c.id:5} {r['verdict']:14} rc={r['rc']!s:4} {r['seconds']:5.1f}s{kept}  {r['message'][:110]}",
                  flush=True)
    finally:
        if args.keep:
            print(f"case folders kept under {audit.root}")
        audit.close()
        env.close()
    total = round(time.perf_counter() - started, 1)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print(f"{len(results)} cases in {total} s: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
    if args.out:
        data = {"label": args.label, "source": str(env.source), "imported_from": imported,
                "git": git_state(env.source), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                "euid": os.geteuid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds_total": total,
                "settings": {"recipe": RECIPE, "fast": FAST, "seed_extra": SEED_EXTRA, "slow": SLOW,
                             "slow_no_checkpoint": SLOW_NO_CHECKPOINT, "eval_fast": EVAL_FAST, "eval_kw": EVAL_KW,
                             "timeout_s": TIMEOUT, "max_message_chars": MAX_MESSAGE_CHARS},
                "seed_run": audit.seed_info, "verdict_counts": counts, "cases": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
