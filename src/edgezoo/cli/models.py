"""``edgezoo list`` and ``edgezoo summary``: browse the zoo."""
from __future__ import annotations

import argparse

from .._console import table_console
from rich.table import Table


def _count_params(name: str) -> int:
    import torch

    from ..factory import create_model

    with torch.device("meta"):  # no memory, no init cost: just shapes
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def cmd_list(args: argparse.Namespace) -> int:
    from ..registry import get_entry, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches pattern {args.pattern!r}")
    table = Table(title=f"edgezoo models matching {args.pattern!r}")
    table.add_column("name")
    table.add_column("family")
    table.add_column("params", justify="right")
    table.add_column("input size", justify="right")
    for name in names:
        entry = get_entry(name)
        _, h, w = entry.default_cfg["input_size"]
        table.add_row(name, entry.family, f"{_count_params(name) / 1e6:.2f}M", f"{h}×{w}")
    table_console().print(table)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from ..factory import create_model

    model = create_model(args.name)
    n = sum(p.numel() for p in model.parameters())
    cfg = model.default_cfg
    console = table_console()
    console.print(f"[bold]{args.name}[/bold]: {n:,} parameters, default input {cfg['input_size']}")
    table = Table(title="feature levels (features_only=True)")
    for col in ("level", "module", "channels", "reduction"):
        table.add_column(col)
    for i, f in enumerate(model.feature_info):
        table.add_row(str(i), f["module"], str(f["num_chs"]), str(f["reduction"]))
    console.print(table)
    x = torch.randn(1, *cfg["input_size"])
    with torch.inference_mode():
        out = model.eval()(x)
    console.print(f"forward {tuple(x.shape)} -> {tuple(out.shape)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models with params and default input size")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'mobilenetv4*'")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("summary", help="one model's parameters, feature levels and a test forward pass")
    p.add_argument("name", help="model name (see `edgezoo list`)")
    p.set_defaults(func=cmd_summary)
