"""CXR-CLIP (You et al., MICCAI 2023): the chest X-ray teacher, loaded from a converted safetensors folder.

The released checkpoints (links in the kakaobrain/cxr-clip README) are ``.tar`` files written by ``torch.save``:
a dict holding the ``"model"`` state dict and the OmegaConf training ``"config"``. Reading the config needs full
unpickling, which can run arbitrary code, so :func:`convert_cxr_clip_checkpoint` does it once, only for a file the
user explicitly trusts, and writes a folder that later loads read without unpickling anything::

    DIR/config.json        architecture, projection, logit scale, input size, normalisation, tokenizer, license
    DIR/model.safetensors  image_encoder.*, text_encoder.* (Hugging Face on-disk names), *_projection.*
    DIR/tokenizer/         the Bio_ClinicalBERT tokenizer, when it was available at conversion time

Architecture (cxrclip/model): image encoder = torchvision ResNet-50 without ``fc`` (2048-d global average pool,
ImageNet mean/std) or Hugging Face ``SwinModel`` (swin-tiny) whose global feature is the *first token* of
``last_hidden_state`` (mean/std 0.5); text encoder = BERT (Bio_ClinicalBERT) read at the last non-padding token
(``[SEP]``, "eos" pooling); linear (or residual MLP) projections to 512-d; a learned logit scale (init 1/0.07).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register_teacher
from .base import IMAGENET_MEAN, IMAGENET_STD, Teacher, take_indices

logger = logging.getLogger(__name__)

FORMAT = "robust_student.cxr_clip/1"
CXR_CLIP_LICENSE = "CC-BY-NC-4.0"
CXR_CLIP_LICENSE_NOTE = (
    "CXR-CLIP weights are licensed CC-BY-NC 4.0 (non-commercial use only); treat students distilled from them "
    "as non-commercial too."
)
DEFAULT_TOKENIZER = "emilyalsentzer/Bio_ClinicalBERT"
RELEASES = "https://github.com/kakaobrain/cxr-clip#pre-trained-model-checkpoint"
HF_MEAN, HF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
_TEXT_BATCH = 64
_RESNET_ARCHS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
# Derived constants and unused heads that old checkpoints carry; dropped at conversion.
_DERIVED_SUFFIXES = ("relative_position_index", "position_ids")


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError("The CXR-CLIP teacher needs transformers: pip install 'robust-student[medical]'") from err
    return transformers


# -- modules ---------------------------------------------------------------------------------------------------

class ResNetImageEncoder(nn.Module):
    """torchvision ResNet without its classifier: normalised pixels -> global-average-pooled features [B, C]."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        from torchvision import models

        if arch not in _RESNET_ARCHS.values():
            raise ValueError(f"Unknown ResNet {arch!r}. Valid: {', '.join(sorted(_RESNET_ARCHS.values()))}")
        self.net = getattr(models, arch)(weights=None)
        self.net.fc = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def stages(self, x: Tensor) -> list[Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        out = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x)
        return out


class SwinImageEncoder(nn.Module):
    """Hugging Face SwinModel; the global feature is ``last_hidden_state[:, 0]`` exactly as CXR-CLIP reads it."""

    def __init__(self, swin: nn.Module) -> None:
        super().__init__()
        self.swin = swin

    def forward(self, x: Tensor) -> Tensor:
        return self.swin(pixel_values=x).last_hidden_state[:, 0]

    def stages(self, x: Tensor) -> list[Tensor]:
        return list(self.swin(pixel_values=x, output_hidden_states=True).reshaped_hidden_states[1:])


class ProjectionHead(nn.Module):
    """Linear projection, or the residual MLP head (linear -> GELU -> linear, skip, LayerNorm)."""

    def __init__(self, kind: str, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"Unknown projection {kind!r}. Valid: linear, mlp")
        self.kind = kind
        self.projection = nn.Linear(in_dim, out_dim)
        if kind == "mlp":
            self.fc = nn.Linear(out_dim, out_dim)
            self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        projected = self.projection(x)
        if self.kind == "linear":
            return projected
        return self.layer_norm(projected + self.fc(F.gelu(projected)))


def _split(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_hf(model_cls: Any, config: Any, state: dict[str, Tensor], what: str, **kwargs: Any) -> nn.Module:
    """Load Hugging Face on-disk weights through ``from_pretrained`` (it renames keys across transformers versions)."""
    model, info = model_cls.from_pretrained(None, config=config, state_dict=state, output_loading_info=True, **kwargs)
    buffers = {name for name, _ in model.named_buffers()}  # derived constants (position ids), rebuilt at init
    missing = sorted(k for k in info["missing_keys"] if k not in buffers)
    if missing or info["mismatched_keys"]:
        raise RuntimeError(
            f"CXR-CLIP {what} weights do not fit the configured architecture: missing {missing}, "
            f"mismatched {sorted(str(k) for k in info['mismatched_keys'])}"
        )
    if info["unexpected_keys"]:
        logger.warning("Ignoring unexpected CXR-CLIP %s weights: %s", what, sorted(info["unexpected_keys"]))
    return model


def build_cxr_clip_modules(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, nn.Module]:
    """Build ``image_encoder``, ``text_encoder``, ``image_projection``, ``text_projection`` and load their weights."""
    image_cfg, text_cfg, proj = config["image_encoder"], config["text_encoder"], config["projection"]
    if image_cfg["type"] == "resnet":
        image_encoder: nn.Module = ResNetImageEncoder(image_cfg["arch"])
        image_encoder.net.load_state_dict(_split(tensors, "image_encoder."), strict=True)
        image_dim = 512 * type(image_encoder.net.layer4[-1]).expansion  # 2048 for ResNet-50
    elif image_cfg["type"] == "swin":
        transformers = _transformers()
        swin_config = transformers.SwinConfig(**image_cfg["config"])
        swin = _load_hf(transformers.SwinModel, swin_config, _split(tensors, "image_encoder."), "image encoder")
        image_encoder = SwinImageEncoder(swin)
        image_dim = swin.num_features
    else:
        raise ValueError(f"Unknown CXR-CLIP image encoder type {image_cfg['type']!r}. Valid: resnet, swin")
    if text_cfg["type"] != "bert":
        raise ValueError(f"Unknown CXR-CLIP text encoder type {text_cfg['type']!r}. Valid: bert")
    transformers = _transformers()
    bert_config = transformers.BertConfig(**text_cfg["config"])
    text_encoder = _load_hf(transformers.BertModel, bert_config, _split(tensors, "text_encoder."), "text encoder",
                            add_pooling_layer=False)
    modules: dict[str, nn.Module] = {"image_encoder": image_encoder, "text_encoder": text_encoder}
    for name, in_dim in (("image_projection", image_dim), ("text_projection", bert_config.hidden_size)):
        head = ProjectionHead(proj["type"], in_dim, int(proj["dim"]))
        head.load_state_dict(_split(tensors, f"{name}."), strict=True)
        modules[name] = head
    return modules


def _pool_text(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """CXR-CLIP text pooling: ``eos`` = last non-padding token, ``bos`` = first token, ``mean`` = masked mean."""
    if pooling == "eos":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask * positions).argmax(dim=1)  # == attention_mask.sum(1) - 1 with right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "bos":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    raise ValueError(f"Unknown text pooling {pooling!r}. Valid: eos, bos, mean")


# -- loading a converted folder --------------------------------------------------------------------------------

def _tokenizer_help(folder: Path, name: str) -> str:
    return (
        f"CXR-CLIP needs the {name} tokenizer and it is not available locally. On a machine with internet access run "
        f"`hf download {name} config.json vocab.txt --local-dir bio_clinicalbert`, then pass "
        f"tokenizer='bio_clinicalbert' or copy that folder to {folder / 'tokenizer'}."
    )


def _load_tokenizer(source: str | Path) -> Any:
    return _transformers().AutoTokenizer.from_pretrained(str(source), local_files_only=True)


def _resolve_tokenizer(explicit: Any, folder: Path, config: Mapping[str, Any]) -> Any:
    name = config.get("tokenizer", {}).get("name", DEFAULT_TOKENIZER)
    if explicit is not None and not isinstance(explicit, (str, Path)):
        return explicit  # an already-built tokenizer
    candidates = [str(explicit)] if explicit is not None else [str(folder / "tokenizer"), name]
    errors = []
    for candidate in candidates:
        if candidate == str(folder / "tokenizer") and not Path(candidate).is_dir():
            continue
        try:
            return _load_tokenizer(candidate)
        except (OSError, ValueError) as err:
            errors.append(f"{candidate}: {err}")
    raise FileNotFoundError(_tokenizer_help(folder, name) + (f" (tried {'; '.join(errors)})" if errors else ""))


def read_cxr_clip_config(folder: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a converted folder, with errors that say how to produce one."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise ValueError(
            f"{folder} is a file; CXR-CLIP loads a converted folder. Convert the released checkpoint once with "
            f"`robust-student convert-cxr-clip {folder} CXR_CLIP_DIR --i-trust-this-file`, then use "
            f"create_teacher('cxr-clip:CXR_CLIP_DIR')."
        )
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"No converted CXR-CLIP model in {folder} (expected config.json and model.safetensors). Download a "
            f"released checkpoint (.tar) from {RELEASES} and convert it with "
            f"`robust-student convert-cxr-clip FILE.tar {folder} --i-trust-this-file`."
        )
    config = json.loads((folder / "config.json").read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{folder / 'config.json'} is not a converted CXR-CLIP config "
                         f"(format {config.get('format')!r}, expected {FORMAT!r})")
    return config


class CxrClipTeacher(Teacher):
    """CXR-CLIP (ResNet-50 or Swin-T image tower, Bio_ClinicalBERT text tower, 512-d) from a converted folder.

    ``tokenizer``: a local tokenizer folder, a Hub id in the local cache, or a tokenizer object; by default
    ``DIR/tokenizer`` and then the Hub cache of the name stored in the config.
    """


    def __init__(
        self,
        folder: str | Path,
        *,
        tokenizer: Any = None,
        input_size: int | None = None,
        resize_inputs: bool = True,
    ) -> None:
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        config = read_cxr_clip_config(folder)
        tok = _resolve_tokenizer(tokenizer, folder, config)
        super().__init__(
            name="cxr-clip", embed_dim=int(config["projection"]["dim"]),
            input_size=int(input_size or config["image_size"]), mean=config["mean"], std=config["std"],
            logit_scale=float(config["logit_scale"]), license=config.get("license", CXR_CLIP_LICENSE),
            resize_inputs=resize_inputs,
        )
        self.folder = str(folder)
        self.config = config
        for name, module in build_cxr_clip_modules(config, load_file(str(folder / "model.safetensors"))).items():
            setattr(self, name, module)
        self.tokenizer = tok
        self.text_pooling = config["text_encoder"].get("pooling", "eos")
        self.text_max_length = min(int(config.get("text_max_length", 256)),
                                   int(config["text_encoder"]["config"].get("max_position_embeddings", 512)))
        self.freeze()

    def _encode_image(self, x: Tensor) -> Tensor:
        return self.image_projection(self.image_encoder(x))

    def _head_prefixes(self) -> list[str]:
        """The image projection head."""
        return ["image_projection"]

    def _encode_text(self, texts: list[str]) -> Tensor:
        device = self.logit_scale.device
        chunks = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = self.tokenizer(texts[start:start + _TEXT_BATCH], padding="longest", truncation=True,
                                    max_length=self.text_max_length, return_tensors="pt").to(device)
            hidden = self.text_encoder(**tokens).last_hidden_state
            chunks.append(self.text_projection(_pool_text(hidden, tokens["attention_mask"], self.text_pooling)))
        return torch.cat(chunks)

    def _intermediates(self, x: Tensor, indices: int | Sequence[int] | None) -> dict[str, Tensor]:
        """Stage outputs of the image tower (ResNet layer1-4, Swin stages) as ``block_{i}`` maps [B, C, H, W]."""
        stages = self.image_encoder.stages(x)
        return {f"block_{i}": stages[i] for i in take_indices(len(stages), indices)}


@register_teacher("cxr-clip", takes_arg=True, usage="cxr-clip:DIR", license=CXR_CLIP_LICENSE,
                  license_url="https://github.com/kakaobrain/cxr-clip", commercial_use=False,
                  note=CXR_CLIP_LICENSE_NOTE)
def _create_cxr_clip(arg: str, **kwargs: Any) -> CxrClipTeacher:
    """``cxr-clip:DIR`` where DIR was written by ``robust-student convert-cxr-clip``."""
    return CxrClipTeacher(arg, **kwargs)


# -- converting a released checkpoint --------------------------------------------------------------------------

@dataclass
class CxrClipConversion:
    """What :func:`convert_cxr_clip_checkpoint` wrote."""

    path: str
    image_encoder: str
    embed_dim: int
    logit_scale: float
    n_tensors: int
    source_sha256: str
    tokenizer_saved: bool
    dropped_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        tok = "tokenizer saved" if self.tokenizer_saved else "no tokenizer saved (pass tokenizer= when loading)"
        return (f"CXR-CLIP ({self.image_encoder}, {self.embed_dim}-d, logit scale {self.logit_scale:.2f}) written to "
                f"{self.path}: {self.n_tensors} tensors, {len(self.dropped_keys)} unused keys dropped, {tok}. "
                f"Load it with create_teacher('cxr-clip:{self.path}').")


def _plain(obj: Any) -> Any:
    """OmegaConf containers and other mappings -> plain dicts/lists (interpolations are left unresolved)."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _read_checkpoint(src: Path, trust_checkpoint: bool) -> Any:
    """Load safely when the file holds only tensors and plain containers; unpickle fully only if trusted."""
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not trust_checkpoint:
            raise ValueError(
                f"{src} stores Python objects besides tensors (the released CXR-CLIP files pickle their OmegaConf "
                f"training config), and unpickling them can run arbitrary code. Convert it only if you trust the file, "
                f"e.g. one you downloaded yourself from {RELEASES}: pass trust_checkpoint=True or "
                f"`robust-student convert-cxr-clip SRC DST --i-trust-this-file`. (Safe loader: {reason})"
            ) from None
    logger.warning("Fully unpickling %s because the caller marked it as trusted", src)
    try:
        # The one place the package unpickles: a file the user explicitly trusts, converted once to safetensors.
        return torch.load(src, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        raise ImportError(f"Unpickling {src} needs the `{err.name}` package: pip install {err.name}") from err


def _infer_resnet_arch(state: Mapping[str, Tensor]) -> str:
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    if (block, counts) not in _RESNET_ARCHS:
        raise ValueError(f"Unrecognised ResNet layout ({block} blocks {counts}) in the CXR-CLIP image encoder")
    return _RESNET_ARCHS[(block, counts)]


def _first(state: Mapping[str, Tensor], prefix: str, suffixes: tuple[str, ...]) -> Tensor:
    for key, value in state.items():
        if key.startswith(prefix) and key.endswith(suffixes):
            return value
    raise ValueError(f"CXR-CLIP Swin weights lack {prefix}*{suffixes}")


def _infer_swin_config(state: Mapping[str, Tensor], image_size: int) -> dict[str, Any]:
    """SwinConfig arguments read off the weight shapes (works for old and new transformers key names)."""
    patch = state["embeddings.patch_embeddings.projection.weight"]  # [embed_dim, channels, patch, patch]
    depths, heads, window = [], [], 7
    while any(k.startswith(f"encoder.layers.{len(depths)}.blocks.") for k in state):
        i = len(depths)
        depths.append(len({k.split(".")[4] for k in state if k.startswith(f"encoder.layers.{i}.blocks.")}))
        table = _first(state, f"encoder.layers.{i}.blocks.0.", ("relative_position_bias_table",))
        window = (round(math.sqrt(table.shape[0])) + 1) // 2
        heads.append(int(table.shape[1]))
    fc1 = _first(state, "encoder.layers.0.blocks.0.", ("intermediate.dense.weight", "mlp.fc1.weight"))
    qkv_bias = any(k.startswith("encoder.layers.0.blocks.0.") and k.endswith(("self.query.bias", "q_proj.bias"))
                   for k in state)
    return {
        "image_size": int(image_size), "patch_size": int(patch.shape[-1]), "num_channels": int(patch.shape[1]),
        "embed_dim": int(patch.shape[0]), "depths": depths, "num_heads": heads, "window_size": int(window),
        "mlp_ratio": fc1.shape[0] / fc1.shape[1], "qkv_bias": qkv_bias,
        "use_absolute_embeddings": "embeddings.position_embeddings" in state,
    }


def _infer_bert_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """BertConfig arguments read off the weight shapes; heads assume BERT's 64-d heads (Bio_ClinicalBERT: 12)."""
    words = state["embeddings.word_embeddings.weight"]
    hidden = int(words.shape[1])
    return {
        "vocab_size": int(words.shape[0]), "hidden_size": hidden,
        "num_hidden_layers": len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")}),
        "num_attention_heads": max(hidden // 64, 1),
        "intermediate_size": int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(state["embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state["embeddings.token_type_embeddings.weight"].shape[0]),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _as_dict(value: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    if value is None or isinstance(value, Mapping):
        return dict(value) if value is not None else None
    return json.loads(Path(value).read_text())


# Released key prefix -> (prefix in the converted file, image encoder kind it reveals).
_RELEASED_PREFIXES = {
    "image_encoder.resnet.": ("image_encoder.", "resnet"),
    "image_encoder.image_encoder.": ("image_encoder.", "hf"),
    "text_encoder.text_encoder.": ("text_encoder.", None),
    "image_projection.": ("image_projection.", None),
    "text_projection.": ("text_projection.", None),
}


def _collect_weights(state: Mapping[str, Tensor], src: Path) -> tuple[dict[str, Tensor], str, list[str]]:
    """Released keys -> converted keys; drops derived buffers, the unused BERT pooler and training-only entries."""
    tensors: dict[str, Tensor] = {}
    dropped: list[str] = []
    image_kind = None
    for key, value in state.items():
        match = next((p for p in _RELEASED_PREFIXES if key.startswith(p)), None)
        if match is None or key.endswith(_DERIVED_SUFFIXES) or key.startswith("text_encoder.text_encoder.pooler."):
            if key != "logit_scale":
                dropped.append(key)
            continue
        new_prefix, kind = _RELEASED_PREFIXES[match]
        image_kind = kind or image_kind
        tensors[new_prefix + key[len(match):]] = value.detach().contiguous()
    needed = ("image_projection.projection.weight", "text_projection.projection.weight")
    if image_kind is None or not any(k.startswith("text_encoder.") for k in tensors) or not all(
            k in tensors for k in needed):
        raise ValueError(f"{src} does not hold CXR-CLIP weights (image_encoder.*, text_encoder.*, *_projection.*)")
    return tensors, image_kind, dropped


def _describe_release(
    tensors: Mapping[str, Tensor],
    image_kind: str,
    log_logit_scale: Tensor | None,
    train_cfg: Mapping[str, Any],
    image_config: dict[str, Any] | None,
    text_config: dict[str, Any] | None,
) -> dict[str, Any]:
    """The converted folder's config.json: architecture from the weights, the rest from the training config."""
    model_cfg, base_cfg = train_cfg.get("model", {}), train_cfg.get("base", {})
    image_size = int(base_cfg.get("image_size", 224))
    if image_kind == "resnet":
        image = {"type": "resnet", "arch": _infer_resnet_arch(_split(tensors, "image_encoder."))}
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        model_type = model_cfg.get("image_encoder", {}).get("model_type", "swin")
        if model_type != "swin":
            raise ValueError(f"CXR-CLIP image encoder {model_type!r} is not supported. Valid: resnet, swin")
        image = {"type": "swin", "name": model_cfg.get("image_encoder", {}).get("name"),
                 "config": image_config or _infer_swin_config(_split(tensors, "image_encoder."), image_size)}
        mean, std = HF_MEAN, HF_STD
    text_cfg = model_cfg.get("text_encoder", {})
    text = {"type": "bert", "name": text_cfg.get("name", DEFAULT_TOKENIZER), "pooling": text_cfg.get("pooling", "eos"),
            "config": text_config or _infer_bert_config(_split(tensors, "text_encoder."))}
    if log_logit_scale is not None:
        logit_scale = float(log_logit_scale.float().exp())
    elif model_cfg.get("temperature"):
        logit_scale = 1.0 / float(model_cfg["temperature"])
    else:
        logger.warning("The checkpoint has no logit_scale or temperature; using a logit scale of 1")
        logit_scale = 1.0
    return {
        "format": FORMAT, "image_encoder": image, "text_encoder": text,
        "projection": {"type": "mlp" if "image_projection.fc.weight" in tensors else "linear",
                       "dim": int(tensors["image_projection.projection.weight"].shape[0])},
        "logit_scale": logit_scale, "image_size": image_size, "mean": list(mean), "std": list(std),
        "text_max_length": int(base_cfg.get("text_max_length", 256)),
        "tokenizer": {"name": train_cfg.get("tokenizer", {}).get("pretrained_model_name_or_path", text["name"])},
        "license": CXR_CLIP_LICENSE,
    }


def convert_cxr_clip_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    trust_checkpoint: bool = False,
    tokenizer: str | Path | None = None,
    image_config: Mapping[str, Any] | str | Path | None = None,
    text_config: Mapping[str, Any] | str | Path | None = None,
    overwrite: bool = False,
) -> CxrClipConversion:
    """Convert a released CXR-CLIP ``.tar`` into ``dst`` (``config.json`` + ``model.safetensors`` [+ ``tokenizer/``]).

    The released files pickle an OmegaConf config, so they load only with ``trust_checkpoint=True`` (full
    unpickling runs code from the file: use it only for files from a source you trust). Files that hold only
    tensors and plain containers convert without it. Architectures are read off the weight shapes;
    ``image_config`` / ``text_config`` (dicts or config.json paths) override the inferred Swin / BERT configs.
    ``tokenizer`` (local folder or cached Hub id; default: the checkpoint's tokenizer name) is copied into
    ``dst/tokenizer`` when it can be loaded offline.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found. Download a released CXR-CLIP checkpoint (.tar) from {RELEASES}")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ValueError(f"{dst} is not empty; choose a new folder or pass overwrite=True (--overwrite)")

    checkpoint = _read_checkpoint(src, trust_checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{src} is not a CXR-CLIP checkpoint (expected a dict, got {type(checkpoint).__name__})")
    state = {(k[len("module."):] if k.startswith("module.") else k): v
             for k, v in checkpoint.get("model", checkpoint).items() if isinstance(v, Tensor)}
    tensors, image_kind, dropped = _collect_weights(state, src)
    train_cfg = _plain(checkpoint.get("config")) or {}
    config = _describe_release(tensors, image_kind, state.get("logit_scale"), train_cfg,
                               _as_dict(image_config), _as_dict(text_config))
    config["source"] = {"file": src.name, "sha256": _sha256(src)}
    tokenizer_name = config["tokenizer"]["name"]
    build_cxr_clip_modules(config, tensors)  # validate: every weight must fit the recorded architecture

    tok = None
    try:
        tok = _load_tokenizer(tokenizer if tokenizer is not None else tokenizer_name)
    except (OSError, ValueError) as err:
        if tokenizer is not None:
            raise FileNotFoundError(f"Cannot load the tokenizer {tokenizer}: {err}") from err
        logger.warning("Tokenizer %s is not available offline; %s", tokenizer_name,
                       _tokenizer_help(dst, tokenizer_name))

    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    if tok is not None:
        tok.save_pretrained(str(dst / "tokenizer"))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt", "robust_student": FORMAT})
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")  # written last: marks a complete folder
    if dropped:
        logger.info("Dropped %d unused keys: %s", len(dropped), ", ".join(dropped[:10]))
    return CxrClipConversion(
        path=str(dst), image_encoder=config["image_encoder"].get("arch", "swin"),
        embed_dim=config["projection"]["dim"],
        logit_scale=config["logit_scale"], n_tensors=len(tensors), source_sha256=config["source"]["sha256"],
        tokenizer_saved=tok is not None, dropped_keys=dropped,
    )
