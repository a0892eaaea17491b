"""The one error type users see: a clear one-line message, exit code 2 from the CLI."""
from __future__ import annotations


class ModelGlueError(Exception):
    """Bad input or a failed precondition. The message is shown to the user as one line."""

    exit_code = 2
