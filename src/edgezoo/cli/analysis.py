"""Placeholder: commands of this group are being written."""
import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    return None
