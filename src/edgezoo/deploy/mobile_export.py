"""Export to the phone runtimes — LiteRT ``.tflite``, ExecuTorch ``.pte``, Core ML ``.mlpackage`` — with checks.

:func:`export_mobile` (reached through :func:`edgezoo.deploy.export_model` with ``format="tflite"|"executorch"|
"coreml"``) builds the mobile form of the model (:mod:`edgezoo.deploy.mobile`), converts it, writes the artifact
atomically, then reloads what was written and checks it:

* LiteRT and ExecuTorch run on Linux: the artifact runs on the example input and its outputs are compared to eager
  PyTorch (max |diff| relative to the output scale); the XNNPACK partition count and the op kinds left outside
  XNNPACK are reported;
* Core ML runs on Apple systems only: input/output names and shapes, MIL op list and size are checked, and parity
  where coremltools can predict (macOS).

int8 needs calibration images, preprocessed exactly as the model's inputs (:func:`calibration_images` builds them
from the bundled digits or an image folder with the model's own evaluation transform). An int8 artifact is
compared with the fp32 model on those images too; its error is a quantization error, not a conversion bug, so it
is reported, not held to the fp32 tolerance.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .export import ExportResult, _check_writable, rel_diff
from .mobile import MOBILE_FORMATS, InputSpec, input_spec, mobile_form, require_runtime

PARITY_TOL = 1e-4


def int8_refusal(model: nn.Module, format: str) -> str | None:
    """Why ``format``'s int8 path must not be used for ``model`` (a known wrong result), or ``None``.

    Nothing is refused today. ViT through ExecuTorch was (outputs 0.3-0.8 of the output scale away from fp32 on
    digits images) until its int8 form kept the LayerNorm steps and residual stream in float
    (:func:`edgezoo.deploy.executorch._quantize`); the hook stays for the next such case.
    """
    return None


def export_mobile(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str,
    example_input: Tensor,
    int8: bool = False,
    calibration: Tensor | None = None,
    spec: InputSpec | None = None,
    check: bool = True,
    threads: int | None = None,
) -> ExportResult:
    """Write ``model`` as a ``format`` artifact at ``path`` and check it (see the module docstring).

    ``spec`` describes the input for the artifact's metadata (default: the model's ``default_cfg`` mean/std at
    ``example_input``'s shape). ``int8`` requires ``calibration``: ``(N, C, H, W)`` images shaped like
    ``example_input``. ``ExportResult.details`` holds ``partitions`` and ``outside`` (LiteRT/ExecuTorch),
    ``structure`` (Core ML) and ``int8``.
    """
    if format not in MOBILE_FORMATS:
        raise ValueError(f"format must be one of {list(MOBILE_FORMATS)}, got {format!r}")
    if not isinstance(example_input, Tensor) or example_input.dim() != 4 or example_input.shape[0] != 1:
        raise ValueError(f"example_input must be a (1, C, H, W) tensor, got {getattr(example_input, 'shape', example_input)!r}")
    if not isinstance(int8, bool):
        raise TypeError(f"int8 must be a bool, got {int8!r}")
    if int8 and format != "coreml":
        if calibration is None:
            raise ValueError(f"int8 export to {format} needs calibration images (calibration=(N, C, H, W) tensor); "
                             "none were given")
        if not isinstance(calibration, Tensor) or calibration.dim() != 4 or calibration.shape[1:] != example_input.shape[1:]:
            raise ValueError(f"calibration must be (N, {', '.join(map(str, example_input.shape[1:]))}) images like "
                             f"example_input, got {getattr(calibration, 'shape', calibration)!r}")
    if int8:
        why = int8_refusal(model, format)
        if why:
            raise ValueError(why)
    require_runtime(format)
    path = Path(path)
    _check_writable(path)
    from ..checkpoint import atomic_write_bytes

    model = model.eval()
    example = example_input.detach().float().contiguous()
    spec = spec or input_spec(model, example)
    metadata = spec.as_dict()
    metadata["precision"] = ("int8 weights, float16 compute" if format == "coreml" else "int8 (static PT2E)") if int8 \
        else ("float16 compute" if format == "coreml" else "float32")
    with torch.no_grad():
        expected = model(example)
    form = mobile_form(model, example)
    calib = calibration.detach().float() if (int8 and calibration is not None) else None
    details: dict = {"int8": int8}

    if format == "coreml":
        from . import coreml

        mlmodel = coreml.convert(form, example, metadata=metadata, int8=int8)
        coreml.save(mlmodel, path)
        if not check:
            return ExportResult(path, format, None, None, details)
        result = coreml.check(path, example, expected)
        details["structure"] = result.summary()
        details["ops"] = result.ops
        problems = []
        if list(result.inputs) != ["input"] or result.inputs["input"] != list(example.shape):
            problems.append(f"inputs {result.inputs}")
        if list(result.outputs) != ["logits"]:
            problems.append(f"outputs {result.outputs}")
        details["problems"] = problems
        checker = "coremltools (structure)" if result.rel_diff is None else "Core ML"
        return ExportResult(path, format, result.rel_diff, checker, details)

    if format == "tflite":
        from . import litert as backend

        artifact = backend.convert(form, example, metadata=metadata, calibration=calib)
        checker = "LiteRT interpreter (XNNPACK)"
    else:
        from . import executorch as backend

        artifact = backend.lower(form, example, metadata=metadata, calibration=calib)
        checker = "ExecuTorch runtime (XNNPACK)"
    atomic_write_bytes(path, artifact.data)
    details.update(partitions=artifact.partitions, outside=artifact.outside)
    if not check:
        return ExportResult(path, format, None, None, details)
    run = backend.runner(path.read_bytes(), threads)
    diff = rel_diff(run(example), expected)
    if int8:
        details["int8_rel_diff"] = diff
        with torch.no_grad():
            imgs = calib[:32]
            agree = sum(int(run(x[None]).argmax(1) == model(x[None]).argmax(1)) for x in imgs)
        details["top1_agreement"] = agree / len(imgs)
    return ExportResult(path, format, diff, checker, details)


def artifact_runner(path: str | os.PathLike, format: str, threads: int | None = None):
    """A callable running a saved ``.tflite`` or ``.pte`` artifact (batch-1 inputs of its exported shape)."""
    data = Path(path).read_bytes()
    if format == "tflite":
        from . import litert

        return litert.runner(data, threads)
    if format == "executorch":
        from . import executorch

        return executorch.runner(data, threads)
    raise ValueError(f"format must be 'tflite' or 'executorch' to run on this machine, got {format!r}")


def engine_runner(backend: str, model: nn.Module, example: Tensor, threads: int | None = None):
    """An fp32 LiteRT (``backend="litert"``) or ExecuTorch engine for ``model`` at ``example``'s shape (any batch),
    built in memory — what :func:`edgezoo.deploy.optimize` runs for those backends."""
    fmt = {"litert": "tflite", "executorch": "executorch"}.get(backend)
    if fmt is None:
        raise ValueError(f"backend must be 'litert' or 'executorch', got {backend!r}")
    require_runtime(fmt)
    example = example.detach().float().contiguous()
    form = mobile_form(model.eval(), example[:1])
    if fmt == "tflite":
        from . import litert

        return litert.runner(litert.convert(form, example).data, threads)
    from . import executorch

    return executorch.runner(executorch.lower(form, example).data, threads)


# --- calibration and evaluation images -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """The evaluation transform of a model or training run: resolution, mean/std, crop and interpolation."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    @classmethod
    def of(cls, model: nn.Module, img_size: int, meta: dict | None = None) -> Preprocessing:
        """From a training run's metadata when given (what it was trained with), else the model's default_cfg."""
        cfg = getattr(model, "default_cfg", None) or {}
        src = meta or {}
        return cls(
            int(img_size),
            tuple(float(v) for v in src.get("mean", cfg.get("mean", (0.485, 0.456, 0.406)))),
            tuple(float(v) for v in src.get("std", cfg.get("std", (0.229, 0.224, 0.225)))),
            float(src.get("crop_pct", cfg.get("crop_pct", 1.0))),
            str(src.get("interpolation", cfg.get("interpolation", "bicubic"))),
        )


def calibration_images(source: str, prep: Preprocessing, *, count: int = 128, split: str = "train",
                       seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(images, labels)``: up to ``count`` real images from ``source`` ("digits" or an image folder) through the
    model's evaluation transform ``prep`` — the inputs an int8 artifact will see, so its ranges fit them.

    For digits, ``split="train"`` gives calibration images and ``"val"`` the held-out images to measure accuracy on.
    """
    from ..train.data import (
        ImageFileDataset,
        TensorImageDataset,
        eval_transform,
        load_digits_split,
        scan_image_folder,
    )

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    transform = eval_transform(img_size=prep.img_size, crop_pct=prep.crop_pct, mean=prep.mean, std=prep.std,
                               interpolation=prep.interpolation)
    if source == "digits":
        x_tr, y_tr, x_va, y_va = load_digits_split()
        x, y = (x_tr, y_tr) if split == "train" else (x_va, y_va)
        ds = TensorImageDataset(x, y, transform)
    else:
        root = Path(source)
        if not root.is_dir():
            raise ValueError(f"calibration source must be 'digits' or an image folder, got {source!r}")
        folder = root / split if (root / split).is_dir() else root
        ds = ImageFileDataset(scan_image_folder(folder).samples, transform)
    if len(ds) == 0:
        raise ValueError(f"calibration source {source!r} holds no images")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    items = [ds[i] for i in order]
    return torch.stack([img for img, _ in items]), torch.tensor([label for _, label in items])


def top1(run, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy (percent) of batch-1 callable ``run`` on ``images``."""
    with torch.inference_mode():
        hits = sum(int(run(x[None]).argmax(1).item() == int(y)) for x, y in zip(images, labels))
    return 100.0 * hits / max(1, len(labels))


__all__: Sequence[str] = ("PARITY_TOL", "Preprocessing", "artifact_runner", "calibration_images", "export_mobile", "top1")
