"""Small numeric helpers shared by every family."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% of it.

    This is the channel rounding of the MobileNet V2/V3 papers (and their TF reference): hardware likes channel
    counts that are multiples of 8, and the width multiplier must never shrink a layer by more than
    ``1 - round_limit``.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def to_2tuple(value: int | Sequence[int], *, name: str = "value") -> tuple[int, int]:
    """Return ``(h, w)`` from an int or a pair; ``name`` is used in the error message."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_width_mult(width_mult: float) -> float:
    """Validate a width multiplier α: a positive real number."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)):
        raise TypeError(f"width_mult must be a positive number, got {width_mult!r}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    return float(width_mult)


def check_number(name: str, value: Any, *, low: float, high: float | None = None, open_low: bool = False) -> float:
    """Validate a real number in ``[low, high)`` (``(low, high)`` with ``open_low``; no upper bound if ``high`` is None).

    Raises ``TypeError`` for a non-number (bools included) and ``ValueError`` naming ``name``, the allowed range and
    the value otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    ok_low = value > low if open_low else value >= low
    if not ok_low or (high is not None and not value < high):
        lo = f"({low}" if open_low else f"[{low}"
        allowed = f"{lo}, {high})" if high is not None else f"{'>' if open_low else '>='} {low}"
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")
    return float(value)


def check_drop_rate(drop_rate: Any) -> None:
    """Validate a classifier dropout rate: a number in [0, 1) (``ValueError`` otherwise, non-numbers included)."""
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be a number in [0, 1), got {drop_rate!r}")
