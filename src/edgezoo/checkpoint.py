"""Safe checkpoint I/O: safetensors or ``torch.load(weights_only=True)``, atomic writes.

A ``.pth`` that needs arbitrary unpickling (i.e. could run code) is refused, never executed.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Containers used by training scripts (timm, torchvision references, Lightning, ours) around the weights.
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")
# Safetensors metadata written by `edgezoo train`: the weights describe their model, classes and preprocessing.
TRAINED_FORMAT = "edgezoo-train/1"
_TRAINED_JSON_KEYS = ("classes", "model_kwargs", "mean", "std")
_TRAINED_INT_KEYS = ("num_classes", "img_size", "in_chans", "epoch")
_TRAINED_FLOAT_KEYS = ("crop_pct", "top1")
# Files a training run directory holds, in order of preference.
RUN_DIR_WEIGHTS = ("best.safetensors", "last.safetensors")
_ZIP_MAGIC = b"PK\x03\x04"


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A weights file, or a training run directory (its ``best.safetensors``, else ``last.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        for name in RUN_DIR_WEIGHTS:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"checkpoint directory {str(p)!r} has none of {list(RUN_DIR_WEIGHTS)}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(p)!r}")
    return p


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a state dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError(f"checkpoint {str(path)!r} contains no tensors")
    # Weights saved from DistributedDataParallel / torch.compile carry a wrapper prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``-style file, safely, onto the CPU."""
    p = resolve_checkpoint_path(path)
    if p.suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"checkpoint {str(p)!r} is not a valid safetensors file: {exc}") from None
    if p.suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"checkpoint {str(p)!r} has suffix {p.suffix!r}; allowed: {list(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
        )
    expected = ("expected a state dict written by torch.save (.pth/.pt: a zip archive or a pickle) "
                "or a .safetensors file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (since 1.6) or, in the legacy format, a pickle (protocol >= 2 opens with
    # 0x80). Anything else (a text file, an image renamed .pth) would reach the unpickler and fail there with
    # an opaque KeyError/IndexError, or be mistaken for a pickle that needs unsafe loading.
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(b"\x80")):
        found = "it is empty" if not head else f"it starts with {head!r}"
        raise ValueError(f"checkpoint {str(p)!r} is not a PyTorch checkpoint ({found}); {expected}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's safe unpickler names a GLOBAL (class or function) it will not import when the file needs unsafe
        # loading; any other complaint (an unknown opcode...) means the file is not a pickle torch wrote.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln), None)
        if why is None:
            detail = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else type(exc).__name__)
            raise ValueError(f"checkpoint {str(p)!r} could not be read ({detail}); {expected}") from None
        raise ValueError(
            f"refusing to load {str(p)!r}: it needs unrestricted unpickling, which can run arbitrary code "
            f"(only tensors and plain containers are accepted). Details: {why}"
        ) from None
    except Exception as exc:  # corrupt or truncated files fail in the zip reader or the unpickler, in many ways
        detail = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise ValueError(f"checkpoint {str(p)!r} could not be read ({detail}); {expected}") from None
    return _unwrap(obj, p)


def _current_umask() -> int:
    """The process umask. Linux reports it in /proc (no side effect); elsewhere set-and-restore is the only way."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would give: an existing file keeps its own, a new one gets 0666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_current_umask()


def _atomic_target(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` with ``path``'s final mode; errors name ``path``, not the temporary."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        # mkstemp's error names its random temporary (/out/.x.onnx.k3j2.tmp), which the user never asked for.
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        # mkstemp creates the file 0600 for its own safety; the final file must get the usual umask-derived mode.
        os.fchmod(fd, _final_mode(path))
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either the old file or the complete new one, never a partial file."""
    p = Path(path)
    fd, tmp = _atomic_target(p)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file + rename."""
    p = Path(path)
    fd, tmp = _atomic_target(p)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(state_dict: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (shared/non-contiguous storage is copied, as the format requires)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def read_trained_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """Parsed metadata of weights written by ``edgezoo train`` (file or run directory); ``None`` for other weights.

    Holds ``model``, ``num_classes``, ``classes``, ``img_size``, ``in_chans``, ``model_kwargs`` (constructor
    overrides), preprocessing (``mean``, ``std``, ``crop_pct``, ``interpolation``) and ``path`` (the file read).
    """
    p = resolve_checkpoint_path(path)
    if p.suffix not in SAFETENSORS_SUFFIXES:
        return None
    try:
        raw = read_safetensors_metadata(p)
    except Exception as exc:  # corrupt header
        raise ValueError(f"checkpoint {str(p)!r} is not a valid safetensors file: {exc}") from None
    if raw.get("format") != TRAINED_FORMAT:
        return None
    meta: dict[str, Any] = dict(raw)
    try:
        for k in _TRAINED_JSON_KEYS:
            meta[k] = json.loads(raw[k])
        for k in _TRAINED_INT_KEYS:
            meta[k] = int(raw[k])
        for k in _TRAINED_FLOAT_KEYS:
            meta[k] = float(raw[k])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"checkpoint {str(p)!r} has damaged edgezoo training metadata: {exc}") from None
    if "arch_spec" in raw:  # weights of an architecture from a spec file carry the spec itself
        try:
            meta["arch_spec"] = json.loads(raw["arch_spec"])
        except ValueError as exc:
            raise ValueError(f"checkpoint {str(p)!r} has a damaged arch_spec in its metadata: {exc}") from None
    meta["path"] = str(p)
    return meta
