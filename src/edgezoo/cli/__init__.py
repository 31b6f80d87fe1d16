"""Command-line entry point ``edgezoo``: a thin layer over the library.

Each command group lives in its own module exposing ``add_parsers(subparsers)``; every parser sets ``func``.
User mistakes (bad names, numbers, paths) print one line on stderr and exit 2 — never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

EXIT_USAGE = 2
_COMMAND_MODULES = ("models", "analysis", "train", "deploy", "search", "adapt")


class UserError(Exception):
    """A mistake in what the user asked for; reported as one line, exit code 2."""


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: …)`` to an option's help unless the help already says its default in words.

    Defaults of ``None`` ("not set"), ``False`` (an off switch) and suppressed ones (train's "absent" flags, whose
    help text names the recipe's default) are not shown: the value printed would say nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text.lower()
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgezoo", description="Efficient vision models: pick, understand, train and ship.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"edgezoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{mod}").add_parsers(sub)
    return parser


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: ``MemoryError``, CUDA's ``OutOfMemoryError`` or the CPU allocator's RuntimeError."""
    text = str(exc)
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if isinstance(exc, OSError) and exc.strerror and exc.filename:  # not "[Errno 2] ..."
            msg = f"{exc.strerror}: {str(exc.filename)!r}"
        else:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"edgezoo: error: {msg}\n")
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
    except OSError as exc:  # e.g. a read-only or full disk, an existing path where a folder must go
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        sys.stderr.write(f"edgezoo: error: {exc.strerror or exc}{where}\n")
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as exc:  # a request too large for this machine (sizes checked up front
        if not _out_of_memory(exc):               # where an estimate exists; this catches the rest)
            raise
        sys.stderr.write(f"edgezoo: error: out of memory ({_first_line(exc)}); "
                         "try a smaller input size or batch\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("edgezoo: interrupted\n")
        return 130
