"""Trained weights that describe themselves, and the resumable training state.

A ``best.safetensors`` / ``last.safetensors`` written by a run carries, in the safetensors header metadata, what is
needed to rebuild and use the model without the run's config: model name, classes, input size, channels,
family-specific constructor overrides and preprocessing. Metadata values are strings (a safetensors rule), JSON
where structured.

The resumable state (``state.pt``) holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)`` — nothing in it can execute code.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import TRAINED_FORMAT as METADATA_FORMAT
from ..checkpoint import read_trained_metadata as read_metadata
from ..checkpoint import save_safetensors

STATE_FILE = "state.pt"


def make_metadata(*, model: str, classes: list[str], img_size: int, in_chans: int, model_kwargs: Mapping[str, Any],
                  mean: Any, std: Any, crop_pct: float, interpolation: str, weights: str, epoch: int,
                  top1: float, arch_spec: Mapping[str, Any] | None = None) -> dict[str, str]:
    meta = {
        "format": METADATA_FORMAT,
        "model": model,
        "num_classes": str(len(classes)),
        "classes": json.dumps(list(classes)),
        "img_size": str(int(img_size)),
        "in_chans": str(int(in_chans)),
        "model_kwargs": json.dumps(dict(model_kwargs), sort_keys=True),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "crop_pct": repr(float(crop_pct)),
        "interpolation": interpolation,
        "weights": weights,
        "epoch": str(int(epoch)),
        "top1": f"{float(top1):.4f}",
    }
    if arch_spec is not None:  # the weights rebuild their architecture without the spec file
        meta["arch_spec"] = json.dumps(dict(arch_spec), sort_keys=True)
    return meta


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    save_safetensors(model.state_dict(), path, metadata=metadata)


def load_trained_model(checkpoint: str | os.PathLike, *, model: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a run directory or weights file written by ``edgezoo train``; returns ``(model, meta)``.

    ``model`` optionally names the expected architecture (an error if the checkpoint says otherwise).
    """
    from ..factory import create_model

    meta = read_metadata(checkpoint)
    if meta is None:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} carries no edgezoo training metadata (model, classes); "
            "use a file written by `edgezoo train`"
        )
    if "arch_spec" in meta:  # an architecture from a spec file: the weights carry the spec
        net = create_model(model if model is not None else meta["arch_spec"], checkpoint=meta["path"])
        return net.eval(), meta
    if model is not None and model != meta["model"]:
        raise ValueError(f"checkpoint {str(checkpoint)!r} holds model {meta['model']!r}, not {model!r}")
    net = create_model(meta["model"], checkpoint=meta["path"])  # the metadata sets classes, size and overrides
    return net.eval(), meta


# ------------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from, as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(out: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(out) / STATE_FILE
    if not p.is_file():
        return None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"resumable state {str(p)!r} could not be read: {str(exc).splitlines()[0]}") from None


def tensors_only(sd: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: v for k, v in sd.items() if isinstance(v, Tensor)}
