"""``ocpptool monitor``: a recording proxy (or a file follower) with live state and incremental findings.

Flow (one direction): shell (:mod:`.proxy` or :mod:`.follow`) -> :class:`~.events.Seen` frames ->
:class:`~.engine.Hub` -> recorder (Open OCPP Trace JSONL, :mod:`.recorder`), live state and incremental
analysis (:mod:`.live`) -> a view (:class:`~.engine.LineView`, or the Textual app in
``ocpptool.ui.monitor_app``).
"""

from ..listen import parse_listen
from .engine import LineView, MonitorOptions, Stats, run_monitor

__all__ = ["LineView", "MonitorOptions", "Stats", "parse_listen", "run_monitor"]
