"""Knowledge distillation (Hinton, Vinyals & Dean 2015), as in MobileNetV4's recipe (Qin et al. 2024, §6).

The student matches the teacher's temperature-softened class distribution besides the labels. The KL term is
scaled by ``T²`` so its gradient magnitude does not shrink as the temperature grows (Hinton et al., §2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, alpha: float,
                      temperature: float, label_smoothing: float = 0.0) -> Tensor:
    """``(1 - alpha) · CE(student, targets) + alpha · T² · KL(teacher_T ‖ student_T)``.

    ``targets`` are class indices or (after MixUp/CutMix) per-class probabilities.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    hard = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
    return (1.0 - alpha) * hard + alpha * soft


class TeacherAdapter(nn.Module):
    """Runs a frozen teacher on the student's batch, re-normalising when the two expect different mean/std."""

    def __init__(self, teacher: nn.Module, *, student_mean: Sequence[float], student_std: Sequence[float],
                 teacher_mean: Sequence[float], teacher_std: Sequence[float]) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        s_m, s_s = torch.tensor(student_mean), torch.tensor(student_std)
        t_m, t_s = torch.tensor(teacher_mean), torch.tensor(teacher_std)
        # x_t = (x_s · s_s + s_m - t_m) / t_s  =  x_s · scale + shift
        self.register_buffer("scale", (s_s / t_s).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_m - t_m) / t_s).view(1, -1, 1, 1), persistent=False)
        self.identity = bool(torch.equal(s_m, t_m) and torch.equal(s_s, t_s))

    def train(self, mode: bool = True) -> "TeacherAdapter":  # the teacher always stays in eval mode
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if not self.identity:
            x = x * self.scale + self.shift
        return self.teacher(x)
