"""Explicit Polars schemas of ocpptool's tables. Every builder ends with :func:`conform`."""

from __future__ import annotations

import polars as pl

TS = pl.Datetime("us", "UTC")

MESSAGES: dict[str, pl.DataType] = {
    "idx": pl.Int64(),  # row number; call_index / response_index point here
    "ts": TS,  # observed time (capture or log line), UTC; null when the source cannot place it
    "ts_local": pl.Datetime("us"),  # wall-clock time as written, when the log gave no zone
    "ts_hint": pl.String(),  # why ts is null or uncertain
    "source": pl.String(),  # file the row came from
    "source_pos": pl.Int64(),  # line number (logs) or packet number (captures)
    "conn": pl.String(),  # connection key
    "charge_point_id": pl.String(),
    "direction": pl.String(),  # cp->csms | csms->cp | null
    "direction_inferred": pl.Boolean(),  # the source did not say; inferred from action or correlation
    "ocpp_version": pl.String(),  # 1.6 | 2.0 | 2.0.1 | 2.1 | null
    "message_type": pl.String(),  # CALL | CALLRESULT | CALLERROR | CALLRESULTERROR | SEND
    "message_id": pl.String(),
    "action": pl.String(),  # responses: the action of the correlated CALL
    "payload": pl.String(),  # JSON text, as on the wire
    "error_code": pl.String(),
    "error_description": pl.String(),
    "error_details": pl.String(),  # JSON text
    "call_index": pl.Int64(),  # responses: idx of the correlated CALL
    "response_index": pl.Int64(),  # CALLs: idx of the response
    "latency_ms": pl.Float64(),  # response ts - call ts
    "note": pl.String(),  # how the source rebuilt the frame, when it was not logged verbatim
}

WEIRDS: dict[str, pl.DataType] = {
    "ts": TS,
    "ts_local": pl.Datetime("us"),
    "source": pl.String(),
    "source_pos": pl.Int64(),
    "conn": pl.String(),
    "charge_point_id": pl.String(),
    "direction": pl.String(),
    "reason": pl.String(),  # stable code: not-json, wrong-arity, unparsable-line, truncated, binary ...
    "detail": pl.String(),
    "excerpt": pl.String(),
}

CONNECTIONS: dict[str, pl.DataType] = {
    "conn": pl.String(),
    "source": pl.String(),
    "charge_point_id": pl.String(),
    "url_path": pl.String(),  # captures only, from here to duplicate_of
    "client": pl.String(),  # ip:port; the charger is the WebSocket client
    "server": pl.String(),
    "subprotocol": pl.String(),
    "ocpp_version": pl.String(),
    "version_inferred": pl.Boolean(),
    "compression": pl.String(),
    "tls": pl.Boolean(),
    "auth": pl.String(),  # scheme and user only, never the secret
    "handshake_seen": pl.Boolean(),
    "opened": TS,
    "closed": TS,
    "close_code": pl.Int32(),
    "close_reason": pl.String(),
    "ocpp": pl.Boolean(),  # false for a non-OCPP WebSocket (its frames are counted, not decoded)
    "non_ocpp_frames": pl.Int64(),
    "duplicate_of": pl.String(),  # an "any"-interface capture held this connection twice; this copy was dropped
    "first_ts": TS,
    "last_ts": TS,
    "messages": pl.Int64(),
    "calls": pl.Int64(),
    "unanswered_calls": pl.Int64(),
    "orphan_responses": pl.Int64(),
    "weirds": pl.Int64(),
}


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Exactly ``schema``'s columns, in order, with its types (missing ones null)."""
    return df.select(
        [pl.col(n).cast(t) if n in df.columns else pl.lit(None, dtype=t).alias(n) for n, t in schema.items()]
    )


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
