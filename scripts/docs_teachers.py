"""Write one docs page per registered teacher (docs/teachers/<name>.md) and the index, from the registry.

    python scripts/docs_teachers.py            # (re)write the pages
    python scripts/docs_teachers.py --check    # exit 1 if a page differs from what the registry gives

The licence, usage and notes come from :func:`robust_student.describe_teacher`; for the built-in teachers the
training record is read from ``robust_student/teachers/weights/<name>/training.json``. ``tests/test_docs.py``
checks that the committed pages are what this script writes, so they cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "teachers"
WEIGHTS = ROOT / "robust_student" / "teachers" / "weights"

# How each kind of teacher gets its weights (the registry says what it is; this says where the bytes come from).
WHERE = {
    "fmnist-clip": "shipped inside the package (`robust_student/teachers/weights/fmnist-clip/`); nothing to download.",
    "conch": ("gated on the Hugging Face Hub: request access at https://huggingface.co/MahmoodLab/conch, download "
              "`pytorch_model.bin` and pass its path (`conch:/path/to/pytorch_model.bin`), or have it in the local Hub "
              "cache. The model code comes from the official package: "
              "`pip install git+https://github.com/mahmoodlab/CONCH.git`."),
    "cxr-clip": ("download a released checkpoint (`.tar`) from https://github.com/kakaobrain/cxr-clip and convert it "
                 "once with `robust-student convert-cxr-clip SRC.tar DST --i-trust-this-file`; then use `cxr-clip:DST`. "
                 "Needs the `medical` extra."),
    "open_clip": ("any open_clip model: a pretrained tag from the Hub cache (`open_clip:ViT-B-32/openai`), a Hub repository "
                  "(`open_clip:hf-hub:org/name`), or a local folder holding `open_clip_config.json` and the weights "
                  "(`open_clip:local-dir:/models/name`, never touches the network)."),
    "student": "a folder written by `fit()` or `save_student()`, e.g. `student:runs/fare/student`.",
}
ALIAS_WHERE = ("the open_clip weights named in the summary, from the local Hugging Face cache (download them once "
               "with network access; robust_student itself never downloads during a run).")


def builtin_teachers() -> list[str]:
    """The teachers the package registers (not ones a program or a test registers at run time)."""
    from robust_student import list_teachers
    from robust_student.teachers import TEACHERS

    return [name for name in list_teachers()
            if (getattr(TEACHERS._items[name], "__module__", "") or "").startswith("robust_student.")]


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _training(name: str) -> list[str]:
    path = WEIGHTS / name / "training.json"
    if not path.is_file():
        return []
    rec = json.loads(path.read_text(encoding="utf-8"))
    lines = ["", "## How it was made", ""]
    lines.append(f"Recorded in `robust_student/teachers/weights/{name}/training.json`:")
    lines.append("")
    lines.append(f"- command: `{rec['command']}`")
    if "what" in rec:
        lines.append(f"- what: {rec['what']}")
    if "base_teacher" in rec:
        lines.append(f"- made from: `{rec['base_teacher']}` with method `{rec.get('method')}`")
    zs = rec.get("zero_shot_test")
    if isinstance(zs, dict):
        lines.append(f"- zero-shot accuracy on the Fashion-MNIST test set: clean {_percent(zs.get('clean_accuracy'))} "
                     f"(n = {zs.get('clean_n')})")
        pgd, aa = zs.get("pgd20") or {}, zs.get("autoattack") or {}
        if pgd:
            lines.append(f"- PGD-20 at {zs.get('norm')} eps {zs.get('eps')}: {_percent(pgd.get('robust'))} (n = {pgd.get('n')})")
        if aa:
            lines.append(f"- AutoAttack (standard) at {zs.get('norm')} eps {zs.get('eps')}: {_percent(aa.get('robust'))} "
                         f"(n = {aa.get('n')})")
    elif "test_accuracy" in rec:
        lines.append(f"- zero-shot accuracy on the Fashion-MNIST test set: {_percent(rec['test_accuracy'])} (n = 10000)")
    seconds = rec.get("train_seconds_this_invocation", rec.get("train_seconds"))
    if seconds is not None:
        lines.append(f"- training time: {seconds:.0f} s on a CPU")
    if "weights_bytes" in rec:
        lines.append(f"- weights: {rec['weights_bytes'] / 1e6:.2f} MB")
    lic = rec.get("license") or {}
    if lic:
        lines.append(f"- licence recorded with the weights: {lic.get('weights')} (data: {lic.get('data')})")
    return lines


def page(name: str) -> str:
    from robust_student import describe_teacher

    d = describe_teacher(name)
    commercial = {True: "allowed", False: "**no** (non-commercial)", None: "depends on the weights you load"}
    summary = d["summary"].replace("``", "`")
    licence = d["license"] or "the licence of the weights you load"
    if d["license_url"]:
        licence = f"{licence} ({d['license_url']})"
    where = WHERE.get(name) or (WHERE["fmnist-clip"].replace("fmnist-clip/", f"{name}/")
                                if (WEIGHTS / name).is_dir() else ALIAS_WHERE)
    lines = [f"# `{name}`", "", summary, "", "| | |", "|---|---|", f"| teacher spec | `{d['usage']}` |",
             f"| licence | {licence} |", f"| commercial use | {commercial[d['commercial_use']]} |"]
    if d["note"]:
        lines.append(f"| note | {d['note']} |")
    lines += ["", "## Weights", "", where[0].upper() + where[1:]]
    lines += _training(name)
    lines += ["", "## Licence of what you make with it", "",
              "A student distilled from this teacher records the teacher and its licence in its `config.json`; "
              "the model card states it, and `push_to_hub` makes the repository private when the licence is "
              "non-commercial or unknown. robust_student never bundles or uploads a teacher's weights.", ""]
    return "\n".join(lines)


def index() -> str:
    from robust_student import describe_teacher

    lines = ["# Teachers", "",
             "Every teacher robust_student knows, with its licence. A teacher is named by a spec string "
             "(`fit --set teacher=SPEC`, `RobustDistiller(teacher=SPEC)`); `robust-student list teachers` prints the "
             "same list. Students inherit the terms of the teacher they are distilled from.", "",
             "| teacher | spec | licence | commercial use |", "|---|---|---|---|"]
    commercial = {True: "yes", False: "no", None: "per weights"}
    for name in builtin_teachers():
        d = describe_teacher(name)
        lines.append(f"| [`{name}`]({name}.md) | `{d['usage'].replace('|', '&#124;')}` | "
                     f"{d['license'] or 'per weights'} | {commercial[d['commercial_use']]} |")
    return "\n".join(lines) + "\n"


def pages() -> dict[Path, str]:
    out = {OUT / "index.md": index()}
    for name in builtin_teachers():
        out[OUT / f"{name}.md"] = page(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    wanted = pages()
    if args.check:
        stale = [str(p.relative_to(ROOT)) for p, text in wanted.items()
                 if not p.is_file() or p.read_text(encoding="utf-8") != text]
        extra = sorted(str(p.relative_to(ROOT)) for p in OUT.glob("*.md") if p not in wanted)
        for p in stale:
            print(f"stale: {p} (run python scripts/docs_teachers.py)")
        for p in extra:
            print(f"no such teacher: {p}")
        return 1 if stale or extra else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(wanted)} pages to {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
