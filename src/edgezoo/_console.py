"""One place that decides how wide rich tables print."""
from __future__ import annotations

from typing import Any

PIPED_WIDTH = 160


def table_console(*, stderr: bool = False) -> Any:
    """A rich Console for tables: the terminal's width, or 160 columns when output is piped or captured.

    rich assumes 80 columns without a terminal, which truncates every cell of a wide table (``mob…``) in logs,
    CI output and ``| tee`` — exactly where results get read later.
    """
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=PIPED_WIDTH)
    return console
