"""Datasets and transforms for training: ImageFolder directories and the bundled ``digits``.

``digits`` is scikit-learn's copy of the UCI optical-recognition handwritten digits (Alpaydin & Kaynak 1998):
1,797 real 8×8 scans, 10 classes. It ships with scikit-learn, so a training run needs no download. The split is
stratified 75/25 with seed 0 — the same one ``edgezoo data digits --out DIR`` writes to disk, so training on the
bundled name and on the written folder see identical pixels.

Transforms are torchvision's v2 API on uint8 tensors: images are upsampled from their stored size straight to
the training size inside ``RandomResizedCrop`` (one resampling, not two).
"""
from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .config import DIGITS, TrainConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.25
DIGITS_CLASSES = tuple(str(d) for d in range(10))
_DIGITS_MAX_INK = 16  # load_digits stores ink as integers 0..16


# ---------------------------------------------------------------------------------------------------- digits
def load_digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train_images, train_labels, val_images, val_labels)``; images uint8 ``[N, 1, 8, 8]`` with ink bright."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / _DIGITS_MAX_INK)).astype(np.uint8)[:, None]  # N, 1, 8, 8
    x_tr, x_va, y_tr, y_va = train_test_split(
        pixels, bunch.target, test_size=DIGITS_VAL_FRACTION, stratify=bunch.target, random_state=DIGITS_SPLIT_SEED
    )
    as_t = torch.from_numpy
    return as_t(np.ascontiguousarray(x_tr)), as_t(y_tr).long(), as_t(np.ascontiguousarray(x_va)), as_t(y_va).long()


def write_digits_imagefolder(out: str | os.PathLike) -> dict[str, int]:
    """Write the digits split as ``out/{train,val}/<digit>/<index>.png`` (8×8 grayscale); returns counts."""
    from PIL import Image

    from ..checkpoint import atomic_write_bytes

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--out {str(root)!r} exists and is not a directory")
    x_tr, y_tr, x_va, y_va = load_digits_split()
    counts = {}
    for split, xs, ys in (("train", x_tr, y_tr), ("val", x_va, y_va)):
        for i, (img, label) in enumerate(zip(xs, ys)):
            buf = io.BytesIO()
            Image.fromarray(img[0].numpy(), mode="L").save(buf, format="PNG")
            atomic_write_bytes(root / split / DIGITS_CLASSES[int(label)] / f"{i:04d}.png", buf.getvalue())
        counts[split] = len(ys)
    return counts


class TensorImageDataset(Dataset):
    """In-memory uint8 images ``[N, C, H, W]`` with integer labels, transformed on access."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)  # grayscale shown to an RGB network, like ImageFolder's RGB conversion
        return (self.transform(img) if self.transform else img), int(self.labels[i])


# ---------------------------------------------------------------------------------------------- ImageFolder
@dataclass
class FolderScan:
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)


def _is_readable_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # structure and checksums, without decoding every pixel
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        return False


def scan_image_folder(root: str | os.PathLike, *, classes: Sequence[str] | None = None) -> FolderScan:
    """Find ``root/<class>/<image>``; unreadable images are skipped and listed, empty classes are an error."""
    r = Path(root)
    if not r.exists():
        raise FileNotFoundError(f"data directory not found: {str(r)!r}")
    if not r.is_dir():
        raise NotADirectoryError(f"data path {str(r)!r} is not a directory")
    found = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise ValueError(f"data directory {str(r)!r} has no class sub-directories (expected {str(r)}/<class>/<image>)")
    names = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(names)}
    scan = FolderScan(classes=names, samples=[])
    empty = []
    for cls in found:
        if cls not in index:
            continue  # the caller compares class sets and reports a mismatch
        files = sorted(p for p in (r / cls).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        good = 0
        for f in files:
            if _is_readable_image(f):
                scan.samples.append((str(f), index[cls]))
                good += 1
            else:
                scan.skipped.append(str(f))
        if good == 0:
            empty.append(cls)
    if empty:
        raise ValueError(f"class folders with no readable images in {str(r)!r}: {empty}")
    if scan.skipped:
        shown = ", ".join(scan.skipped[:3]) + (" …" if len(scan.skipped) > 3 else "")
        warnings.warn(f"skipped {len(scan.skipped)} unreadable image(s) in {str(r)!r}: {shown}", stacklevel=2)
    return scan


class ImageFileDataset(Dataset):
    """``(path, label)`` samples read with PIL as RGB; an image that fails to decode yields ``None`` (dropped)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], Tensor] | None = None) -> None:
        self.samples, self.transform = list(samples), transform
        self.failed = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as exc:  # the file changed or is truncated beyond what the scan caught
            self.failed += 1
            print(f"warning: skipping unreadable image {path!r}: {exc}", file=sys.stderr)
            return None
        return (self.transform(img) if self.transform else img), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


def skip_none_collate(batch: list[Any]) -> Any:
    """Default collation without the samples a dataset could not read."""
    from torch.utils.data import default_collate

    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    return default_collate(kept)


def take_batches(make_loader: Callable[[int], Any], n: int) -> Any:
    """Exactly ``n`` batches (``None`` batches skipped) from ``make_loader(epoch)``, a fresh pass per epoch: the
    step loop of every short fine-tune, whatever its optimizer. ``make_loader`` decides what changes between
    passes (a seed per epoch, or one generator that advances)."""
    taken, epoch = 0, 0
    while taken < n:
        before = taken
        for batch in make_loader(epoch):
            if batch is None:
                continue
            yield batch
            taken += 1
            if taken >= n:
                return
        if taken == before:
            raise ValueError("the training data yields no batches")
        epoch += 1


# ------------------------------------------------------------------------------------------------ transforms
def _interp(name: str) -> Any:
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BICUBIC)


def train_transform(cfg: TrainConfig, *, img_size: int, mean: Sequence[float], std: Sequence[float],
                    interpolation: str = "bicubic") -> Callable[[Any], Tensor]:
    """RandomResizedCrop → optional flip → optional RandAugment → float → normalise (model's mean/std)."""
    from torchvision.transforms import v2

    steps: list[Any] = [
        v2.ToImage(),
        v2.RandomResizedCrop(img_size, scale=(cfg.scale_min, 1.0), interpolation=_interp(interpolation), antialias=True),
    ]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.randaugment_ops:
        steps.append(v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def eval_transform(*, img_size: int, crop_pct: float, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bicubic") -> Callable[[Any], Tensor]:
    """Resize the short side to ``img_size / crop_pct`` and centre-crop ``img_size`` (timm's evaluation recipe)."""
    from torchvision.transforms import v2

    resize = max(img_size, int(round(img_size / crop_pct)))
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resize, interpolation=_interp(interpolation), antialias=True),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def eval_preprocessing(meta: dict[str, Any] | None = None, *, model: Any = None, img_size: int | None = None,
                       data: str = DIGITS) -> dict[str, Any]:
    """The evaluation preprocessing of a run: ``img_size``, ``crop_pct``, ``mean``, ``std``, ``interpolation``,
    ``in_chans``.

    Why one function: calibration and accuracy measured on images preprocessed unlike training are meaningless
    (an int8 guard that sees wrongly normalised images compares two broken models). ``meta`` is the metadata of a
    checkpoint written by ``edgezoo train`` (its recorded preprocessing wins; ``img_size`` may override the size);
    for a model not trained by edgezoo, the values come from ``model.default_cfg`` as training would resolve them
    (centre crop 1.0 on ``digits``, like the digits recipe).
    """
    if meta is not None:
        prep = {k: meta[k] for k in ("img_size", "crop_pct", "mean", "std", "interpolation", "in_chans")}
    elif model is not None:
        cfg = model.default_cfg
        first = cfg.get("first_conv")
        in_chans = int(model.get_submodule(first).weight.shape[1]) if first else int(cfg["input_size"][0])
        prep = {"img_size": int(cfg["input_size"][1]),
                "crop_pct": 1.0 if data == DIGITS else float(cfg.get("crop_pct", 0.875)),
                "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
                "interpolation": cfg.get("interpolation", "bicubic"), "in_chans": in_chans}
    else:
        raise ValueError("eval_preprocessing needs a checkpoint's metadata (meta=) or a model (model=)")
    if img_size is not None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8:
            raise ValueError(f"img_size must be an int >= 8, got {img_size!r}")
        prep["img_size"] = img_size
    prep["mean"], prep["std"] = tuple(float(m) for m in prep["mean"]), tuple(float(s) for s in prep["std"])
    if len(prep["mean"]) != prep["in_chans"]:  # e.g. a 1-channel model with RGB statistics: use their average
        prep["mean"] = (sum(prep["mean"]) / len(prep["mean"]),) * prep["in_chans"]
        prep["std"] = (sum(prep["std"]) / len(prep["std"]),) * prep["in_chans"]
    return prep


def preprocessing_transform(prep: dict[str, Any]) -> Callable[[Any], Tensor]:
    """The transform for :func:`eval_preprocessing`'s settings (RGB in; 1-channel models get the grey level)."""
    tf = eval_transform(img_size=prep["img_size"], crop_pct=prep["crop_pct"], mean=prep["mean"][:1] * 3
                        if prep["in_chans"] == 1 else prep["mean"], std=prep["std"][:1] * 3
                        if prep["in_chans"] == 1 else prep["std"], interpolation=prep["interpolation"])
    if prep["in_chans"] == 3:
        return tf
    if prep["in_chans"] != 1:
        raise ValueError(f"in_chans must be 1 or 3 for image files, got {prep['in_chans']}")
    return lambda img: tf(img).mean(dim=0, keepdim=True)


def batch_mixer(cfg: TrainConfig, num_classes: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """MixUp (Zhang et al. 2018) and/or CutMix (Yun et al. 2019) on a batch; ``None`` when both are off."""
    from torchvision.transforms import v2

    options = []
    if cfg.mixup_alpha > 0:
        options.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        options.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not options:
        return None
    return options[0] if len(options) == 1 else v2.RandomChoice(options)


# --------------------------------------------------------------------------------------------------- bundles
@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    classes: list[str]
    skipped: int = 0


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    from torch.utils.data import Subset

    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, sorted(order.tolist()))


def _split_layout(root: Path) -> tuple[Path, Path] | None:
    train, val = root / "train", root / "val"
    return (train, val) if train.is_dir() and val.is_dir() else None


def build_datasets(cfg: TrainConfig, *, img_size: int, mean: Sequence[float], std: Sequence[float],
                   crop_pct: float, interpolation: str = "bicubic") -> DataBundle:
    """Training and validation datasets for ``cfg.data`` with the recipe's transforms."""
    t_train = train_transform(cfg, img_size=img_size, mean=mean, std=std, interpolation=interpolation)
    t_eval = eval_transform(img_size=img_size, crop_pct=crop_pct, mean=mean, std=std, interpolation=interpolation)
    if cfg.data == DIGITS:
        x_tr, y_tr, x_va, y_va = load_digits_split()
        bundle = DataBundle(TensorImageDataset(x_tr, y_tr, t_train), TensorImageDataset(x_va, y_va, t_eval),
                            list(DIGITS_CLASSES))
    else:
        root = Path(cfg.data)
        layout = _split_layout(root) if root.is_dir() else None
        if layout is not None:
            tr, va = scan_image_folder(layout[0]), scan_image_folder(layout[1])
            if tr.classes != va.classes:
                only_tr = sorted(set(tr.classes) - set(va.classes))
                only_va = sorted(set(va.classes) - set(tr.classes))
                raise ValueError(
                    f"train/val class mismatch in {str(root)!r}: only in train: {only_tr}, only in val: {only_va}"
                )
            bundle = DataBundle(ImageFileDataset(tr.samples, t_train), ImageFileDataset(va.samples, t_eval),
                                tr.classes, len(tr.skipped) + len(va.skipped))
        else:
            scan = scan_image_folder(root)
            tr_s, va_s = split_samples(scan.samples, val_fraction=cfg.val_fraction, seed=cfg.seed, root=root)
            bundle = DataBundle(ImageFileDataset(tr_s, t_train), ImageFileDataset(va_s, t_eval), scan.classes,
                                len(scan.skipped))
    bundle.train = _subset(bundle.train, cfg.train_subset, cfg.seed)
    bundle.val = _subset(bundle.val, cfg.val_subset, cfg.seed + 1)
    return bundle


def split_samples(samples: Sequence[tuple[str, int]], *, val_fraction: float, seed: int,
                  root: Path | str = "") -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Stratified, seeded hold-out split of one folder's samples."""
    from sklearn.model_selection import train_test_split

    labels = [label for _, label in samples]
    counts = np.bincount(labels)
    if counts.min() < 2:
        raise ValueError(
            f"cannot hold out a validation split from {str(root)!r}: every class needs >= 2 images "
            f"(smallest has {int(counts.min())}); provide train/ and val/ sub-directories instead"
        )
    n_val = max(int(round(len(samples) * val_fraction)), len(counts))
    if len(samples) - n_val < len(counts):
        raise ValueError(f"val_fraction {val_fraction} leaves too few training images in {str(root)!r}")
    tr, va = train_test_split(list(samples), test_size=n_val, stratify=labels, random_state=seed)
    return list(tr), list(va)


def eval_dataset(data: str, *, classes: Sequence[str], img_size: int, crop_pct: float, mean: Sequence[float],
                 std: Sequence[float], interpolation: str = "bicubic", in_chans: int = 3,
                 split: str = "val") -> tuple[Dataset, int]:
    """The evaluation set for ``data`` labelled in the checkpoint's class order; returns ``(dataset, skipped)``.

    ``digits`` → its held-out split (``split="train"``: its training split, with the same evaluation
    preprocessing — what calibration uses, so calibration never sees the images accuracy is measured on);
    ``DIR`` with ``val/`` → that; otherwise every image under ``DIR/<class>/``.
    """
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    t_eval = preprocessing_transform({"img_size": img_size, "crop_pct": crop_pct, "mean": tuple(mean),
                                      "std": tuple(std), "interpolation": interpolation, "in_chans": in_chans})
    if data == DIGITS:
        if list(classes) != list(DIGITS_CLASSES):
            raise ValueError(f"the checkpoint's classes {list(classes)[:12]} are not the digits classes 0-9")
        x_tr, y_tr, x_va, y_va = load_digits_split()
        return (TensorImageDataset(x_va, y_va, t_eval) if split == "val" else TensorImageDataset(x_tr, y_tr, t_eval)), 0
    root = Path(data)
    folder = root / "val" if (root / "val").is_dir() else root
    if not folder.exists():
        raise FileNotFoundError(f"data directory not found: {str(folder)!r}")
    present = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"data in {str(folder)!r} has classes the checkpoint does not know: {unknown[:10]}")
    scan = scan_image_folder(folder, classes=classes)
    return ImageFileDataset(scan.samples, t_eval), len(scan.skipped)
