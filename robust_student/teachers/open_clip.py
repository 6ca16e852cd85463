"""open_clip backend: any OpenCLIP / OpenAI CLIP (and open_clip-loadable robust or medical CLIPs) as a Teacher.

Specs (``create_teacher(spec, **kwargs)``):

* ``open_clip:<arch>/<tag>`` — a built-in architecture with a pretrained tag, e.g.
  ``open_clip:ViT-B-32-quickgelu/openai`` (weights come from the Hugging Face Hub cache);
* ``open_clip:hf-hub:<org>/<repo>`` — a Hub repo holding ``open_clip_config.json`` + weights;
* ``open_clip:local-dir:<path>`` — the same layout in a local folder (never touches the network);
* ``open_clip:<arch>`` with ``pretrained="/path/to/checkpoint.(pt|bin|safetensors)"`` — a local checkpoint.

Aliases with their licences (``clip-vit-b-16``, ``fare2-vit-l-14``, ``biomedclip``, ``quiltnet-b-32`` ...) are
listed in :data:`ALIASES`. Everything is loaded by open_clip's own code; open_clip is imported lazily so that
``import robust_student`` stays light.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from . import register_teacher
from .base import OPENAI_MEAN, OPENAI_STD, Teacher, TeacherLicense

TEXT_BATCH = 256
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


class OpenClipTeacher(Teacher):
    """A frozen open_clip model behind the :class:`Teacher` contract.

    ``model`` is an open_clip ``CLIP``/``CustomTextCLIP``; ``tokenizer`` is what ``open_clip.get_tokenizer``
    returns. ``input_size``, ``mean`` and ``std`` default to the model's preprocess config, ``logit_scale`` to
    ``model.logit_scale.exp()``. ``tower_cfg`` (``{"embed_dim", "vision_cfg", "quick_gelu"}``, when known) is the
    image tower's open_clip config: a ``clip`` student built from this teacher records it, so the student
    rebuilds without the teacher's weights.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        name: str,
        license: str,
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        tower_cfg: dict[str, Any] | None = None,
    ) -> None:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = input_size if input_size is not None else _square_size(cfg.get("size", 224), name)
        embed_dim = getattr(model.visual, "output_dim", None) or int(model.text_projection.shape[-1])
        super().__init__(
            name=name,
            embed_dim=int(embed_dim),
            input_size=int(size),
            mean=tuple(mean if mean is not None else cfg.get("mean") or OPENAI_MEAN),
            std=tuple(std if std is not None else cfg.get("std") or OPENAI_STD),
            logit_scale=float(model.logit_scale.detach().float().exp().reshape(-1)[0]),
            license=license,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.tower_cfg = tower_cfg
        self.freeze()

    def tunable_tower(self) -> nn.Module:
        return self.model.visual

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    def _encode_image(self, x: Tensor) -> Tensor:
        return self.model.encode_image(x.to(self._dtype), normalize=False)

    def _encode_text(self, texts: list[str]) -> Tensor:
        device = self.logit_scale.device
        chunks = [
            self.model.encode_text(self.tokenizer(texts[i:i + TEXT_BATCH]).to(device), normalize=False)
            for i in range(0, len(texts), TEXT_BATCH)
        ]
        return torch.cat(chunks)

    def _head_prefixes(self) -> list[str]:
        """The image tower's last block and projection: ViT ``transformer.resblocks[-1]``, ``ln_post``, ``proj``;
        ModifiedResNet ``attnpool``; a timm trunk's ``head``."""
        visual = self.model.visual
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
            last = len(visual.transformer.resblocks) - 1
            names = [f"transformer.resblocks.{last}", "ln_post", "proj"]
        elif hasattr(visual, "attnpool"):
            names = ["attnpool"]
        elif hasattr(visual, "head"):
            names = ["head"]
        else:
            return super()._head_prefixes()
        return [f"model.visual.{n}" for n in names if _has_path(visual, n)]

    def _intermediates(self, x: Tensor, indices: int | Sequence[int] | None) -> dict[str, Tensor]:
        """Block outputs of open_clip's ``visual.forward_intermediates`` (NCHW maps), keyed ``block_<i>``.

        ``i`` is the absolute block index (ViT: transformer blocks; ModifiedResNet: stem + 4 stages); for a
        tower whose block count is unknown (timm trunks) the keys are numbered in output order.
        """
        visual = self.model.visual
        if not hasattr(visual, "forward_intermediates"):
            raise NotImplementedError(f"{self.name}: the image tower {type(visual).__name__} has no forward_intermediates")
        if isinstance(indices, Sequence):
            indices = list(indices)
        out = visual.forward_intermediates(x.to(self._dtype), indices=indices, intermediates_only=True,
                                           stop_early=True)
        feats = out["image_intermediates"] if isinstance(out, dict) else out
        keys = _block_indices(visual, indices) or list(range(len(feats)))
        return {f"block_{i}": f for i, f in zip(keys, feats)}


def _has_path(module: nn.Module, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(module, part):
            return False
        module = getattr(module, part)
    return module is not None


def _square_size(size: Any, name: str) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"{name}: non-square input size {tuple(size)} is not supported")
        return int(size[0])
    return int(size)


def _block_indices(visual: nn.Module, indices: int | list[int] | None) -> list[int] | None:
    from open_clip.utils import feature_take_indices

    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        count = len(visual.transformer.resblocks)
    elif all(hasattr(visual, n) for n in ("stem", "layer1", "layer4")):
        count = 5
    else:
        return None
    return list(feature_take_indices(count, indices)[0])


# -- loading ---------------------------------------------------------------------------------------------

def _how_to_get(spec: str) -> str:
    return (
        f"To get the weights for {spec!r}: (1) on a machine with network access run "
        f"`python -c \"import robust_student as rs; rs.create_teacher('{spec}')\"` (or `hf download <repo>`), "
        "which fills the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE / $HF_HOME), then copy that "
        "cache to this machine; or (2) export the model once with "
        "robust_student.teachers.open_clip.export_local_dir(model, model_cfg, '/models/name') and use "
        "'open_clip:local-dir:/models/name'; or (3) pass a local checkpoint file: "
        "create_teacher('open_clip:<arch>', pretrained='/path/to/weights.safetensors')."
    )


# Phrases in open_clip / huggingface_hub errors that mean "the weights could not be fetched".
_DOWNLOAD_FAILURES = ("HF Hub", "download", "could not be loaded", "offline", "Offline", "LocalEntryNotFound",
                      "Connection")


def _is_download_failure(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error} {error.__cause__!r}"
    return any(token in text for token in _DOWNLOAD_FAILURES)


class _QuietOpenClip(logging.Filter):
    """Drop open_clip's INFO chatter (it logs to the root logger) unless robust_student logs at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or logging.getLogger("robust_student").isEnabledFor(logging.DEBUG):
            return True
        return f"{os.sep}open_clip{os.sep}" not in record.pathname


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root, quiet = logging.getLogger(), _QuietOpenClip()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_open_clip(
    spec: str,
    *,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    **model_kwargs: Any,
) -> tuple[nn.Module, Any]:
    """Build an open_clip model and tokenizer from a spec (see module docstring) with open_clip's loaders.

    Returns ``(model, tokenizer)``. Raises ``ValueError`` for unknown architectures or tags and
    ``FileNotFoundError`` (saying how to get them) when the weights are not available locally.
    """
    import open_clip

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if spec.startswith(("hf-hub:", "local-dir:")):
        if pretrained is not None:
            raise ValueError(f"pretrained={pretrained!r} cannot be combined with {spec!r}, which carries its own weights")
        model_name, tokenizer_name = spec, spec
        if spec.startswith("local-dir:"):
            folder = Path(spec[len("local-dir:"):]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise FileNotFoundError(
                    f"{folder} has no open_clip_config.json; a local-dir folder holds open_clip_config.json and "
                    f"open_clip_model.safetensors. {_how_to_get(spec)}"
                )
            if not any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
                raise FileNotFoundError(
                    f"{folder} has open_clip_config.json but no weights file (open_clip_model.safetensors). "
                    f"{_how_to_get(spec)}"
                )
            model_name = tokenizer_name = f"local-dir:{folder}"
    else:
        arch, _, tag = spec.partition("/")
        if tag and pretrained is not None:
            raise ValueError(f"give either {spec!r} or pretrained={pretrained!r}, not both")
        pretrained = tag or pretrained
        if arch not in open_clip.list_models():
            raise ValueError(f"Unknown open_clip architecture {arch!r}. Valid names: {', '.join(open_clip.list_models())}")
        if pretrained is None:
            raise ValueError(
                f"open_clip:{arch} needs weights: write 'open_clip:{arch}/<tag>' (tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}) or pass pretrained='/path/to/file'"
            )
        is_tag = bool(open_clip.get_pretrained_cfg(arch, pretrained))
        if not is_tag and not os.path.isfile(pretrained):
            if pretrained.endswith(CHECKPOINT_SUFFIXES) or os.sep in pretrained:
                raise FileNotFoundError(f"Checkpoint file {pretrained!r} not found. {_how_to_get(f'open_clip:{arch}')}")
            raise ValueError(
                f"Unknown pretrained tag {pretrained!r} for {arch}. Valid tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}, or a checkpoint file path"
            )
        model_name, tokenizer_name = arch, arch
        model_kwargs["pretrained"] = pretrained

    try:
        with _quiet_open_clip():
            model = open_clip.create_model(model_name, cache_dir=cache_dir, require_pretrained=True,
                                           load_weights=True, **model_kwargs)
            tokenizer = open_clip.get_tokenizer(tokenizer_name, cache_dir=cache_dir)
    except (RuntimeError, OSError, ValueError) as error:
        if model_name.startswith("local-dir:") or not _is_download_failure(error):
            raise
        mode = ("HF_HUB_OFFLINE=1 is set" if offline
                else "the download failed (no network? set HF_HUB_OFFLINE=1 to fail fast without retries)")
        raise FileNotFoundError(
            f"Weights for open_clip teacher {spec!r} are not in the local Hugging Face cache and {mode}. "
            f"{_how_to_get('open_clip:' + spec)} (open_clip said: {error})"
        ) from error
    return model, tokenizer


def export_local_dir(model: nn.Module, model_cfg: dict, folder: str | os.PathLike,
                     dtype: torch.dtype | None = None) -> Path:
    """Write an open_clip ``local-dir`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``).

    ``model_cfg`` is the architecture dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); the preprocess config
    (mean/std) comes from the model. ``dtype=torch.float16`` halves the file; open_clip upcasts on load.
    """
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    if getattr(model.visual, "image_mean", None) is None:
        raise ValueError("the model has no preprocess config (mean/std); set it first with "
                         "open_clip.set_model_preprocess_cfg(model, {'size': ..., 'mean': ..., 'std': ...})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=json.loads(json.dumps(model_cfg)))
    return folder


def create_open_clip_teacher(
    spec: str,
    *,
    name: str | None = None,
    license: str | None = None,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    **model_kwargs: Any,
) -> OpenClipTeacher:
    """Load an open_clip model from ``spec`` and wrap it as a frozen :class:`OpenClipTeacher`.

    ``license`` is recorded when the teacher is built here directly; through :func:`create_teacher` the
    registry's licence (or a ``license=`` override) is recorded instead.
    """
    model, tokenizer = load_open_clip(spec, pretrained=pretrained, cache_dir=cache_dir, **model_kwargs)
    teacher = OpenClipTeacher(model, tokenizer, name=name or f"open_clip:{spec}",
                              license=license or open_clip_terms(spec).license, input_size=input_size, mean=mean,
                              std=std, tower_cfg=image_tower_config(spec, **model_kwargs))
    return teacher.to(device) if device is not None else teacher


def image_tower_config(spec: str, **model_kwargs: Any) -> dict[str, Any] | None:
    """The open_clip config of the image tower ``spec`` builds (``{"embed_dim", "vision_cfg", "quick_gelu"}``),
    from open_clip's own config lookup (built-in names, ``local-dir:`` and cached ``hf-hub:`` configs), with the
    ``force_quick_gelu`` / ``force_image_size`` overrides applied; None when it cannot be found."""
    import open_clip

    name = spec if spec.startswith(("hf-hub:", "local-dir:")) else spec.partition("/")[0]
    try:
        cfg = open_clip.get_model_config(name)
    except (OSError, ValueError, RuntimeError):  # e.g. an hf-hub config missing from the cache
        cfg = None
    if not cfg or "vision_cfg" not in cfg or "embed_dim" not in cfg:
        return None
    vision = json.loads(json.dumps(cfg["vision_cfg"]))
    if model_kwargs.get("force_image_size") is not None:
        vision["image_size"] = model_kwargs["force_image_size"]
    quick_gelu = bool(cfg.get("quick_gelu", False) or model_kwargs.get("force_quick_gelu", False))
    return {"embed_dim": int(cfg["embed_dim"]), "vision_cfg": vision, "quick_gelu": quick_gelu}


def build_image_tower(tower_cfg: dict[str, Any], image_size: int | None = None) -> nn.Module:
    """An open_clip image tower at random init from :func:`image_tower_config`'s dict (optionally resized)."""
    from open_clip.model import _build_vision_tower

    vision = dict(tower_cfg["vision_cfg"])
    if image_size is not None:
        vision["image_size"] = image_size
    return _build_vision_tower(int(tower_cfg["embed_dim"]), vision, quick_gelu=bool(tower_cfg.get("quick_gelu")))


def open_clip_terms(spec: str | None) -> TeacherLicense:
    """The licence of an open_clip spec when it is known from the spec alone: OpenAI's CLIP weights are MIT;
    other weights carry their own terms (their model card), recorded as unknown unless ``license=`` is given."""
    if spec and spec.endswith("/openai"):
        return TeacherLicense("MIT", "https://github.com/openai/CLIP/blob/main/LICENSE", True)
    return TeacherLicense(None, None, None, "the weights' own licence applies (see their model card); pass "
                                            "license=... to record it")


@register_teacher("open_clip", takes_arg=True, usage="open_clip:<arch>/<tag>|hf-hub:<repo>|local-dir:<path>",
                  terms=open_clip_terms)
def _open_clip(arg: str, **kwargs: Any) -> OpenClipTeacher:
    """Any open_clip model: ``open_clip:<arch>/<tag>``, ``open_clip:hf-hub:org/repo``, ``open_clip:local-dir:/path``."""
    return create_open_clip_teacher(arg, **kwargs)


# -- aliases ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alias:
    """A short teacher name for an open_clip spec, with the weights' licence (all of these allow commercial use)."""

    spec: str
    license: str
    description: str
    license_url: str | None = None


ALIASES: dict[str, Alias] = {
    "clip-vit-b-32": Alias("ViT-B-32-quickgelu/openai", "MIT", "OpenAI CLIP ViT-B/32"),
    "clip-vit-b-16": Alias("ViT-B-16-quickgelu/openai", "MIT", "OpenAI CLIP ViT-B/16"),
    "clip-vit-l-14": Alias("ViT-L-14-quickgelu/openai", "MIT", "OpenAI CLIP ViT-L/14"),
    "fare2-vit-l-14": Alias("hf-hub:chs20/fare2-clip", "MIT",
                            "FARE robust CLIP ViT-L/14, l-inf 2/255 (Schlarmann et al., ICML 2024)"),
    "fare4-vit-l-14": Alias("hf-hub:chs20/fare4-clip", "MIT",
                            "FARE robust CLIP ViT-L/14, l-inf 4/255 (Schlarmann et al., ICML 2024)"),
    "tecoa2-vit-l-14": Alias("hf-hub:chs20/tecoa2-clip", "MIT", "TeCoA robust CLIP ViT-L/14, l-inf 2/255"),
    "tecoa4-vit-l-14": Alias("hf-hub:chs20/tecoa4-clip", "MIT", "TeCoA robust CLIP ViT-L/14, l-inf 4/255"),
    "biomedclip": Alias("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "MIT",
                        "BiomedCLIP ViT-B/16 + PubMedBERT (needs transformers)"),
    "quiltnet-b-32": Alias("hf-hub:wisdomik/QuiltNet-B-32", "MIT", "QuiltNet CLIP ViT-B/32 for histopathology"),
    "quiltnet-b-16": Alias("hf-hub:wisdomik/QuiltNet-B-16", "MIT", "QuiltNet CLIP ViT-B/16 for histopathology"),
}


def _register_alias(alias_name: str, alias: Alias) -> None:
    def factory(arg: None, **kwargs: Any) -> OpenClipTeacher:
        kwargs.setdefault("name", alias_name)
        return create_open_clip_teacher(alias.spec, **kwargs)

    factory.__doc__ = f"{alias.description} (open_clip:{alias.spec})."
    register_teacher(alias_name, license=alias.license, license_url=alias.license_url, commercial_use=True)(factory)


for _name, _alias in ALIASES.items():
    _register_alias(_name, _alias)

__all__ = ["OpenClipTeacher", "ALIASES", "Alias", "create_open_clip_teacher", "export_local_dir", "load_open_clip",
           "image_tower_config", "build_image_tower",
           "open_clip_terms"]
