"""From RawBatch frames to the messages, weirds and connections tables.

The per-frame rules live in :mod:`ocpptool.protocol` (the reference, pure Python). This module applies the
same rules to whole columns at once so that a day of a fleet's traffic decodes at Polars speed:

- **decode**: frames in the usual layout (``[2,"id","Action",{...}]``, ``[3,"id",{...}]``, ``[6,...]``
  with ids and actions free of escapes) are split by one regex and their payload validated as JSON in Rust;
  every other row (errors, odd spacing, escapes, anything broken) goes through
  :func:`ocpptool.protocol.decode`, so both paths give the same result (a property test checks it).
- **correlate**: per ``(conn, message_id)`` group, the common case (one CALL, at most one response,
  directions known) is resolved with joins; groups with repeats or unknown directions are replayed through
  :class:`ocpptool.protocol.Correlator`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from ..protocol import Correlator, Event, MessageType, decode
from ..protocol.actions import ALL_ACTIONS, BIDIRECTIONAL, CP_INITIATED, CP_TO_CSMS, CSMS_TO_CP
from ..protocol.frames import HEAD_PATTERN, Frame
from ..protocol.versions import ONLY_2X, ONLY_16, ONLY_21, from_subprotocol, infer
from ..sources.base import ConnMeta, SourceItem, SourceNote
from ..sources.timeparse import parse_ts
from . import schemas

TYPE_NAMES = {t.value: t.name for t in MessageType}
RESPONSES = ["CALLRESULT", "CALLERROR", "CALLRESULTERROR"]
_HEAD_WITH_ALL = "^(" + HEAD_PATTERN[1:] + ")"

_CALL_DIRECTION = {a: (CP_TO_CSMS if a in CP_INITIATED else CSMS_TO_CP) for a in ALL_ACTIONS | CP_INITIATED}
for _a in BIDIRECTIONAL:
    _CALL_DIRECTION.pop(_a, None)
_FAMILY = {**{a: "2.x" for a in ONLY_2X}, **{a: "1.6" for a in ONLY_16}, **{a: "2.1" for a in ONLY_21}}


@dataclass
class Tables:
    messages: pl.DataFrame
    weirds: pl.DataFrame
    connections: pl.DataFrame
    notes: list[str] = field(default_factory=list)  # things the user should know (time zones, dedup ...)


def _python_decode(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decode rows one by one with the reference decoder; returns (frames, weirds) with ``_r`` row keys."""
    ok: dict[str, list] = {
        k: []
        for k in (
            "_r",
            "message_type",
            "message_id",
            "action",
            "payload",
            "error_code",
            "error_description",
            "error_details",
        )
    }
    bad: dict[str, list] = {"_r": [], "reason": [], "detail": [], "excerpt": []}
    for r, text in zip(rows["_r"].to_list(), rows["text"].to_list(), strict=True):
        res = decode(text if text is not None else "")
        if isinstance(res, Frame):
            ok["_r"].append(r)
            ok["message_type"].append(res.message_type.name)
            ok["message_id"].append(res.message_id)
            ok["action"].append(res.action)
            ok["payload"].append(res.payload)
            ok["error_code"].append(res.error_code)
            ok["error_description"].append(res.error_description)
            ok["error_details"].append(res.error_details)
        else:
            bad["_r"].append(r)
            bad["reason"].append(res.reason)
            bad["detail"].append(res.detail)
            bad["excerpt"].append(res.excerpt)
    frames = pl.DataFrame(ok, schema={"_r": pl.Int64, **{k: pl.String for k in ok if k != "_r"}})
    weirds = pl.DataFrame(
        bad, schema={"_r": pl.Int64, "reason": pl.String, "detail": pl.String, "excerpt": pl.String}
    )
    return frames, weirds


_ONE_OBJECT = pl.List(pl.Struct({"\u0000": pl.Int8}))


def _bodies_valid(bodies: pl.Series) -> pl.Series:
    """True where a body is exactly one JSON value (so the frame has the right arity).

    One vectorised decode of ``[body]`` checks a whole batch in Rust; it raises if any row is broken, and
    only then do we check row by row (slower, still in Rust).
    """
    frame = bodies.to_frame("b").select(w=pl.concat_str([pl.lit("["), pl.col("b"), pl.lit("]")]))
    try:
        return (
            frame.select(pl.col("w").str.json_decode(_ONE_OBJECT).list.len() == 1)
            .to_series()
            .fill_null(False)
        )
    except pl.exceptions.PolarsError:
        w = pl.col("w")
        return (
            frame.select(
                w.str.json_path_match("$[0]").is_not_null() & w.str.json_path_match("$[1]").is_null()
            )
            .to_series()
            .fill_null(False)
        )


_KEEP = ["_r", "ts", "ts_local", "ts_hint", "source", "source_pos", "conn", "charge_point_id", "direction",
         "direction_inferred", "subprotocol", "note"]  # fmt: skip
_FRAME_COLS = ["message_type", "message_id", "action", "payload", "error_code", "error_description", "error_details"]
_WEIRD_KEEP = ["_r", "ts", "ts_local", "source", "source_pos", "conn", "charge_point_id", "direction"]


def decode_batch(raw: pl.DataFrame, log_tz: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decode one RawBatch into (messages rows without idx/correlation, weirds rows); ``_r`` keeps order.

    Written to touch the string columns as few times as possible: one lazy pass splits every envelope,
    one vectorised JSON check validates the payloads, and only rows that fail either go through Python.
    Rows a source already split and validated (``_pre``, from the compiled JSON-lines splitter) skip both.
    """
    raw = parse_ts(raw, log_tz)
    if "_pre" in raw.columns:
        return _decode_presplit(raw)
    return _decode_text(raw)


def _no_weirds(schema: pl.Schema) -> pl.DataFrame:
    """An empty weirds part of a batch (``_r`` and the kept columns typed as in ``schema``)."""
    return pl.DataFrame(schema={"_r": pl.Int64()} | {c: schema[c] for c in _WEIRD_KEEP[1:]}
                        | {"reason": pl.String, "detail": pl.String, "excerpt": pl.String})


def _decode_presplit(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A batch whose ``_pre`` rows carry their frame already split; the others are decoded from text and
    both are put back in source order."""
    pre = raw["_pre"]
    done = raw if pre.all() else raw.filter(pre)
    msgs = (
        done.with_row_index("_r")
        .with_columns(
            pl.col("_r").cast(pl.Int64),
            conn=pl.coalesce(pl.col("conn"), pl.col("charge_point_id"), pl.col("source")),
        )
        .select(*_KEEP, *_FRAME_COLS)
    )
    if done.height == raw.height:
        return msgs, _no_weirds(raw.schema)
    rest_msgs, weirds = _decode_text(raw.filter(~pre).drop("_pre", *_FRAME_COLS))
    merged = pl.concat([msgs, rest_msgs], how="vertical_relaxed").sort("source_pos", maintain_order=True)
    return merged.with_columns(_r=pl.int_range(merged.height, dtype=pl.Int64)), weirds


def _decode_text(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    h = pl.col("_h")
    hlen = h.struct.field("1").str.len_chars()
    t = pl.col("_t")
    df = raw.with_row_index("_r").with_columns(_t=pl.col("text").str.strip_chars())
    df = df.with_columns(_h=t.str.extract_groups(_HEAD_WITH_ALL))
    df = df.with_columns(
        pl.col("_r").cast(pl.Int64),
        conn=pl.coalesce(pl.col("conn"), pl.col("charge_point_id"), pl.col("source")),
        message_type=h.struct.field("2").replace_strict({"2": "CALL", "3": "CALLRESULT", "6": "SEND"}, default=None),
        message_id=h.struct.field("3"),
        action=h.struct.field("4"),
        payload=t.str.slice(hlen, t.str.len_chars() - hlen - 1).str.strip_chars_end(),
        _end=t.str.ends_with("]"),
    )
    df = df.with_columns(
        _fast=(
            pl.col("weird_reason").is_null()
            & pl.col("_end")
            & pl.col("payload").str.starts_with("{")
            & (
                (pl.col("message_type").is_in(["CALL", "SEND"]) & pl.col("action").is_not_null())
                | ((pl.col("message_type") == "CALLRESULT") & pl.col("action").is_null())
            )
        ).fill_null(False)
    )
    n_fast = int(df["_fast"].sum())
    if n_fast:
        cand = df if n_fast == df.height else df.filter(pl.col("_fast"))
        valid = _bodies_valid(cand["payload"])  # once per batch (the row-by-row fallback inside is costly)
        if not valid.all():
            bad = cand.filter(~valid)["_r"]
            df = df.with_columns(_fast=pl.col("_fast") & ~pl.col("_r").is_in(bad.implode()))
            n_fast = -1  # some rows take the reference decoder
    nulls = [pl.lit(None, pl.String).alias(c) for c in ("error_code", "error_description", "error_details")]
    if n_fast == df.height:  # the common case: every row a well-formed CALL/CALLRESULT
        msgs = df.select(*_KEEP, *_FRAME_COLS[:4], *nulls)
        return msgs, _no_weirds(df.schema)
    rest = df.filter(~pl.col("_fast"))
    pre = rest.filter(pl.col("weird_reason").is_not_null())
    slow_frames, slow_weirds = _python_decode(rest.filter(pl.col("weird_reason").is_null()).select("_r", "text"))
    # The few rows the reference decoder read are written into the batch in place (``_r`` is the row
    # position), so the batch keeps its order without a sort or a join of every column.
    msgs = df.select(*_KEEP, *_FRAME_COLS[:4], *nulls)
    keep = df["_fast"]
    if slow_frames.height:
        at = slow_frames["_r"]
        msgs = msgs.with_columns(msgs[c].scatter(at, slow_frames[c]) for c in _FRAME_COLS)
        keep = keep.scatter(at, True)
    msgs = msgs.filter(keep)
    if pre.height == 0 and slow_weirds.height == 0:
        return msgs, _no_weirds(df.schema)
    pre_w = pre.select("_r", reason=pl.col("weird_reason"), detail=pl.col("weird_detail"),
                       excerpt=pl.col("text").str.slice(0, 200))
    weirds = (
        pl.concat([pre_w, slow_weirds], how="vertical_relaxed")
        .join(rest.select(_WEIRD_KEEP), on="_r", how="left")
        .select(*_WEIRD_KEEP, "reason", "detail", "excerpt")
        .sort("_r")
    )
    return msgs, weirds


def _load_and_decode(
    batch: SourceItem, log_tz: str | None
) -> tuple[pl.DataFrame, pl.DataFrame] | ConnMeta | SourceNote:
    """Run in a worker: a source may hand over a thunk so that parsing, too, happens in parallel."""
    frame = batch() if callable(batch) else batch
    if isinstance(frame, ConnMeta | SourceNote):
        return frame
    return decode_batch(frame, log_tz)


def _order(msgs: pl.DataFrame, multi_source: bool) -> pl.DataFrame:
    """Merge several sources by time, keeping each source's own order for equal or missing times."""
    if not multi_source:
        return msgs
    src_rank = pl.col("source").rank("dense")
    key = (
        pl.coalesce(pl.col("ts"), pl.col("ts_local").dt.replace_time_zone("UTC"))
        .forward_fill()
        .over("source")
    )
    return (
        msgs.with_columns(_k=key, _s=src_rank).sort(["_k", "_s", "_seq"], nulls_last=False).drop("_k", "_s")
    )


def _correlate(msgs: pl.DataFrame) -> pl.DataFrame:
    """Fill call_index, response_index, action of responses, inferred directions and latency."""
    mt = pl.col("message_type")
    is_call, is_resp = mt == "CALL", mt.is_in(RESPONSES)
    # Group by a 64-bit hash of (conn, message_id): much faster than two string keys. A collision can only
    # merge two groups; merged groups fail the "simple" test (ids and conns compared for real) and go to the
    # exact Correlator below, so a collision costs time, never correctness.
    # A stable sort by the hash puts each group's rows next to each other in file order, so the common case
    # (a group of exactly one CALL and one response, directions known) is read off neighbouring rows.
    ev = (
        msgs.lazy()  # lazy, so that only these columns are filtered (not every column of the table)
        .select("idx", "conn", "message_id", "direction", "message_type")
        .filter(is_call | is_resp)
        .with_columns(_k=pl.struct("conn", "message_id").hash())
        .sort("_k", maintain_order=True)
        .collect()
    )
    k = pl.col("_k")

    def nxt(c: str) -> pl.Expr:
        return pl.col(c).shift(-1)

    two = (k == k.shift(-1)) & (k.shift(1) != k).fill_null(True) & (k.shift(-2) != k.shift(-1)).fill_null(True)
    simple = (
        two
        & ((is_call & nxt("message_type").is_in(RESPONSES)) | (is_resp & (nxt("message_type") == "CALL")))
        & pl.col("direction").is_not_null() & nxt("direction").is_not_null()
        & pl.col("message_id").eq_missing(nxt("message_id")) & pl.col("conn").eq_missing(nxt("conn"))
    ).fill_null(False)  # fmt: skip
    ev = ev.with_columns(
        _s=simple, _pair=simple & is_call & (pl.col("direction") != nxt("direction")), _resp=nxt("idx")
    )
    pairs_fast = ev.filter(pl.col("_pair")).select(resp=pl.col("_resp"), call=pl.col("idx"))
    # Everything else (unanswered calls, orphans, repeated ids, unknown directions) is replayed exactly.
    rest = ev.filter(~(pl.col("_s") | pl.col("_s").shift(1).fill_null(False)))
    tricky = (
        rest.group_by("_k")
        .agg(n_call=is_call.sum(), n_resp=is_resp.sum())
        .filter((pl.col("n_call") >= 1) & (pl.col("n_resp") >= 1))
        .select("_k")
    )
    resp_l: list[int] = []
    call_l: list[int] = []
    if tricky.height:
        rows = rest.join(tricky, on="_k", how="semi").sort("idx").select(
            "idx", "conn", "message_id", "direction", "message_type"
        )
        cor = Correlator()
        for idx, conn, mid, direction, mtype in rows.iter_rows():
            m = cor.feed(Event(idx, conn, direction, MessageType[mtype], mid))
            if m is not None:
                resp_l.append(idx)
                call_l.append(m.call_index)
    pairs = pl.concat(
        [
            pairs_fast,
            pl.DataFrame({"resp": resp_l, "call": call_l}, schema={"resp": pl.Int64, "call": pl.Int64}),
        ]
    )
    pairs = pairs.sort("resp")
    n = msgs.height
    resp_idx, call_idx = pairs["resp"], pairs["call"]
    nulls = pl.repeat(None, n, dtype=pl.Int64, eager=True)
    call_index = nulls.alias("call_index").scatter(resp_idx, call_idx)
    response_index = nulls.clone().alias("response_index").scatter(call_idx, resp_idx)
    out = msgs.with_columns(call_index, response_index)
    ci = pl.col("call_index")
    call_dir = pl.col("direction").gather(ci.fill_null(0))
    call_action = pl.col("action").gather(ci.fill_null(0))
    call_ts = pl.col("ts").gather(ci.fill_null(0))
    has = ci.is_not_null()
    resp_inferred = has & pl.col("direction").is_null() & call_dir.is_not_null()
    flipped = call_dir.replace_strict({CP_TO_CSMS: CSMS_TO_CP, CSMS_TO_CP: CP_TO_CSMS}, default=None)
    return out.with_columns(
        action=pl.when(has).then(pl.coalesce(pl.col("action"), call_action)).otherwise(pl.col("action")),
        direction=pl.when(resp_inferred).then(flipped).otherwise(pl.col("direction")),
        direction_inferred=pl.col("direction_inferred") | resp_inferred,
        # rounded to the microsecond: a division by a constant is otherwise off in the last bit depending on
        # how the rows are chunked (see analysis.time.seconds)
        latency_ms=pl.when(has).then(((pl.col("ts") - call_ts).dt.total_microseconds() / 1000.0).round(3)),
    )


def _versions(msgs: pl.DataFrame) -> pl.DataFrame:
    """Per connection: the subprotocol's version, else inferred from actions and payload keys."""
    by_proto = (
        msgs.lazy()
        .select("conn", "subprotocol")
        .filter(pl.col("subprotocol").is_not_null())
        .group_by("conn")
        .agg(pl.col("subprotocol").first())
        .collect()
    )
    known = {c: from_subprotocol(s) for c, s in by_proto.iter_rows()}
    unknown = [c for c, v in known.items() if v is None]
    calls = msgs.lazy().select("conn", "message_type", "action", "payload").filter(
        pl.col("message_type").is_in(["CALL", "SEND"])
        & (~pl.col("conn").is_in(list(known)) | pl.col("conn").is_in(unknown))
    ).collect()
    fam = pl.col("action").replace_strict(_FAMILY, default=None)
    keys2x = pl.col("payload").str.contains(
        r'"(?:chargingStation|evseId|idToken|connectorStatus|transactionInfo)"'
    )
    keys16 = pl.col("payload").str.contains(r'"(?:chargePointVendor|connectorId|idTag|chargePointModel)"')
    by_action = calls.select("conn", "action").unique().select("conn", fam=fam).drop_nulls().unique()
    # Shared actions say nothing by name; their payload keys do. A few per connection are enough.
    by_keys = (
        calls.filter(fam.is_null())
        .group_by("conn", maintain_order=True)
        .head(20)
        .select("conn", fam=pl.when(keys2x).then(pl.lit("2.x")).when(keys16).then(pl.lit("1.6")))
        .drop_nulls()
        .unique()
    )
    ev = pl.concat([by_action, by_keys])
    evidence: dict[str, list] = {}
    for conn, f in ev.iter_rows():
        evidence.setdefault(conn, []).append(f)
    rows = []
    for conn in msgs["conn"].unique().to_list():
        v = known.get(conn)
        rows.append((conn, v if v else infer(evidence.get(conn, [])), v is None))
    table = pl.DataFrame(
        rows,
        schema={"conn": pl.String, "ocpp_version": pl.String, "version_inferred": pl.Boolean},
        orient="row",
    )
    return table


def _connections(
    msgs: pl.DataFrame, weirds: pl.DataFrame, versions: pl.DataFrame, meta: pl.DataFrame | None
) -> pl.DataFrame:
    mt = pl.col("message_type")
    agg = msgs.group_by("conn").agg(
        source=pl.col("source").first(),
        charge_point_id=pl.col("charge_point_id").drop_nulls().first(),
        subprotocol=pl.col("subprotocol").drop_nulls().first(),
        first_ts=pl.col("ts").min(),
        last_ts=pl.col("ts").max(),
        messages=pl.len().cast(pl.Int64),
        calls=(mt == "CALL").sum().cast(pl.Int64),
        unanswered_calls=((mt == "CALL") & pl.col("response_index").is_null()).sum().cast(pl.Int64),
        orphan_responses=(mt.is_in(RESPONSES) & pl.col("call_index").is_null()).sum().cast(pl.Int64),
    )
    w = weirds.group_by("conn").agg(weirds=pl.len().cast(pl.Int64), _wsrc=pl.col("source").first())
    out = agg.join(w, on="conn", how="full", coalesce=True).join(versions, on="conn", how="left")
    if meta is not None and meta.height:
        # Capture facts first; a connection with no OCPP frame at all (non-OCPP, or empty) still gets a row.
        out = meta.join(out, on="conn", how="full", coalesce=True, suffix="_m").with_columns(
            source=pl.coalesce(pl.col("source"), pl.col("source_m")),
            charge_point_id=pl.coalesce(pl.col("charge_point_id"), pl.col("charge_point_id_m")),
            subprotocol=pl.coalesce(pl.col("subprotocol"), pl.col("subprotocol_m")),
        )
    out = out.with_columns(
        source=pl.coalesce(pl.col("source"), pl.col("_wsrc")),
        weirds=pl.col("weirds").fill_null(0),
        messages=pl.col("messages").fill_null(0),
    )
    return schemas.conform(out, schemas.CONNECTIONS).sort("first_ts", "conn", nulls_last=True)


def build_tables(
    batches: Iterable[SourceItem],
    *,
    log_tz: str | None = None,
    on_rows: Callable[[int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Tables:
    """Decode every batch, merge sources by time, correlate, and build the three tables."""
    msg_parts: list[pl.DataFrame] = []
    weird_parts: list[pl.DataFrame] = []
    meta_parts: list[pl.DataFrame] = []
    source_notes: list[str] = []
    sources: set[str] = set()
    seq = 0

    def collect(result: tuple[pl.DataFrame, pl.DataFrame] | ConnMeta | SourceNote) -> None:
        nonlocal seq
        if isinstance(result, ConnMeta):
            meta_parts.append(result.frame)
            return
        if isinstance(result, SourceNote):
            source_notes.append(result.text)
            return
        m, w = result
        if m.height:
            sources.update(m["source"].unique().to_list())
        if w.height:
            sources.update(w["source"].unique().to_list())
        msg_parts.append(m.with_columns(_seq=pl.int_range(seq, seq + m.height, dtype=pl.Int64)).drop("_r"))
        seq += m.height
        weird_parts.append(w.drop("_r"))
        if on_rows:
            on_rows(m.height + w.height)

    # Decode batches on a small thread pool while the source reads the next one: Polars releases the GIL,
    # so both cores work. At most ``workers + 1`` batches are in flight, which bounds memory.
    workers = int(os.environ.get("OCPPTOOL_WORKERS", "0")) or max(1, min(4, os.cpu_count() or 1))
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in batches:
            pending.append(pool.submit(_load_and_decode, batch, log_tz))
            while len(pending) > workers:
                collect(pending.popleft().result())
        while pending:
            collect(pending.popleft().result())
    if on_stage:
        on_stage("correlating")
    msgs = pl.concat(msg_parts, how="vertical_relaxed", rechunk=True) if msg_parts else None
    weirds = pl.concat(weird_parts, how="vertical_relaxed") if weird_parts else schemas.empty(schemas.WEIRDS)
    msg_parts.clear()  # the parts live on only inside the concatenated frame
    if msgs is None or msgs.is_empty():
        base = {k: v for k, v in schemas.MESSAGES.items() if k != "idx"}
        msgs = pl.DataFrame(schema={**base, "subprotocol": pl.String, "_seq": pl.Int64})
    msgs = _order(msgs, len(sources) > 1).drop("_seq")
    msgs = msgs.with_row_index("idx").with_columns(pl.col("idx").cast(pl.Int64))
    call_dir = pl.col("action").replace_strict(_CALL_DIRECTION, default=None)
    needs = (
        pl.col("direction").is_null()
        & (pl.col("message_type").is_in(["CALL", "SEND"]))
        & call_dir.is_not_null()
    )
    msgs = msgs.with_columns(
        direction=pl.when(needs).then(call_dir).otherwise(pl.col("direction")),
        direction_inferred=pl.col("direction_inferred").fill_null(False) | needs,
    )
    msgs = _correlate(msgs)
    versions = _versions(msgs)
    version_of = dict(versions.select("conn", "ocpp_version").iter_rows())
    msgs = msgs.with_columns(
        ocpp_version=pl.col("conn").replace_strict(version_of, default=None, return_dtype=pl.String)
    )
    weirds = schemas.conform(weirds, schemas.WEIRDS)
    meta = pl.concat(meta_parts, how="vertical_relaxed") if meta_parts else None
    connections = _connections(msgs, weirds, versions, meta)
    messages = schemas.conform(msgs, schemas.MESSAGES)
    notes = list(dict.fromkeys(source_notes)) + _notes(messages)  # a note once, however many inputs say it
    return Tables(messages, weirds, connections, notes)


def _notes(messages: pl.DataFrame) -> list[str]:
    notes = []
    hints = (
        messages.filter(pl.col("ts").is_null())
        .group_by("ts_hint")
        .len()
        .sort(["len", "ts_hint"], descending=[True, False], nulls_last=True)  # the same order every run
    )
    for hint, n in hints.iter_rows():
        notes.append(f"{n:,} messages have no observed time: {hint or 'unknown'}")
    return notes

