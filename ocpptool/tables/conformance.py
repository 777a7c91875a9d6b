"""The Open OCPP Trace "consumer view": what a conforming reader derives from a trace.

Used by the conformance tests against the format's fixtures, and handy for comparing two readers.
"""

from __future__ import annotations

import polars as pl

_COUNT_KEYS = {"CALL": "calls", "CALLRESULT": "callResults", "CALLERROR": "callErrors"}


def consumer_view(messages: pl.DataFrame) -> dict:
    m = messages.sort("idx")
    counts = {"records": m.height, "calls": 0, "callResults": 0, "callErrors": 0}
    for mt, n in m.group_by("message_type").len().iter_rows():
        if mt in _COUNT_KEYS:
            counts[_COUNT_KEYS[mt]] += n
    records = []
    for row in m.select("idx", "message_type", "message_id", "action", "call_index").iter_rows(named=True):
        rec = {"index": row["idx"], "messageType": row["message_type"], "messageId": row["message_id"]}
        if row["action"] is not None:
            rec["action"] = row["action"]
        if row["call_index"] is not None:
            rec["correlatesWith"] = row["call_index"]
        records.append(rec)
    unanswered = m.filter((pl.col("message_type") == "CALL") & pl.col("response_index").is_null())["idx"]
    orphans = m.filter(
        pl.col("message_type").is_in(["CALLRESULT", "CALLERROR", "CALLRESULTERROR"]) & pl.col("call_index").is_null()
    )["idx"]
    return {
        "counts": counts,
        "records": records,
        "unansweredCalls": sorted(unanswered.to_list()),
        "orphanResponses": sorted(orphans.to_list()),
    }
