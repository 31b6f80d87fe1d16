"""Patchify an image with one strided convolution (ViT, Dosovitskiy et al. 2021; MLP-Mixer, Tolstikhin et al. 2021).

Cutting the image into non-overlapping P×P patches and projecting each flattened patch with a shared linear layer is
exactly a P×P convolution with stride P; the convolution form is what every reference checkpoint stores
(``proj.weight`` of shape ``(embed_dim, in_chans, P, P)``) and what runs fastest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_patch_size(patch_size: object) -> int:
    """Validate a square patch size: a positive int."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"patch_size must be a positive int, got {patch_size!r}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    return patch_size


class PatchEmbed(nn.Module):
    """Linear embedding of non-overlapping square patches; returns the ``(B, C, H/P, W/P)`` grid of patch vectors.

    The output stays NCHW so that callers know the patch grid (needed to resize ViT's position embedding and to
    check Mixer's fixed grid); they flatten it to tokens themselves.
    """

    def __init__(self, *, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = check_patch_size(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an ``height × width`` input; raises ``ValueError`` unless both are multiples of the patch."""
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"input size {height}x{width} is not allowed: height and width must be positive multiples of the "
                f"patch size {p} (e.g. {max(p, height // p * p)}x{max(p, width // p * p)})"
            )
        return height // p, width // p

    def img_size_grid(self, img_size: tuple[int, int], *, why: str) -> tuple[int, int]:
        """Patch grid of a model's fixed ``img_size``; the ``ValueError`` says ``why`` it must fit the patches."""
        try:
            return self.grid_size(*img_size)
        except ValueError:
            raise ValueError(
                f"img_size {img_size[0]}x{img_size[1]} must be a multiple of patch_size {self.patch_size} ({why})"
            ) from None

    def forward(self, x: Tensor) -> Tensor:
        self.grid_size(x.shape[-2], x.shape[-1])
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"


def resample_patch_kernel(
    weight: Tensor, new_size: tuple[int, int], *, mode: str = "bicubic", antialias: bool = True
) -> Tensor:
    """Resize a patch-embedding kernel ``(D, C, p_h, p_w)`` to ``(D, C, *new_size)`` so tokens keep their meaning.

    FlexiViT's pseudo-inverse resize (Beyer et al. 2023, §3.4): with ``R`` the linear map that resizes a
    ``p_h×p_w`` patch to the new size (here bicubic, anti-aliased, as images are resized), the new kernel ``ŵ``
    should give a resized patch the token the old kernel gave the original, ``⟨R x, ŵ⟩ = ⟨x, w⟩``. The
    least-squares solution is ``ŵ = pinv(Rᵀ) w``; when upsampling it is exact, and it is the best match when
    shrinking. Naively resizing the kernel like an image would instead scale every token by the area ratio.
    """
    if weight.dim() != 4:
        raise ValueError(f"weight must be a (D, C, p_h, p_w) conv kernel, got shape {tuple(weight.shape)}")
    new_h, new_w = int(new_size[0]), int(new_size[1])
    if new_h < 1 or new_w < 1:
        raise ValueError(f"new_size must be positive, got {new_size!r}")
    old_h, old_w = weight.shape[-2:]
    if (old_h, old_w) == (new_h, new_w):
        return weight
    # R's columns: every one-hot old patch, resized. (p_h·p_w, 1, p_h, p_w) -> (p_h·p_w, new_h·new_w)
    basis = torch.eye(old_h * old_w, dtype=torch.float32).reshape(old_h * old_w, 1, old_h, old_w)
    resized = F.interpolate(basis, size=(new_h, new_w), mode=mode, align_corners=False, antialias=antialias)
    resize_t = resized.reshape(old_h * old_w, new_h * new_w).double()  # Rᵀ
    project = torch.linalg.pinv(resize_t)  # (new_h·new_w, p_h·p_w)
    flat = weight.detach().double().reshape(-1, old_h * old_w)  # every (out, in) channel pair's kernel as a row
    new = flat @ project.T
    return new.reshape(*weight.shape[:2], new_h, new_w).to(weight.dtype)
