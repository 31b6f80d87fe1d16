"""Training commands (being written). For now ``demo`` shows the zoo and one model's summary."""
import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from .models import cmd_list, cmd_summary

    cmd_list(argparse.Namespace(pattern="*"))
    return cmd_summary(argparse.Namespace(name="mobilenetv3_small_100"))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README's demo")
    p.set_defaults(func=cmd_demo)
