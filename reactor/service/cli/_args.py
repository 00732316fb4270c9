"""Argument parsing shared by the CLIs: one-line usage errors (exit 2), numbers with bounds."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence


class _UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised, not printed with the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None
          ) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status: 2 after one line on stderr, 0 after --help."""
    try:
        return parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def number(kind: Callable[[str], Any], minimum: float, *, strict: bool = False,
           maximum: float | None = None, what: str = "number") -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that is >= minimum (> with ``strict``), <= maximum."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what}: {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite {what}, not {text}")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} "
                                             f"{_fmt(minimum)}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {_fmt(maximum)}, not {text}")
        return value

    return convert
