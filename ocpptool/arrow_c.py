"""Columns the compiled extension (ocpptool/_speedups.c) hands over through the Arrow C data interface."""

from __future__ import annotations

import polars as pl


class _Capsules:
    """An (``arrow_schema``, ``arrow_array``) capsule pair as an object Polars imports (the PyCapsule interface)."""

    __slots__ = ("capsules",)

    def __init__(self, capsules: tuple[object, object]) -> None:
        self.capsules = capsules

    def __arrow_c_array__(self, requested_schema: object = None) -> tuple[object, object]:
        return self.capsules


def column(name: str, capsules: tuple[object, object]) -> pl.Series:
    """A Series named ``name`` over the extension's buffers (Polars takes them without copying)."""
    return pl.Series(name, _Capsules(capsules))
