"""The replay plan: what each recorded charge point said and heard, as data (pure: no I/O, no sockets).

``build_plan(messages)`` turns a decoded messages table (anything ``ocpptool decode`` reads, filtered
with ``--cp``/``--since``/``--until``/``--action``) into one :class:`CpScript` per charge point:

* ``charger_calls``: the charger's CALLs in recorded order, each with its offset (seconds after the first
  frame of the whole plan, so chargers keep their relative timing) and the recorded answer (CALLRESULT
  payload, or CALLERROR code, or none): the answer is what the divergence report compares with.
* ``csms_calls``: the CSMS's CALLs to that charger with the charger's recorded answers: replaying as
  chargers they are the answer book for the live CSMS's calls; replaying as a CSMS they are sent.

The shells (``as_charger``, ``as_csms``) rewrite each payload just before sending it with the small pure
functions here:

* :func:`map_cp_id` (``--cp-map OLD=NEW``, ``--cp-prefix``), :func:`map_id_tags` (``--id-tag-map``);
* :func:`shift_timestamps`: every ``timestamp``/``currentTime`` style field moves by one constant, the
  replay start minus the recorded start. The constant keeps every recorded interval, so energy per hour
  and a charger's own clock drift stay as recorded; at ``--speed 10`` the timestamps follow the replay
  clock (which runs ten times faster than the wall clock) rather than the wall clock;
* :class:`TransactionIds`: 1.6 transaction ids are issued by the CSMS, so the id the live CSMS returns
  in StartTransaction.conf replaces the recorded one in every later StopTransaction, MeterValues and
  in any CSMS call that names it. A 2.0.1 ``transactionInfo.transactionId`` is chosen by the charger and is
  kept as recorded;
* :func:`fresh_message_id` or the recorded id (``--keep-message-ids``).

Anything the recording did not answer gets :func:`ocpptool.replay.defaults.default_response`, a minimal
answer valid against the official schema, and is reported as not covered.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import polars as pl

from ..protocol.actions import CP_TO_CSMS, CSMS_TO_CP

#: payload keys holding a charger or CSMS clock reading (1.6 and 2.x spellings)
TIME_KEYS = frozenset({"timestamp", "currentTime", "expiryDate", "startSchedule", "validFrom", "validTo",
                       "cacheExpiryDateTime", "retrieveDateTime", "startDateTime", "stopDateTime",
                       "oldestTimestamp", "latestTimestamp"})  # fmt: skip

#: actions whose 1.6 payload names a CSMS-issued transaction id at the top level
TX_ACTIONS_16 = frozenset({"StopTransaction", "MeterValues", "RemoteStopTransaction", "DataTransfer"})


@dataclass
class Exchange:
    """One recorded CALL and what answered it."""

    offset: float  #: seconds after the plan's first frame
    action: str
    payload: dict[str, Any]
    message_id: str
    answer: str | None  #: "result", "error" or None (never answered in the recording)
    answer_payload: dict[str, Any] | None = None
    error_code: str | None = None
    error_description: str | None = None
    latency_ms: float | None = None
    ts: datetime | None = None  #: observed time of the recorded CALL


@dataclass
class CpScript:
    """Everything one charge point did in the recording."""

    recorded_id: str
    target_id: str  #: the id used on the wire (after --cp-map / --cp-prefix)
    version: str | None
    subprotocol: str
    charger_calls: list[Exchange] = field(default_factory=list)
    csms_calls: list[Exchange] = field(default_factory=list)
    first_offset: float = 0.0  #: the charger's first frame (its connection opened just before)

    @property
    def frames(self) -> int:
        """Frames this script puts on the wire when everything is answered (calls and answers)."""
        return 2 * (len(self.charger_calls) + len(self.csms_calls))


@dataclass
class Plan:
    scripts: list[CpScript]
    start: datetime | None  #: observed time of the plan's first frame
    duration_s: float
    skipped: dict[str, int] = field(default_factory=dict)  #: what could not be replayed, by reason

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.scripts)

    def by_target(self) -> dict[str, CpScript]:
        return {s.target_id: s for s in self.scripts}


# --------------------------------------------------------------------------- rewriting (pure)


def parse_map(items: list[str] | None, option: str) -> dict[str, str]:
    """``["OLD=NEW", ...]`` -> ``{"OLD": "NEW"}``; ValueError names the option and the bad item."""
    out: dict[str, str] = {}
    for item in items or []:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"{option} {item!r}: expected OLD=NEW")
        out[old] = new
    return out


def map_cp_id(cp_id: str, cp_map: Mapping[str, str], prefix: str = "") -> str:
    """The identity a recorded charge point uses on the wire: mapped if listed, then prefixed."""
    return prefix + cp_map.get(cp_id, cp_id)


def map_id_tags(payload: Any, tag_map: Mapping[str, str]) -> Any:
    """Replace idTags (1.6 ``idTag``/``parentIdTag``, 2.x ``idToken.idToken``) listed in ``tag_map``."""
    if not tag_map:
        return payload
    if isinstance(payload, dict):
        out = {}
        for k, v in payload.items():
            if k in ("idTag", "parentIdTag", "idToken") and isinstance(v, str):
                out[k] = tag_map.get(v, v)
            else:
                out[k] = map_id_tags(v, tag_map)
        return out
    if isinstance(payload, list):
        return [map_id_tags(v, tag_map) for v in payload]
    return payload


def parse_time(text: str) -> datetime | None:
    """An OCPP timestamp (ISO 8601, ``Z`` or offset), or None if it is not one."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None
    return value if value.tzinfo else None


def format_time(value: datetime, like: str) -> str:
    """``value`` written the way ``like`` was: same fraction digits (0, 3 or 6) and ``Z`` or offset."""
    frac = like.partition(".")[2]
    digits = len(frac.rstrip("Z").split("+")[0].split("-")[0]) if frac else 0
    spec = "seconds" if digits == 0 else ("milliseconds" if digits <= 3 else "microseconds")
    text = value.isoformat(timespec=spec)
    if like.endswith("Z"):
        text = text.replace("+00:00", "Z")
    return text


def shift_timestamps(payload: Any, delta: timedelta) -> Any:
    """Move every clock field (:data:`TIME_KEYS`) by ``delta``, keeping each one's written precision."""
    if not delta:
        return payload
    if isinstance(payload, dict):
        out = {}
        for k, v in payload.items():
            if k in TIME_KEYS and isinstance(v, str):
                t = parse_time(v)
                out[k] = format_time(t + delta, v) if t is not None else v
            else:
                out[k] = shift_timestamps(v, delta) if isinstance(v, dict | list) else v
        return out
    if isinstance(payload, list):
        return [shift_timestamps(v, delta) for v in payload]
    return payload


_TIME_RE = re.compile(r'"(' + "|".join(sorted(TIME_KEYS)) + r')":\s*"([^"\\]{10,40})"')


def shift_timestamps_text(text: str, delta: timedelta) -> str:
    """:func:`shift_timestamps` on serialised JSON (one regex pass: the replay's hot path)."""
    if not delta:
        return text

    def sub(m: re.Match[str]) -> str:
        t = parse_time(m.group(2))
        return m.group(0) if t is None else f'"{m.group(1)}":"{format_time(t + delta, m.group(2))}"'

    return _TIME_RE.sub(sub, text)


class TransactionIds:
    """Recorded -> live transaction ids of one charge point (1.6: the CSMS issues them).

    :meth:`learn` is fed each StartTransaction's recorded and live answers; :meth:`rewrite` puts the live
    id into every later payload that names the recorded one. 2.x transaction ids are chosen by the
    charger and never rewritten.
    """

    def __init__(self) -> None:
        self.live: dict[Any, Any] = {}

    def learn(self, action: str, recorded: dict[str, Any] | None, live: dict[str, Any] | None) -> None:
        if action != "StartTransaction" or not recorded or not live:
            return
        old, new = recorded.get("transactionId"), live.get("transactionId")
        if old is not None and new is not None:
            self.live[old] = new

    def rewrite(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.live or action not in TX_ACTIONS_16:
            return payload
        old = payload.get("transactionId")
        if old is None or old not in self.live:
            return payload
        return {**payload, "transactionId": self.live[old]}


def fresh_message_id() -> str:
    """A new OCPP-J message id (uuid4, 36 characters: within the 36-character limit)."""
    return str(uuid.uuid4())


def payload_score(a: Any, b: Any) -> int:
    """How alike two payloads are: equal leaves count one each (used to pick the best recorded answer)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return sum(payload_score(v, b[k]) for k, v in a.items() if k in b)
    if isinstance(a, list) and isinstance(b, list):
        return sum(payload_score(x, y) for x, y in zip(a, b, strict=False))
    return 1 if a == b else 0


def best_match(candidates: list[Exchange], used: set[int], action: str, payload: Any) -> Exchange | None:
    """The recorded exchange that best answers a live CALL: same action, most alike payload, unused first.

    Ties go to the earliest unused one, so a repeated identical call walks through the recorded answers
    in order; when all are used, the best used one answers again.
    """
    best: tuple[int, int, int] | None = None
    pick = None
    for i, ex in enumerate(candidates):
        if ex.action != action:
            continue
        key = (0 if id(ex) in used else 1, payload_score(payload, ex.payload), -i)
        if best is None or key > best:
            best, pick = key, ex
    return pick


def status_values(payload: Any) -> list[str]:
    """Every ``status`` value in a payload (top level and nested, e.g. ``idTagInfo.status``), in order."""
    out: list[str] = []
    if isinstance(payload, dict):
        for k, v in payload.items():
            if k == "status" and isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict | list):
                out.extend(status_values(v))
    elif isinstance(payload, list):
        for v in payload:
            out.extend(status_values(v))
    return out


# --------------------------------------------------------------------------- building the plan


def _load(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def subprotocol_for(version: str | None) -> str:
    """The WebSocket subprotocol that carries an OCPP version (1.6 when the recording did not say)."""
    return {"1.6": "ocpp1.6", "2.0": "ocpp2.0", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}.get(version or "", "ocpp1.6")


def build_plan(
    messages: pl.DataFrame,
    *,
    cp_map: Mapping[str, str] | None = None,
    cp_prefix: str = "",
) -> Plan:
    """One script per charge point from a messages table (rows without an observed time are skipped)."""
    cp_map = cp_map or {}
    skipped: dict[str, int] = {}
    no_ts = messages.filter(pl.col("ts").is_null()).height
    if no_ts:
        skipped["no observed time"] = no_ts
    m = messages.filter(pl.col("ts").is_not_null() & pl.col("charge_point_id").is_not_null())
    calls = m.filter(pl.col("message_type") == "CALL")
    others = m.filter(~pl.col("message_type").is_in(["CALL", "CALLRESULT", "CALLERROR", "CALLRESULTERROR"]))
    if others.height:
        skipped["2.1 SEND frames"] = others.height
    if calls.is_empty():
        return Plan([], None, 0.0, skipped)
    start = m["ts"].min()
    assert isinstance(start, datetime)
    resp = m.filter(pl.col("message_type") != "CALL").select(
        pl.col("idx").alias("response_index"),
        pl.col("message_type").alias("r_type"),
        pl.col("payload").alias("r_payload"),
        pl.col("error_code").alias("r_code"),
        pl.col("error_description").alias("r_desc"),
    )
    rows = (
        calls.join(resp, on="response_index", how="left")
        .with_columns(offset=(pl.col("ts") - pl.lit(start)).dt.total_microseconds() / 1e6)
        .sort("idx")
    )
    first = m.group_by("charge_point_id").agg(
        pl.col("ts").min().alias("first"), pl.col("ocpp_version").drop_nulls().first().alias("version")
    )
    scripts: dict[str, CpScript] = {}
    for cp, first_ts, version in first.sort("first").iter_rows():
        scripts[cp] = CpScript(
            recorded_id=cp,
            target_id=map_cp_id(cp, cp_map, cp_prefix),
            version=version,
            subprotocol=subprotocol_for(version),
            first_offset=(first_ts - start).total_seconds(),
        )
    bad = 0
    for r in rows.iter_rows(named=True):
        payload = _load(r["payload"])
        if not isinstance(payload, dict) or r["action"] is None:
            bad += 1
            continue
        answer = {"CALLRESULT": "result", "CALLERROR": "error", "CALLRESULTERROR": "error"}.get(r["r_type"])
        ex = Exchange(
            offset=r["offset"], action=r["action"], payload=payload, message_id=r["message_id"] or "",
            answer=answer, answer_payload=_load(r["r_payload"]) if answer == "result" else None,
            error_code=r["r_code"], error_description=r["r_desc"], latency_ms=r["latency_ms"], ts=r["ts"],
        )  # fmt: skip
        script = scripts[r["charge_point_id"]]
        if r["direction"] == CSMS_TO_CP:
            script.csms_calls.append(ex)
        elif r["direction"] == CP_TO_CSMS:
            script.charger_calls.append(ex)
        else:
            bad += 1
    if bad:
        skipped["calls without a readable payload or direction"] = bad
    kept = [s for s in scripts.values() if s.charger_calls or s.csms_calls]
    end = m["ts"].max()
    assert isinstance(end, datetime)
    return Plan(kept, start, (end - start).total_seconds(), skipped)


def describe(plan: Plan, limit: int = 12) -> list[str]:
    """The plan as lines for ``--dry-run``: per charge point what would be sent, and when."""
    lines = [
        f"plan: {len(plan.scripts)} charge points, {plan.frames:,} frames, recorded span {plan.duration_s:,.1f} s"
        + (f" from {plan.start.isoformat()}" if plan.start else "")
    ]
    for reason, n in plan.skipped.items():
        lines.append(f"  skipped {n:,}: {reason}")
    for s in plan.scripts:
        mapped = f" as {s.target_id}" if s.target_id != s.recorded_id else ""
        lines.append(
            f"{s.recorded_id}{mapped} [{s.subprotocol}]: {len(s.charger_calls)} charger calls, "
            f"{len(s.csms_calls)} CSMS calls, first at +{s.first_offset:.3f} s"
        )
        tagged = sorted([(e.offset, "cp", e) for e in s.charger_calls] + [(e.offset, "csms", e) for e in s.csms_calls],
                        key=lambda t: t[0])
        for offset, who, ex in tagged[:limit]:
            lines.append(f"  +{offset:10.3f} s  {who:4s} {ex.action} -> {ex.answer or 'unanswered'}")
        more = len(s.charger_calls) + len(s.csms_calls) - limit
        if more > 0:
            lines.append(f"  ... {more} more")
    return lines
