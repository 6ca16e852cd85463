"""``predict`` as a pipeline step: image paths in (arguments or stdin), one JSON line per image out.

    robust-student-runtime predict model.onnx a.png b.dcm --jsonl       # torch-free
    find scans -name '*.dcm' | robust-student predict model.onnx --jsonl  # the SDK's command: the same code

Each line holds ``source``, ``class_index``, ``label``, ``class_name``, ``probability`` and ``error`` (null when
the image was classified). Every input gets exactly one line, in input order, whatever the batch size: its
prediction or its one-line refusal (tab-separated output: ``source<TAB>ERROR<TAB>reason``). Bad images never
stop the stream; the exit status is 0 when every image was classified and 3 when some were not. Needs only
onnxruntime, numpy and pillow.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import IO, Iterable, Iterator, Sequence

from .images import one_line
from .student import OnnxStudent, Prediction, Predictions, refusal

SOME_FAILED = 3


def sources(paths: Sequence[str], stdin: IO[str] | None) -> Iterator[str]:
    """The image paths: the arguments, or (none given, or ``-``) one path per line of ``stdin``."""
    if paths and list(paths) != ["-"]:
        yield from paths
        return
    if stdin is None:
        return
    for line in stdin:
        path = line.strip()
        if path:
            yield path


def write_predictions(model: OnnxStudent, paths: Iterable[str], out: IO[str], *, jsonl: bool = True,
                      batch_size: int = 32, probabilities: bool = False) -> Predictions:
    """Classify ``paths`` in chunks of ``batch_size`` and write each result as it is ready (a stream)."""
    everything = Predictions()
    chunk: list[str] = []

    def flush() -> None:
        try:
            result = list(model.predict(chunk, batch_size=batch_size, errors="skip"))
        except Exception as err:  # noqa: BLE001 - never happens by design; if it does, no input is lost
            result = [Prediction(index=0, source=path, error=refusal(err)) for path in chunk]
        if len(result) != len(chunk):  # one result per path, by construction; guarded all the same
            result = [Prediction(index=0, source=path, error="internal error: no result for this input")
                      for path in chunk]
        for item in result:
            item.index = len(everything.items)
            everything.items.append(item)
            if jsonl:
                out.write(item.to_json(probabilities) + "\n")
            elif item.ok:
                out.write(f"{_field(item.source)}\t{_field(str(item.label))}\t{item.probability:.4f}\n")
            else:
                out.write(f"{_field(item.source)}\tERROR\t{_field(str(item.error))}\n")
        out.flush()
        chunk.clear()

    for path in paths:
        chunk.append(path)
        if len(chunk) >= batch_size:
            flush()
    if chunk:
        flush()
    return everything


def _field(text: str) -> str:
    """One tab-separated field: no tab, no line break, and printable whatever bytes the path held."""
    text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return one_line(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_session_arguments(p: argparse.ArgumentParser) -> None:
    """The onnxruntime session options, shared by every command that runs an artifact (predict, export, validate)."""
    p.add_argument("--providers", nargs="+", default=None,
                   help="onnxruntime execution providers, e.g. CUDAExecutionProvider CPUExecutionProvider")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="onnxruntime intra-op threads (default: onnxruntime's choice; 1 on a shared machine)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``predict`` (this runner's ``main`` and ``robust-student predict``)."""
    p.add_argument("model", help="an ONNX file written by robust-student export")
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, TIFF, DICOM, ...); none or '-': read paths "
                                             "from stdin, one per line")
    p.add_argument("--jsonl", action="store_true", help="one JSON object per line (default: tab-separated text)")
    p.add_argument("--probabilities", action="store_true", help="include every class probability (with --jsonl)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    add_session_arguments(p)
    p.add_argument("--no-verify", action="store_true", help="load a model whose digest does not match (unsafe)")


def run(args: argparse.Namespace, stdin: IO[str] | None = None, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # odd values are reported once, in the refusal
    if stdin is None:
        try:
            sys.stdin.reconfigure(errors="surrogateescape")  # a path in any bytes is still one input
        except (AttributeError, ValueError, OSError):
            pass
    model = OnnxStudent(args.model, providers=args.providers, threads=args.threads, verify=not args.no_verify)
    print(f"{model.path.name}: {len(model.class_names)} classes, {model.precision}, running on {model.provider}",
          file=sys.stderr)
    result = write_predictions(model, sources(args.images, stdin if stdin is not None else sys.stdin), out,
                               jsonl=args.jsonl, batch_size=args.batch_size, probabilities=args.probabilities)
    if result.failed:
        print(f"{len(result.failed)} of {len(result)} image(s) could not be classified", file=sys.stderr)
        return SOME_FAILED
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "robust-student-runtime predict") -> int:
    """``predict``: classify the images named in ``argv`` (or on stdin); exit 0, 2 (usage) or 3 (some failed)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


USAGE = """usage: robust-student-runtime {predict,pacs} ...

  predict MODEL [IMAGES...]   classify image files (PNG, JPEG, TIFF, DICOM); paths on stdin when none given
  pacs run --url URL ...      query/retrieve from a DICOMweb archive, predict, store a DICOM SR back
  pacs listen --port P ...    a C-STORE SCP that predicts once a series is complete

Run 'robust-student-runtime <command> --help' for a command's options."""


def entry(argv: Sequence[str] | None = None, prog: str = "robust-student-runtime") -> int:
    """The ``robust-student-runtime`` command: ``predict`` or ``pacs`` (no command: ``predict``'s arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.replace("robust-student-runtime", prog))
        return 0 if argv else 2
    if argv[0] == "predict":
        return main(argv[1:], prog=f"{prog} predict")
    if argv[0] == "pacs":
        from .pacs.cli import main as pacs_main

        return pacs_main(argv[1:], prog=f"{prog} pacs")
    return main(argv, prog=prog)


def sdk_main(argv: Sequence[str] | None = None) -> int:
    """The SDK's ``robust-student`` command: ``predict`` and ``pacs`` run here, without importing torch (they
    are this runtime's); every other command is ``robust_student.cli.main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("predict", "pacs"):
        return entry(argv, prog="robust-student")
    from robust_student.cli import main as sdk

    return sdk(argv)


__all__ = ["sources", "write_predictions", "add_arguments", "add_session_arguments", "run", "main", "entry",
           "sdk_main", "SOME_FAILED"]
