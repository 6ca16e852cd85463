"""The Gradio demo: the attack functions on their own, the app served on 127.0.0.1 and driven through
gradio_client (clean predictions, an attack whose PNG survives inside the eps-ball, bad inputs answered in the
page, concurrent requests), and a real headless Chromium clicking through the page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")

from robust_student import create_student  # noqa: E402
from robust_student.data import build_dataset  # noqa: E402
from robust_student.demo import DemoInputError, DemoModels, build_demo, launch, run_attack  # noqa: E402
from robust_student.demo import attack as demo_attack  # noqa: E402

from conftest import TinyTeacher  # noqa: E402


def _models(seed: int = 0):
    teacher = TinyTeacher(seed=seed)
    prompts = build_dataset("synthetic:3", "test").prompts
    teacher.set_classes(prompts.classnames, prompts.templates)
    torch.manual_seed(seed)
    student = create_student("resnet_tiny", teacher, image_size=16, width=8).eval()
    return student, teacher


def _png(path: Path, seed: int = 0, size=(16, 16), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(path)
    return path


def _linf(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


# -- the attack functions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", demo_attack.ATTACKS)
def test_every_attack_stays_in_the_eps_ball_on_the_8_bit_grid(attack, tmp_path):
    student, teacher = _models()
    result = run_attack(DemoModels(student, ["a", "b", "c"], teacher), _png(tmp_path / "x.png"), attack, 6, 5)
    assert 0 < result.linf <= 6 and 0 < _linf(result.clean, result.adversarial) <= 6
    assert result.clean.shape == (224, 224, 3) and result.clean.dtype == np.uint8
    assert set(result.predictions) == {"student clean", "student adversarial", "teacher clean", "teacher adversarial"}
    assert all(abs(sum(p.values()) - 1) < 1e-5 for p in result.predictions.values())  # all 3 classes shown
    assert "at eps 6/255" in result.verdict and result.verdict.startswith("student ")


def test_uploads_are_converted_or_refused_with_a_message(tmp_path, monkeypatch):
    student, teacher = _models()
    models = DemoModels(student, ["a", "b", "c"], teacher)
    for mode in ("L", "RGBA"):
        assert run_attack(models, _png(tmp_path / f"{mode}.png", mode=mode, size=(40, 30)), "FGSM", 4, 1).linf <= 4
    sixteen = tmp_path / "xray16.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)).save(sixteen)
    assert run_attack(models, sixteen, "FGSM", 4, 1).linf <= 4
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(DemoInputError, match="notes.txt is not an image the demo can read"):
        run_attack(models, text, "PGD", 4, 2)
    monkeypatch.setattr(demo_attack, "MAX_PIXELS", 1000)
    with pytest.raises(DemoInputError, match="above the demo's limit"):
        run_attack(models, _png(tmp_path / "big.png", size=(50, 50)), "PGD", 4, 2)
    with pytest.raises(DemoInputError, match="choose Square"):
        run_attack(DemoModels(student, ["a", "b", "c"], teacher, onnx=lambda x: np.zeros((len(x), 3))),
                   _png(tmp_path / "o.png"), "PGD", 4, 2, target="onnx")


def test_settings_out_of_bounds_are_clamped_and_said():
    eps, steps, notes = demo_attack.clamp_settings(500, 0.4)
    assert (eps, steps) == (64, 1) and "eps 500/255 was set to 64/255" in notes[0] and "steps 0.4" in notes[1]
    with pytest.raises(DemoInputError, match="must be numbers"):
        demo_attack.clamp_settings("lots", 3)


def test_square_on_a_query_only_model(tmp_path):
    student, teacher = _models()
    calls = {"n": 0}

    def onnx_like(x: np.ndarray) -> np.ndarray:  # numpy in, logits out: what an onnxruntime session gives
        calls["n"] += len(x)
        assert isinstance(x, np.ndarray) and x.dtype == np.float32
        with torch.no_grad():
            return student(torch.from_numpy(x)).numpy()

    result = run_attack(DemoModels(student, ["a", "b", "c"], teacher, onnx=onnx_like), _png(tmp_path / "q.png"),
                        "Square", 6, 2, target="onnx")
    assert calls["n"] > 0 and 0 < result.linf <= 6 and "onnx clean" in result.predictions


# -- the app through gradio_client ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    student, teacher = _models()
    folder = tmp_path_factory.mktemp("demo")
    examples = [str(_png(folder / f"example_{i}.png", seed=i)) for i in range(2)]
    demo = build_demo(student=student, teacher=teacher, examples=examples, concurrency=2)
    _, url = launch(demo, port=None, block=False)
    assert url.startswith("http://127.0.0.1:")
    yield url, examples, folder
    demo.close()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)


def test_attack_through_the_api_returns_a_png_inside_the_ball(served):
    from gradio_client import handle_file

    url, examples, _ = served
    out = _client(url).predict(handle_file(examples[0]), "PGD", 8, 5, "student", api_name="/attack")
    clean_path, adv_path, delta_path, s_clean, s_adv, t_clean, t_adv, verdict = out
    clean, adv = Image.open(clean_path), Image.open(adv_path)
    assert clean.format == adv.format == "PNG" and Image.open(delta_path).format == "PNG"
    assert 0 < _linf(clean, adv) <= 8  # the perturbation survives the PNG round trip, inside the ball
    assert s_clean["label"] in ("class 0", "class 1", "class 2") and len(s_clean["confidences"]) == 3
    assert t_clean["label"] and "under PGD-5 at eps 8/255" in verdict


def test_bad_inputs_are_answered_in_the_page(served):
    from gradio_client import handle_file

    url, examples, folder = served
    client = _client(url)
    text = folder / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(Exception, match=r"Invalid file type\. Please upload a file that is one of these formats"):
        client.predict(handle_file(str(text)), "PGD", 8, 5, "student", api_name="/attack")
    disguised = folder / "notes.png"  # an image's name, not an image's content
    disguised.write_text("not an image either")
    with pytest.raises(Exception, match="notes.png is not an image the demo can read"):
        client.predict(handle_file(str(disguised)), "PGD", 8, 5, "student", api_name="/attack")
    with pytest.raises(Exception, match="Value 900 is greater than maximum value 64"):  # the slider's bound
        client.predict(handle_file(examples[1]), "FGSM", 900, 5, "student", api_name="/attack")
    with pytest.raises(Exception, match="'onnx' .* is not in the list of choices"):  # no ONNX model loaded
        client.predict(handle_file(examples[1]), "PGD", 8, 5, "onnx", api_name="/attack")
    # the app still serves after an error
    assert "under FGSM" in client.predict(handle_file(examples[0]), "FGSM", 4, 1, "student", api_name="/attack")[-1]


def test_concurrent_requests_are_all_answered(served):
    from gradio_client import handle_file

    url, examples, _ = served
    client = _client(url)
    # One example for all: their clean views are the same image, which gradio once rewrote in place per request
    # (an empty download when two answers overlapped); each answer now has its own files.
    jobs = [client.submit(handle_file(examples[0]), "PGD", 4 + i, 3, "student", api_name="/attack")
            for i in range(6)]
    answers = [job.result(timeout=120) for job in jobs]
    assert [f"at eps {4 + i}/255" in answer[-1] for i, answer in enumerate(answers)] == [True] * 6
    assert all(Image.open(answer[0]).format == "PNG" for answer in answers)


def test_each_answer_gets_its_own_complete_png(tmp_path):
    from robust_student.demo.app import PngOutbox

    outbox = PngOutbox(keep_s=0.0)
    image = np.full((8, 8, 3), 7, dtype=np.uint8)
    first, second = outbox.write(image), outbox.write(image)
    assert first != second and np.array_equal(np.asarray(Image.open(second)), image)
    assert not Path(first).exists()  # older than keep_s: pruned at the next write


def test_the_transfer_tab_attacks_the_teacher_and_tests_the_student(served):
    from gradio_client import handle_file

    url, examples, _ = served
    adv, teacher_label, student_label, verdict = _client(url).predict(handle_file(examples[0]), "PGD", 8, 5,
                                                                      api_name="/transfer")
    assert verdict.startswith("student ") and "crafted on the teacher" in verdict
    assert teacher_label["label"] and student_label["label"] and Image.open(adv).format == "PNG"


# -- a real browser ------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser_demo(served):
    """The module's tiny demo, or (for the README's screenshot) a saved student named by
    ROBUST_STUDENT_DEMO_STUDENT with the built-in teacher and Fashion-MNIST examples."""
    saved = os.environ.get("ROBUST_STUDENT_DEMO_STUDENT")
    if not saved:
        yield served[0]
        return
    demo = build_demo(student=saved, teacher="fmnist-clip")
    _, url = launch(demo, port=None, block=False)
    yield url
    demo.close()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
def test_a_headless_browser_runs_an_attack_on_an_example(browser_demo, tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url = browser_demo
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        example = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "button.gallery-item")))
        driver.execute_script("arguments[0].click();", example)  # the first example image
        wait.until(lambda d: "⇣" in d.find_element(By.TAG_NAME, "body").text.split("test images")[0])  # loaded
        button = wait.until(ready.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Run the attack']")))
        driver.execute_script("arguments[0].click();", button)
        wait.until(lambda d: " under PGD-10 at eps " in d.find_element(By.ID, "verdict").text)
        verdict = driver.find_element(By.ID, "verdict").text
        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        assert verdict.startswith("student ") and shot.stat().st_size > 10_000
        target = os.environ.get("ROBUST_STUDENT_DEMO_SCREENSHOT")
        if target:  # how the README's screenshot is made
            shutil.copyfile(shot, target)
    finally:
        driver.quit()
