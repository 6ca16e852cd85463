"""CONCH (Lu et al., Nature Medicine 2024): the pathology vision-language teacher, through its official package.

CONCH cannot be loaded by stock open_clip (CoCa attentional poolers on a timm trunk, its own text tower and
tokenizer), and its code is CC-BY-NC-ND, so this adapter neither copies nor re-implements it: it calls the
``conch`` package the user installs (``pip install git+https://github.com/mahmoodlab/CONCH.git``) and wraps
the model in the :class:`Teacher` contract. The weights are gated on the Hugging Face Hub and are never bundled
or downloaded here: pass the path of ``pytorch_model.bin``, or have it in the local Hub cache.

Input contract: [0, 1] pixels; resizing to 448 px and OpenAI mean/std normalisation happen inside
:class:`Teacher`, so CONCH's ``encode_image`` is called on already-normalised pixels. Zero-shot prompts use
CONCH's ``CLASSNAME`` placeholder (handled by :func:`~robust_student.data.prompts.format_prompt`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from . import register_teacher
from .base import OPENAI_MEAN, OPENAI_STD, Teacher, take_indices

logger = logging.getLogger(__name__)

CONCH_MODEL_CFG = "conch_ViT-B-16"
CONCH_HF_REPO = "MahmoodLab/conch"
CONCH_WEIGHTS_FILE = "pytorch_model.bin"
CONCH_INSTALL = "pip install git+https://github.com/mahmoodlab/CONCH.git"
CONCH_LICENSE = "CC-BY-NC-ND-4.0"
CONCH_LICENSE_NOTE = (
    "CONCH is released under CC-BY-NC-ND 4.0 with gated-access terms: non-commercial research use only. "
    "Models trained on CONCH outputs (including students distilled from this teacher) inherit these "
    "non-commercial terms, and the CONCH weights must not be redistributed."
)
_TEXT_BATCH = 64


def _weights_help(detail: str) -> str:
    return (
        f"{detail} CONCH weights are gated and never bundled: request access at "
        f"https://huggingface.co/{CONCH_HF_REPO}, download {CONCH_WEIGHTS_FILE}, and pass its path, e.g. "
        f"create_teacher('conch:/path/to/{CONCH_WEIGHTS_FILE}') or create_teacher('conch', "
        f"checkpoint='/path/to/{CONCH_WEIGHTS_FILE}')."
    )


def resolve_conch_checkpoint(checkpoint: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Return a local CONCH weights file: an explicit path (file or folder), or the Hub cache of ``hf_hub:REPO``.

    ``None`` means ``hf_hub:MahmoodLab/conch``. The cache is only read (offline); nothing is downloaded.
    """
    spec = str(checkpoint) if checkpoint is not None else f"hf_hub:{CONCH_HF_REPO}"
    if spec.startswith(("hf_hub:", "hf-hub:")):
        repo_id = spec.split(":", 1)[1]
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
            raise FileNotFoundError(_weights_help("huggingface_hub is missing; cannot read the Hub cache.")) from None
        cached = try_to_load_from_cache(repo_id, CONCH_WEIGHTS_FILE, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
        where = f" in {cache_dir}" if cache_dir else ""
        raise FileNotFoundError(_weights_help(f"{CONCH_WEIGHTS_FILE} of {repo_id} is not in the Hub cache{where}."))
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / CONCH_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(_weights_help(f"CONCH weights not found at {path}."))
    return path


def _import_conch() -> tuple[Any, Any, Any]:
    try:
        from conch.open_clip_custom import create_model_from_pretrained, get_tokenizer, tokenize
    except ImportError as err:
        raise ImportError(
            f"The CONCH teacher needs the official `conch` package, which is not on PyPI: {CONCH_INSTALL} "
            f"(import failed: {err})"
        ) from err
    return create_model_from_pretrained, get_tokenizer, tokenize


class ConchTeacher(Teacher):
    """CONCH ViT-B/16 (448 px, 512-d) behind the Teacher contract; needs the ``conch`` package and local weights.

    Its licence (CC-BY-NC-ND 4.0, gated) is declared at registration and carried into every student's
    provenance; model cards and Hub uploads show it.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        input_size: int = 448,
        resize_inputs: bool = True,
    ) -> None:
        create_model_from_pretrained, get_tokenizer, tokenize = _import_conch()
        path = resolve_conch_checkpoint(checkpoint, cache_dir)
        logger.info("Loading CONCH from %s", path)
        model, _ = create_model_from_pretrained(CONCH_MODEL_CFG, str(path))
        scale = float(model.logit_scale.detach().float().exp())
        super().__init__(
            name="conch", embed_dim=512, input_size=input_size, mean=OPENAI_MEAN, std=OPENAI_STD,
            logit_scale=scale, license=CONCH_LICENSE, resize_inputs=resize_inputs,
        )
        self.checkpoint = str(path)
        self.model = model
        self._tokenizer = get_tokenizer()
        self._tokenize = tokenize
        self.freeze()

    def _encode_image(self, x: Tensor) -> Tensor:
        # Pixels are already normalised by Teacher.preprocess; the base class L2-normalises the result.
        return self.model.encode_image(x, proj_contrast=True, normalize=False)

    def _encode_text(self, texts: list[str]) -> Tensor:
        device = self.logit_scale.device
        chunks = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = self._tokenize(self._tokenizer, texts[start:start + _TEXT_BATCH]).to(device)
            chunks.append(self.model.encode_text(tokens, normalize=False))
        return torch.cat(chunks)

    def _head_prefixes(self) -> list[str]:
        """The contrastive image head: attentional pooler, its norm and the projection (what exists of them)."""
        names = [n for n in ("attn_pool_contrast", "ln_contrast", "proj_contrast", "proj")
                 if hasattr(self.model.visual, n)]
        if not names:
            return super()._head_prefixes()
        return [f"model.visual.{n}" for n in names]

    def _intermediates(self, x: Tensor, indices: int | Sequence[int] | None) -> dict[str, Tensor]:
        """Outputs of the timm ViT trunk's blocks as ``block_{i}`` maps [B, 768, H/16, W/16]."""
        trunk = getattr(getattr(self.model, "visual", None), "trunk", None)
        if trunk is None or not hasattr(trunk, "forward_intermediates"):
            raise NotImplementedError("this CONCH build exposes no timm trunk with forward_intermediates")
        take = take_indices(len(trunk.blocks), indices)
        maps = trunk.forward_intermediates(x, indices=take, intermediates_only=True, stop_early=True)
        return {f"block_{i}": m for i, m in zip(take, maps, strict=True)}


@register_teacher("conch", takes_arg="optional", usage="conch[:WEIGHTS]", license=CONCH_LICENSE,
                  license_url=f"https://huggingface.co/{CONCH_HF_REPO}", commercial_use=False, note=CONCH_LICENSE_NOTE)
def _create_conch(arg: str | None, **kwargs: Any) -> ConchTeacher:
    """``conch`` (Hub cache or ``checkpoint=``) or ``conch:/path/to/pytorch_model.bin``."""
    if arg is not None:
        if kwargs.get("checkpoint") not in (None, arg):
            raise ValueError(f"conch:{arg} and checkpoint={kwargs['checkpoint']!r} disagree; give one of them")
        kwargs["checkpoint"] = arg
    return ConchTeacher(**kwargs)
