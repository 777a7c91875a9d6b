"""Billing-anomaly analysis: derived tables and a registry of small, pure detectors.

``run(tables, options) -> Analysis``: builds the derived tables (transactions, meter_values, statuses) as
lazy frames, runs every registered detector (each a pure function from an :class:`AnalysisContext` to a
LazyFrame of findings), and collects everything with one ``pl.collect_all``.
"""

from .registry import DETECTORS, FINDINGS, Analysis, AnalysisContext, Detector, Options, detector, run

__all__ = ["DETECTORS", "FINDINGS", "Analysis", "AnalysisContext", "Detector", "Options", "detector", "run"]
