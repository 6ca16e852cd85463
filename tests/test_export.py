"""ONNX export: parity for every student family, metadata round trip, validation under attack (passing, failing
without leaving a file, gradient masking caught by Square on onnxruntime), INT8, digests, the facade.

Random-weight students at small image sizes; validations use a few dozen examples and small Square budgets.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("pyautoattack")

import onnx  # noqa: E402

import robust_student as rs  # noqa: E402
from robust_student.export import (ExportValidationError, OnnxStudent, TamperedModelError, Thresholds,  # noqa: E402
                                   export_onnx, torch_export, validate_onnx)
from robust_student.export import quantize  # noqa: E402
from robust_student.export.metadata import read_metadata, write_metadata  # noqa: E402
from robust_student.export.runner.digest import model_digests  # noqa: E402
from robust_student.students import create_student  # noqa: E402

from conftest import TinyTeacher  # noqa: E402

TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                             "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 16, "heads": 2, "layers": 1}}
# (student spec, image size, factory arguments): every family, small.
FAMILIES = {
    "resnet18": ("resnet18", 32, {}),
    "resnet18_cifar": ("resnet18_cifar", 16, {}),
    "resnet_tiny": ("resnet_tiny", 16, {"width": 8}),
    "vit_tiny": ("vit_tiny", 16, {"depth": 2}),
    "vit_small": ("vit_small", 16, {"depth": 1}),
    "clip": ("clip:rs-export-tiny-clip", 32, {}),
}


@pytest.fixture(scope="module")
def teacher() -> TinyTeacher:
    t = TinyTeacher()
    t.set_classes(["apple", "boat", "cat"], ["a photo of a {}."])
    return t


@pytest.fixture(scope="module")
def tiny_clip_config(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("clip") / "rs-export-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(path))


@pytest.fixture(scope="module")
def exported(teacher, tmp_path_factory):
    """A saved resnet_tiny student (with a run record) and its unvalidated export with both outputs."""
    folder = tmp_path_factory.mktemp("exported")
    student = _student(teacher, "resnet_tiny")
    student.labels = ["APL", "BOT", "CAT"]
    rs.save_student(student, folder / "s", run={"method": "rslad", "threat": {"norm": "linf", "eps": 0.1}})
    result = export_onnx(folder / "s", folder / "model.onnx", outputs=("logits", "embedding"))
    return student, folder, result


def _student(teacher, family: str, seed: int = 0):
    name, size, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    return create_student(name, teacher, image_size=size, **kwargs).eval()


def _labelled(student, n: int = 24, seed: int = 1):
    """Images labelled by the student itself, so the clean accuracy is 100 % and every example is attacked."""
    size = student.spec["image_size"]
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, student(x).argmax(1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_student_family_exports_with_parity(family, teacher, tiny_clip_config, tmp_path):
    student = _student(teacher, family)
    student.train()  # export must run the graph in eval mode and give the student its modes back
    opset = torch_export(student, tmp_path / "m.onnx", outputs=("logits", "embedding"))
    assert student.training and all(m.training for m in student.modules())
    student.eval()
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert opset >= 17 and [i.name for i in model.graph.input] == ["pixel_values"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch dimension
    run = OnnxStudent(tmp_path / "m.onnx", verify=False)  # no metadata yet: torch_export writes the bare graph
    size = student.spec["image_size"]
    for batch in (1, 5):
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            logits, embedding = student(x).numpy(), student.encode_image(x).numpy()
        np.testing.assert_allclose(run.logits(x.numpy()), logits, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(run.embed(x.numpy()), embedding, atol=1e-5, rtol=1e-4)
        assert (run.logits(x.numpy()).argmax(1) == logits.argmax(1)).all()


def test_fixed_batch_export_runs_any_number_of_images(teacher, tmp_path):
    student = _student(teacher, "resnet_tiny")
    torch_export(student, tmp_path / "fixed.onnx", dynamic_batch=False)
    run = OnnxStudent(tmp_path / "fixed.onnx", verify=False)
    assert run.fixed_batch == 1
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(run.logits(x.numpy()), student(x).numpy(), atol=1e-4)


def test_metadata_round_trips_from_a_saved_student(exported):
    student, tmp_path, result = exported
    meta = OnnxStudent(tmp_path / "model.onnx").metadata
    assert meta == read_metadata(tmp_path / "model.onnx") == result.metadata
    assert meta["format"] == "robust_student/onnx" and meta["class_names"] == ["apple", "boat", "cat"]
    assert meta["labels"] == ["APL", "BOT", "CAT"] and meta["num_classes"] == 3
    assert meta["image_size"] == [16, 16] and meta["input"]["name"] == "pixel_values"
    assert meta["input"]["range"] == [0.0, 1.0] and meta["normalization"]["inside_graph"] is True
    mean, std = student.mean_std
    assert meta["normalization"]["mean"] == pytest.approx(mean) and meta["normalization"]["std"] == pytest.approx(std)
    assert meta["threat"] == {"norm": "linf", "eps": 0.1, "eps_text": "0.1"} and meta["method"] == "rslad"
    assert meta["teacher"]["license"] == "test-only" and meta["architecture"]["name"] == "resnet_tiny"
    assert meta["outputs"] == ["logits", "embedding"] and meta["validation_status"] == "not validated"
    assert meta["robust_student_version"] == rs.__version__ and meta["torch_version"] == torch.__version__
    digests = model_digests((tmp_path / "model.onnx").read_bytes())
    assert meta["weights_sha256"] == digests["weights_sha256"] == result.weights_sha256
    assert meta["graph_sha256"] == digests["graph_sha256"] and "quantization" not in meta
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(tmp_path / "s", tmp_path / "model.onnx")


def test_weights_digest_covers_exactly_the_initializers(exported):
    model = onnx.load(str(exported[1] / "model.onnx"))
    expected = __import__("hashlib").sha256()
    for init in model.graph.initializer:
        data = init.SerializeToString()
        expected.update(len(data).to_bytes(8, "little") + data)
    assert model_digests(model.SerializeToString())["weights_sha256"] == expected.hexdigest()


def test_validated_export_records_the_report(teacher, tmp_path):
    student = _student(teacher, "resnet_tiny")
    x, y = _labelled(student)
    result = export_onnx(student, tmp_path / "model.onnx", validate=(x, y), threat={"norm": "linf", "eps": 0.03},
                         n_examples=24, square_queries=50)
    report = result.report
    assert report.passed and result.validated and report.mode == "full" and report.precision == "fp32"
    assert report.clean["accuracy_torch"] == 1.0 and report.clean["max_logit_diff"] < 1e-4
    assert set(report.adversarial) == {"pgd20", "apgd-ce"} and report.black_box["attack"] == "square:50"
    for name, row in report.adversarial.items():
        assert row["accuracy_torch"] == pytest.approx(row["accuracy_onnx"]) and row["top1_agreement"] == 1.0
        assert row["max_logit_diff"] < 1e-4 and row["settings"]
    assert report.adversarial["pgd20"]["accuracy_torch"] < 1.0  # the attacks really broke some examples
    names = [c["name"] for c in report.checks]
    assert "clean_logit_parity" in names and "black_box_not_stronger" in names and all(
        c["passed"] for c in report.checks)
    meta = OnnxStudent(tmp_path / "model.onnx").metadata
    assert meta["validation_status"] == "passed" and meta["validation"]["passed"] is True
    assert type(report).from_dict(meta["validation"]).to_dict() == report.to_dict()
    assert "PASSED" in report.to_markdown() and "square:50 on the ONNX session" in report.to_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary files left


def test_failed_validation_leaves_no_file_and_says_by_how_much(teacher, tmp_path):
    student = _student(teacher, "resnet_tiny")
    data = _labelled(student, n=12)
    strict = Thresholds(max_logit_diff=1e-12)  # float32 parity is ~1e-6: this gate must fail
    kwargs = dict(threat={"norm": "linf", "eps": 0.03}, n_examples=12, square_queries=20, attacks=("pgd20",))
    with pytest.raises(ExportValidationError, match=r"clean_logit_parity: .* > 1e-12 \(off by") as err:
        export_onnx(student, tmp_path / "model.onnx", validate=data, thresholds=strict, **kwargs)
    assert "nothing written to" in str(err.value) and not err.value.report.passed
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor the temporary folder
    with pytest.warns(RuntimeWarning, match="validation FAILED"):
        result = export_onnx(student, tmp_path / "model.onnx", validate=data, thresholds=strict, allow_failed=True,
                             **kwargs)
    meta = OnnxStudent(tmp_path / "model.onnx").metadata
    assert meta["validation_status"] == "failed" and meta["validation"]["passed"] is False
    assert result.report.failed_checks[0]["excess"] > 0


class _RoundedStudent(nn.Module):
    """Gradient masking by construction: pixels snapped to 8 levels (zero gradient) before a real student."""

    def __init__(self, student) -> None:
        super().__init__()
        self.student = student
        self.spec, self.classnames = student.spec, student.classnames

    def forward(self, x):
        return self.student(torch.round(x * 7) / 7)


def test_square_on_onnxruntime_catches_gradient_masking(teacher, tmp_path):
    student = _RoundedStudent(_student(teacher, "resnet_tiny"))
    torch.onnx.export(student.eval(), (torch.rand(2, 3, 16, 16),), str(tmp_path / "masked.onnx"),
                      input_names=["pixel_values"], output_names=["logits"], dynamo=True, external_data=False,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}, verbose=False)
    write_metadata(tmp_path / "masked.onnx", {"format": "robust_student/onnx"})  # digests, so it loads verified
    x, y = _labelled(student, n=24)
    report = validate_onnx(tmp_path / "masked.onnx", student, (x, y), threat=rs.attacks.LinfBall(0.1), n_examples=24,
                           square_queries=200, attacks=("pgd20",))
    failed = {c["name"]: c for c in report.failed_checks}
    assert report.passed is False and "black_box_not_stronger" in failed, report.to_text()
    assert report.black_box["accuracy_onnx"] < report.black_box["white_box_accuracy_torch"] - 0.02
    assert "gradient masking" in failed["black_box_not_stronger"]["detail"]
    assert report.clean["max_logit_diff"] < 1e-4  # the artifact itself is faithful: only the masking fails


class _WrongOnFlagged(nn.Module):
    """The student's gradients, but the class after its prediction wins (by +100) on images whose first pixel is
    bright: a torch model that gets those images wrong while the artifact exported from ``student`` gets them
    right."""

    def __init__(self, student) -> None:
        super().__init__()
        self.student = student
        self.spec, self.classnames = student.spec, student.classnames

    def forward(self, x):
        logits = self.student(x)
        flagged = (x[:, 0, 0, 0] > 0.5).to(logits.dtype)
        wrong = nn.functional.one_hot((logits.argmax(1) + 1) % logits.shape[1], logits.shape[1])
        return logits + 100.0 * flagged[:, None] * wrong


def test_examples_only_the_artifact_gets_right_are_attacked_too(teacher, tmp_path):
    student = _student(teacher, "resnet_tiny")
    x, _ = _labelled(student, n=36)
    x[:, 0, 0, 0] = (torch.arange(36) % 2).float()  # the flag survives the attack: eps 0.25 cannot cross 0.5
    flagged = x[:, 0, 0, 0] > 0.5
    with torch.no_grad():
        y = student(x).argmax(1)  # the artifact's own labels: it is right on every example
    export_onnx(student, tmp_path / "model.onnx")
    kwargs = dict(threat=rs.attacks.LinfBall(0.25), n_examples=36, square_queries=20, attacks=("pgd20",))
    honest = validate_onnx(tmp_path / "model.onnx", student, (x, y), **kwargs)
    skewed = validate_onnx(tmp_path / "model.onnx", _WrongOnFlagged(student), (x, y), **kwargs)
    assert skewed.clean["accuracy_onnx"] == 1.0 and skewed.clean["accuracy_torch"] == pytest.approx(
        1 - flagged.float().mean().item())
    pgd = skewed.adversarial["pgd20"]
    assert pgd["n_attacked"] == 36  # every example either runtime gets right, not only those torch gets right
    # Unattacked (crafted only where torch is right), the flagged half would all count as robust for the artifact:
    # its robust accuracy could not go below 50 %. Attacked, most of them break.
    assert honest.adversarial["pgd20"]["accuracy_onnx"] < 0.2
    assert pgd["accuracy_onnx"] < flagged.float().mean().item() - 0.2


def test_onnxruntime_threads_reach_the_session(exported):
    path = exported[1] / "model.onnx"
    assert OnnxStudent(path, threads=1).session.get_session_options().intra_op_num_threads == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
            OnnxStudent(path, threads=bad)
    from robust_student.cli import main
    from robust_student.export.runner.cli import main as runner_main

    for command in (["predict", str(path)], ["validate", str(path), "--data", "synthetic:3"]):
        with pytest.raises(SystemExit) as exit_:  # refused by the argument parser, before anything loads
            main([*command, "--threads", "0"])
        assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        runner_main([str(path), "--threads", "0"])


def test_a_tampered_weight_or_graph_is_refused(exported, tmp_path):
    (tmp_path / "model.onnx").write_bytes((exported[1] / "model.onnx").read_bytes())
    assert OnnxStudent(tmp_path / "model.onnx").verified
    model = onnx.load(str(tmp_path / "model.onnx"))
    weight = next(i for i in model.graph.initializer if i.name.endswith("conv1.weight"))
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(tmp_path / "tampered.onnx"))
    with pytest.raises(TamperedModelError, match="weights digest does not match"):
        OnnxStudent(tmp_path / "tampered.onnx")
    assert not OnnxStudent(tmp_path / "tampered.onnx", verify=False).verified

    model = onnx.load(str(tmp_path / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Relu")
    node.op_type = "Sigmoid"  # same weights, another computation
    onnx.save(model, str(tmp_path / "rewired.onnx"))
    with pytest.raises(TamperedModelError, match="graph digest does not match"):
        OnnxStudent(tmp_path / "rewired.onnx")

    data = bytearray((tmp_path / "model.onnx").read_bytes())  # a single flipped byte inside a weight
    largest = max(onnx.load(str(tmp_path / "model.onnx")).graph.initializer, key=lambda i: len(i.raw_data))
    raw = largest.raw_data
    at = bytes(data).index(raw)
    data[at + 3] ^= 0x01
    (tmp_path / "flipped.onnx").write_bytes(bytes(data))
    with pytest.raises(TamperedModelError, match="digest does not match"):
        OnnxStudent(tmp_path / "flipped.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(TamperedModelError, match="not a robust_student export"):
        OnnxStudent(tmp_path / "bare.onnx")


def test_int8_export_reports_deltas_and_is_refused_past_the_threshold(teacher, tmp_path):
    student = _student(teacher, "resnet_tiny")
    x, y = _labelled(student)
    calibration = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    kwargs = dict(threat={"norm": "linf", "eps": 0.03}, n_examples=24, square_queries=50, calibration=calibration,
                  calibration_images=64, quantize="int8")
    result = export_onnx(student, tmp_path / "model.int8.onnx", validate=(x, y), allow_failed=True, **kwargs)
    report = result.report
    assert result.precision == "int8" and report.precision == "int8" and "FP32 torch student" in report.note
    meta = OnnxStudent(tmp_path / "model.int8.onnx").metadata
    assert meta["quantization"]["format"] == "QDQ" and meta["quantization"]["calibration"]["n_images"] == 64
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    names = {c["name"] for c in report.checks}
    assert {"clean_accuracy_drop", "robust_accuracy_drop[pgd20]", "worst_case_robust_drop"} <= names
    assert "clean_logit_parity" not in names  # INT8 is gated on accuracy, not on logit equality
    drop = report.worst_case["accuracy_torch"] - report.worst_case["accuracy_onnx"]
    strict = Thresholds(max_int8_robust_drop=drop - 0.05)  # a limit below the measured drop must refuse it
    again = validate_onnx(result.path, student, (x, y), threat=rs.attacks.LinfBall(0.03), n_examples=24,
                          square_queries=50, thresholds=strict)  # (export refuses failed reports: tested above)
    assert again.passed is False and "worst_case_robust_drop" in again.failure_summary()
    assert again.worst_case == report.worst_case  # seeded: the same numbers again
    with pytest.raises(ValueError, match="calibrated on training images"):
        export_onnx(student, tmp_path / "x.onnx", quantize="int8")


def _runs_in_float(graph: onnx.GraphProto) -> dict[str, tuple[str, bool]]:
    """Per Conv / Gemm / MatMul node: its op type, and True when no input comes from a DequantizeLinear (the node
    computes in float)."""
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: (n.op_type, not any(i in dequantized for i in n.input)) for n in graph.node
            if n.op_type in quantize.QUANTIZED_OPS}


@pytest.mark.parametrize("keep", [(), ("stem",), ("head",), ("stem", "head")])
def test_int8_keep_float_leaves_exactly_those_nodes_in_float(keep, teacher, tmp_path):
    student = _student(teacher, "resnet_tiny")
    torch_export(student, tmp_path / "m.onnx")
    calibration = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    entry = quantize.quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calibration, n_images=16,
                                   keep_float=keep)
    nodes = _runs_in_float(onnx.load(str(tmp_path / "m.int8.onnx")).graph)
    convs = [name for name, (op, _) in nodes.items() if op == "Conv"]
    head = [name for name, (op, _) in nodes.items() if op != "Conv"]  # the projection Gemm and the classifier MatMul
    assert len(convs) > 1 and len(head) == 2
    expected = {*(convs[:1] if "stem" in keep else []), *(head if "head" in keep else [])}
    assert {name for name, (_, is_float) in nodes.items() if is_float} == expected  # every other node is quantized
    assert entry["float_nodes"] == {"requested": list(keep), "nodes": [n for n in nodes if n in expected]}


def test_int8_calibrates_on_1024_images_by_default(teacher, tmp_path):
    """256 MinMax images left the quickstart student's INT8 model 5.5 PGD-20 points down (refused); 1024 kept it."""
    student = _student(teacher, "resnet_tiny")
    torch_export(student, tmp_path / "m.onnx")
    calibration = torch.rand(1100, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    entry = quantize.quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calibration)
    assert quantize.DEFAULT_CALIBRATION_IMAGES == 1024 and entry["calibration"]["n_images"] == 1024
    assert entry["calibration"]["method"] == "minmax" and entry["float_nodes"]["nodes"] == []

def test_int8_keep_float_refuses_an_unknown_node(teacher, tmp_path):
    student = _student(teacher, "resnet_tiny")
    torch_export(student, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="neither a role"):
        quantize.quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", torch.rand(4, 3, 16, 16),
                               n_images=4, keep_float=["node_Conv_typo"])
    assert not (tmp_path / "m.int8.onnx").exists()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A one-epoch KD run on synthetic data (the built-in teacher), evaluated at eps 0.03."""
    run = tmp_path_factory.mktemp("fitted") / "run"
    distiller = rs.RobustDistiller(teacher="fmnist-clip", method="kd", student="resnet_tiny", dataset="synthetic:3",
                                   epochs=1, batch_size=32, eval_examples=8, student_args={"width": 8},
                                   image_size=28, output_dir=str(run), **{"eval.eps": 0.03})
    distiller.fit()
    return distiller, run


def test_distiller_export_onnx_validates_on_the_eval_split(fitted, tmp_path):
    distiller, _ = fitted
    with pytest.raises(RuntimeError, match="fit"):
        rs.RobustDistiller(teacher="fmnist-clip", method="kd", dataset="synthetic:3").export_onnx(tmp_path / "x.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = distiller.export_onnx(tmp_path / "model.onnx", n_examples=16, square_queries=20,
                                       attacks=("pgd20",), allow_failed=True)
    report = result.report
    assert report.n_examples == 16 and report.dataset == "synthetic:3 (test)" and report.eps == 0.03
    meta = OnnxStudent(tmp_path / "model.onnx").metadata
    assert meta["method"] == "kd" and meta["teacher"]["spec"] == "fmnist-clip"
    assert meta["teacher"]["license"] == "Apache-2.0" and meta["threat"]["eps"] == 0.03
    assert meta["validation_status"] == ("passed" if report.passed else "failed")


def test_cli_export_then_validate_with_and_without_the_student(fitted, tmp_path, capsys):
    from robust_student.cli import main

    _, run = fitted
    out = tmp_path / "model.onnx"
    code = main(["export", str(run), "--out", str(out), "--int8", "--validate-n", "16", "--square-queries", "20",
                 "--calibration-n", "32", "--allow-failed", "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file() and (tmp_path / "model.int8.onnx").is_file()
    assert "fp32 ONNX validation" in text and "int8 ONNX validation" in text and f"wrote {out}" in text
    assert OnnxStudent(tmp_path / "model.int8.onnx").metadata["quantization"]["calibration"]["n_images"] == 32
    assert main(["export", str(run), "--out", str(out)]) == 2 and "--overwrite" in capsys.readouterr().err

    common = ["--data", "synthetic:3", "--n-examples", "16", "--square-queries", "20"]
    code = main(["validate", str(out), "--student", str(run), *common, "--json", "--threads", "1"])
    full = json.loads(capsys.readouterr().out)
    assert full["mode"] == "full" and code == (0 if full["passed"] else 3) and full["eps"] == 0.03
    assert main(["validate", str(out), *common]) == 0  # the artifact alone: teacher fmnist-clip as surrogate
    text = capsys.readouterr().out
    assert "weaker check" in text and "crafted on surrogate teacher fmnist-clip" in text and "square:20" in text


def test_the_cli_calibrates_int8_on_the_library_default():
    from robust_student.cli import build_parser
    from robust_student.export.quantize import DEFAULT_CALIBRATION_IMAGES

    parser = build_parser()
    args = parser.parse_args(["export", "runs/x", "--out", "m.onnx", "--int8"])
    assert args.calibration_n is None  # -> export_onnx's calibration_images default
    export = parser._subparsers._group_actions[0].choices["export"]
    assert f"the library's, {DEFAULT_CALIBRATION_IMAGES}" in " ".join(export.format_help().split())


def test_cli_export_of_a_zoo_entry_uses_the_threat_it_was_trained_against(tmp_path, capsys):
    """fmnist-clip-robust was made for L-inf 0.1; its run's unused eval section says 8/255."""
    from robust_student.cli import main
    from robust_student.students.io import read_student_config, saved_student_folder

    config = read_student_config(saved_student_folder("fmnist-clip-robust"))
    assert config["threat"]["eps"] == 0.1 and config["config"]["eval"]["eps"] != 0.1  # the case this guards
    out = tmp_path / "robust.onnx"
    assert main(["export", "fmnist-clip-robust", "--out", str(out), "--validate-n", "0", "--threads", "1"]) == 0
    capsys.readouterr()
    threat = OnnxStudent(out).metadata["threat"]
    assert threat["norm"] == "linf" and threat["eps"] == 0.1
