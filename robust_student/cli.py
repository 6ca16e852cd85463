"""The ``robust-student`` command line: thin presentation over the library's functions.

Each subcommand is one ``_cmd_*`` function registered in :data:`COMMANDS` with its argument builder;
``main(argv)`` is importable so tests drive the CLI without a subprocess.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from .formatting import format_percent

logger = logging.getLogger("robust_student")

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str):
    """Register ``_cmd_<name>`` together with the function that adds its arguments."""

    def decorator(add_args: Callable[[argparse.ArgumentParser], None]):
        def wrap(run: Callable[[argparse.Namespace], int]):
            COMMANDS[name] = (add_args, run, help)
            return run

        return wrap

    return decorator


# -- quickstart ------------------------------------------------------------------------------------------

def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (default: fashion-mnist)")
    p.add_argument("--teacher", default="fmnist-clip", help="teacher name (default: the built-in fmnist-clip)")
    p.add_argument("--student", default="resnet_tiny", help="student architecture (default: resnet_tiny)")
    p.add_argument("--output", default="quickstart_out", help="folder for the run's artifacts")


@command("quickstart", "run the main job end to end on the built-in default (offline)")(_quickstart_args)
def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    summary = run_quickstart(teacher=args.teacher, student=args.student, data=args.data, output_dir=args.output)
    print(summary.to_text())
    return 0


# -- zero-shot evaluation of a teacher -------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _data_config(spec: str, skip_corrupt: bool, image_size: int | None = None, classes: list[str] | None = None):
    from .config import DataConfig

    return DataConfig(name=spec, skip_corrupt=skip_corrupt, image_size=image_size, classes=classes)


def _zeroshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="fmnist-clip")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--skip-corrupt", action="store_true", help="skip (and count) images that cannot be read")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("zeroshot", "zero-shot accuracy of a teacher on a dataset's prompts")(_zeroshot_args)
def _cmd_zeroshot(args: argparse.Namespace) -> int:
    from .data import DATASETS, build_dataset
    from .teachers import TEACHERS, create_teacher
    from .teachers.zeroshot import zero_shot_accuracy

    TEACHERS.resolve(args.teacher)
    DATASETS.resolve(args.data)
    dataset = build_dataset(_data_config(args.data, args.skip_corrupt), args.split)
    if len(dataset) == 0:
        raise ValueError(f"the {args.split} split of {args.data!r} is empty")
    teacher = create_teacher(args.teacher)
    teacher.set_classes(dataset.prompts.classnames, dataset.prompts.templates)
    accuracy = zero_shot_accuracy(teacher, dataset, batch_size=args.batch_size)
    result = {"teacher": args.teacher, "data": args.data, "split": args.split, "n": len(dataset),
              "zero_shot_accuracy": accuracy}
    print(json.dumps(result) if args.json else
          f"{args.teacher} zero-shot accuracy on {args.data} ({args.split}, n={len(dataset)}): "
          f"{format_percent(accuracy)}")
    return 0


# -- converting a released CXR-CLIP checkpoint -----------------------------------------------------------

def _convert_cxr_clip_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="released CXR-CLIP checkpoint (.tar, from the kakaobrain/cxr-clip README)")
    p.add_argument("dst", help="output folder; load it later with --teacher cxr-clip:DST")
    p.add_argument("--i-trust-this-file", dest="trust", action="store_true",
                   help="allow full unpickling of SRC (needed for the released files; it can run code from the file)")
    p.add_argument("--tokenizer", default=None,
                   help="local Bio_ClinicalBERT tokenizer folder to copy into DST/tokenizer (default: the Hub cache)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")


@command("convert-cxr-clip", "convert a released CXR-CLIP .tar into a safetensors folder")(_convert_cxr_clip_args)
def _cmd_convert_cxr_clip(args: argparse.Namespace) -> int:
    from .teachers.cxr_clip import convert_cxr_clip_checkpoint

    result = convert_cxr_clip_checkpoint(args.src, args.dst, trust_checkpoint=args.trust, tokenizer=args.tokenizer,
                                         overwrite=args.overwrite)
    print(result.to_text())
    return 0


# -- training --------------------------------------------------------------------------------------------

def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="quickstart",
                   help="a packaged recipe name (e.g. quickstart, rslad_paper) or a YAML file (default: quickstart)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set train.epochs=3 threat.eps=4/255")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in train.output_dir (removed once the new run has a checkpoint)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


@command("fit", "distil a teacher into a robust student from a recipe (plus --set overrides)")(_fit_args)
def _cmd_fit(args: argparse.Namespace) -> int:
    from .api import RobustDistiller, load_recipe

    config = load_recipe(args.recipe).with_overrides(args.overrides)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in train.output_dir and --overwrite replaces it: give one")
    distiller = RobustDistiller(config=config)
    distiller.fit(resume=args.resume, overwrite=True if args.overwrite else None)
    result = distiller.result
    final = distiller.history[-1] if distiller.history else {}
    summary = {"teacher": config.teacher, "student": config.student, "method": config.method,
               "dataset": config.dataset.name, "steps": result.steps, "seconds": round(result.seconds, 1),
               "output_dir": result.output_dir, **{k: v for k, v in final.items() if k.startswith("val_")}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{config.method}: {config.teacher} -> {config.student} on {config.dataset.name}, "
              f"{result.steps} steps in {result.seconds:.0f} s")
        if final:
            print(f"  validation (n={final['val_examples']}): clean {format_percent(final['val_clean_acc'])}, "
                  f"{final['val_attack']} {format_percent(final['val_robust_acc'])}")
        print(f"  student saved to {result.output_dir}/student "
              f"(robust-student eval --model {result.output_dir}/student)")
    return 0


# -- robustness evaluation -------------------------------------------------------------------------------

def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a saved student folder, or a teacher name (evaluated zero-shot on the dataset's prompts)")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (default: fashion-mnist)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--attacks", nargs="+", default=["clean", "fgsm", "pgd20", "cw20"],
                   help="named attacks (robust-student list attacks); add autoattack for the reported number")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--eps", default="8/255", help="radius in pixel units, e.g. 8/255 (default) or 0.5")
    p.add_argument("--n-examples", type=_positive_int, default=1000)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="resize images (default: the student's training size / the teacher's input size)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip (and count) images that cannot be read")
    p.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks (not recommended)")
    p.add_argument("--classes", nargs="+", metavar="LABEL",
                   help="evaluate on these classes only; a student scores them through its teacher's text encoder "
                        "(zero-shot to classes it did not train on, e.g. after fit with dataset.classes)")
    p.add_argument("--text-teacher", metavar="TEACHER",
                   help="with --classes: the teacher whose text encoder scores them (default: the one the student "
                        "records)")
    p.add_argument("--output", help="also write the report as JSON to this file")
    p.add_argument("--curve", metavar="STEM", help="also measure robust accuracy vs eps -> STEM.json, STEM.png")


@command("eval", "robust accuracy of a student or teacher under named attacks, with masking checks")(_eval_args)
def _cmd_eval(args: argparse.Namespace) -> int:
    from .attacks import get_attack, make_threat
    from .config import parse_number
    from .data import DATASETS, build_dataset
    from .evaluation import check_request, eps_curve, evaluate_robustness

    # Everything that needs no data or model is checked first.
    threat = make_threat(args.norm, parse_number(args.eps, name="--eps"))
    check_request(args.attacks, threat, n_examples=args.n_examples, batch_size=args.batch_size)
    for name in args.attacks:
        if name != "clean":
            get_attack(name)
    DATASETS.resolve(args.data)
    if args.text_teacher and not args.classes:
        raise ValueError("--text-teacher scores the classes named by --classes; give --classes too")
    model, image_size = _model_for_eval(args.model)
    dataset = build_dataset(_data_config(args.data, args.skip_corrupt, args.image_size or image_size, args.classes),
                            args.split)
    if not hasattr(model, "spec"):  # a teacher: zero-shot on this dataset's prompts
        model.set_classes(dataset.prompts.classnames, dataset.prompts.templates)
    elif args.classes:  # a student: the chosen classes through its teacher's text encoder
        from .students import for_classes
        from .teachers import create_teacher

        recorded = getattr(model, "teacher_provenance", {}) or {}
        if not args.text_teacher and not recorded.get("spec"):
            raise ValueError(f"{args.model} records no teacher to score new classes with: give --text-teacher")
        teacher = (create_teacher(args.text_teacher) if args.text_teacher
                   else create_teacher(recorded["spec"], **recorded.get("args", {})))
        model = for_classes(model, teacher, dataset.prompts.classnames, dataset.prompts.templates,
                            labels=dataset.labels)
    report = evaluate_robustness(model, dataset, args.attacks, threat, n_examples=args.n_examples,
                                 batch_size=args.batch_size, seed=args.seed, checks=not args.no_checks,
                                 model_name=args.model, dataset_name=f"{args.data} ({args.split})")
    print(report.to_markdown())
    if args.output:
        print(f"report written to {report.save_json(args.output)}")
    if args.curve:
        eps_curve(model, dataset, norm=args.norm, n_examples=min(args.n_examples, 500), batch_size=args.batch_size,
                  seed=args.seed, output=args.curve)
        print(f"robust accuracy vs eps written to {args.curve}.json and {args.curve}.png")
    return 0


def _model_for_eval(spec: str):
    """A saved student folder, or a registered teacher; a path that is neither says so (not "unknown teacher")."""
    from pathlib import Path

    from .students.io import load_student
    from .teachers import TEACHERS, create_teacher

    path = Path(spec).expanduser()
    if path.exists():
        model = load_student(path)  # a folder that is not a saved student says what a saved student is
        return model, model.spec.get("image_size")
    if spec not in TEACHERS:
        if spec.startswith((".", "/", "~")) or (spec.count("/") and spec.partition(":")[0] not in TEACHERS):
            raise FileNotFoundError(f"--model {spec}: no such folder (a saved student is a folder with config.json "
                                    "and model.safetensors; or give a teacher name: robust-student list teachers)")
    model = create_teacher(spec)
    return model, model.input_size


# -- listing ---------------------------------------------------------------------------------------------

def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "teachers", "students", "datasets", "methods", "attacks", "recipes"])


@command("list", "list registered teachers, students, datasets, methods, attacks and recipes")(_list_args)
def _cmd_list(args: argparse.Namespace) -> int:
    from .api import list_recipes
    from .attacks import ATTACKS
    from .data import DATASETS
    from .methods import METHODS
    from .students import STUDENTS
    from .teachers import TEACHERS, describe_teacher

    registries = {"teachers": TEACHERS, "students": STUDENTS, "datasets": DATASETS, "methods": METHODS,
                  "attacks": ATTACKS}
    for kind, registry in registries.items():
        if args.what not in ("all", kind):
            continue
        print(f"{kind}:")
        for name in registry.names():
            info = registry.describe(name)
            extra = ""
            if kind == "teachers":
                terms = describe_teacher(name)
                commercial = {True: "commercial use allowed", False: "non-commercial", None: "terms: see weights"}
                extra = f" [{terms['license'] or 'licence per weights'}; {commercial[terms['commercial_use']]}]"
            print(f"  {info['usage']:<28} {info['summary']}{extra}".rstrip())
    if args.what in ("all", "recipes"):
        print("recipes:")
        for name in list_recipes():
            print(f"  {name}")
    return 0


# -- entry point -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robust-student", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, _, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


# Errors a user's input causes: one line, exit 2. Anything else is a bug: one line naming it, exit 1.
USER_ERRORS = (ValueError, KeyError, TypeError, OSError, ImportError, RuntimeError, NotImplementedError)


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print(f"robust-student {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        # Bad input gets one clear line, not a traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"robust-student {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: still one line, and how to see the traceback
        if args.verbose:
            raise
        print(f"robust-student {args.command}: internal error ({type(err).__name__}: {_one_line(err)}); rerun "
              "with -v for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
