"""Derived tables: transactions, meter_values and statuses, as lazy frames over the messages table.

Everything is read from the CALL payloads (and, for 1.6 StartTransaction / 2.x TransactionEvent, from the
CSMS's answer, found through ``response_index``) with native Polars JSON expressions:

- Scalars come from ``str.json_path_match`` (never fails: a field of the wrong JSON type just reads as its
  text or as null) and are cast with ``strict=False``.
- Arrays of sampled values (``meterValue``, ``transactionData``) must be decoded with ``str.json_decode``,
  which fails the whole query when one payload has the wrong shape (an object where a string belongs, a
  number where an object belongs). Such payloads break the OCPP schema; :func:`_decodable` keeps them out
  with a conservative textual guard, so one broken frame costs its own samples and nothing else.

Version differences are settled by field names, not by ``ocpp_version`` (logs do not always say it):
``connectorId`` (1.6) / ``evseId`` / ``evse.id`` (2.x), ``status`` / ``connectorStatus``, ``unit`` /
``unitOfMeasure``. Meter registers are only comparable within ``(charge_point_id, connector_id)``.

Transaction ``state``: ``complete`` (stop or Ended seen), ``open`` (started, accepted, not stopped),
``rejected`` (the CSMS refused the id tag and no stop followed), ``unanswered`` (a 1.6 start that never got a
CALLRESULT, hence no id), ``no-start`` (stop or events seen for an id whose start is not in the traffic).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from ..tables.schemas import TS
from .walk import Config, Walked, walk

TRANSACTIONS: dict[str, pl.DataType] = {
    "charge_point_id": pl.String(),
    "conn": pl.String(),
    "ocpp_version": pl.String(),
    "connector_id": pl.Int64(),  # 1.6 connectorId; 2.x EVSE id
    "transaction_id": pl.String(),  # as a string: 1.6 ints and 2.x strings alike
    "id_tag": pl.String(),
    "start_ts": TS,  # charger's clock (payload timestamp)
    "stop_ts": TS,
    "start_observed": TS,  # observed time of the start message
    "stop_observed": TS,
    "meter_start_wh": pl.Float64(),
    "meter_stop_wh": pl.Float64(),
    "energy_wh": pl.Float64(),  # stop - start as reported; null while open
    "stop_reason": pl.String(),
    "state": pl.String(),  # complete | open | rejected | unanswered | no-start
    "start_idx": pl.Int64(),  # messages.idx of the start CALL
    "stop_idx": pl.Int64(),
    "events": pl.Int64(),  # 2.x TransactionEvents; 1.6: MeterValues with this transactionId
    "auth_status": pl.String(),  # idTagInfo / idTokenInfo status in the CSMS's answer to the start
    "start_response_idx": pl.Int64(),  # messages.idx of that answer
}

METER_VALUES: dict[str, pl.DataType] = {
    "idx": pl.Int64(),  # message carrying the sample
    "charge_point_id": pl.String(),
    "conn": pl.String(),
    "connector_id": pl.Int64(),
    "transaction_id": pl.String(),
    "ts": TS,  # observed
    "sample_ts": TS,  # charger's timestamp of the meterValue
    "measurand": pl.String(),  # default Energy.Active.Import.Register
    "phase": pl.String(),
    "unit": pl.String(),  # as sent (default Wh)
    "context": pl.String(),
    "location": pl.String(),
    "raw_value": pl.String(),
    "value": pl.Float64(),  # normalised: energy in Wh, power in W
    "source_action": pl.String(),  # MeterValues | StopTransaction | TransactionEvent
    "resolution": pl.Float64(),  # smallest step the reading can show, in normalised units (from the digits sent)
}

STATUSES: dict[str, pl.DataType] = {
    "idx": pl.Int64(),
    "charge_point_id": pl.String(),
    "conn": pl.String(),
    "connector_id": pl.Int64(),
    "ts": TS,
    "status_ts": TS,  # payload timestamp
    "status": pl.String(),
    "error_code": pl.String(),
    "info": pl.String(),
    "vendor_error_code": pl.String(),
}

ENERGY_REGISTER = "Energy.Active.Import.Register"
# Units whose value is scaled by 1000 to reach the normalised unit (Wh, W, varh, var, VA).
KILO_UNITS = ["kWh", "kW", "kvarh", "kvar", "kVArh", "kVAr", "kVA", "kvah", "kva"]

_SAMPLED_VALUE = pl.Struct(
    {
        "value": pl.String(),  # 1.6 sends strings, 2.x numbers: both read as text, parsed below
        "context": pl.String(),
        "format": pl.String(),
        "measurand": pl.String(),
        "phase": pl.String(),
        "location": pl.String(),
        "unit": pl.String(),  # 1.6
        "unitOfMeasure": pl.Struct({"unit": pl.String(), "multiplier": pl.String()}),  # 2.x
    }
)
_METER_VALUE_LIST = pl.List(pl.Struct({"timestamp": pl.String(), "sampledValue": pl.List(_SAMPLED_VALUE)}))

# Textual shape guard for the meterValue array handed to json_decode (see the module docstring). A match of
# _BAD means some element would not fit _METER_VALUE_LIST; false alarms only drop that payload's samples.
_SCALARS = "timestamp|value|context|format|measurand|phase|location|unit|multiplier"
_BAD = "|".join(
    [
        rf'"(?:{_SCALARS})"\s*:\s*[\[{{]',  # a scalar field holding a container
        r'"sampledValue"\s*:\s*[^\[\sn]',  # sampledValue not an array (or null)
        r'"sampledValue"\s*:\s*\[\s*[^\s{\]]',  # ... or an array of non-objects
        r'"unitOfMeasure"\s*:\s*[^{\sn]',  # unitOfMeasure not an object
        r'\}\s*,\s*[^\s{"]',  # an array of objects going on with a non-object
        r'\}\s*,\s*"[^"]*"\s*[,\]]',  # ... or with a string
    ]
)


_METER_VALUES_PAYLOAD = pl.Struct({"meterValue": _METER_VALUE_LIST})


def _decodable_payload(payload: pl.Expr) -> pl.Expr:
    """A MeterValues payload whose ``meterValue`` array passes :func:`_decodable` (same textual guard)."""
    return payload.str.contains(r'"meterValue"\s*:\s*\[\s*(?:\]|\{)') & ~payload.str.contains(_BAD)


def _decodable(arr: pl.Expr) -> pl.Expr:
    return arr.str.contains(r"^\s*\[\s*(?:\]|\{)") & ~arr.str.contains(_BAD)


def _j(path: str, col: str = "payload") -> pl.Expr:
    return pl.col(col).str.json_path_match(path)


def _int(path: str, col: str = "payload") -> pl.Expr:
    return _j(path, col).cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)


def _num(path: str, col: str = "payload") -> pl.Expr:
    return _j(path, col).str.strip_chars().cast(pl.Float64, strict=False)


def _top_int(key: str, col: str = "payload") -> pl.Expr:
    """An integer field of a key that occurs once in a payload, by regex (quoted or ``1.0`` forms too)."""
    raw = pl.col(col).str.extract(rf'"{key}"\s*:\s*"?(-?\d+)(?:\.0*)?"?\s*[,}}]', 1)
    return raw.cast(pl.Int64, strict=False)


def _top_scalar(key: str, number: str = r"-?\d+(?:\.\d+)?", col: str = "payload") -> pl.Expr:
    """A number or escape-free string field of a key that occurs once, by regex, as json_path_match gives it."""
    m = pl.col(col).str.extract_groups(rf'"{key}"\s*:\s*(?:"([^"\\]*)"|({number}))\s*[,}}]')
    return pl.coalesce(m.struct.field("1"), m.struct.field("2"))


def payload_ts(text: pl.Expr) -> pl.Expr:
    """An OCPP payload timestamp as a UTC instant (a time without a zone is read as UTC, as OCPP requires)."""
    t = text.str.strip_chars()
    return pl.coalesce(
        t.str.to_datetime("%+", strict=False, time_unit="us", time_zone="UTC"),
        t.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us").dt.replace_time_zone("UTC"),
    )


_NO_CP = "\x00"  # prefix of the stand-in key for rows whose source did not name the charge point


def keyed(lf: pl.LazyFrame, complete: bool = False) -> pl.LazyFrame:
    """Fill a null ``charge_point_id`` with a stand-in made from ``conn``, so that joins and groups keep such rows
    (Polars joins never match null keys; many logs do not name the charge point).

    ``complete``: the caller knows every row names its charge point (:func:`names_every_charge_point`), so
    there is nothing to fill: the frame as it is, without a text column built for every row."""
    if complete:
        return lf
    return lf.with_columns(
        charge_point_id=pl.coalesce("charge_point_id", pl.lit(_NO_CP) + pl.col("conn").fill_null(""))
    )


def unkeyed(lf: pl.LazyFrame, complete: bool = False) -> pl.LazyFrame:
    """Undo :func:`keyed`: the stand-in becomes null again (``complete``: there is none)."""
    if complete:
        return lf
    cp = pl.col("charge_point_id")
    return lf.with_columns(charge_point_id=pl.when(~cp.str.starts_with(_NO_CP)).then(cp))


def names_every_charge_point(*frames: pl.DataFrame) -> bool:
    """Whether no row of these tables lacks its charge point: then :func:`keyed` has nothing to fill."""
    return all(f["charge_point_id"].null_count() == 0 for f in frames)


def per_charge_point(fn: Callable) -> Callable:
    """Run a detector on :func:`keyed` tables and hand back its findings :func:`unkeyed`."""

    @functools.wraps(fn)
    def wrapper(ctx):
        return unkeyed(fn(keyed_context(ctx)), ctx.cp_complete)

    return wrapper


def keyed_context(ctx):
    """The context with every table :func:`keyed` (frames cached already keyed, like meter_pairs, pass as is);
    the context itself when every message names its charge point (``ctx.cp_complete``)."""
    if ctx.cp_complete:
        return ctx
    return dataclasses.replace(
        ctx, messages=keyed(ctx.messages), connections=keyed(ctx.connections),
        transactions=keyed(ctx.transactions), meter_values=keyed(ctx.meter_values), statuses=keyed(ctx.statuses),
        references=None if ctx.references is None else keyed(ctx.references),
        sample_messages=None if ctx.sample_messages is None else keyed(ctx.sample_messages),
    )


@dataclass
class Derived:
    transactions: pl.LazyFrame
    meter_values: pl.LazyFrame
    statuses: pl.LazyFrame
    # MeterValues CALLs cut into templates (``idx``, ``key``: the template's hash, ``template``, ``_lit_value`` and
    # ``_lit_timestamp``: the literals cut out),
    # for the schema check, which classes payloads the same way
    meter_templates: pl.DataFrame | None = None
    # their top-level ids read off the templates: ``idx``, ``connector_id``, ``transaction_id`` (references)
    meter_ids: pl.DataFrame | None = None
    # transactions.references, read by the compiled walker already (None: the detectors build it)
    references: pl.DataFrame | None = None
    # TransactionEvent fields (transaction_event_fields), for the detectors
    transaction_events: pl.DataFrame | None = None
    # the messages with samples, one row each (_sampled_messages): idx, charge_point_id, conn, connector_id,
    # transaction_id, ts
    sample_messages: pl.LazyFrame | None = None


def _calls(messages: pl.LazyFrame, actions: list[str]) -> pl.LazyFrame:
    """CALLs of these actions with their answer's type and payload (``r_type``, ``r_payload``, ``r_idx``)."""
    calls = messages.filter((pl.col("message_type") == "CALL") & pl.col("action").is_in(actions))
    # the answers of these calls only (a semi join probes their few ids), then joined to them
    answers = messages.join(calls.select(r_idx="response_index"), left_on="idx", right_on="r_idx", how="semi").select(
        r_idx=pl.col("idx"), r_type=pl.col("message_type"), r_payload=pl.col("payload")
    )
    return (
        calls.join(answers, left_on="response_index", right_on="r_idx", how="left", coalesce=False)
        .with_columns(
            r_payload=pl.when(pl.col("r_type") == "CALLRESULT").then(pl.col("r_payload")),
        )
    )


# TransactionEvent fields, read once for the derived tables and the detectors (``json_path_match`` parses the
# whole payload for every field, and a 2.x event carries its meter values: ~6 us a field).
TE_PATHS = {
    "_te_event": "$.eventType", "_te_tid": "$.transactionInfo.transactionId", "_te_evse": "$.evse.id",
    "_te_token": "$.idToken.idToken", "_te_ts": "$.timestamp", "_te_reason": "$.transactionInfo.stoppedReason",
    "_te_seq": "$.seqNo", "_te_trigger": "$.triggerReason", "_te_mv": "$.meterValue",
}


def transaction_event_fields(messages: pl.LazyFrame) -> pl.LazyFrame:
    """``idx`` of every TransactionEvent CALL with the fields of :data:`TE_PATHS` (their json_path_match text)."""
    return messages.filter((pl.col("message_type") == "CALL") & (pl.col("action") == "TransactionEvent")).select(
        "idx", **{name: _j(path) for name, path in TE_PATHS.items()}
    )


def with_event_fields(frame: pl.LazyFrame, fields: pl.LazyFrame | pl.DataFrame | None,
                      messages: pl.LazyFrame) -> pl.LazyFrame:
    """``frame``'s rows (in their order) with the :data:`TE_PATHS` columns, null for other actions.

    ``fields``: :func:`transaction_event_fields` computed already (None: from ``messages`` now)."""
    fields = transaction_event_fields(messages) if fields is None else fields.lazy()
    return frame.join(fields, on="idx", how="left", maintain_order="left")


def _as_int(text: pl.Expr) -> pl.Expr:
    """What :func:`_int` makes of a field's text."""
    return text.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)


# MeterValues payloads (the bulk of a fleet's traffic) are decoded through templates: a fleet sends the same
# few layouts over and over and only the sampled values and the timestamps change. Each escape-free string
# after "value" (or "timestamp") is cut out into a list of literals and replaced by a marker; the few distinct
# templates are json_decoded (their markers numbered), and the literals are put back by number. A literal
# never holds a structural character, so a template keeps every bracket, key and comma of its payloads and
# decodes (and passes the shape guard) exactly when they would: the result equals json_decode of every
# payload, for a few literal-prefixed regex passes over the text instead of a JSON parse of every payload.
_STRING = r'"[^"\\{}\[\],\x00\x01\x02]*"'
_CUTS = {"value": "\x01", "timestamp": "\x02"}  # key -> marker


_STRICT_NUMBER = r"-?\d+(?:\.\d*[1-9])?"  # a number as json_path_match prints it (no trailing zeros)


def _mv_connector(col: str) -> pl.Expr:
    """A MeterValues payload's connector (1.6) or EVSE (2.x). Its top-level scalars (no nested key has these
    names) are read by regex, ~10x cheaper than json_path_match, which re-parses the payload for every field."""
    return pl.coalesce(_top_int("connectorId", col), _top_int("evseId", col))


def _numbered(template: str) -> str:
    """Number each kind of marker in order, as JSON escapes (``\\u00013`` decodes to ``"\x013"``)."""
    for mark in _CUTS.values():
        parts = template.split(mark)
        escape = f"\\u{ord(mark):04x}"
        template = parts[0] + "".join(f"{escape}{i}{part}" for i, part in enumerate(parts[1:]))
    return template


def _explode_values(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Rows with ``mv`` (a meterValue list) -> one row per meterValue: ``_ts`` (text) and ``sv`` (its list)."""
    return (
        frame.explode("mv")
        .filter(pl.col("mv").is_not_null())
        .with_columns(_ts=pl.col("mv").struct.field("timestamp"), sv=pl.col("mv").struct.field("sampledValue"))
        .drop("mv")
    )


def _sample_fields(measurand: pl.Expr, phase: pl.Expr, unit: pl.Expr, multiplier: pl.Expr, context: pl.Expr,
                   location: pl.Expr, value: pl.Expr) -> dict[str, pl.Expr]:
    """A sampled value's columns with the OCPP 1.6 defaults, from its fields as json_decode reads them (``unit``:
    the 1.6 unit, else unitOfMeasure.unit; ``multiplier``: its text; ``_value``: the value's text)."""
    unit = pl.coalesce(unit, pl.lit("Wh"))
    return dict(
        measurand=pl.coalesce(measurand, pl.lit(ENERGY_REGISTER)),
        phase=phase,
        unit=unit,
        context=pl.coalesce(context, pl.lit("Sample.Periodic")),
        location=pl.coalesce(location, pl.lit("Outlet")),
        _value=value,
        _scale=pl.when(unit.is_in(KILO_UNITS)).then(1000.0).otherwise(1.0)
        * pl.lit(10.0).pow(multiplier.cast(pl.Float64, strict=False).fill_null(0.0)),
    )


def _explode_samples(frame: pl.LazyFrame) -> pl.LazyFrame:
    """One row per sampledValue, its fields read with the OCPP 1.6 defaults (``_value``: the value's text)."""
    sv = pl.col("sv")
    f = sv.struct.field
    return (
        frame.explode("sv")
        .filter(sv.is_not_null())
        .with_columns(**_sample_fields(
            f("measurand"), f("phase"), pl.coalesce(f("unit"), f("unitOfMeasure").struct.field("unit")),
            f("unitOfMeasure").struct.field("multiplier"), f("context"), f("location"), f("value"),
        ))  # fmt: skip
        .drop("sv")
    )


_SAMPLE_COLUMNS = ["idx", "charge_point_id", "conn", "connector_id", "transaction_id", "ts", "sample_ts", "measurand",
                   "phase", "unit", "context", "location", "raw_value", "value", "source_action", "resolution"]


def _finish_samples(frame: pl.LazyFrame, parsed: bool = False) -> pl.LazyFrame:
    """``_value`` text and ``_scale`` -> raw_value, value (normalised) and resolution; the output columns.

    ``parsed``: the compiled walker read the text already (``_number``, ``_decimals``; its text needs no strip)."""
    if parsed:
        number, decimals = pl.col("_number"), pl.col("_decimals")
        frame = frame.with_columns(raw_value="_value")
    else:
        number = pl.col("raw_value").cast(pl.Float64, strict=False)
        decimals = pl.col("raw_value").str.extract(r"^[-+]?\d*\.(\d+)$", 1).str.len_chars().fill_null(0)
        frame = frame.with_columns(raw_value=pl.col("_value").str.strip_chars())
    return frame.with_columns(
        value=(number * pl.col("_scale")).round(6),
        resolution=pl.lit(10.0).pow(-decimals.cast(pl.Float64)) * pl.col("_scale"),
    ).select("_row", *_SAMPLE_COLUMNS)


def _meter_values_samples(rows: pl.LazyFrame, keep_templates: dict | None = None,
                          others: Callable[[], pl.LazyFrame] | None = None) -> pl.LazyFrame:
    """MeterValues rows (with ``payload``) -> their sampled values (see the comment above :data:`_CUTS`).

    ``others()``: the exploded samples of other actions (``sample_ts`` set, before :func:`_finish_samples`). Each
    of their messages joins as a template of its own, so that one join yields every sample in message order.
    """
    p = pl.col("payload")
    template = p
    for key, mark in _CUTS.items():
        template = template.str.replace_all(f'"{key}":{_STRING}', f'"{key}":"{mark}"')
    masked = (
        rows.with_columns(
            template=template,
            **{f"_lit_{key}": p.str.extract_all(f'"{key}":{_STRING}') for key in _CUTS},
        )
        .with_columns(key=pl.col("template").hash(), **{f"_n_{k}": pl.col(f"_lit_{k}").list.len() for k in _CUTS})
        .with_columns(**{f"_off_{k}": pl.col(f"_n_{k}").cum_sum() - pl.col(f"_n_{k}") for k in _CUTS})
        .collect()
    )
    templates = masked.group_by("key").agg(
        pl.col("template").first(),
        *[pl.col(f"_n_{k}").min().alias(f"lo_{k}") for k in _CUTS],
        *[pl.col(f"_n_{k}").max().alias(f"hi_{k}") for k in _CUTS],
    ).with_columns(
        # top-level scalars: a template holds them as its payloads do (a cut literal holds no quote or comma)
        connector_id=_mv_connector("template"),
        transaction_id=_top_scalar("transactionId", col="template"),
        events_id=_top_scalar("transactionId", number=_STRICT_NUMBER, col="template"),
    )
    if keep_templates is not None:
        keep_templates["meter_templates"] = masked.select(
            "idx", "key", "template", *[f"_lit_{k}" for k in _CUTS]  # the literals, per key
        )
        keep_templates["meter_ids"] = masked.select("idx", "key").join(
            templates.select("key", "connector_id", "transaction_id", "events_id"), on="key", how="left"
        ).drop("key")
    # A template is used when each of its payloads gave one literal per marker (a stray marker character in a
    # payload, or a "\u0001" escape that would read as one, sends its payloads to the whole decode below).
    fits = pl.lit(True)
    for k, mark in _CUTS.items():
        marks = pl.col("template").str.count_matches(mark, literal=True)
        fits = fits & (marks == pl.col(f"lo_{k}")) & (marks == pl.col(f"hi_{k}"))
        fits = fits & ~pl.col("template").str.contains(f"\\u{ord(mark):04x}", literal=True)
    usable = templates.filter(fits).with_columns(text=pl.col("template").map_elements(_numbered, return_dtype=pl.String))

    def number(text: pl.Expr, mark: str) -> pl.Expr:
        return pl.when(text.str.starts_with(mark)).then(text.str.slice(1).cast(pl.Int64, strict=False))

    # one row per sample of each template, in document order, with the literal numbers of its time and value
    per_template = (
        _explode_samples(
            _explode_values(
                usable.lazy().filter(_decodable_payload(pl.col("text"))).select(
                    "key", mv=pl.col("text").str.json_decode(_METER_VALUES_PAYLOAD).struct.field("meterValue")
                )
            ).with_columns(
                _ts_n=number(pl.col("_ts"), _CUTS["timestamp"]),
                _ts_fixed=pl.when(~pl.col("_ts").str.starts_with(_CUTS["timestamp"])).then(payload_ts(pl.col("_ts"))),
            )
        )
        .with_columns(_v_n=number(pl.col("_value"), _CUTS["value"]),
                      _value=pl.when(~pl.col("_value").str.starts_with(_CUTS["value"])).then(pl.col("_value")))
        .drop("_ts")
        .collect()
    )
    keep = [c for c in rows.collect_schema().names() if c != "payload"]
    messages = masked.select(*keep, "key", "_off_value", "_off_timestamp", _src=pl.lit(0, pl.UInt8)).join(
        templates.select("key", "connector_id", "transaction_id"), on="key", how="left", maintain_order="left"
    )
    per_sample = per_template.with_columns(_src=pl.lit(0, pl.UInt8))
    other = None if others is None else others().collect().with_columns(
        _src=pl.lit(1, pl.UInt8), key=pl.col("_row").cast(pl.UInt64)
    )
    if other is not None and other.height:
        none = pl.lit(None, dtype=pl.Int64)
        messages = pl.concat([
            messages,
            other.select(*keep, "key", "_src", "connector_id", "transaction_id")
            .unique("_row", keep="first", maintain_order=True),
        ], how="diagonal_relaxed").sort("_row", maintain_order=True)  # fmt: skip
        per_sample = pl.concat([
            per_sample,
            other.select("key", "_src", "measurand", "phase", "unit", "context", "location", "_value", "_scale",
                         _ts_n=none, _ts_fixed="sample_ts", _v_n=none),
        ], how="diagonal_relaxed")  # fmt: skip
    samples = messages.join(per_sample, on=["_src", "key"], how="inner", maintain_order="left_right")

    def flat(key: str) -> pl.Series:
        return masked[f"_lit_{key}"].list.explode(keep_nulls=False, empty_as_null=False).str.slice(len(key) + 4).str.strip_suffix('"')

    values, stamps = flat("value"), flat("timestamp")
    samples = samples.with_columns(
        sample_ts=pl.coalesce(
            pl.select(payload_ts(pl.lit(stamps))).to_series().gather(samples["_off_timestamp"] + samples["_ts_n"]),
            pl.col("_ts_fixed"),
        ),
        _value=pl.coalesce(values.gather(samples["_off_value"] + samples["_v_n"]), pl.col("_value")),
    )
    templated = _finish_samples(samples.lazy())
    if usable.height == templates.height:  # the usual case: no payload needs the whole decode
        return templated
    # collected first: a lazy anti join would let the decode's text guard run on every payload
    rest = masked.join(usable.select("key"), on="key", how="anti").select(*keep, "payload")
    whole = _whole_meter_values_samples(rest.lazy())
    # templated rows, then whole-decoded ones (few; an anti join need not keep order, a stable sort puts them
    # back): in message order, a merge of two sorted frames
    return templated.merge_sorted(whole.sort("_row", maintain_order=True), "_row")


def _whole_meter_values_samples(rows: pl.LazyFrame) -> pl.LazyFrame:
    """MeterValues rows -> their sampled values, each payload json_decoded whole (the reference for templates)."""
    keep = [c for c in rows.collect_schema().names() if c != "payload"]
    return _finish_samples(_explode_samples(_explode_values(
        rows.filter(_decodable_payload(pl.col("payload")))
        .select(*keep, connector_id=_mv_connector("payload"), transaction_id=_top_scalar("transactionId"),
                mv=pl.col("payload").str.json_decode(_METER_VALUES_PAYLOAD).struct.field("meterValue"))
    ).with_columns(sample_ts=payload_ts(pl.col("_ts")))))


def _raw_samples(messages: pl.LazyFrame, keep_templates: dict | None = None,
                 events: Callable[[], pl.DataFrame] | None = None) -> pl.LazyFrame:
    """Every sampledValue of MeterValues, StopTransaction.transactionData and TransactionEvent.meterValue.

    ``events()``: :func:`transaction_event_fields` (kept as ``keep_templates["events"]``); None: read here.
    """
    calls = messages.filter(
        (pl.col("message_type") == "CALL")
        & pl.col("action").is_in(["MeterValues", "StopTransaction", "TransactionEvent"])
    ).with_row_index("_row")
    action = pl.col("action")
    cols = ("_row", "idx", "charge_point_id", "conn", "ts")
    def others() -> pl.LazyFrame:
        fields = None if events is None else events()
        if keep_templates is not None:
            keep_templates["events"] = fields
        return _others(calls, fields, messages)

    # One frame per action, so that each payload is only searched for the fields its action can carry (a
    # when/then evaluates every branch on every row). The others join the MeterValues samples as templates of
    # their own: every sample in message order, those of one message in document order, without a merge (a
    # copy of every column row by row).
    return _meter_values_samples(
        calls.filter(action == "MeterValues").select(*cols, source_action=action, payload="payload"), keep_templates,
        others,
    ).drop("_row")


_MV_IDS = {"_c1": "connectorId", "_c2": "evseId", "_tid": "transactionId"}  # MeterValues' top-level ids
_TE_WALKED = {name: path.removeprefix("$.") for name, path in TE_PATHS.items() if name != "_te_mv"}
# how the compiled walker reads each meter-bearing action (a row's kind)
_KINDS = {"MeterValues": 0, "StopTransaction": 1, "TransactionEvent": 2, "StatusNotification": 3}
_STATUS_PATHS = {"_st_evse": "evseId", "_st_connector": "connectorId", "_st_ts": "timestamp", "_st_status": "status",
                 "_st_cstatus": "connectorStatus", "_st_error": "errorCode", "_st_info": "info",
                 "_st_vendor": "vendorErrorCode"}  # fmt: skip
_CONFIGS = [
    Config("meterValue", tuple(_MV_IDS.items()), anywhere=True),
    # (anywhere, as for MeterValues: the transaction references read the id as a regex's first match does)
    Config("transactionData", (("_stop_tid", "transactionId"), ("_stop_c1", "connectorId"), ("_stop_c2", "evseId")),
           anywhere=True),
    Config("meterValue", tuple(_TE_WALKED.items())),
    Config(None, tuple(_STATUS_PATHS.items())),
]


@dataclass
class Walks:
    """The compiled walker's reading of the CALL payloads (:mod:`.walk`), done once for the derived tables and
    the time detectors. Row frames (``_row``: position, ``idx``, ``charge_point_id``, ``conn``, ``ts``,
    ``action``, ``payload``, ``_charger``: sent by the charger, ``_kind``) and what the walker read from each:
    the MeterValues, StopTransaction and TransactionEvent CALLs in message order (``calls``), and the other
    charger CALLs whose payload names a timestamp (``other``, for the time detectors only)."""

    calls: pl.DataFrame
    other: pl.DataFrame
    w: Walked
    w_other: Walked
    cp_complete: bool = False  # every message names its charge point (nothing was keyed)

    def stamps(self) -> pl.LazyFrame:
        """The time detectors' stamped rows (charger CALLs with an observed ts and a payload timestamp: ``idx``,
        ``ts``, ``conn``, ``charge_point_id``, ``action``, ``text``, ``offset_s``, ``offline``), in message
        order; payloads the walker left are read by the detectors' own expressions."""
        from .time import seconds, stamped_rows

        plans, left_plans = [], []
        for rows, w in ((self.calls, self.w), (self.other, self.w_other)):
            # lazy, so that each filter copies only the columns it keeps (an eager filter copies all of them:
            # first-run 83-123 -> 60-78 ms CPU on the bench fleet)
            both = rows.hstack(w.stamps).with_columns(_sure=w.sure).lazy()
            keep = pl.col("_charger") & pl.col("ts").is_not_null()
            plans.append(both.filter(keep & pl.col("_sure") & pl.col("stamp").is_not_null()).select(
                "idx", "ts", "conn", "charge_point_id", "action", text="stamp_text",
                offset_s=seconds(pl.col("stamp") - pl.col("ts")), offline="offline",
            ))  # fmt: skip
            left_plans.append(both.filter(keep & ~pl.col("_sure")).select("idx", "ts", "conn", "charge_point_id", "action", "payload"))
        parts, left = pl.collect_all(plans), pl.collect_all(left_plans)
        rest = pl.concat(left)
        if rest.height:
            parts.append(stamped_rows(rest.lazy()).collect())
        return unkeyed(pl.concat(parts).sort("idx").lazy(), self.cp_complete).collect().lazy()

    def class_keys(self) -> pl.DataFrame | None:
        """The schema check's keys of the walked CALLs (``idx``, ``key``; null where the walker was not
        sure), when the walk was asked for them (see :func:`walk_calls`)."""
        return None if self.w.keys is None else self.calls.select("idx").hstack(self.w.keys)


def walk_calls(messages: pl.LazyFrame, energy_only: bool = False, cp_complete: bool = False,
               enums: Callable[[], list[str]] | None = None) -> Walks:
    """Walk the CALL payloads the analysis reads (see :class:`Walks`), on two threads (``energy_only``: sample
    rows only for the energy register, see :func:`derive`; ``cp_complete``: see :func:`keyed`). ``enums``: gives
    the schema check's enum values (asked for once the rows are selected: another thread may load them
    meanwhile); the walk then also keys the payloads for the schema check (:meth:`Walks.class_keys`): the
    payloads that are most of the bytes are read once, not twice."""
    from concurrent.futures import ThreadPoolExecutor

    from .time import from_charger

    action = pl.col("action")
    cols = ("idx", "charge_point_id", "conn", "ts", "action", "payload")
    calls, other = pl.collect_all([
        messages.filter((pl.col("message_type") == "CALL") & action.is_in(list(_KINDS)))
        .select(*cols, _charger=from_charger(), _kind=action.replace_strict(_KINDS, return_dtype=pl.UInt8))
        .with_row_index("_row"),
        messages.filter(from_charger(), ~action.is_in(list(_KINDS)), pl.col("ts").is_not_null()).select(*cols),
    ])  # fmt: skip
    # the text search on those rows only (in the one filter, Polars would search every payload: 104 -> 40 ms CPU)
    other = other.filter(pl.col("payload").str.contains('"timestamp"', literal=True)).with_columns(_charger=pl.lit(True))
    values = None if enums is None else enums()
    with ThreadPoolExecutor(max_workers=2) as pool:
        w_other = pool.submit(walk, other["payload"], [Config()])
        w = walk(calls["payload"], _CONFIGS, calls["_kind"], pool=pool, energy_only=energy_only, enums=values)
        return Walks(calls, other, w, w_other.result(), cp_complete)


def _statuses_compiled(status: pl.DataFrame) -> pl.DataFrame:
    """:func:`_statuses` from the walker's reading of the StatusNotification payloads it is sure of (their
    fields as json_path_match gives them), the reference's expressions for the rest. ``status``: the walked
    StatusNotification rows with what the walker read (see :func:`_raw_samples_compiled`)."""
    read = status.filter(pl.col("_sure")).select(
        "idx", "charge_point_id", "conn",
        connector_id=pl.coalesce(_as_int(pl.col("_st_evse")), _as_int(pl.col("_st_connector"))),
        ts="ts",
        status_ts=payload_ts(pl.col("_st_ts")),
        status=pl.coalesce("_st_status", "_st_cstatus"),
        error_code="_st_error", info="_st_info", vendor_error_code="_st_vendor",
    )  # fmt: skip
    left = status.filter(~pl.col("_sure"))
    if left.height:
        rest = _statuses(left.select("idx", "charge_point_id", "conn", "ts", "action", "payload",
                                     message_type=pl.lit("CALL")).lazy()).collect()  # fmt: skip
        read = pl.concat([read, rest]).sort("idx")
    return read


#: :func:`_sampled_messages`' columns: a message's, the same on each of its samples
_SAMPLED = ("idx", "charge_point_id", "conn", "connector_id", "transaction_id", "ts")


def _sampled_messages(samples: pl.DataFrame) -> pl.DataFrame:
    """The messages with at least one sample (every measurand), one row each in message order: what the
    derived tables and the detectors read per message (a stop-only transaction's connector, a transaction's
    last sign of life) whether or not the samples table holds every measurand."""
    return samples.select(*_SAMPLED).unique("idx", keep="first", maintain_order=True)


def _on_calls(n: int, parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Columns read per kind (each part: ``_row``, a walked call's position, and the same columns) on all ``n``
    walked calls, in order: null on the calls of the other kinds."""
    both = pl.concat(parts)
    at = both["_row"]
    return pl.DataFrame([
        pl.Series(c.name, dtype=c.dtype).extend_constant(None, n).scatter(at, c) for c in both.drop("_row").iter_columns()
    ])  # fmt: skip


def _raw_samples_compiled(walks: Walks, keep: dict, energy_only: bool = False) -> pl.DataFrame:
    """:func:`_raw_samples` from the compiled walker's reading of the payloads it is sure of, and the Polars
    expressions for the rest: the same rows, collected. Also keeps ``meter_ids``, ``events`` (the
    TransactionEvent fields) and ``sampled`` (:func:`_sampled_messages`, of every sample) in ``keep``.
    ``energy_only``: only the samples of the energy register (see :func:`derive`)."""
    w = walks.w
    calls = walks.calls.with_columns(_sure=w.sure)
    kind = pl.col("_kind")
    # each kind's rows with what the walker read from them (its configuration's fields: a row per payload of it),
    # only the columns read below (an eager filter copies every column: the full rows cost four times as much)
    ids_only = ("_row", "idx", "charge_point_id", "_sure")
    needs = {0: ids_only, 1: ids_only, 2: ids_only, 3: ("idx", "charge_point_id", "conn", "ts", "action", "payload", "_sure")}
    rows_of_kind = pl.collect_all([calls.lazy().filter(kind == k).select(needs[k]) for k in range(len(w.fields))])
    of_kind = [rows.hstack(fields) for rows, fields in zip(rows_of_kind, w.fields, strict=True)]
    keep["statuses"] = _statuses_compiled(of_kind[3])
    cols = ("_row", "idx", "charge_point_id", "conn", "ts")
    # per-message columns, gathered onto their samples
    # (the MeterValues connector read once: three columns below are it)
    of_kind[0] = of_kind[0].with_columns(_ids=pl.coalesce(*(pl.col(c).cast(pl.Int64, strict=False) for c in ("_c1", "_c2"))))
    ids = pl.col("_ids")
    stop_ids = pl.coalesce(*(pl.col(c).cast(pl.Int64, strict=False) for c in ("_stop_c1", "_stop_c2")))
    none, no_id = pl.lit(None, pl.String), pl.lit(None, pl.Int64)
    # the transaction id, connector (and the transaction references' connector and event type) of each call
    per_call = _on_calls(calls.height, [
        of_kind[0].select("_row", transaction_id="_tid", connector_id=ids, _ref_connector=ids, event_type=none),
        of_kind[1].select("_row", transaction_id="_stop_tid", connector_id=no_id, _ref_connector=stop_ids,
                          event_type=none),
        of_kind[2].select("_row", transaction_id="_te_tid", connector_id=_as_int(pl.col("_te_evse")),
                          _ref_connector=pl.col("_te_evse").cast(pl.Int64, strict=False), event_type="_te_event"),
    ])  # fmt: skip
    rows = calls.select(*cols, "_kind", "_sure", source_action="action").hstack(per_call)
    # the transaction references (transactions.references) of the payloads the walker read
    from .transactions import references

    refs = rows.lazy().filter(pl.col("_sure"), pl.col("transaction_id").is_not_null()).select(
        "idx", "ts", "charge_point_id", "conn", action="source_action", transaction_id="transaction_id",
        event_type="event_type", connector_id="_ref_connector",
    ).collect()  # fmt: skip
    rows = rows.drop("_ref_connector", "event_type")
    s = w.samples
    assert s is not None
    sampled = [rows.select(*_SAMPLED).filter(w.sampled)]
    if energy_only and not w.energy_only:  # (a sampled value without a measurand is the register)
        s = s.filter(pl.col("measurand").is_null() | (pl.col("measurand") == ENERGY_REGISTER))
    finished = [_finish_samples(rows[s["row"]].hstack(s.select(
        "sample_ts", _number="number", _decimals="decimals", **_sample_fields(*(pl.col(c) for c in (
            "measurand", "phase", "unit", "multiplier", "context", "location", "value")))
    )).lazy(), parsed=True).collect()]  # fmt: skip

    # the payloads the walker left: the Polars reference
    te_fields = of_kind[2].select("idx", *_TE_WALKED, _te_mv=none)
    mv_ids = of_kind[0].select(
        "idx", connector_id=ids, transaction_id="_tid", charge_point_id="charge_point_id", _sure="_sure",
        events_id="_tid",
    )  # fmt: skip
    left = calls.lazy().filter(~pl.col("_sure")).select(*cols, "_kind", "action", "payload").collect()
    if left.height:
        mv_left = left.filter(kind == 0)
        if mv_left.height:
            finished.append(_whole_meter_values_samples(
                mv_left.select(*cols, source_action="action", payload="payload").lazy()).collect())
            mv_ids = mv_ids.update(mv_left.select(
                "idx", connector_id=_mv_connector("payload"), transaction_id=_top_scalar("transactionId"),
                events_id=_top_scalar("transactionId", number=_STRICT_NUMBER),
            ), on="idx", include_nulls=True)  # fmt: skip
        te_left = left.filter(kind == 2)
        if te_left.height:
            te_fields = te_fields.update(
                te_left.select("idx", **{name: _j(path) for name, path in TE_PATHS.items()}), on="idx", include_nulls=True
            )
        others = left.filter(kind != 0).select(*cols, "action", "payload")
        if others.height:
            finished.append(_finish_samples(_others(others.lazy(), te_fields, others.lazy())).collect())
        sampled += [_sampled_messages(extra) for extra in finished[1:]]
        if energy_only:
            finished[1:] = [extra.filter(pl.col("measurand") == ENERGY_REGISTER) for extra in finished[1:]]
        finished = [pl.concat(finished).sort("_row", maintain_order=True)]
        sampled = [pl.concat(sampled).sort("idx", maintain_order=True)]
    samples = finished[0]
    keep["sampled"] = sampled[0]

    # MeterValues ids (references, events per transaction); no templates: the schema check classes every
    # payload in C (schemas.untemplated_classes)
    keep["meter_ids"] = mv_ids
    keep["events"] = te_fields.select("idx", *TE_PATHS)
    if left.height:  # the reference for the payloads the walker left
        refs = pl.concat([refs, references(left.select("idx", "ts", "charge_point_id", "conn", "action", "payload",
                                                       message_type=pl.lit("CALL")).lazy(),
                                           events=keep["events"]).collect()]).sort("idx")  # fmt: skip
    keep["references"] = unkeyed(refs.lazy()).collect()
    return samples.drop("_row")


def _others(calls: pl.LazyFrame, events: pl.DataFrame | None, messages: pl.LazyFrame) -> pl.LazyFrame:
    """StopTransaction and TransactionEvent CALLs (of :func:`_raw_samples`) -> their exploded samples."""
    action = pl.col("action")
    cols = ("_row", "idx", "charge_point_id", "conn", "ts")
    return _explode_samples(_explode_values(
        pl.concat(
            [
                calls.filter(action == "StopTransaction").select(
                    *cols, source_action=action, connector_id=pl.lit(None, dtype=pl.Int64),
                    transaction_id=_j("$.transactionId"), arr=_j("$.transactionData"),
                ),
                with_event_fields(calls.filter(action == "TransactionEvent"), events, messages).select(
                    *cols, source_action=action, connector_id=_as_int(pl.col("_te_evse")),
                    transaction_id="_te_tid", arr="_te_mv",
                ),
            ],
            how="vertical_relaxed",
        )
        .filter(_decodable(pl.col("arr")))
        .with_columns(mv=pl.col("arr").str.json_decode(_METER_VALUE_LIST))
        .drop("arr")
    ).with_columns(sample_ts=payload_ts(pl.col("_ts"))))


def _transactions_16(messages: pl.LazyFrame, meter_ids: pl.DataFrame | None = None) -> pl.LazyFrame:
    starts = _calls(messages, ["StartTransaction"]).select(
        "charge_point_id", "conn", "ocpp_version",
        connector_id=_int("$.connectorId"),
        transaction_id=_j("$.transactionId", "r_payload"),
        id_tag=_j("$.idTag"),
        start_ts=payload_ts(_j("$.timestamp")),
        start_observed="ts",
        meter_start_wh=_num("$.meterStart"),
        start_idx="idx",
        auth_status=_j("$.idTagInfo.status", "r_payload"),
        start_response_idx=pl.col("r_idx"),
    ).cache()  # (read twice below: one pass over the messages, not two)
    stops = messages.filter(
        (pl.col("message_type") == "CALL") & (pl.col("action") == "StopTransaction")
    ).select(
        "charge_point_id",
        s_conn="conn",
        s_version="ocpp_version",
        transaction_id=_j("$.transactionId"),
        stop_ts=payload_ts(_j("$.timestamp")),
        stop_observed="ts",
        meter_stop_wh=_num("$.meterStop"),
        stop_reason=_j("$.reason"),
        stop_idx="idx",
    ).cache()
    key = ["charge_point_id", "transaction_id"]
    # Each stop belongs to the latest start with its id before it; each start keeps its first stop.
    pairs = (
        stops.join(starts.select(*key, "start_idx"), on=key, how="inner")
        .filter(pl.col("start_idx") < pl.col("stop_idx"))
        .sort("start_idx")
        .group_by("stop_idx")
        .agg(pl.all().last())
        .sort("stop_idx")
        .group_by("start_idx")
        .agg(pl.all().first())
        .drop(key)
    )
    started = starts.join(pairs, on="start_idx", how="left")
    unmatched = stops.join(pairs.select("stop_idx"), on="stop_idx", how="anti").with_columns(
        conn="s_conn", ocpp_version="s_version"
    )
    # MeterValues naming each id: the regex where it reads the id as json_path_match would (an integer or an
    # escape-free string), json_path_match (slow: it parses the whole payload) only for the rest.
    meter_values = messages.filter((pl.col("message_type") == "CALL") & (pl.col("action") == "MeterValues"))
    if meter_ids is not None and "_sure" in meter_ids.columns:  # read by the compiled walker (_raw_samples_compiled)
        # its ids are json_path_match's where it was sure; the reference reads the others below
        ids = meter_ids.lazy()
        meter_values = pl.concat([
            ids.filter(pl.col("_sure") | pl.col("events_id").is_not_null())
            .select("charge_point_id", payload=pl.lit(None, pl.String), fast="events_id"),
            meter_values.join(ids.filter(~pl.col("_sure") & pl.col("events_id").is_null()).select("idx"), on="idx",
                              how="semi").select("charge_point_id", "payload", fast=pl.lit(None, pl.String)),
        ])  # fmt: skip
    elif meter_ids is None:
        meter_values = meter_values.select(
            "charge_point_id", "payload", fast=_top_scalar("transactionId", number=_STRICT_NUMBER)
        )
    else:  # read off the templates already (see _meter_values_samples)
        meter_values = meter_values.select("idx", "charge_point_id", "payload").join(
            meter_ids.lazy().select("idx", fast="events_id"), on="idx", how="left"
        )
    events = (
        pl.concat([
            meter_values.filter(pl.col("fast").is_not_null()).select("charge_point_id", transaction_id="fast"),
            meter_values.filter(pl.col("fast").is_null() & pl.col("payload").str.contains('"transactionId"', literal=True))
            .select("charge_point_id", transaction_id=_j("$.transactionId")),
        ])
        .filter(pl.col("transaction_id").is_not_null())
        .group_by(key)
        .agg(events=pl.len())
    )
    return (
        pl.concat([started, unmatched], how="diagonal_relaxed")
        .drop("s_conn", "s_version")
        .join(events, on=key, how="left", nulls_equal=False)
        .with_columns(events=pl.col("events").fill_null(0))
    )


def _transactions_2x(messages: pl.LazyFrame, samples: pl.LazyFrame, events: pl.DataFrame | None = None) -> pl.LazyFrame:
    ev = with_event_fields(_calls(messages, ["TransactionEvent"]), events, messages).select(
        "idx", "ts", "charge_point_id", "conn", "ocpp_version",
        kind="_te_event",
        transaction_id="_te_tid",
        evse=_as_int(pl.col("_te_evse")),
        token="_te_token",
        ev_ts=payload_ts(pl.col("_te_ts")),
        reason="_te_reason",
        auth=_j("$.idTokenInfo.status", "r_payload"),
        r_idx="r_idx",
    ).filter(pl.col("transaction_id").is_not_null())
    started, ended = pl.col("kind") == "Started", pl.col("kind") == "Ended"
    per_tx = (
        ev.sort("idx")
        .group_by("charge_point_id", "transaction_id")
        .agg(
            pl.col("conn").first(),
            pl.col("ocpp_version").first(),
            connector_id=pl.coalesce(pl.col("evse").filter(started).first(), pl.col("evse").drop_nulls().first()),
            id_tag=pl.col("token").drop_nulls().first(),
            start_ts=pl.col("ev_ts").filter(started).first(),
            stop_ts=pl.col("ev_ts").filter(ended).last(),
            start_observed=pl.col("ts").filter(started).first(),
            stop_observed=pl.col("ts").filter(ended).last(),
            stop_reason=pl.col("reason").filter(ended).last(),
            start_idx=pl.col("idx").filter(started).first(),
            stop_idx=pl.col("idx").filter(ended).last(),
            events=pl.len(),
            auth_status=pl.col("auth").filter(started).first(),
            start_response_idx=pl.col("r_idx").filter(started).first(),
        )
    )
    per_tx = per_tx.cache()  # (read three times below)
    # the register's first reading in each Started and Ended event: those events' samples only (a few of the
    # ~400k), then grouped
    ends = pl.concat([per_tx.select(idx="start_idx"), per_tx.select(idx="stop_idx")]).drop_nulls()
    register = (
        samples.filter((pl.col("measurand") == ENERGY_REGISTER) & pl.col("phase").is_null())
        .join(ends, on="idx", how="semi")
        .group_by("idx")
        .agg(v=pl.col("value").first())
    )
    return (
        per_tx.join(register.rename({"idx": "start_idx", "v": "meter_start_wh"}), on="start_idx", how="left")
        .join(register.rename({"idx": "stop_idx", "v": "meter_stop_wh"}), on="stop_idx", how="left")
    )


def _statuses(messages: pl.LazyFrame) -> pl.LazyFrame:
    return (
        messages.filter((pl.col("message_type") == "CALL") & (pl.col("action") == "StatusNotification"))
        .select(
            "idx", "charge_point_id", "conn",
            connector_id=pl.coalesce(_int("$.evseId"), _int("$.connectorId")),
            ts="ts",
            status_ts=payload_ts(_j("$.timestamp")),
            status=pl.coalesce(_j("$.status"), _j("$.connectorStatus")),
            error_code=_j("$.errorCode"),
            info=_j("$.info"),
            vendor_error_code=_j("$.vendorErrorCode"),
        )
        .sort("idx")
    )


def covering_transaction(lf: pl.LazyFrame, transactions: pl.LazyFrame, *, sorted_by_idx: bool = False) -> pl.LazyFrame:
    """Add ``open_tid``: the transaction open on ``(charge_point_id, connector_id)`` at each row's ``idx``.

    The latest transaction started on that connector at or before the row (a start not in the traffic counts
    from the beginning), if it was not stopped before the row. A start without an answer counts too: the
    charger did start it. ``sorted_by_idx``: ``lf`` is in ``idx`` order already (kept as is, else sorted by ``idx``).
    """
    windows = (
        transactions.filter(pl.col("connector_id").is_not_null())
        .select(
            "charge_point_id", "connector_id",
            w_start=pl.coalesce("start_idx", pl.lit(-1, pl.Int64)),
            w_end=pl.coalesce("stop_idx", pl.lit(2**62, pl.Int64)),
            w_tid=pl.coalesce("transaction_id", pl.lit("(no id)")),
        )
        .sort("w_start")
    )
    return (
        (lf if sorted_by_idx else lf.sort("idx"))
        .join_asof(windows, left_on="idx", right_on="w_start", by=["charge_point_id", "connector_id"],
                   check_sortedness=False)
        # (an as-of join keeps the order of its left side: still in idx order, which later sorts need not redo)
        .with_columns(pl.col("idx").set_sorted(), open_tid=pl.when(pl.col("w_end") >= pl.col("idx")).then(pl.col("w_tid")))
        .drop("w_start", "w_end", "w_tid")
    )


def _conform(lf: pl.LazyFrame, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    names = lf.collect_schema().names()
    return lf.select(
        [pl.col(n).cast(t) if n in names else pl.lit(None, dtype=t).alias(n) for n, t in schema.items()]
    )


def derive(messages: pl.LazyFrame, on_step: Callable[[str], None] | None = None,
           events: Callable[[], pl.DataFrame] | None = None, walks: Walks | None = None,
           energy_only: bool = False, cp_complete: bool = False) -> Derived:
    """Build the transactions, meter_values and statuses tables (lazy) from the messages table.

    ``on_step(label)`` is called after each materialised step (timing). ``events()``: the
    :func:`transaction_event_fields`, asked for only when the MeterValues templates are done (so that another
    thread can read them meanwhile); None: read here. ``energy_only``: meter_values holds only the samples of
    the energy register (``Energy.Active.Import.Register``, also when the measurand is omitted), all that the
    detectors read of it (what they read per message comes from ``sample_messages``, of every sample): a
    quarter of the rows of a usual fleet, for a run whose tables are not exported. ``cp_complete``: every
    message names its charge point (see :func:`keyed`).
    """
    step = on_step or (lambda label: None)
    messages = keyed(messages, cp_complete)
    # The samples and the transactions feed several of the derived tables: parse the payloads once.
    kept: dict = {}
    if events is None:
        events = transaction_event_fields(messages).collect
    from .walk import available

    if walks is None and available():
        walks = walk_calls(messages, energy_only, cp_complete)
    if walks is not None:
        sample_rows = _raw_samples_compiled(walks, kept, energy_only)
    else:
        sample_rows = _raw_samples(messages, kept, events).collect()
        kept["sampled"] = _sampled_messages(sample_rows)
        if energy_only:
            sample_rows = sample_rows.filter(pl.col("measurand") == ENERGY_REGISTER)
    sampled: pl.DataFrame = kept["sampled"]
    te_fields: pl.DataFrame | None = kept["events"]
    samples = sample_rows.lazy()
    step("meter samples")
    tx = pl.concat(
        [_transactions_16(messages, kept.get("meter_ids")), _transactions_2x(messages, samples, te_fields)],
        how="diagonal_relaxed",
    )
    key = ["charge_point_id", "transaction_id"]
    # A stop-only transaction takes its connector from its meter values; a sample without a connector
    # (StopTransaction, 2.x Updated events) takes its transaction's.
    sample_connector = (
        sampled.lazy().filter(pl.col("transaction_id").is_not_null())
        .group_by(key)
        .agg(s_connector=pl.col("connector_id").drop_nulls().first())
    )
    tx = (
        tx.join(sample_connector, on=key, how="left")
        .with_columns(connector_id=pl.coalesce("connector_id", "s_connector"))
        .with_columns(
            energy_wh=pl.col("meter_stop_wh") - pl.col("meter_start_wh"),
            state=pl.when(pl.col("start_idx").is_null())
            .then(pl.lit("no-start"))
            .when(pl.col("stop_idx").is_not_null())
            .then(pl.lit("complete"))
            .when(pl.col("transaction_id").is_null())
            .then(pl.lit("unanswered"))
            .when(pl.col("auth_status").is_not_null() & (pl.col("auth_status") != "Accepted"))
            .then(pl.lit("rejected"))
            .otherwise(pl.lit("open")),
        )
        .sort(pl.coalesce("start_idx", "stop_idx"))
        .collect()
        .lazy()
    )
    step("transactions")
    tx_connector = (
        tx.filter(pl.col("transaction_id").is_not_null())
        .group_by(key)
        .agg(t_connector=pl.col("connector_id").drop_nulls().first())
    )
    # Samples without a connector take their transaction's, written in place (a join of every sample would
    # copy them all for the few that need it); the samples of one message stay in document order.
    connector = sample_rows["connector_id"]
    need = sample_rows.select(
        _pos=pl.int_range(pl.len(), dtype=pl.UInt32), _need=pl.col("connector_id").is_null() & pl.col("transaction_id").is_not_null(),
        **{k: k for k in key},
    ).filter("_need")
    if need.height:
        found = need.join(tx_connector.collect(), on=key, how="left")
        connector = connector.scatter(found["_pos"], found["t_connector"])
    mv = sample_rows.with_columns(connector_id=connector)
    if not mv["idx"].is_sorted():  # (the samples come in message order)
        mv = mv.sort("idx", maintain_order=True)
    # said so, so that the detectors' sorts by idx of these rows cost nothing (Polars checks the flag)
    meter_values = mv.with_columns(pl.col("idx").set_sorted()).lazy()
    return Derived(
        _conform(unkeyed(tx, cp_complete), TRANSACTIONS), _conform(unkeyed(meter_values, cp_complete), METER_VALUES),
        _conform(unkeyed(kept["statuses"].lazy() if "statuses" in kept else _statuses(messages), cp_complete),
                 STATUSES),
        meter_templates=kept.get("meter_templates"),
        meter_ids=kept.get("meter_ids"), transaction_events=te_fields, references=kept.get("references"),
        sample_messages=unkeyed(sampled.lazy(), cp_complete),
    )
