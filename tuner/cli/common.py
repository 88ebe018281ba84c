"""What every verb module of the CLI shares: the error a user can fix."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad path, bad data, bad option): printed as one line, exit code 2."""
