"""Train the built-in ``fmnist-clip`` teacher: a small open_clip CLIP on Fashion-MNIST image/caption pairs.

Captions are the FASHION_MNIST prompt set's templates x class synonyms (robust_student/data/prompts.py), so
the zero-shot evaluation uses exactly the captions seen in training. Because many images share one caption
set, the contrastive loss treats every caption of an image's class as a positive (UniCL, Yang et al. 2022),
instead of CLIP's one-hot pairing that would push same-class pairs apart. Data: the 55k ``train`` split;
model selection on ``val`` (5k held out of the official training set); ``test`` is evaluated once, at the end,
for the record only.

Writes an open_clip ``local-dir`` folder (open_clip_config.json + fp16 open_clip_model.safetensors) and
``training.json`` (settings, seed, per-epoch log, training time, val/test accuracy of the shipped weights).

    .venv/bin/python scripts/train_fmnist_clip.py            # defaults = the shipped weights
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robust_student.data import build_dataset
from robust_student.teachers.open_clip import OpenClipTeacher, create_open_clip_teacher, export_local_dir
from robust_student.data.prompts import FASHION_MNIST, format_prompt
from robust_student.teachers.zeroshot import zero_shot_accuracy

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "robust_student" / "teachers" / "weights" / "fmnist-clip"
log = logging.getLogger("train_fmnist_clip")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="local-dir folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (1: on shared cores, 2 OpenMP threads ran 5x slower)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.01, help="final lr / lr of the cosine schedule")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--shift", type=int, default=2, help="random translation (pixels) augmentation")
    p.add_argument("--hflip", type=float, default=0.0, help="horizontal flip probability")
    # architecture (open_clip CLIP config)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--head-width", type=int, default=32)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--pool-type", default="avg", choices=["avg", "tok"])
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--text-heads", type=int, default=2)
    p.add_argument("--context-length", type=int, default=32)
    p.add_argument("--log-every", type=int, default=50, help="log every N steps")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    return p.parse_args(argv)


def model_config(args: argparse.Namespace) -> dict:
    return {
        "embed_dim": args.embed_dim,
        "vision_cfg": {"image_size": 28, "patch_size": args.patch_size, "width": args.width, "layers": args.layers,
                       "head_width": args.head_width, "mlp_ratio": args.mlp_ratio, "pool_type": args.pool_type},
        "text_cfg": {"context_length": args.context_length, "vocab_size": 49408, "width": args.text_width,
                     "heads": args.text_heads, "layers": args.text_layers},
    }


def captions() -> tuple[list[str], torch.Tensor]:
    """Every (template, synonym) caption of every class, with its class index."""
    texts, classes = [], []
    for c, synonyms in enumerate(FASHION_MNIST.classnames):
        for s in synonyms:
            for t in FASHION_MNIST.templates:
                texts.append(format_prompt(t, s))
                classes.append(c)
    return texts, torch.tensor(classes)


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 28, 28] and labels [N] of a Fashion-MNIST split, through the package's dataset."""
    ds = build_dataset("fashion-mnist", split)
    return ds.images, torch.tensor(ds.targets())


def augment(x: torch.Tensor, shift: int, hflip: float, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (zero padding) and horizontal flips, per sample."""
    b, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift))
        oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        x = padded[torch.arange(b)[:, None, None], rows, cols]
    if hflip > 0:
        flip = torch.rand(b, generator=gen) < hflip
        x = torch.where(flip[:, None, None], x.flip(-1), x)
    return x


def unicl_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor,
               caption_class: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss where every caption of an image's class is a positive."""
    logits = scale * img @ txt.t()  # [B, T]
    pos = (labels[:, None] == caption_class[None, :]).float()
    i2t = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    pos_t = pos.t()
    has_pos = pos_t.sum(1) > 0
    t2i = -(pos_t / pos_t.sum(1, keepdim=True).clamp(min=1) * logits.t().log_softmax(1)).sum(1)[has_pos].mean()
    return (i2t + t2i) / 2


def evaluate(model, tokenizer, mean: float, std: float, split: str, limit: int | None = None) -> float:
    """Zero-shot accuracy through the real Teacher code path (a frozen copy of the model)."""
    teacher = OpenClipTeacher(copy.deepcopy(model), tokenizer, name="fmnist-clip", license="Apache-2.0",
                              input_size=28, mean=(mean,) * 3, std=(std,) * 3)
    teacher.set_classes(FASHION_MNIST.classnames, FASHION_MNIST.templates)
    ds = build_dataset("fashion-mnist", split)
    if limit is not None:
        ds = ds.subset(range(limit))
    return zero_shot_accuracy(teacher, ds, batch_size=500)


def main(argv: list[str] | None = None) -> int:
    import open_clip
    from open_clip.model import CLIP

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    images, labels = load_split("train")
    pixels = images.float().div(255.0)
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    log.info("train: %d images, mean %.4f std %.4f", len(labels), mean, std)

    cfg = model_config(args)
    model = CLIP(**copy.deepcopy(cfg))
    open_clip.model.set_model_preprocess_cfg(model, {"size": 28, "mean": (mean,) * 3, "std": (std,) * 3,
                                                    "interpolation": "bilinear", "resize_mode": "squash"})
    tokenizer = open_clip.SimpleTokenizer(context_length=args.context_length)
    texts, caption_class = captions()
    tokens = tokenizer(texts)
    log.info("model: %.2f M params (image tower %.0f k), %d captions",
             sum(p.numel() for p in model.parameters()) / 1e6,
             sum(p.numel() for p in model.visual.parameters()) / 1e3, len(texts))

    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "embedding" in n or "logit_scale" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    steps_per_epoch = len(labels) // args.batch_size
    total = steps_per_epoch * args.epochs

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    history, best = [], {"val": -1.0, "epoch": -1, "state": None}
    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        epoch_start, running = time.perf_counter(), 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = augment(pixels[idx], args.shift, args.hflip, gen)
            x = ((x - mean) / std)[:, None].expand(-1, 3, -1, -1)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            img = F.normalize(model.encode_image(x), dim=-1)
            txt = F.normalize(model.encode_text(tokens), dim=-1)
            loss = unicl_loss(img, txt, model.logit_scale.exp(), labels[idx], caption_class)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            running += loss.item()
            step += 1
            if step % args.log_every == 0:
                log.info("step %d/%d  loss %.4f  lr %.2e  %.2f s/step", step, total, loss.item(), lr_at(step - 1),
                         (time.perf_counter() - epoch_start) / (i + 1))
        model.eval()
        val = evaluate(model, tokenizer, mean, std, "val")
        entry = {"epoch": epoch + 1, "loss": running / steps_per_epoch, "val_accuracy": val,
                 "logit_scale": model.logit_scale.exp().item(), "epoch_seconds": time.perf_counter() - epoch_start}
        history.append(entry)
        log.info("epoch %d  loss %.4f  val %.4f  scale %.1f  %.0f s", entry["epoch"], entry["loss"], val,
                 entry["logit_scale"], entry["epoch_seconds"])
        if val > best["val"]:
            best = {"val": val, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
    train_seconds = time.perf_counter() - start

    model.load_state_dict(best["state"])
    out = export_local_dir(model, cfg, args.out, dtype=torch.float16)
    # Re-load the shipped fp16 files through open_clip's loader and measure what users will get.
    shipped = create_open_clip_teacher(f"local-dir:{out}", name="fmnist-clip", license="Apache-2.0", input_size=28)
    shipped.set_classes(FASHION_MNIST.classnames, FASHION_MNIST.templates)
    val_acc = zero_shot_accuracy(shipped, build_dataset("fashion-mnist", "val"), batch_size=500)
    test_acc = None if args.no_test else zero_shot_accuracy(shipped, build_dataset("fashion-mnist", "test"),
                                                            batch_size=500)
    record = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "model_cfg": cfg,
        "normalization": {"mean": mean, "std": std},
        "data": {"dataset": "fashion-mnist", "train_split": "train", "n_train": int(len(labels)),
                 "selection_split": "val", "captions": len(texts), "prompt_set": FASHION_MNIST.name},
        "best_epoch": best["epoch"],
        "train_seconds": round(train_seconds, 1),
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "weights_bytes": (out / "open_clip_model.safetensors").stat().st_size,
        "history": history,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "open_clip": open_clip.__version__},
        "license": {"weights": "Apache-2.0", "data": "MIT (Fashion-MNIST, Zalando Research)"},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("best epoch %d: val %.4f test %s, %.0f s, weights %.2f MB -> %s", best["epoch"], val_acc,
             "skipped" if test_acc is None else f"{test_acc:.4f}", train_seconds, record["weights_bytes"] / 1e6, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
