"""The one base class of every error a user can fix: bad configs, files, rows, flags.

Each command catches `UserError` in one place and prints `orca-jax <command>: <message>` with exit code
1, so the message must name what is wrong (the file, the row, the field, the flag). Anything else that
escapes is a bug in orca-jax and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input that cannot be used; the message names the file, row, field or flag and says why."""
