"""The open_clip teacher backend, on a tiny random open_clip model loaded through open_clip's real loaders."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from robust_student.teachers import TEACHERS, create_teacher  # noqa: E402
from robust_student.teachers.open_clip import ALIASES, OpenClipTeacher, export_local_dir  # noqa: E402
from robust_student.teachers.zeroshot import zero_shot_accuracy  # noqa: E402

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
CLASSES = ["apple", "boat", "cat"]
TEMPLATES = ["a photo of a {}.", "a {}"]


def _tiny_model(seed: int = 0):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**json.loads(json.dumps(TINY_CFG))).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    open_clip.set_model_preprocess_cfg(model, {"size": 32, "mean": MEAN, "std": STD})
    return model


def _reference_image_embedding(model, x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(model.encode_image((x - mean) / std), dim=-1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model = _tiny_model()
    folder = export_local_dir(model, TINY_CFG, tmp_path_factory.mktemp("oc") / "tiny")
    return model, folder


@pytest.fixture
def teacher(tiny_dir) -> OpenClipTeacher:
    _, folder = tiny_dir
    t = create_teacher(f"open_clip:local-dir:{folder}", license="test-only")
    t.set_classes(CLASSES, TEMPLATES)
    return t


def test_local_dir_reload_matches_the_saved_model(tiny_dir, teacher):
    model, folder = tiny_dir
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert isinstance(teacher, OpenClipTeacher) and teacher.name == f"open_clip:local-dir:{folder}"
    assert teacher.input_size == 32 and teacher.embed_dim == 16 and teacher.license == "test-only"
    assert torch.allclose(teacher.mean.flatten(), torch.tensor(MEAN))
    assert torch.allclose(teacher.std.flatten(), torch.tensor(STD))
    assert teacher.logit_scale.item() == pytest.approx(torch.tensor(2.5).exp().item())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(teacher.encode_image(x), _reference_image_embedding(model, x), rtol=0, atol=1e-6)
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(["a photo of a boat."])
    assert tokens.shape == (1, 16)  # context length from the saved config
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(teacher.encode_text(["a photo of a boat."]), expected, rtol=0, atol=1e-6)


def test_arch_plus_local_checkpoint_file(tmp_path):
    (tmp_path / "rs-tiny-clip-test.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(str(tmp_path / "rs-tiny-clip-test.json"))
    model = open_clip.create_model("rs-tiny-clip-test")
    open_clip.set_model_preprocess_cfg(model, {"size": 32, "mean": MEAN, "std": STD})
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    t = create_teacher("open_clip:rs-tiny-clip-test", pretrained=str(tmp_path / "weights.pt"),
                       mean=MEAN, std=STD, license="test-only")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(t.encode_image(x), _reference_image_embedding(model.eval(), x), rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_teacher("open_clip:rs-tiny-clip-test", pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="needs weights"):
        create_teacher("open_clip:rs-tiny-clip-test")


def test_frozen_and_eval_locked(teacher):
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_input_gradients_flow_through_forward(teacher):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = teacher(x)
    logits[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_embeddings_classifier_and_logits(teacher):
    x = torch.rand(5, 3, 32, 32)
    img = teacher.encode_image(x)
    txt = teacher.encode_text(["a photo of a cat.", "a boat", "apple"])
    assert img.shape == (5, 16) and txt.shape == (3, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert teacher.classifier.shape == (16, 3) and teacher.classnames == CLASSES
    # Each column is the renormalised mean of the class's prompt embeddings.
    expected = F.normalize(teacher.encode_text([t.format("boat") for t in TEMPLATES]).mean(0), dim=0)
    torch.testing.assert_close(teacher.classifier[:, 1], expected)
    logits = teacher(x)
    assert logits.shape == (5, 3)
    torch.testing.assert_close(logits, teacher.logit_scale * img @ teacher.classifier)


def test_other_input_sizes_are_resized_inside(teacher):
    x = torch.rand(2, 3, 48, 48)
    resized = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(teacher.encode_image(x), teacher.encode_image(resized))
    assert teacher(torch.rand(2, 3, 20, 20)).shape == (2, 3)


def test_forward_intermediates_are_named_blocks(teacher):
    x = torch.rand(2, 3, 32, 32)
    feats = teacher.forward_intermediates(x)
    assert list(feats) == ["block_0", "block_1"]
    assert all(f.shape == (2, 32, 4, 4) for f in feats.values())  # NCHW: width 32, 32 px / patch 8
    assert list(teacher.forward_intermediates(x, indices=1)) == ["block_1"]


@pytest.mark.parametrize("spec", ["open_clip:hf-hub:chs20/fare2-clip", "fare2-vit-l-14",
                                  "open_clip:ViT-B-32-quickgelu/openai"])
def test_missing_weights_offline_says_how_to_get_them(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        create_teacher(spec, cache_dir=str(tmp_path / "empty-cache"))
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "local-dir:" in message and "pretrained=" in message and "HF_HUB_CACHE" in message


def test_local_dir_errors(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        create_teacher(f"open_clip:local-dir:{tmp_path / 'nowhere'}")
    (tmp_path / "cfg-only").mkdir()
    (tmp_path / "cfg-only" / "open_clip_config.json").write_text((tiny_dir[1] / "open_clip_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights file"):
        create_teacher(f"open_clip:local-dir:{tmp_path / 'cfg-only'}")


def test_unknown_names_raise_value_error_listing_valid_ones():
    with pytest.raises(ValueError, match="ViT-B-32"):
        create_teacher("open_clip:No-Such-Arch/openai")
    with pytest.raises(ValueError, match="laion400m_e32"):
        create_teacher("open_clip:ViT-B-32-quickgelu/no-such-tag")
    with pytest.raises(ValueError, match="fmnist-clip"):
        create_teacher("clip-vit-b-99")


def test_aliases_are_registered_with_licences():
    for name, alias in ALIASES.items():
        assert name in TEACHERS
        assert alias.license
    assert ALIASES["fare2-vit-l-14"].spec == "hf-hub:chs20/fare2-clip"
    assert ALIASES["clip-vit-b-16"].spec == "ViT-B-16-quickgelu/openai"


def test_export_refuses_a_model_without_preprocess_config(tmp_path):
    from open_clip.model import CLIP

    with pytest.raises(ValueError, match="preprocess"):
        export_local_dir(CLIP(**json.loads(json.dumps(TINY_CFG))), TINY_CFG, tmp_path / "x")


def test_zero_shot_accuracy_is_top1_and_restores_mode(teacher):
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        predicted = teacher(images).argmax(-1)
    labels = predicted.clone()
    labels[:2] = (labels[:2] + 1) % 3  # two deliberate mistakes
    dataset = [{"image": images[i], "label": int(labels[i])} for i in range(8)]
    assert zero_shot_accuracy(teacher, dataset, batch_size=3) == pytest.approx(6 / 8)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3]

    model = Identity().train()
    assert zero_shot_accuracy(model, dataset, batch_size=4) >= 0.0 and model.training
    with pytest.raises(ValueError, match="empty"):
        zero_shot_accuracy(teacher, [])
