"""Evaluate and use trained checkpoints: accuracy, per-class accuracy, confusion matrix, top-k predictions.

A checkpoint written by ``edgezoo train`` knows its model, classes and preprocessing (see
:mod:`edgezoo.train.checkpoints`), so these functions need nothing but its path.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..checkpoint import atomic_write_bytes
from ..devices import resolve_device
from .checkpoints import load_trained_model
from .data import eval_dataset, eval_preprocessing, preprocessing_transform, skip_none_collate
from .engine import Runtime, evaluate_model


def run_eval_loader(data: str = "digits", *, meta: dict[str, Any] | None = None, model: Any = None,
                    img_size: int | None = None, classes: Sequence[str] | None = None, batch_size: int = 128,
                    limit: int | None = None, split: str = "val") -> tuple[DataLoader, dict[str, Any], int]:
    """The evaluation loader of a run — the ONE place ``eval``, ``predict``, ``quantize`` and ``optimize`` get
    their images from, so calibration and accuracy use exactly the preprocessing training validated with.

    ``meta`` is a checkpoint's metadata (:func:`~edgezoo.checkpoint.read_trained_metadata`); without it the
    preprocessing comes from ``model.default_cfg`` (see :func:`eval_preprocessing`). ``limit`` keeps the first
    ``limit`` images of a fixed (seeded) shuffle, so a subset has every class; ``split="train"`` gives digits'
    training split (for calibration). ``classes=None`` for a folder without ``meta`` takes the folder's own class
    names (calibration needs no labels). Returns ``(loader, preprocessing, skipped)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    prep = eval_preprocessing(meta, model=model, img_size=img_size, data=data)
    if classes is None:
        if meta is not None:
            classes = meta["classes"]
        elif data == "digits":
            classes = [str(d) for d in range(10)]
        else:
            root = Path(data) / "val" if (Path(data) / "val").is_dir() else Path(data)
            classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    ds, skipped = eval_dataset(data, classes=classes, split=split, **prep)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        if limit < len(ds):
            from torch.utils.data import Subset

            order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit]
            ds = Subset(ds, sorted(order.tolist()))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=skip_none_collate)
    return loader, prep, skipped


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str, *, batch_size: int = 128,
                        device: str = "cpu", confusion_png: str | os.PathLike | None = None) -> dict[str, Any]:
    """Top-1/top-5 (percent), per-class accuracy and confusion matrix of a trained checkpoint on ``data``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    dev = resolve_device(device)
    model, meta = load_trained_model(checkpoint)
    classes = meta["classes"]
    loader, _, skipped = run_eval_loader(data, meta=meta, batch_size=batch_size)
    rt = Runtime(device=dev)
    model.to(rt.device)
    res = evaluate_model(model, loader, num_classes=len(classes), rt=rt)
    conf = res.pop("confusion")
    support = conf.sum(dim=1)
    per_class = {c: (100.0 * conf[i, i].item() / support[i].item() if support[i] > 0 else None)
                 for i, c in enumerate(classes)}
    result = {"top1": res["top1"], "top5": res["top5"], "n": res["n"], "loss": res["loss"], "per_class": per_class,
              "confusion": conf.tolist(), "classes": classes, "model": meta["model"], "checkpoint": meta["path"],
              "skipped": skipped}
    if confusion_png is not None:
        write_confusion_png(confusion_png, conf, classes, title=f"{meta['model']} on {data}: top-1 {res['top1']:.2f}%")
    return result


def write_confusion_png(path: str | os.PathLike, confusion: torch.Tensor, classes: Sequence[str], *,
                        title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = min(16.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), labels=list(classes), rotation=90)
        ax.set_yticks(range(n), labels=list(classes))
        peak = max(1, int(confusion.max()))
        for i in range(n):
            for j in range(n):
                v = int(confusion[i, j])
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                            color="white" if v > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def expand_image_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files as given, and every image file under each folder (recursively, sorted by path).

    An image file is one with an extension torchvision's ImageFolder reads (``.png``, ``.jpg``, ...); files given by
    name are kept whatever their extension, so an unreadable one is reported by name when it is opened.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"folder {str(p)!r} holds no image files (looked for "
                                        f"{', '.join(IMG_EXTENSIONS)} at any depth)")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image not found: {str(p)!r}")
    return out


@torch.no_grad()
def predict_images(checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike], *, topk: int = 5,
                   device: str = "cpu") -> list[dict[str, Any]]:
    """Top-``k`` ``(class, probability)`` per image, with the checkpoint's own preprocessing.

    ``images`` are image files or folders; a folder stands for every image file under it, at any depth (an
    ImageFolder's class sub-folders included), in sorted path order.
    """
    from PIL import Image

    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an int >= 1, got {topk!r}")
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not images:
        raise ValueError("no images given to predict")
    images = expand_image_paths(images)
    dev = resolve_device(device)
    model, meta = load_trained_model(checkpoint)
    model.to(dev)
    tf = preprocessing_transform(eval_preprocessing(meta))
    k = min(topk, meta["num_classes"])
    results = []
    for p in images:
        try:
            with Image.open(p) as im:
                img = im.convert("RGB")
        except Exception as exc:
            raise ValueError(f"cannot read image {str(p)!r}: {exc}") from None
        probs = model(tf(img)[None].to(dev)).float().softmax(dim=-1)[0].cpu()
        top = probs.topk(k)
        results.append({"image": str(p), "top": [(meta["classes"][i], float(v))
                                                 for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    return results
