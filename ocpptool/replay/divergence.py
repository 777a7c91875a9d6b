"""The divergence report: what the live peer did differently from the recording (pure).

Inputs are, per charge point, the recorded exchanges of one side paired with what happened live
(:class:`Live`), and the actions of the calls the other side made, recorded and live. Kinds:

* ``status``: another ``status`` value in the answer (e.g. ``idTagInfo.status`` Accepted -> Blocked);
* ``error``: a CALLERROR where the recording had a CALLRESULT, the other way round, or another error code;
* ``missing-response``: the recording was answered, live it was not (within the response timeout);
* ``missing-call`` / ``extra-call``: the peer's own calls, compared as action sequences (a diff);
* ``slow``: latency above ``slow_factor`` x the recorded latency and above ``slow_floor_ms``.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any

from .plan import Exchange, status_values


@dataclass
class Live:
    """What happened live to one CALL this replay sent."""

    answer: str | None  #: "result", "error" or None (no answer before the timeout)
    payload: dict[str, Any] | None = None
    error_code: str | None = None
    latency_ms: float | None = None
    message_id: str | None = None


@dataclass
class Divergence:
    charge_point_id: str
    kind: str
    action: str
    recorded: str
    live: str
    message_id: str | None = None  #: live message id of the call concerned

    def line(self) -> str:
        return f"{self.charge_point_id}: {self.kind} {self.action}: recorded {self.recorded}, live {self.live}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _answer_text(answer: str | None, code: str | None) -> str:
    if answer == "error":
        return f"CALLERROR {code or '?'}"
    return "CALLRESULT" if answer == "result" else "no answer"


def compare_exchange(
    cp: str, rec: Exchange, live: Live | None, *, slow_factor: float = 10.0, slow_floor_ms: float = 1000.0
) -> list[Divergence]:
    """Divergences of one sent CALL against its recorded exchange."""
    out: list[Divergence] = []
    mid = live.message_id if live else None
    if live is None:  # the replay never got to send it
        return [Divergence(cp, "not-sent", rec.action, _answer_text(rec.answer, rec.error_code), "not sent")]
    if live.answer is None:
        if rec.answer is not None:
            out.append(Divergence(cp, "missing-response", rec.action,
                                  _answer_text(rec.answer, rec.error_code), "no answer", mid))
        return out
    if rec.answer is None:
        return out  # the recording had no answer: anything live is better, not a divergence
    if rec.answer != live.answer or (rec.answer == "error" and rec.error_code != live.error_code):
        out.append(Divergence(cp, "error", rec.action, _answer_text(rec.answer, rec.error_code),
                              _answer_text(live.answer, live.error_code), mid))
    elif rec.answer == "result":
        a, b = status_values(rec.answer_payload), status_values(live.payload)
        if a != b:
            out.append(Divergence(cp, "status", rec.action, "/".join(a) or "(none)", "/".join(b) or "(none)", mid))
    if (
        live.latency_ms is not None
        and live.latency_ms > slow_floor_ms
        and live.latency_ms > slow_factor * (rec.latency_ms or 0.0)
    ):
        out.append(Divergence(cp, "slow", rec.action, f"{rec.latency_ms or 0:.0f} ms", f"{live.latency_ms:.0f} ms", mid))
    return out


def compare_calls(cp: str, recorded: list[str], live: list[str]) -> list[Divergence]:
    """The peer's own calls: recorded vs live action sequences, as missing and extra calls."""
    out: list[Divergence] = []
    sm = difflib.SequenceMatcher(a=recorded, b=live, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("delete", "replace"):
            for action in recorded[i1:i2]:
                out.append(Divergence(cp, "missing-call", action, "called", "not called"))
        if tag in ("insert", "replace"):
            for action in live[j1:j2]:
                out.append(Divergence(cp, "extra-call", action, "not called", "called"))
    return out


def summarise(divs: list[Divergence]) -> dict[str, int]:
    """Counts by kind, for the end-of-run line and the JSON report."""
    counts: dict[str, int] = {}
    for d in divs:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    return dict(sorted(counts.items()))
