"""What the view shows, computed outside the view: charger state, current transactions, new findings.

:class:`LiveState` follows each charge point from its frames (connected or not, OCPP version, last action,
connector statuses, the transactions running now). :class:`IncrementalAnalysis` keeps recent raw messages
per charge point and, every few seconds, runs the same detectors as ``analyze`` (through the public
``ocpptool.analysis.run``) over the charge points that had new traffic; a finding is reported once, the
first time it appears (again only if its severity changes).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import polars as pl

from ..protocol.frames import Frame, MessageType, decode
from .events import ConnEvent, Seen


@dataclass
class ChargerRow:
    """One line of the chargers table."""

    charge_point_id: str
    state: str = "connected"  # connected / closed <code> / refused
    version: str = ""
    conn: str = ""
    messages: int = 0
    last_action: str = ""
    last_ts: datetime | None = None
    statuses: dict[str, str] = field(default_factory=dict)  # connector/EVSE -> status
    transactions: dict[str, str] = field(default_factory=dict)  # transaction id -> connector/EVSE

    def cells(self) -> tuple[str, ...]:
        status = ", ".join(f"{k}:{v}" for k, v in sorted(self.statuses.items()))
        txs = ", ".join(f"{t}@{c}" for t, c in self.transactions.items())
        last = self.last_ts.strftime("%H:%M:%S") if self.last_ts else ""
        return (self.charge_point_id, self.state, txs, status, self.version, str(self.messages), self.last_action,
                last)  # fmt: skip


# what matters most first: the chargers pane is narrow and the rest scrolls
CHARGER_COLUMNS = ("charge point", "state", "transactions", "connectors", "version", "msgs", "last action",
                   "last seen")  # fmt: skip


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """A frame as the message stream shows it."""

    seen: Seen
    message_type: str  # CALL, CALLRESULT, ... or "weird" / "binary"
    message_id: str
    action: str

    def cells(self) -> tuple[str, ...]:
        s = self.seen
        return (s.ts.strftime("%H:%M:%S.%f")[:-3], s.charge_point_id, s.direction, self.message_type, self.action,
                s.text if len(s.text) <= 160 else s.text[:159] + "…")  # fmt: skip


MESSAGE_COLUMNS = ("time", "charge point", "direction", "type", "action", "frame")


def _obj(payload: str | None) -> dict[str, Any]:
    try:
        v = orjson.loads(payload or "{}")
    except orjson.JSONDecodeError:
        return {}
    return v if isinstance(v, dict) else {}


class LiveState:
    """Chargers by id, updated frame by frame (O(1) per frame; payloads parsed only for a few actions)."""

    def __init__(self) -> None:
        self.chargers: dict[str, ChargerRow] = {}
        self._calls: dict[tuple[str, str], tuple[str, str | None]] = {}  # (conn, message id) -> (action, payload)
        self.changed: set[str] = set()

    def _row(self, cp: str) -> ChargerRow:
        row = self.chargers.get(cp)
        if row is None:
            row = self.chargers[cp] = ChargerRow(cp)
        self.changed.add(cp)
        return row

    def connection(self, ev: ConnEvent) -> None:
        row = self._row(ev.charge_point_id)
        if ev.kind == "opened":
            row.state, row.conn = "connected", ev.conn
            row.version = (ev.subprotocol or "").removeprefix("ocpp")
        elif ev.conn == row.conn or ev.kind == "refused":
            row.state = f"{ev.kind} {ev.code}" if ev.code else ev.kind
            for key in [k for k in self._calls if k[0] == ev.conn]:
                del self._calls[key]

    def frame(self, seen: Seen) -> FrameInfo:
        row = self._row(seen.charge_point_id)
        row.messages += 1
        row.last_ts = seen.ts
        if not row.conn:
            row.conn = seen.conn
        if seen.subprotocol and not row.version:
            row.version = seen.subprotocol.removeprefix("ocpp")
        if seen.binary:
            return FrameInfo(seen, "binary", "", "")
        frame = decode(seen.text)
        if not isinstance(frame, Frame):
            return FrameInfo(seen, "weird", "", frame.reason)
        mt = frame.message_type
        action = frame.action or ""
        if mt in (MessageType.CALL, MessageType.SEND):
            if mt is MessageType.CALL:
                self._calls[(seen.conn, frame.message_id)] = (action, frame.payload)
                if len(self._calls) > 100_000:  # unanswered calls must not pile up forever
                    self._calls.pop(next(iter(self._calls)))
            self._on_call(row, action, _obj(frame.payload) if action in _WATCHED else {})
        else:
            call = self._calls.pop((seen.conn, frame.message_id), None)
            if call:
                action = call[0]
                if mt is MessageType.CALLRESULT and action == "StartTransaction":
                    tx = _obj(frame.payload).get("transactionId")
                    if tx is not None:
                        row.transactions[str(tx)] = str(_obj(call[1]).get("connectorId", ""))
        row.last_action = action or row.last_action
        return FrameInfo(seen, mt.name, frame.message_id, action)

    @staticmethod
    def _on_call(row: ChargerRow, action: str, p: dict[str, Any]) -> None:
        if action == "StatusNotification":
            where = p.get("connectorId") if "evseId" not in p else f"{p.get('evseId')}/{p.get('connectorId')}"
            row.statuses[str(where)] = str(p.get("status") or p.get("connectorStatus") or "")
        elif action == "StopTransaction":
            row.transactions.pop(str(p.get("transactionId")), None)
        elif action == "TransactionEvent":
            info = p.get("transactionInfo") or {}
            tx = str(info.get("transactionId"))
            if p.get("eventType") == "Ended":
                row.transactions.pop(tx, None)
            else:
                row.transactions.setdefault(tx, str((p.get("evse") or {}).get("id", "")))
        elif action == "BootNotification":
            row.transactions.clear()  # a reboot ends whatever the charger had running, as far as the view knows

    def take_changed(self) -> list[ChargerRow]:
        rows = [self.chargers[c] for c in sorted(self.changed)]
        self.changed.clear()
        return rows


_WATCHED = {"StatusNotification", "StopTransaction", "TransactionEvent", "BootNotification"}


class IncrementalAnalysis:
    """The monitor's side of the live analysis: new rows, the charge points they touch, findings reported.

    The history itself lives where the analysis runs (:func:`analyse_delta`, in the analysis child), so a
    run ships only the rows that arrived since the previous one, never the whole history.

    Every detector is per charge point or per connection, so analysing only the charge points that changed
    gives their findings; the edges of the traffic (a call just sent, a transaction just started) are judged
    against the newest time seen, as ``analyze`` judges the end of a capture. A periodic sweep over every
    charge point catches what silence reveals. Memory is bounded: the newest ``keep`` messages per charge
    point (default 5,000: days at a normal charger's rate, 80 minutes at one message a second).
    """

    def __init__(self, *, keep: int = 5_000, min_severity: str = "warning", options=None) -> None:
        self.keep = keep
        self.options = options
        self.min_rank = {"error": 0, "warning": 1, "info": 2}[min_severity]
        self.store = f"{os.getpid()}-{id(self)}"  # names this monitor's history in the analysing process
        self._new: list[tuple] = []
        self._dirty: set[str] = set()
        self._reported: set[tuple] = set()

    def add(self, seen: Seen) -> None:
        if seen.binary:
            return
        self._new.append((seen.ts, seen.source, seen.source_pos, seen.conn, seen.charge_point_id, seen.direction,
                          seen.subprotocol, seen.text))  # fmt: skip
        self._dirty.add(seen.charge_point_id)

    def pending(self) -> bool:
        return bool(self._dirty)

    def take(self, everything: bool = False) -> tuple[list[tuple], list[str] | None]:
        """(rows new since the last call, charge points to analyse; None: every one, a periodic sweep that
        re-judges the quiet ones, whose silence is itself a finding against the others' clock)."""
        new, self._new = self._new, []
        cps = None if everything else sorted(self._dirty)
        self._dirty = set()
        return new, cps

    def analyse(self, everything: bool = False) -> list[dict[str, Any]]:
        """One run here and now (tests, and the fallback without a child process)."""
        new, cps = self.take(everything)
        return self.new_findings(analyse_delta(self.store, new, cps, self.keep, self.options))

    def new_findings(self, findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The findings (dicts with the FINDINGS columns) at or above the severity floor not reported before."""
        from ..analysis.registry import SEVERITY_RANK

        new = []
        for f in findings:
            if SEVERITY_RANK.get(f["severity"], 9) > self.min_rank:
                continue
            key = (f["code"], f["charge_point_id"], f["transaction_id"], tuple(f["evidence_ids"] or ()), f["severity"])
            if key in self._reported:
                continue
            self._reported.add(key)
            new.append(f)
        return new


_RAW_COLS = ("ts", "source", "source_pos", "conn", "charge_point_id", "direction", "subprotocol", "text")


def analyse_rows(rows: list[tuple], options: Any = None) -> list[dict[str, Any]]:
    """Raw message rows (as kept by :class:`IncrementalAnalysis`) -> every finding of ``analyze``, as dicts.

    Pure and picklable: the monitor runs it in a child process, so the relays never wait for it.
    """
    if not rows:
        return []
    from ..analysis import run
    from ..sources.base import RAW_SCHEMA, conform
    from ..tables.build import build_tables

    raw = conform(pl.DataFrame(rows, schema={c: RAW_SCHEMA[c] for c in _RAW_COLS}, orient="row"))
    return run(build_tables([raw]), options, meter_values=False).findings.to_dicts()


_STORES: dict[str, dict[str, deque[tuple]]] = {}


def analyse_delta(store: str, new: list[tuple], cps: list[str] | None, keep: int, options: Any = None) -> list[dict]:
    """Add ``new`` rows to the history ``store`` (newest ``keep`` per charge point), then analyse ``cps``
    (None: all). Runs in the analysis child; picklable arguments, dict results."""
    history = _STORES.setdefault(store, {})
    for row in new:
        rows = history.get(row[4])
        if rows is None:
            rows = history[row[4]] = deque(maxlen=keep)
        rows.append(row)
    chosen = sorted(history) if cps is None else [cp for cp in cps if cp in history]
    return analyse_rows([r for cp in chosen for r in history[cp]], options)


def _worker_init() -> None:
    """The analysis child: one decode thread, few Polars threads (it shares the machine with the relays)."""
    import os

    os.environ.setdefault("OCPPTOOL_WORKERS", "1")
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
