"""Typed errors the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # an unexpected failure inside ocpptool
    BAD_INPUT = 2  # the user's input or options cannot be used
    FINDINGS = 3  # reserved for --fail-on
    PEER_FAILED = 4  # replay: a charge point could not reach (or stay connected to) the target


class UserError(Exception):
    """Something the user can fix; the message is one line."""
