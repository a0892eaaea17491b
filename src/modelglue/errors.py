"""The one error type users see: a clear one-line message, exit code 2 from the CLI."""
from __future__ import annotations

import difflib
import sys
from typing import Iterable


class ModelGlueError(Exception):
    """Bad input or a failed precondition. The message is shown to the user as one line."""

    exit_code = 2


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest of `known` (a swap of letters first: 'modles'
    is 'models'), or '' when nothing is near."""
    close = difflib.get_close_matches(str(name), sorted(set(known) - {name}), n=3)
    close.sort(key=lambda k: sorted(k) != sorted(str(name)))
    return f" (did you mean {close[0]!r}?)" if close else ""


def warn(message: str) -> None:
    """One warning line on stderr (the terminal, or the log it is redirected to)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
