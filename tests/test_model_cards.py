"""Robustness model cards and the Hub: save -> load is exact, the card's front matter and numbers are the report's,
licences carry over (non-commercial teachers make private repositories), and push / pull run the real
huggingface_hub client end to end against a local stand-in for the Hub (tests/hub_server.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from robust_student import create_student, evaluate_robustness, load_student
from robust_student.data import build_dataset
from robust_student.students.io import read_student_config
from robust_student.teachers import TeacherProvenance, teacher_license

pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard  # noqa: E402

from robust_student.model_cards import (HubError, push_to_hub, render_model_card, save_pretrained,  # noqa: E402
                                        student_license)

from conftest import TinyTeacher  # noqa: E402
from hub_server import FakeHub  # noqa: E402


def _student(licence_of: str | None = "fmnist-clip"):
    teacher = TinyTeacher()
    prompts = build_dataset("synthetic:3", "test").prompts
    teacher.set_classes(prompts.classnames, prompts.templates)
    if licence_of is not None:  # the provenance a registered teacher would record
        teacher.provenance = TeacherProvenance.of(licence_of, {}, teacher_license(licence_of))
    torch.manual_seed(0)
    return create_student("resnet_tiny", teacher, image_size=16, width=8).eval()


@pytest.fixture(scope="module")
def report():
    student = _student()
    return evaluate_robustness(student, build_dataset("synthetic:3", "test"), ["clean", "fgsm", "pgd20"],
                               n_examples=16, check_examples=8, progress=False)


def _front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# -- save_pretrained and the card ---------------------------------------------------------------------------

def test_save_then_load_gives_identical_logits_and_the_card_carries_the_reports_numbers(tmp_path, report):
    student = _student()
    curve = {"attack": "pgd20", "norm": "linf", "eps": [0.0, 8 / 255], "eps_text": ["0", "8/255"],
             "accuracy": [0.5, 0.25], "n_examples": 16, "model": "x"}
    folder = save_pretrained(student, tmp_path / "hub", report=report, eps_curve=curve, repo_id="org/tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "eps_curve.json",
                                                       "eps_curve.png", "model.safetensors", "robustness.json"]
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(load_student(folder)(x), student(x), rtol=0, atol=0)

    meta = _front_matter(folder / "README.md")
    assert meta["library_name"] == "robust_student" and meta["license"] == "apache-2.0"
    assert {"robust_student", "adversarial-robustness"} <= set(meta["tags"])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    expected = {"Clean accuracy": report.clean_accuracy,
                "Robust accuracy (FGSM, Linf, eps=8/255)": report.robust_accuracy["fgsm"],
                "Robust accuracy (PGD-20, Linf, eps=8/255)": report.robust_accuracy["pgd20"]}
    assert {m["name"]: m["value"] for m in metrics} == {k: round(100 * v, 2) for k, v in expected.items()}
    assert all(m["args"]["n_examples"] == 16 for m in metrics)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "robust_student" and len(card.data.eval_results) == 3
    body = card.text
    for heading in ("## Usage", "## Training", "## Evaluation", "## Threat model and limitations",
                    "## Intended use and out-of-scope use", "## Licence", "## Citation"):
        assert heading in body
    assert 'load_student("hf-hub:org/tiny")' in body and "not a certified guarantee" in body
    assert "**not\na medical device**" in body and "![Robust accuracy against eps](eps_curve.png)" in body
    assert "Linf perturbations of radius eps = 8/255" in body and "16x16x3" in body
    evidence = json.loads((folder / "robustness.json").read_text())
    assert evidence["robustness"]["robust_accuracy"] == report.robust_accuracy and evidence["export"] is None


def test_a_non_commercial_teachers_student_carries_the_licence_prominently(tmp_path, report):
    folder = save_pretrained(_student("conch"), tmp_path / "hub", report=report)
    meta = _front_matter(folder / "README.md")
    assert meta["license"] == "cc-by-nc-nd-4.0"
    body = (folder / "README.md").read_text()
    banner = body.split("---\n", 2)[2].lstrip().split("\n\n")[1]
    assert banner.startswith("> **Licence: non-commercial use only.**") and "CC-BY-NC-ND-4.0" in banner
    assert "huggingface.co/MahmoodLab/conch" in banner
    assert meta["base_model"] == "MahmoodLab/conch"
    assert student_license(read_student_config(folder)) == ("cc-by-nc-nd-4.0", "conch")


def test_a_failed_check_and_a_missing_report_say_so(tmp_path, report):
    failed = report.to_dict()
    failed["checks"] = [dict(c) for c in failed["checks"]]
    failed["checks"][0].update(passed=False, detail="accuracy rises with eps")
    card = render_model_card(read_student_config(save_pretrained(_student(), tmp_path / "a")), failed)
    assert "accuracy_decreases_with_eps: **FAILED** (accuracy rises with eps)" in card.text
    assert "**Warning: a gradient-masking check FAILED.**" in card.text

    folder = save_pretrained(_student(), tmp_path / "b")  # no evaluation at all
    card = ModelCard.load(folder / "README.md")
    assert "No robustness evaluation was recorded for this model." in card.text
    assert not card.data.eval_results and "model-index" not in _front_matter(folder / "README.md")
    assert " %" not in card.text.split("## Evaluation")[1].split("## Threat")[0]  # no number was invented


def test_save_pretrained_never_overwrites_what_it_did_not_write(tmp_path, report):
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files \\(notes.txt\\)"):
        save_pretrained(_student(), folder)
    (folder / "notes.txt").unlink()
    save_pretrained(_student(), folder, report=report)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(_student(), folder)
    save_pretrained(_student(), folder, overwrite=True)  # replaced: now without a report
    assert json.loads((folder / "robustness.json").read_text())["robustness"] is None


def test_save_pretrained_from_a_run_folder_keeps_the_training_run(tmp_path):
    from robust_student import RobustDistiller

    distiller = RobustDistiller(teacher="fmnist-clip", method="kd", student="resnet_tiny", dataset="synthetic:3",
                                epochs=1, batch_size=32, eval_examples=8, student_args={"width": 8},
                                image_size=28, output_dir=str(tmp_path / "run"))
    distiller.fit()
    distiller.evaluate(["clean", "pgd20"], n_examples=8, checks=False, progress=False)
    folder = distiller.save_pretrained(tmp_path / "hub", repo_id="org/kd-tiny")
    body = (folder / "README.md").read_text()
    assert "- Method: `kd`, Geoffrey Hinton, Oriol Vinyals, Jeff Dean" in body and "@inproceedings{kd2014" in body
    assert "- Budget: 1 epoch(s)" in body and "Last validation: clean " in body
    assert read_student_config(folder)["config"] == distiller.config.to_dict()


# -- the Hub ---------------------------------------------------------------------------------------------------

@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        yield server


def test_push_then_pull_into_an_empty_cache_then_load_offline(hub, tmp_path, report, monkeypatch):
    import huggingface_hub.constants as constants

    student = _student()
    folder = save_pretrained(student, tmp_path / "hub", report=report, repo_id="org/tiny")
    (folder / "teacher_weights.safetensors").write_bytes(b"a teacher's weights must never be uploaded")
    before = _digests(folder)
    url = push_to_hub(folder, "org/tiny", token="hf_test")
    assert url.startswith(f"{hub.url}/org/tiny/commit/")
    assert sorted(hub.files("org/tiny")) == ["README.md", "config.json", "model.safetensors", "robustness.json"]
    assert hub.repos["org/tiny"].private is False  # the teacher (Apache-2.0) allows commercial use
    assert _digests(folder) == before

    pulled = load_student("hf-hub:org/tiny")
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(pulled(x), student(x), rtol=0, atol=0)
    snapshot = next((tmp_path / "cache").glob("models--org--tiny/snapshots/*"))
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]  # only what it needs

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: from the cache alone
    requests = len(hub.requests)
    torch.testing.assert_close(load_student("hf-hub:org/tiny")(x), student(x), rtol=0, atol=0)
    assert len(hub.requests) == requests
    with pytest.raises(FileNotFoundError, match="org/other is not in the local Hugging Face cache"):
        load_student("hf-hub:org/other")


def test_a_non_commercial_teachers_student_is_pushed_private_unless_told(hub, tmp_path, caplog):
    folder = save_pretrained(_student("cxr-clip"), tmp_path / "hub")
    push_to_hub(folder, "org/cxr")
    assert hub.repos["org/cxr"].private is True
    unknown = save_pretrained(_student(None), tmp_path / "unknown")  # a hand-made teacher: terms unknown
    push_to_hub(unknown, "org/unknown")
    assert hub.repos["org/unknown"].private is True
    with caplog.at_level("WARNING"):
        push_to_hub(folder, "org/cxr-public", private=False)
    assert hub.repos["org/cxr-public"].private is False and "licence is non-commercial" in caplog.text


@pytest.mark.parametrize("failure, message", [
    ({"commit": 500}, r"failed \(500: .*\); the Hub failed: try again later\. Nothing was changed locally\."),
    ({"preupload": 401}, r"failed \(401: .*\); the token was refused: pass token= or set HF_TOKEN"),
])
def test_a_failing_upload_is_one_clear_error_and_leaves_the_folder_alone(hub, tmp_path, failure, message,
                                                                          monkeypatch):
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)  # the client retries 5xx with back-off
    folder = save_pretrained(_student(), tmp_path / "hub")
    before = _digests(folder)
    hub.fail.update(failure)
    with pytest.raises(HubError, match=message) as info:
        push_to_hub(folder, "org/broken")
    assert "\n" not in str(info.value) and _digests(folder) == before


def test_cli_push_prints_where_it_went_and_errors_in_one_line(hub, tmp_path, capsys):
    from robust_student.cli import main

    folder = save_pretrained(_student(), tmp_path / "hub")
    assert main(["push", str(folder), "org/cli", "--private"]) == 0
    assert capsys.readouterr().out.startswith(f"pushed {folder} to org/cli: {hub.url}/org/cli/commit/")
    assert hub.repos["org/cli"].private is True
    assert main(["push", str(tmp_path), "org/cli"]) == 2
    assert "is not a saved student" in capsys.readouterr().err


# -- with the ONNX export -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory, report):
    pytest.importorskip("onnxruntime")
    from robust_student.export import export_onnx

    folder = tmp_path_factory.mktemp("exported")
    student = _student()
    data = build_dataset("synthetic:3", "test")
    result = export_onnx(student, folder / "student.onnx", validate=data, n_examples=16, square_queries=30,
                         attacks=("pgd20",), allow_failed=True)
    return student, result, folder


def test_the_card_carries_the_onnx_validation_and_the_folder_runs_without_torch_code(exported, report, tmp_path):
    from robust_student.export import OnnxStudent

    student, result, folder = exported
    hub = save_pretrained(student, tmp_path / "hub", report=report, export_report=result.report,
                          onnx=folder / "student.onnx", repo_id="org/onnx")
    assert (hub / "model.onnx").is_file() and "onnx" in _front_matter(hub / "README.md")["tags"]
    body = (hub / "README.md").read_text()
    state = "passed" if result.report.passed else "FAILED"
    provider = result.report.provider
    assert f"- ONNX export (`model.onnx`, onnxruntime {provider}): validation {state} on 16 images" in body
    for check in result.report.checks:
        assert f"  - {check['name']}: " in body
    assert 'OnnxStudent.from_pretrained("org/onnx")' in body
    evidence = json.loads((hub / "robustness.json").read_text())
    assert evidence["export"]["checks"] == result.report.to_dict()["checks"] and evidence["export_int8"] is None
    onnx_student = OnnxStudent.from_pretrained(hub)
    x = torch.rand(2, 3, 16, 16)
    np_logits = onnx_student.logits(x.numpy())
    torch.testing.assert_close(torch.from_numpy(np_logits), student(x), rtol=1e-4, atol=1e-4)


def test_onnx_student_from_the_hub_fetches_only_what_it_needs(exported, report, hub, tmp_path):
    from robust_student.export import OnnxStudent

    student, result, folder = exported
    local = save_pretrained(student, tmp_path / "hub", report=report, export_report=result.report,
                            onnx=folder / "student.onnx")
    push_to_hub(local, "org/onnx")
    assert "model.onnx" in hub.files("org/onnx")
    model = OnnxStudent.from_pretrained("org/onnx")
    snapshot = next((tmp_path / "cache").glob("models--org--onnx/snapshots/*"))
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.onnx"]
    assert model.class_names == ["class 0", "class 1", "class 2"]
