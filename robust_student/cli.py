"""The ``robust-student`` command line: thin presentation over the library's functions.

``export``, ``predict`` and ``validate`` present ``robust_student.export``, imported inside their functions only
(the library never imports its applications when it is imported).

Each subcommand is one ``_cmd_*`` function registered in :data:`COMMANDS` with its argument builder;
``main(argv)`` is importable so tests drive the CLI without a subprocess.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from robust_student_runtime.cli import _positive_int  # one argument type for both command lines

from .cpu_allocator import keep_freed_memory
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
    p.add_argument("--teacher", default=None, help="teacher name (default: the recipe's, fmnist-clip-robust)")
    p.add_argument("--student", default=None,
                   help="student architecture (default: the recipe's resnet_tiny, started from a shipped robust "
                        "student; another architecture starts from random weights)")
    from .quickstart import DEFAULT_OUTPUT

    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"folder for the run's artifacts (default: {DEFAULT_OUTPUT})")


@command("quickstart", "run the main job end to end on the built-in default (offline)")(_quickstart_args)
def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    summary = run_quickstart(teacher=args.teacher, student=args.student, data=args.data, output_dir=args.output)
    print(summary.to_text())
    return 0


# -- zero-shot evaluation of a teacher -------------------------------------------------------------------

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
    from accelerate.state import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch` one summary, not one per process
        return 0
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


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="robustness report of model A (robust-student eval --output A.json)")
    p.add_argument("b", help="robustness report of model B, on the same images (same --data, --eps, "
                             "--n-examples, --seed)")
    p.add_argument("--attacks", nargs="+", default=None,
                   help="which accuracies to compare (default: clean and every attack both reports ran)")
    p.add_argument("--output", help="also write the comparison as JSON to this file")


@command("compare", "paired comparison of two models' reports on the same images: difference and its standard "
                    "error")(_compare_args)
def _cmd_compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .comparison import load_report, paired_difference
    from .formatting import format_percent

    a, b = load_report(args.a), load_report(args.b)
    attacks = args.attacks or [name for name in a.per_example if name in b.per_example] or ["clean"]
    results = [paired_difference(a, b, attack) for attack in attacks]
    print(f"A = {a.model}, B = {b.model}: {a.n_examples} images of {a.dataset} ({a.selection}), {a.threat} eps "
          f"{a.eps_text}")
    print("| accuracy | A | B | A - B | paired SE | z | only A right | only B right |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.attack} | {format_percent(r.a_accuracy)} | {format_percent(r.b_accuracy)} | "
              f"{100 * r.difference:+.1f} pts | {100 * r.standard_error:.1f} pts | {r.z:+.2f} | {r.only_a} | "
              f"{r.only_b} |")
    if args.output:
        record = {"a": {"model": a.model, "report": args.a}, "b": {"model": b.model, "report": args.b},
                  "n": a.n_examples, "dataset": a.dataset, "threat": a.threat, "eps": a.eps, "seed": a.seed,
                  "comparisons": [r.to_dict() for r in results]}
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"comparison written to {args.output}")
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


# -- publishing ------------------------------------------------------------------------------------------

def _push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="a folder written by save_pretrained (model card, weights, reports)")
    p.add_argument("repo_id", help="the Hub repository, org/name")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_const", const=True, default=None,
                            help="a private repository")
    visibility.add_argument("--public", dest="private", action="store_const", const=False,
                            help="a public repository (needed explicitly for a non-commercial teacher's student)")
    p.add_argument("--token", default=None, help="a Hub token (default: HF_TOKEN or your login)")
    p.add_argument("--message", default=None, help="commit message")


@command("push", "upload a save_pretrained folder to the Hugging Face Hub (private for non-commercial teachers)")(
    _push_args)
def _cmd_push(args: argparse.Namespace) -> int:
    from .model_cards import push_to_hub

    url = push_to_hub(args.directory, args.repo_id, private=args.private, token=args.token,
                      commit_message=args.message)
    print(f"pushed {args.directory} to {args.repo_id}: {url}")
    return 0


# -- the demo --------------------------------------------------------------------------------------------

def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", default=None,
                   help="a saved student folder, a built-in zoo entry or hf-hub:org/name "
                        "(default: the best shipped student)")
    p.add_argument("--teacher", default="fmnist-clip", help="the teacher to compare with (default: fmnist-clip)")
    p.add_argument("--no-teacher", action="store_true", help="show the student only")
    p.add_argument("--onnx", default=None, help="an exported model.onnx to attack with Square")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")


@command("demo", "open the Gradio demo: clean vs attacked, teacher vs student (offline)")(_demo_args)
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import build_demo, launch

    demo = build_demo(student=args.student, teacher=None if args.no_teacher else args.teacher, onnx=args.onnx)
    print(f"robust_student demo: serving on http://{args.host}:{args.port or 7860} (Ctrl-C to stop)")
    launch(demo, host=args.host, port=args.port, block=True)
    return 0


# -- ONNX export, prediction and validation (robust_student.export, reached lazily) ------------------------

VALIDATION_FAILED = 3  # exit status when an artifact fails validation (or some images could not be classified)


def _threat_args(p: argparse.ArgumentParser, default_text: str) -> None:
    p.add_argument("--norm", default=None, choices=["linf", "l2"], help=f"threat norm (default: {default_text})")
    p.add_argument("--eps", default=None, help=f"radius in pixel units, e.g. 0.1 or 8/255 (default: {default_text})")


def _threat_from_args(args: argparse.Namespace, recorded: dict | None):
    from .config import parse_number

    if args.eps is None and args.norm is None:
        return recorded
    recorded = recorded or {"norm": "linf", "eps": 8 / 255}
    return {"norm": args.norm or recorded["norm"],
            "eps": parse_number(args.eps, name="--eps") if args.eps is not None else float(recorded["eps"])}


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("student", metavar="RUN_OR_STUDENT_DIR",
                   help="a saved student folder, a run folder, a built-in zoo entry (fmnist-clip-robust) or "
                        "hf-hub:org/name")
    p.add_argument("--out", required=True, help="the ONNX file to write (with --int8 also OUT_STEM.int8.onnx)")
    p.add_argument("--int8", action="store_true", help="also write an INT8 model calibrated on training images")
    p.add_argument("--validate-n", type=int, default=200, metavar="N",
                   help="examples to validate on (default 200; 0 writes an unvalidated artifact, marked so)")
    p.add_argument("--data", default=None, help="dataset spec to validate on (default: the run's dataset)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to validate on")
    _threat_args(p, "the threat of its shipped report, else the run's evaluation threat")
    p.add_argument("--square-queries", type=_positive_int, default=1000, help="Square's queries per image")
    p.add_argument("--calibration-n", type=_positive_int, default=None,
                   help="training images to calibrate INT8 on (default: the library's, 1024)")
    p.add_argument("--embedding", action="store_true", help="also output the image embedding")
    p.add_argument("--opset", type=_positive_int, default=None)
    p.add_argument("--allow-failed", action="store_true", help="write artifacts that fail validation (marked failed)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--json", action="store_true", help="print the validation reports as JSON")
    _onnxruntime_args(p)


def _onnxruntime_args(p: argparse.ArgumentParser) -> None:
    """``--providers`` / ``--threads``: the torch-free runner's own definition (one for every command)."""
    from .export.runner.cli import add_session_arguments

    add_session_arguments(p)


@command("export", "export a trained student to ONNX, validated under attack (and INT8)")(_export_args)
def _cmd_export(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from .config import DataConfig
    from .data import build_dataset
    from .export import ExportValidationError, export_onnx
    from .students.io import load_student, read_student_config, saved_student_folder

    if args.validate_n < 0:
        raise ValueError(f"--validate-n must be >= 0, got {args.validate_n}")
    folder = saved_student_folder(args.student)
    config = read_student_config(folder)
    run = config.get("config") or {}
    # the threat of the student's shipped report (a zoo entry's card numbers), else its run's evaluation threat,
    # else the one it was trained against: a zoo run's eval section may be an unused default (fmnist-clip-robust's
    # says 8/255; it was made, evaluated and carded at 0.1)
    from .teachers.builtin import recorded_report

    shipped, recorded_eval = recorded_report(folder), run.get("eval")
    recorded = ({"norm": shipped["threat"], "eps": shipped["eps"]} if shipped and {"threat", "eps"} <= set(shipped)
                else {"norm": recorded_eval["norm"], "eps": recorded_eval["eps"]} if recorded_eval
                else config.get("threat"))
    threat = _threat_from_args(args, recorded)
    out = Path(args.out)
    int8_out = out.with_name(out.stem + ".int8.onnx")
    for path in [out, int8_out] if args.int8 else [out]:
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    data_config = None
    if args.validate_n or args.int8:
        if args.data is not None:
            data_config = DataConfig(name=args.data)
        elif run.get("dataset"):
            data_config = DataConfig.from_dict(run["dataset"])
        else:
            raise ValueError(f"{folder} does not record the dataset it was trained on: give --data SPEC")
        data_config = dataclasses.replace(data_config, image_size=int(config["architecture"]["image_size"]))
    student = load_student(folder)
    common = dict(outputs=("logits", "embedding") if args.embedding else ("logits",), opset=args.opset,
                  threat=threat, method=config.get("method"), n_examples=max(args.validate_n, 1),
                  square_queries=args.square_queries, allow_failed=args.allow_failed, overwrite=args.overwrite,
                  config=config, dataset_name=f"{data_config.name} ({args.split})" if data_config else None,
                  providers=args.providers, threads=args.threads)
    validate = build_dataset(data_config, args.split) if args.validate_n else None
    if validate is None:
        print("warning: exporting without validation (--validate-n 0): the artifact is marked 'not validated'",
              file=sys.stderr)
    results = [export_onnx(student, out, validate=validate, **common)]
    status = 0
    if args.int8:
        try:
            results.append(export_onnx(student, int8_out, validate=validate, quantize="int8",
                                       calibration=build_dataset(data_config, "train"),
                                       **({"calibration_images": args.calibration_n} if args.calibration_n else {}),
                                       **common))
        except ExportValidationError as err:
            print(err.report.to_text())
            print(f"robust-student export: INT8 refused: {_one_line(err)}", file=sys.stderr)
            status = VALIDATION_FAILED
    for result in results:
        if args.json:
            print(json.dumps(result.report.to_dict() if result.report else {"path": str(result.path)}))
        elif result.report is not None:
            print(result.report.to_text())
        print(f"wrote {result.path} ({result.precision}, {result.metadata['validation_status']}; weights sha256 "
              f"{result.weights_sha256[:16]}...)", file=sys.stderr if args.json else sys.stdout)
    return status


def _predict_args(p: argparse.ArgumentParser) -> None:
    """The arguments of `python -m robust_student.export.runner` (the torch-free entry point), defined there."""
    from .export.runner.cli import add_arguments

    add_arguments(p)


@command("predict", "classify images with an exported ONNX model (one JSON line per image with --jsonl)")(_predict_args)
def _cmd_predict(args: argparse.Namespace) -> int:
    from .export.runner.cli import run

    return run(args)


def _pacs_args(p: argparse.ArgumentParser) -> None:
    """``robust-student pacs ...`` is run by the torch-free runtime before this parser is reached
    (robust_student_runtime.cli.sdk_main); the command is here so that ``robust-student --help`` lists it."""
    p.add_argument("pacs_args", nargs=argparse.REMAINDER, metavar="run|listen ...",
                   help="see robust-student pacs --help")


@command("pacs", "the PACS node: query/retrieve over DICOMweb or receive by C-STORE, classify, store a DICOM SR "
                 "back (pacs run | pacs listen)")(_pacs_args)
def _cmd_pacs(args: argparse.Namespace) -> int:
    from robust_student_runtime.pacs.cli import main as pacs_main

    return pacs_main(args.pacs_args, prog="robust-student pacs")


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the ONNX file to re-check")
    p.add_argument("--data", required=True, help="dataset spec to validate on, e.g. imagefolder:/data/test")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--student", default=None, metavar="DIR",
                   help="the torch student it was exported from: runs the full validation")
    p.add_argument("--surrogate", default=None, metavar="DIR_OR_TEACHER",
                   help="without --student: the model transfer attacks are crafted on (a saved student folder or a "
                        "teacher name; default: the teacher named in the artifact's metadata; 'none': no transfer)")
    p.add_argument("--n-examples", type=_positive_int, default=200)
    _threat_args(p, "the threat in the artifact's metadata")
    p.add_argument("--square-queries", type=_positive_int, default=1000)
    p.add_argument("--skip-corrupt", action="store_true", help="skip (and count) images that cannot be read")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--output", help="also write the report as JSON to this file")
    _onnxruntime_args(p)


@command("validate", "re-check an ONNX artifact under attack on your own data")(_validate_args)
def _cmd_validate(args: argparse.Namespace) -> int:
    from .attacks import make_threat
    from .data import DATASETS, build_dataset
    from .export import OnnxStudent, validate_artifact, validate_onnx
    from .students.io import load_student, saved_student_folder

    DATASETS.resolve(args.data)
    # Loading refuses a tampered file before any data loads.
    artifact = OnnxStudent(args.model, providers=args.providers, threads=args.threads)
    recorded = artifact.threat
    threat_entry = _threat_from_args(args, recorded)
    threat = make_threat(threat_entry["norm"], float(threat_entry["eps"])) if threat_entry else None
    dataset = build_dataset(_data_config(args.data, args.skip_corrupt, artifact.image_size[0]), args.split)
    common = dict(threat=threat, n_examples=args.n_examples, square_queries=args.square_queries,
                  dataset_name=f"{args.data} ({args.split})", providers=args.providers, threads=args.threads)
    if args.student:
        report = validate_onnx(args.model, load_student(saved_student_folder(args.student)), dataset, **common)
    else:
        surrogate, name = _surrogate(args.surrogate, artifact, dataset)
        report = validate_artifact(args.model, dataset, surrogate=surrogate, surrogate_name=name, **common)
    print(json.dumps(report.to_dict()) if args.json else report.to_markdown())
    if args.output:
        report.save_json(args.output)
        print(f"report written to {args.output}", file=sys.stderr)
    return VALIDATION_FAILED if report.passed is False else 0


def _surrogate(spec: str | None, artifact, dataset):
    """The model transfer attacks are crafted on: a saved student, a teacher (zero-shot on the dataset's prompts),
    by default the teacher recorded in the artifact; ``none`` for no transfer attacks."""
    from .teachers import create_teacher

    if spec is not None and spec.lower() == "none":
        return None, None
    if spec is None:
        teacher = artifact.metadata.get("teacher") or {}
        if not teacher.get("spec"):
            raise ValueError("the artifact's metadata names no teacher to use as the transfer surrogate: give "
                             "--surrogate DIR_OR_TEACHER (or --surrogate none for Square and clean accuracy only)")
        try:
            model = create_teacher(teacher["spec"], **(teacher.get("args") or {}))
        except (OSError, ValueError, ImportError, RuntimeError) as err:
            raise ValueError(f"cannot build the artifact's teacher {teacher['spec']!r} as the transfer surrogate "
                             f"({_one_line(err)}); give --surrogate DIR_OR_TEACHER or --surrogate none") from None
        model.set_classes(dataset.prompts.classnames, dataset.prompts.templates)
        return model, f"teacher {teacher['spec']}"
    model, _ = _model_for_eval(spec)
    if not hasattr(model, "spec"):
        model.set_classes(dataset.prompts.classnames, dataset.prompts.templates)
    return model, spec


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
            summary = info["summary"].replace("``", "")
            print(f"  {info['usage']:<28} {summary}{extra}".rstrip())
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
    keep_freed_memory()  # the process is ours: glibc's default costs PyTorch on CPU up to 2x (cpu_allocator)
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
