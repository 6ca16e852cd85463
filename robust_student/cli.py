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

def _zeroshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="fmnist-clip")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


@command("zeroshot", "zero-shot accuracy of a teacher on a dataset's prompts")(_zeroshot_args)
def _cmd_zeroshot(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .teachers import create_teacher
    from .teachers.zeroshot import zero_shot_accuracy

    dataset = build_dataset(args.data, args.split)
    teacher = create_teacher(args.teacher)
    teacher.set_classes(dataset.prompts.classnames, dataset.prompts.templates)
    accuracy = zero_shot_accuracy(teacher, dataset, batch_size=args.batch_size)
    result = {"teacher": args.teacher, "data": args.data, "split": args.split, "n": len(dataset),
              "zero_shot_accuracy": accuracy}
    print(json.dumps(result) if args.json else
          f"{args.teacher} zero-shot accuracy on {args.data} ({args.split}, n={len(dataset)}): {100 * accuracy:.2f} %")
    return 0


# -- listing ---------------------------------------------------------------------------------------------

def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "teachers", "students", "datasets", "methods", "attacks"])


@command("list", "list registered teachers, students, datasets, methods and attacks")(_list_args)
def _cmd_list(args: argparse.Namespace) -> int:
    import robust_student as rs

    listers = {"teachers": rs.list_teachers, "students": rs.list_students, "datasets": rs.list_datasets}
    for name in ("methods", "attacks"):
        lister = getattr(rs, f"list_{name}", None)
        if lister is not None:
            listers[name] = lister
    for name, lister in listers.items():
        if args.what in ("all", name):
            print(f"{name}: {', '.join(lister())}")
    return 0


# -- entry point -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robust-student", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, _, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command][1](args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        # Bad input gets one clear line, not a traceback (use -v for the traceback).
        if args.verbose:
            raise
        print(f"robust-student {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
