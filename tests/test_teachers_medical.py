"""Medical teachers: CONCH through a stand-in ``conch`` package, CXR-CLIP by converting a fake release and loading it.

The stand-in has CONCH's API surface (``create_model_from_pretrained``, ``get_tokenizer``, ``tokenize``; a model with
``encode_image(x, proj_contrast, normalize)``, ``encode_text(tokens)``, ``logit_scale``, ``visual.trunk``) and random
weights. The fake CXR-CLIP release is a random-weight model with the original module names, saved like the
released ``.tar`` files; the converted teacher must reproduce its embeddings.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_student.cli import main
from robust_student.data.prompts import get_prompt_set
from robust_student.teachers import create_teacher
from robust_student.teachers.base import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD
from robust_student.teachers.cxr_clip import convert_cxr_clip_checkpoint

transformers = pytest.importorskip("transformers")


def check_contract(teacher, x: torch.Tensor) -> None:
    """Frozen, eval-locked, differentiable w.r.t. the input, unit-norm embeddings."""
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    emb = teacher.encode_image(x)
    assert emb.shape == (len(x), teacher.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(x)))
    xg = x.clone().requires_grad_(True)
    teacher(xg).max(dim=1).values.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    text = teacher.encode_text(["no evidence of pneumonia", "adipose tissue"])
    assert not text.requires_grad
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


# -- CONCH -------------------------------------------------------------------------------------------------------

class StandInTokenizer:
    pad_token_id = 0

    def __init__(self) -> None:
        self.seen: list[str] = []


def standin_tokenize(tokenizer: StandInTokenizer, texts: list[str]) -> torch.Tensor:
    """CONCH's shape convention: [N, 128], 127 tokens + one pad that encode_text replaces with its CLS."""
    tokenizer.seen.extend(texts)
    ids = torch.zeros(len(texts), 128, dtype=torch.long)
    for i, text in enumerate(texts):
        codes = [1] + [3 + zlib.crc32(w.encode()) % 500 for w in text.lower().split()][:125] + [2]
        ids[i, :len(codes)] = torch.tensor(codes)
    return ids


class StandInConch(nn.Module):
    """Tiny model with CONCH's CoCa API surface; records how encode_image is called."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        self.visual = nn.Module()
        self.visual.trunk = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                              num_classes=0, dynamic_img_size=True)
        self.visual.proj = nn.Linear(32, 512)
        self.token_embedding = nn.Embedding(512, 512)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(50.0)))
        self.calls: list[dict] = []

    def encode_image(self, images, normalize=True, proj_contrast=True):
        self.calls.append({"proj_contrast": proj_contrast, "normalize": normalize})
        pooled = self.visual.trunk.forward_features(images)[:, 0]
        out = self.visual.proj(pooled) if proj_contrast else pooled
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, text, normalize=True, embed_cls=True):
        text = text[:, :-1] if embed_cls else text
        mask = (text != 0).unsqueeze(-1).float()
        out = (self.token_embedding(text) * mask).sum(1) / mask.sum(1)
        return F.normalize(out, dim=-1) if normalize else out


@pytest.fixture
def conch_standin(monkeypatch):
    created: list[dict] = []
    tokenizer = StandInTokenizer()

    def create_model_from_pretrained(model_cfg, checkpoint_path=None, **kwargs):
        model = StandInConch().eval()
        created.append({"model_cfg": model_cfg, "checkpoint_path": checkpoint_path, "model": model})
        return model, object()

    package = types.ModuleType("conch")
    module = types.ModuleType("conch.open_clip_custom")
    module.create_model_from_pretrained = create_model_from_pretrained
    module.get_tokenizer = lambda: tokenizer
    module.tokenize = standin_tokenize
    package.open_clip_custom = module
    monkeypatch.setitem(sys.modules, "conch", package)
    monkeypatch.setitem(sys.modules, "conch.open_clip_custom", module)
    return types.SimpleNamespace(created=created, tokenizer=tokenizer)


def test_conch_without_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "conch", None)
    monkeypatch.delitem(sys.modules, "conch.open_clip_custom", raising=False)
    with pytest.raises(ImportError, match=re.escape("pip install git+https://github.com/mahmoodlab/CONCH.git")):
        create_teacher(f"conch:{tmp_path / 'pytorch_model.bin'}")


def test_conch_without_weights_says_how_to_get_them(conch_standin, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        create_teacher("conch", cache_dir=tmp_path)  # empty Hub cache
    message = str(err.value)
    assert "https://huggingface.co/MahmoodLab/conch" in message and "pytorch_model.bin" in message
    with pytest.raises(FileNotFoundError, match="not found at"):
        create_teacher(f"conch:{tmp_path / 'missing.bin'}")
    assert conch_standin.created == []


def test_conch_reads_weights_from_the_hub_cache(conch_standin, tmp_path):
    repo = tmp_path / "models--MahmoodLab--conch"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "pytorch_model.bin").write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    create_teacher("conch", cache_dir=tmp_path, input_size=32)
    create_teacher("conch:hf_hub:MahmoodLab/conch", cache_dir=tmp_path, input_size=32)
    expected = str(repo / "snapshots" / "abc123" / "pytorch_model.bin")
    assert [c["checkpoint_path"] for c in conch_standin.created] == [expected, expected]
    assert {c["model_cfg"] for c in conch_standin.created} == {"conch_ViT-B-16"}


def test_conch_adapter_matches_the_model(conch_standin, tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"weights")
    teacher = create_teacher(f"conch:{weights}", input_size=32)
    model = conch_standin.created[-1]["model"]
    assert conch_standin.created[-1]["checkpoint_path"] == str(weights)
    assert (teacher.embed_dim, teacher.input_size, teacher.license) == (512, 32, "CC-BY-NC-ND-4.0")
    assert "non-commercial" in teacher.provenance.note and teacher.provenance.commercial_use is False
    torch.testing.assert_close(teacher.logit_scale, model.logit_scale.detach().exp())

    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    model.calls.clear()
    emb = teacher.encode_image(x)
    assert model.calls == [{"proj_contrast": True, "normalize": False}]
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    pixels = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - mean) / std
    with torch.no_grad():
        expected = F.normalize(model.encode_image(pixels, proj_contrast=True, normalize=False), dim=-1)
    torch.testing.assert_close(emb, expected)

    prompts = get_prompt_set("crc100k")
    teacher.set_classes(prompts.classnames, prompts.templates)
    seen = conch_standin.tokenizer.seen
    assert "an H&E image of adipose tissue." in seen and not any("CLASSNAME" in t for t in seen)
    text = ["an H&E image of adipose tissue."]
    torch.testing.assert_close(teacher.encode_text(text),
                               model.encode_text(standin_tokenize(StandInTokenizer(), text)).detach())
    logits = teacher(x)
    assert logits.shape == (2, 9)
    torch.testing.assert_close(logits, teacher.logit_scale * teacher.encode_image(x) @ teacher.classifier)

    feats = teacher.forward_intermediates(x)
    assert list(feats) == ["block_0", "block_1", "block_2"] and feats["block_2"].shape == (2, 32, 4, 4)
    assert list(teacher.forward_intermediates(x, indices=1)) == ["block_2"]
    check_contract(teacher, x)


# -- CXR-CLIP ----------------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "no", "evidence", "of", "pneumonia", "findings",
         "suggesting", "adipose", "tissue", "the", "lungs", "are", "clear", "small", "left", "pleural", "effusion"]
BERT = dict(vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=128,
            max_position_embeddings=64, type_vocab_size=2)
SWIN = dict(image_size=64, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2], window_size=4)
TEXTS = ["No evidence of pneumonia", "Findings suggesting pneumonia.", "the lungs are clear , small left effusion ."]


@pytest.fixture
def tokenizer_dir(tmp_path):
    """A Bio_ClinicalBERT-shaped tokenizer folder (config.json + vocab.txt), tiny vocabulary."""
    folder = tmp_path / "bio_clinicalbert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", **BERT}))
    return folder


class ReleasedCxrClip(nn.Module):
    """Random-weight CXR-CLIP with the released module names (cxrclip/model/clip.py) and its forward."""

    def __init__(self, image: str, projection: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = image
        self.image_encoder = nn.Module()
        if image == "resnet18":
            import torchvision

            net = torchvision.models.resnet18(weights=None)
            del net.fc
            for m in net.modules():  # non-trivial BatchNorm statistics, so the buffers must be carried over
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
            self.image_encoder.resnet = net
            dim = 512
        else:
            self.image_encoder.image_encoder = transformers.SwinModel(transformers.SwinConfig(**SWIN))
            dim = 32
        self.text_encoder = nn.Module()
        self.text_encoder.text_encoder = transformers.BertModel(transformers.BertConfig(**BERT))  # with its pooler
        self.projection = projection
        for name, in_dim in (("image_projection", dim), ("text_projection", 64)):
            head = nn.Module()
            head.projection = nn.Linear(in_dim, 32)
            if projection == "mlp":
                head.fc, head.layer_norm = nn.Linear(32, 32), nn.LayerNorm(32)
                nn.init.normal_(head.layer_norm.weight)
            setattr(self, name, head)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.eval()

    def _project(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        p = head.projection(x)
        return p if self.projection == "linear" else head.layer_norm(head.fc(F.gelu(p)) + p)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.image == "resnet18":
            r = self.image_encoder.resnet
            x = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(pixels))))))))
            feats = torch.flatten(r.avgpool(x), 1)
        else:
            feats = self.image_encoder.image_encoder(pixel_values=pixels)["last_hidden_state"][:, 0]
        return F.normalize(self._project(self.image_projection, feats), dim=-1)

    @torch.no_grad()
    def encode_text(self, tokens) -> torch.Tensor:
        hidden = self.text_encoder.text_encoder(**tokens)["last_hidden_state"]
        eos = tokens["attention_mask"].sum(dim=-1) - 1
        return F.normalize(self._project(self.text_projection, hidden[torch.arange(len(hidden)), eos]), dim=-1)

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict as the released files store it (Swin under the transformers-4 key names when available)."""
        state = dict(self.state_dict())
        if self.image != "resnet18":
            swin = self.image_encoder.image_encoder
            try:
                from transformers.core_model_loading import revert_weight_conversion
            except ImportError:  # transformers 4.x already uses the original names
                return state
            prefix = "image_encoder.image_encoder."
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            state.update({prefix + k: v for k, v in revert_weight_conversion(swin, dict(swin.state_dict())).items()})
        return state


def released_config(image: str, projection: str, tokenizer: str = "emilyalsentzer/Bio_ClinicalBERT") -> dict:
    image_encoder = ({"source": "torchvision", "name": "resnet", "pretrained": True} if image == "resnet18" else
                     {"source": "huggingface", "name": "microsoft/swin-tiny-patch4-window7-224", "pretrained": True,
                      "model_type": "swin"})
    return {
        "base": {"seed": 1234, "image_size": 64, "text_max_length": 32,
                 "output": {"checkpoint": "${hydra:run.dir}/checkpoints/"}},
        "model": {"name": "clip_custom", "temperature": 0.07, "image_encoder": image_encoder,
                  "text_encoder": {"source": "huggingface", "name": "emilyalsentzer/Bio_ClinicalBERT",
                                   "pretrained": True, "pooling": "eos", "cache_dir": "huggingface/"},
                  "projection_head": {"name": projection, "dropout": 0.1, "proj_dim": 32}},
        "tokenizer": {"source": "huggingface", "pretrained_model_name_or_path": tokenizer},
    }


def save_release(tmp_path, image="resnet18", projection="linear", config=None, ddp_prefix=False):
    model = ReleasedCxrClip(image, projection)
    state = model.released_state_dict()
    if ddp_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    src = tmp_path / "model-best.tar"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "config": config if config is not None else released_config(image, projection), "epoch": 3,
                "train_loss": 0.5}, src)
    return model, src


def expected_image_embedding(model: ReleasedCxrClip, x: torch.Tensor) -> torch.Tensor:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if model.image == "resnet18" else ((0.5,) * 3, (0.5,) * 3)
    return model.encode_image((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))


@pytest.mark.parametrize("image,projection", [("resnet18", "linear"), ("swin", "mlp")])
def test_cxr_clip_conversion_reproduces_the_released_model(tmp_path, tokenizer_dir, image, projection):
    model, src = save_release(tmp_path, image, projection, ddp_prefix=image == "swin")
    dst = tmp_path / "cxr"
    result = convert_cxr_clip_checkpoint(src, dst, tokenizer=tokenizer_dir)
    assert result.tokenizer_saved and result.embed_dim == 32
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    config = json.loads((dst / "config.json").read_text())
    assert config["image_size"] == 64 and config["text_max_length"] == 32 and config["license"] == "CC-BY-NC-4.0"
    assert config["mean"] == pytest.approx(IMAGENET_MEAN if image == "resnet18" else [0.5] * 3)
    assert config["projection"] == {"type": projection, "dim": 32}
    assert config["text_encoder"]["config"]["num_attention_heads"] == 1  # inferred from the shapes

    teacher = create_teacher(f"cxr-clip:{dst}")
    assert (teacher.input_size, teacher.embed_dim, teacher.license) == (64, 32, "CC-BY-NC-4.0")
    assert teacher.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(teacher.encode_image(x), expected_image_embedding(model, x), atol=1e-5, rtol=1e-4)
    tokens = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))(TEXTS, padding="longest",
                                                                            return_tensors="pt")
    assert (tokens["attention_mask"] == 0).any()  # padded: eos pooling must skip the pads
    torch.testing.assert_close(teacher.encode_text(TEXTS), model.encode_text(tokens), atol=1e-5, rtol=1e-4)

    rsna = get_prompt_set("rsna-pneumonia")
    teacher.set_classes(rsna.classnames, rsna.templates)
    assert teacher(x).shape == (3, 2)
    feats = teacher.forward_intermediates(x)
    assert list(feats) == ([f"block_{i}" for i in range(4)] if image == "resnet18" else ["block_0", "block_1"])
    assert all(f.ndim == 4 and f.shape[0] == 3 for f in feats.values())
    check_contract(teacher, x)


class PickledConfig(dict):
    """A dict subclass: not on torch's weights_only allowlist, like the OmegaConf DictConfig of real releases."""


def test_cxr_clip_conversion_refuses_untrusted_pickles(tmp_path, tokenizer_dir, capsys):
    model, src = save_release(tmp_path, config=PickledConfig(released_config("resnet18", "linear")))
    dst = tmp_path / "cxr"
    assert main(["convert-cxr-clip", str(src), str(dst)]) == 2
    assert "--i-trust-this-file" in capsys.readouterr().err and not dst.exists()
    with pytest.raises(ValueError, match="trust_checkpoint=True"):
        convert_cxr_clip_checkpoint(src, dst)
    assert main(["convert-cxr-clip", str(src), str(dst), "--i-trust-this-file", "--tokenizer", str(tokenizer_dir)]) == 0
    assert f"cxr-clip:{dst}" in capsys.readouterr().out
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(create_teacher(f"cxr-clip:{dst}").encode_image(x), expected_image_embedding(model, x),
                               atol=1e-5, rtol=1e-4)
    assert main(["convert-cxr-clip", str(src), str(dst), "--i-trust-this-file"]) == 2  # dst not empty


def test_cxr_clip_conversion_reads_omegaconf_configs(tmp_path, tokenizer_dir):
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create(released_config("resnet18", "linear"))  # holds an unresolvable ${hydra:...}
    _, src = save_release(tmp_path, config=config)
    with pytest.raises(ValueError, match="--i-trust-this-file"):
        convert_cxr_clip_checkpoint(src, tmp_path / "cxr")
    convert_cxr_clip_checkpoint(src, tmp_path / "cxr", trust_checkpoint=True, tokenizer=tokenizer_dir)
    saved = json.loads((tmp_path / "cxr" / "config.json").read_text())
    assert (saved["image_size"], saved["text_max_length"], saved["image_encoder"]) == (
        64, 32, {"type": "resnet", "arch": "resnet18"})


def test_cxr_clip_errors_say_what_to_do(tmp_path, tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="convert-cxr-clip"):
        create_teacher(f"cxr-clip:{tmp_path / 'missing'}")
    tar = tmp_path / "r50_mc.tar"
    tar.write_bytes(b"not converted")
    with pytest.raises(ValueError, match="convert-cxr-clip"):
        create_teacher(f"cxr-clip:{tar}")
    with pytest.raises(ValueError, match="cxr-clip:DIR"):
        create_teacher("cxr-clip")

    # A tokenizer that is neither given nor cached: conversion still works, loading says how to get it.
    _, src = save_release(tmp_path, config=released_config("resnet18", "linear", tokenizer="test-org/not-cached"))
    dst = tmp_path / "cxr"
    assert not convert_cxr_clip_checkpoint(src, dst).tokenizer_saved
    with pytest.raises(FileNotFoundError, match=re.escape("hf download test-org/not-cached")):
        create_teacher(f"cxr-clip:{dst}")
    assert create_teacher(f"cxr-clip:{dst}", tokenizer=tokenizer_dir).encode_text(TEXTS).shape == (3, 32)
