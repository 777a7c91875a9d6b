"""The compiled payload walker (``walk_payloads`` in ocpptool/_speedups.c) against the Polars reference.

The analysis reads MeterValues, StopTransaction and TransactionEvent payloads (and every charger payload's
first timestamp) with the walker where it is sure of a payload, and with Polars expressions elsewhere. Both
ways must give the same derived tables, findings and time rows, whatever the payloads hold; the walker must
also really take the ordinary payloads (or the analysis would be slow without anyone noticing).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from ocpptool.analysis import Options, run
from ocpptool.analysis import walk as walk_module
from ocpptool.analysis.derived import derive, keyed, walk_calls
from ocpptool.analysis.time import from_charger, stamped_rows
from ocpptool.analysis.transactions import references
from ocpptool.sources.base import conform
from ocpptool.tables.build import Tables, build_tables

pytestmark = pytest.mark.skipif(not walk_module.available(), reason="the compiled walker is not built")

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def tables_of(frames: list[tuple[str, str, str]]) -> Tables:
    """(charge point, direction, frame text as written) -> the decoded tables, one second apart."""
    raw = conform(pl.DataFrame(
        {
            "ts": [T0 + timedelta(seconds=i) for i in range(len(frames))],
            "source": ["t"] * len(frames),
            "source_pos": list(range(1, len(frames) + 1)),
            "conn": [cp for cp, _, _ in frames],
            "charge_point_id": [cp for cp, _, _ in frames],
            "direction": [d for _, d, _ in frames],
            "subprotocol": ["ocpp2.0.1" if cp.startswith("V2") else "ocpp1.6" for cp, _, _ in frames],
            "text": [t for *_, t in frames],
        },
        schema={"ts": pl.Datetime("us", "UTC"), "source": pl.String, "source_pos": pl.Int64, "conn": pl.String,
                "charge_point_id": pl.String, "direction": pl.String, "subprotocol": pl.String, "text": pl.String},
    ))  # fmt: skip
    return build_tables([raw])


def conversation(calls: list[tuple[str, str, str]]) -> Tables:
    """(charge point, action, payload text) CALLs from the chargers, each answered."""
    frames = []
    for i, (cp, action, payload) in enumerate(calls):
        frames.append((cp, "cp->csms", f'[2,"m{i}","{action}",{payload}]'))
        answer = f'{{"idTagInfo":{{"status":"Accepted"}},"transactionId":{100 + i}}}' if action == "StartTransaction" else "{}"
        frames.append((cp, "csms->cp", f'[3,"m{i}",{answer}]'))
    return tables_of(frames)


def both_ways(tables: Tables, monkeypatch) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """The derived tables and what the detectors read, with the walker and with the Polars reference."""

    def derived() -> list[pl.DataFrame]:
        d = derive(tables.messages.lazy())
        out = pl.collect_all([d.transactions, d.meter_values, d.statuses])
        out.append(d.meter_ids.sort("idx") if d.meter_ids is not None else pl.DataFrame())
        out.append(d.transaction_events.sort("idx") if d.transaction_events is not None else pl.DataFrame())
        # the transaction references the detectors read (the walker's, or built by the detectors' own code)
        out.append(d.references if d.references is not None else references(tables.messages.lazy()).collect())
        return out

    compiled = derived()
    monkeypatch.setenv("OCPPTOOL_PURE", "1")
    assert not walk_module.available()
    reference = derived()
    monkeypatch.delenv("OCPPTOOL_PURE")
    return compiled, reference


def assert_same(compiled: list[pl.DataFrame], reference: list[pl.DataFrame]) -> None:
    for name, a, b in zip(("transactions", "meter_values", "statuses", "meter_ids", "events", "references"), compiled,
                          reference, strict=True):
        if name == "meter_ids":  # the reference keeps ids of every MeterValues payload, with the same columns
            a = a.select(b.columns) if b.width else a
        if name == "events":  # the meterValue text is read only for the samples, which the walker reads itself
            a, b = a.drop("_te_mv"), b.drop("_te_mv")
        try:
            assert_frame_equal(a, b)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


MV = "MeterValues"
COMMON_16 = (
    '{"connectorId":1,"transactionId":7,"meterValue":[{"timestamp":"2025-03-01T12:00:00.123Z","sampledValue":'
    '[{"value":"100","context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","unit":"Wh"},'
    '{"value":"7.40","unit":"kW","measurand":"Power.Active.Import","phase":"L1"}]}]}'
)
COMMON_201 = (
    '{"eventType":"Updated","timestamp":"2025-03-01T12:00:05Z","triggerReason":"MeterValuePeriodic","seqNo":3,'
    '"transactionInfo":{"transactionId":"tx-1","chargingState":"Charging"},"evse":{"id":1,"connectorId":1},'
    '"meterValue":[{"timestamp":"2025-03-01T12:00:05Z","sampledValue":[{"value":7608243,"measurand":'
    '"Energy.Active.Import.Register","unitOfMeasure":{"unit":"Wh"}},{"value":232.0,"measurand":"Voltage",'
    '"unitOfMeasure":{"unit":"V","multiplier":0}}]}]}'
)

# payloads at the edges of what the walker takes: each must read the same both ways
ODD = [
    (MV, '{"connectorId":2,"transactionId":"abc","meterValue":[{"timestamp":"2025-03-01T12:01:00+02:00",'
         '"sampledValue":[{"value":" 300 "},{"value":"1.5E3"},{"value":"+5"},{"value":"."},{"value":""}]}]}'),
    (MV, '{ "meterValue" : [ { "sampledValue" : [ { "unit" : "kWh" , "value" : "1.25" } ] , "timestamp" : '
         '"2025-03-01T12:02:00" }, {"timestamp": 0, "sampledValue": [{"value": 12.50}]} ], "connectorId" : 3 }'),
    (MV, '{"evseId":1,"meterValue":[{"timestamp":"2025-03-01T12:03:00.1234567Z","sampledValue":[{"value":232.5,'
         '"unitOfMeasure":{"unit":"kW","multiplier":-1}},{"value":"x","context":"Sample.Clock"}]}]}'),
    (MV, '{"connectorId":1,"meterValue":[{"timestamp":"2025-03-01T12:04:00Z","sampledValue":[{"value":"1\\"2"},'
         '{"value":"3,4"},{"value":"5}"},{"value":"\\u00016"},{"value":"[7]"}]}]}'),
    (MV, '{"connectorId":1,"meterValue":[{"timestamp":"2025-03-01T12:05:00Z","sampledValue":[{"value":1.0},'
         '{"value":-0},{"value":-0.0},{"value":1e3},{"value":0.0000001},{"value":99999999999999.99},'
         '{"value":123456789012345678},{"value":true},{"value":null},{"value":0.10}]}]}'),
    (MV, '{"connectorId":1,"meterValue":[{"timestamp":"2025-03-01T12:06:00Z","sampledValue":{"value":"1"}}]}'),
    (MV, '{"connectorId":1,"meterValue":[{"timestamp":"2025-03-01T12:06:00Z","sampledValue":[{"value":"1",'
         '"value":"2"}]}]}'),
    (MV, '{"connectorId":1,"meterValue":[{"timestamp":"2025-03-01T12:06:00Z","sampledValue":[{"value":"1"}]},5]}'),
    (MV, '{"connectorId":1,"meterValue":[{"sampledValue":[{"value":"1"}]},{"timestamp":null,"sampledValue":null}]}'),
    (MV, '{"connectorId":1,"meterValue":null}'),
    (MV, '{"connectorId":"1","transactionId":7.0,"meterValue":[]}'),
    (MV, '{"connectorId":1.0,"transactionId":-0,"meterValue":[]}'),
    (MV, '{"connectorId":1,"vendor":{"connectorId":2,"transactionId":9},"meterValue":[]}'),
    (MV, '{"connectorId":1,"transactionId":7,"meterValue":[{"timestamp":"2025-03-01T12:07:00Z","sampledValue":'
         '[{"value":"5","unitOfMeasure":"kWh"}]}]}'),
    (MV, '{"connectorId":1,"meterValue":[{"timestamp":"0000-01-01T00:00:00Z","sampledValue":[{"value":"5"}]}]}'),
    (MV, '{"connectorId":1,"meterValue":[{"timestamp":"2025-13-01T00:00:00Z","sampledValue":[{"value":"5"}]}]}'),
    (MV, '{"connectorId":1,"extra":[{"a":1},"b"],"meterValue":[]}'),
    (MV, '{"connectorId":1,"transactionId":"a\\u0062c","meterValue":[]}'),
    ("StopTransaction", '{"transactionId":102,"meterStop":5000,"timestamp":"2025-03-01T12:08:00Z","reason":"Local",'
                        '"transactionData":[{"timestamp":"2025-03-01T12:08:00Z","sampledValue":[{"value":"5000"}]}]}'),
    ("StopTransaction", '{"transactionId":"102","meterStop":5000,"timestamp":"2025-03-01T12:08:00Z",'
                        '"transactionData":[5]}'),
    ("StopTransaction", '{"transactionId":1e2,"meterStop":5000,"timestamp":"2025-03-01T12:08:00Z"}'),
    ("TransactionEvent", COMMON_201.replace('"seqNo":3', '"seqNo":3.0')),
    ("TransactionEvent", COMMON_201.replace('"tx-1"', '"tx\\u002d1"')),
    ("TransactionEvent", COMMON_201.replace('"evse":{"id":1,"connectorId":1}', '"evse":5')),
    ("TransactionEvent", COMMON_201.replace('"Updated"', '"Ended","offline":true')),
    ("StatusNotification", '{"connectorId":1,"status":"Available","errorCode":"NoError",'
                           '"timestamp":"2025-03-01T12:09:00+0100"}'),
    ("StatusNotification", '{"connectorId":1,"status":"Charging","errorCode":"NoError","timestamp":" 2025-03-01T12:09:00Z"}'),
    ("StatusNotification", '{"connectorId":1,"status":"Charging","errorCode":"NoError","timestamp":"soon"}'),
]


def odd_tables() -> Tables:
    calls = [("CP1", "StartTransaction", '{"connectorId":1,"idTag":"T","meterStart":0,'
                                        '"timestamp":"2025-03-01T12:00:00Z"}')]
    calls += [("CP1", MV, COMMON_16)] * 3
    calls += [("V2-1", "TransactionEvent", COMMON_201)] * 2
    calls += [("V2-1" if a == "TransactionEvent" else "CP1", a, p) for a, p in ODD]
    return conversation(calls)


def test_derived_tables_the_same_with_the_walker_and_with_polars_on_odd_payloads(monkeypatch):
    tables = odd_tables()
    compiled, reference = both_ways(tables, monkeypatch)
    assert compiled[1].height > 40 and compiled[5].height > 10  # meter values and references were read
    assert_same(compiled, reference)


def test_every_finding_the_same_with_the_walker_and_with_polars(monkeypatch):
    tables = odd_tables()
    found = run(tables, Options()).findings
    monkeypatch.setenv("OCPPTOOL_PURE", "1")
    reference = run(tables, Options()).findings
    assert found.height and set(found["code"]) >= {"schema-violation"}
    assert_frame_equal(found, reference)


def test_time_rows_the_same_with_the_walker_and_with_polars():
    """The time detectors' rows (first payload timestamp, offset, offline flag) read by the walker."""
    tables = odd_tables()
    messages = tables.messages.lazy()
    walks = walk_calls(keyed(messages))
    compiled = walks.stamps().filter(pl.col("offset_s").is_not_null()).collect()
    reference = (
        stamped_rows(messages.filter(from_charger(), pl.col("ts").is_not_null()))
        .filter(pl.col("offset_s").is_not_null()).collect()
    )
    assert compiled.height > 20 and compiled["offline"].any()
    assert_frame_equal(compiled, reference)


def test_ordinary_payloads_are_read_by_the_walker_and_odd_ones_left_to_polars():
    """What makes the analysis fast: the walker takes the payloads chargers send, not only the easy ones."""
    walks = walk_calls(keyed(odd_tables().messages.lazy()))
    sure = walks.calls.with_columns(sure=walks.w.sure)
    plain = sure.filter(pl.col("payload").is_in([COMMON_16, COMMON_201]))
    assert plain.height == 5 and plain["sure"].all()
    escaped = sure.filter(pl.col("payload").str.contains("\\", literal=True))
    assert escaped.height >= 3 and not escaped["sure"].any()
    assert walks.w.samples is not None and walks.w.samples.height >= 3 * 2 + 2 * 2


def test_a_fleet_log_is_read_entirely_by_the_walker(tmp_path):
    """Generated fleet traffic (both versions, every action) has no payload the walker leaves."""
    from ocpptool.pipeline import load

    log = tmp_path / "fleet.jsonl"
    import subprocess
    import sys
    from pathlib import Path

    gen = Path(__file__).resolve().parent.parent / "bench" / "gen_fleet.py"
    subprocess.run([sys.executable, str(gen), "--format", "jsonl", "--messages", "3000", "--chargers", "20",
                    "--share-201", "0.3", "--out", str(log)], check=True, capture_output=True)  # fmt: skip
    tables, _ = load([str(log)], progress=False)
    walks = walk_calls(keyed(tables.messages.lazy()))
    assert walks.calls.height > 500 and walks.w.sure.all() and walks.w_other.sure.all()


# -- generated payloads

_NUMBERS = ["0", "1", "-1", "12.5", "12.50", "1.0", "-0", "-0.0", "1e3", "2E-2", "0.000001", "123456789012345",
            "1234567890123456", "0.1000000000000001", "7608243"]
_STRINGS = ["100", "7.40", " 5", "abc", "", "1,5", "2025-03-01T12:00:00Z", "Wh", "kWh", "a\\\"b", "\\u00e9"]
_TIMES = ["2025-03-01T12:00:00Z", "2025-03-01T12:00:00.5+01:00", "2025-03-01T12:00:00", "2025-03-01T12:00:00.1234567Z",
          "2025-03-01 12:00:00Z", "1970-01-01T00:00:00Z", "nope", "2025-03-01T12:00:00+0100"]


@st.composite
def payloads(draw) -> tuple[str, str]:
    def scalar() -> str:
        kind = draw(st.sampled_from(["num", "str", "null", "bool"]))
        if kind == "num":
            return draw(st.sampled_from(_NUMBERS))
        if kind == "str":
            return json.dumps(draw(st.sampled_from(_STRINGS))).replace("\\\\", "\\")
        return "null" if kind == "null" else draw(st.sampled_from(["true", "false"]))

    def obj(pairs: list[tuple[str, str]]) -> str:
        sep = draw(st.sampled_from([",", ", ", " , "]))
        colon = draw(st.sampled_from([":", ": ", " :"]))
        return "{" + sep.join(f'"{k}"{colon}{v}' for k, v in pairs) + "}"

    def sample() -> str:
        keys = draw(st.lists(st.sampled_from(["value", "context", "measurand", "phase", "location", "unit",
                                               "unitOfMeasure", "format"]), max_size=5))
        pairs = []
        for k in keys:
            if k == "unitOfMeasure":
                pairs.append((k, draw(st.sampled_from(['{"unit":"kWh","multiplier":1}', '{"unit":"W"}', "null",
                                                      '"Wh"', '{"multiplier":"2"}']))))
            elif k == "measurand" and draw(st.booleans()):
                pairs.append((k, '"Energy.Active.Import.Register"'))
            else:
                pairs.append((k, scalar()))
        return obj(pairs)

    def meter_value() -> str:
        pairs = []
        if draw(st.booleans()):
            pairs.append(("timestamp", json.dumps(draw(st.sampled_from(_TIMES)))))
        sv = draw(st.sampled_from(["list", "list", "list", "null", "object"]))
        if sv == "list":
            pairs.append(("sampledValue", "[" + ",".join(sample() for _ in range(draw(st.integers(0, 3)))) + "]"))
        elif sv == "null":
            pairs.append(("sampledValue", "null"))
        else:
            pairs.append(("sampledValue", sample()))
        draw(st.randoms()).shuffle(pairs)
        return obj(pairs)

    action = draw(st.sampled_from(["MeterValues", "StopTransaction", "TransactionEvent"]))
    array = "[" + ",".join(meter_value() for _ in range(draw(st.integers(0, 2)))) + "]"
    if action == "MeterValues":
        pairs = [("connectorId", draw(st.sampled_from(["1", "2", '"1"', "1.0", "null"]))), ("meterValue", array)]
        if draw(st.booleans()):
            pairs.append(("transactionId", draw(st.sampled_from(["7", '"t-7"', "7.5", "null", '"a\\"b"']))))
    elif action == "StopTransaction":
        pairs = [("transactionId", draw(st.sampled_from(["102", '"102"', "1e2"]))), ("meterStop", "10"),
                 ("timestamp", json.dumps(draw(st.sampled_from(_TIMES)))), ("transactionData", array)]
    else:
        pairs = [("eventType", '"Updated"'), ("timestamp", json.dumps(draw(st.sampled_from(_TIMES)))),
                 ("seqNo", draw(st.sampled_from(["1", "2.0"]))), ("triggerReason", '"MeterValuePeriodic"'),
                 ("transactionInfo", '{"transactionId":"tx-9"}'),
                 ("evse", draw(st.sampled_from(['{"id":1}', '{"id":"1"}', "null"]))), ("meterValue", array)]
    draw(st.randoms()).shuffle(pairs)
    return action, obj(pairs)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=1, max_size=12))
def test_generated_payloads_read_the_same_both_ways(calls):
    tables = conversation([("V2-1" if a == "TransactionEvent" else "CP1", a, p) for a, p in calls])
    mp = pytest.MonkeyPatch()
    try:
        compiled, reference = both_ways(tables, mp)
    finally:
        mp.undo()
    assert_same(compiled, reference)


def test_random_meter_values_each_read_the_same_both_ways(monkeypatch):
    """A few hundred payloads at once (the walker cuts large columns in two pieces on two threads)."""
    rng = random.Random(5)
    calls = []
    for i in range(300):
        body = COMMON_16.replace('"100"', f'"{rng.randint(0, 10**7)}"').replace('"7.40"', f'"{rng.random() * 10:.3f}"')
        if i % 37 == 0:
            body = body.replace('"Wh"', '"W\\u0068"')
        calls.append(("CP1", MV, body))
    monkeypatch.setattr(walk_module, "_PIECE", 50)
    compiled, reference = both_ways(conversation(calls), monkeypatch)
    assert compiled[1].height == 600
    assert_same(compiled, reference)


def test_schema_classes_from_c_are_the_polars_classes():
    """The schema check's class keys computed in C group payloads exactly as :func:`schemas.class_key` does
    (for compact payloads: C also ignores whitespace, which no schema reads)."""
    from ocpptool.analysis import schemas
    from ocpptool.analysis.walk import class_keys

    rng = random.Random(3)
    parts = ['"Accepted"', '"Acceptee"', '"Charging"', '"abc"', '"xyz1"', '"é"', '"a\\u0062"', "12", "99", "-1",
             "1.5", "2.5", "1e5", "2e5", "true", "false", "null", '"\ue000x"', '""', '"2025-03-01T12:00:00Z"']
    payloads = []
    for _ in range(400):
        members = [f'"{rng.choice(["status", "idTag", "value", "k1", "k2"])}":{rng.choice(parts)}'
                   for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.3:
            members.append(f'"list":[{",".join(rng.choice(parts) for _ in range(rng.randint(0, 2)))}]')
        payloads.append("{" + ",".join(members) + "}")
    payloads += ["not json", "{", '{"a":1}']
    s = pl.Series(payloads)
    enums = schemas.enum_values()
    c = class_keys(s, enums)
    p = pl.select(key=schemas.class_key(pl.lit(s)))

    def partition(keys: pl.Series) -> set[frozenset[int]]:
        groups: dict[int, set[int]] = {}
        for i, k in enumerate(keys.to_list()):
            groups.setdefault(k, set()).add(i)
        return {frozenset(g) for g in groups.values()}

    assert partition(c["key"]) == partition(p["key"])
    assert 20 < len(partition(c["key"])) < 400  # classes merge payloads, and keep them apart


@pytest.mark.parametrize("energy_only", [False, True], ids=["all-samples", "register-only"])
def test_the_walk_keys_the_payloads_it_is_sure_of_as_class_keys_does(energy_only):
    """The schema check takes the walked payloads' class keys from the walk (one read of the bytes, not two):
    for every payload the walker is sure of they are class_keys' own; the others are
    left null for class_keys. Real, odd and mutated payloads of every kind (numbers in exponent form,
    nested arrays, enum values and other text, whitespace, unitOfMeasure objects)."""
    from ocpptool.analysis import schemas
    from ocpptool.analysis.derived import _CONFIGS
    from ocpptool.analysis.walk import class_keys, walk

    extra = [
        '{"a":[1,2.5e3,true,false,null,"Wh",{"b":[]},[[]]],"meterValue":[{"timestamp":"2026-01-01T00:00:00Z",'
        '"sampledValue":[{"value":"1","unit":"kWh","measurand":"Power.Active.Import"}]}]}',
        '{ "connectorId" : 1 , "meterValue" : [ { "timestamp" : "2026-01-01T00:00:00Z" , "sampledValue" : [ { '
        '"value" : "12.5" , "unitOfMeasure" : { "unit" : "kWh" , "multiplier" : 3 } } ] } ] , "x" : {"y":[1E5]}}',
        '{"status":"Available","connectorId":1,"errorCode":"NoError","timestamp":"2026-01-01T00:00:00Z"}',
    ]
    from ocpptool.analysis.derived import _KINDS

    base = [(p, _KINDS[a]) for a, p in ODD if a in _KINDS] + [(COMMON_16, 0), (COMMON_201, 2)]
    base += [(extra[0], 0), (extra[1], 0), (extra[2], 3)]
    rng = random.Random(11)
    rows = base * 4
    for n in range(3000):
        text, kind = rng.choice(base)
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            if n % 3 == 0:  # anything, anywhere, read as any kind: mostly payloads the walker leaves
                b[i:i + rng.randint(0, 1)] = bytes([rng.choice(b'{}[],:" 0123456789.-eEtrufalsnZ')])
                kind = rng.randrange(len(_CONFIGS))
            elif chr(b[i]).isalnum():  # other text, other lengths, other numbers, other enum values
                b[i:i + rng.randint(0, 1)] = bytes([rng.choice(b"0123456789aZ")]) * rng.randint(0, 2)
            else:
                b[i:i] = b" "
        rows.append((b.decode("utf-8", "replace"), kind))
    s = pl.Series([p for p, _ in rows])
    kinds = pl.Series([k for _, k in rows], dtype=pl.UInt8)
    enums = schemas.enum_values()
    walked = walk(s, _CONFIGS, kinds, energy_only=energy_only, enums=enums)
    assert walked.keys is not None
    reference = class_keys(s, enums)
    sure = walked.sure
    # the walker is sure of the intact payloads and of many mutated ones, of many classes
    assert sure.sum() > 600 and walked.keys.filter(sure)["key"].n_unique() > 150
    assert_frame_equal(walked.keys.filter(sure), reference.filter(sure))
    assert walked.keys.filter(~sure).null_count().row(0) == ((~sure).sum(),)
    # and without enums, the walk keys nothing and reads the same
    plain = walk(s, _CONFIGS, kinds, energy_only=energy_only)
    assert plain.keys is None and plain.sure.equals(walked.sure)
    assert_frame_equal(plain.samples, walked.samples)


@pytest.mark.parametrize("pure", ["", "1"], ids=["walker", "polars"])
def test_keeping_only_the_energy_register_changes_no_finding(pure, monkeypatch):
    """`analyze` without --export keeps only the energy register's samples (all the detectors read): the
    findings and the other tables are the same as with every sample, and the samples kept are the full
    table's register rows. What the analysis reads per message still counts every sample: a stop-only
    transaction takes its connector from a MeterValues that holds only a voltage."""
    if pure:
        monkeypatch.setenv("OCPPTOOL_PURE", "1")
    voltage_only = ('{"connectorId":2,"transactionId":555,"meterValue":[{"timestamp":"2025-03-01T12:00:00Z",'
                    '"sampledValue":[{"value":"230.1","measurand":"Voltage","unit":"V"}]}]}')
    stop = '{"transactionId":555,"meterStop":1200,"timestamp":"2025-03-01T12:00:03Z"}'
    base = odd_tables()
    extra = conversation([("CPX", "MeterValues", voltage_only), ("CPX", "StopTransaction", stop)])
    for tables in (base, extra):
        full = run(tables, Options())
        lean = run(tables, Options(), meter_values=False)
        assert_frame_equal(lean.findings, full.findings)
        assert_frame_equal(lean.transactions, full.transactions)
        assert_frame_equal(lean.statuses, full.statuses)
        register = full.meter_values.filter(pl.col("measurand") == "Energy.Active.Import.Register")
        assert_frame_equal(lean.meter_values, register)
        assert lean.meter_values.height < full.meter_values.height
    stop_only = lean.transactions.filter(pl.col("transaction_id") == "555")
    assert stop_only["connector_id"].to_list() == [2] and stop_only["state"].to_list() == ["no-start"]


def test_sampled_values_read_through_templates_read_as_the_reference(monkeypatch):
    """A fleet repeats its sampled-value objects with only the value changing, and the walker reads a repeat
    through a template of the one before (its other fields, its class text): whatever the value is (text,
    number, null, true, a form Polars reads otherwise) and however little the rest differs (one unit letter,
    a multiplier, a key order, a space), each payload reads as the Polars reference reads it and keys as
    class_keys keys it. Tails the walker must not template (a timestamp or offline key, an exponent) too."""
    from ocpptool.analysis import schemas
    from ocpptool.analysis.derived import _CONFIGS, _KINDS
    from ocpptool.analysis.walk import class_keys, walk

    tails = [
        ',"context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","unit":"Wh"}',
        ',"context":"Sample.Periodic","measurand":"Energy.Active.Export.Register","unit":"Wh"}',  # (same length,
        ',"context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","unit":"kW"}',  # late changes)
        ',"context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","unit":"kWh"}',
        ',"context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","unit":"kWh" }',
        ',"measurand":"Energy.Active.Import.Register","context":"Sample.Periodic","unit":"Wh"}',
        ',"measurand":"Power.Active.Import","phase":"L1","unit":"kW"}',
        ',"measurand":"Energy.Active.Import.Register","unitOfMeasure":{"unit":"kWh","multiplier":3}}',
        ',"measurand":"Energy.Active.Import.Register","unitOfMeasure":{"unit":"kWh","multiplier":-1}}',
        ',"measurand":"Energy.Active.Import.Register","unitOfMeasure":{"unit":"Wh","multiplier":"2"}}',
        ',"unit":"Wh","x":[1,2.50,null,true,{"y":"z"}]}',
        ',"unit":"Wh","x":1e3}',
        ',"unit":"Wh","timestamp":"2025-03-01T12:00:00Z"}',
        ',"unit":"Wh","offline":true}',
        ',"format":"Raw","unit":"Wh","location":"Outlet"}',
        ',"format":false,"unit":"Wh"}',
        "}",
    ]
    plain = ['"2596341"', '"12.50"', '"-3"', "7608243", "232.0", "-0.5", "null", '" 5"', '"1E3"', '""', '"Wh"']
    values = plain * 4 + ["true", "1e3", '"a\\"b"', "[1]", '"0.1000000000000001"']  # (these: mostly not sure)
    rng = random.Random(7)
    calls = []
    for _ in range(400):
        n = rng.randint(1, 4)
        samples = ",".join(f'{{"value":{rng.choice(values)}{rng.choice(tails)}' for _ in range(n))
        if rng.random() < 0.3:  # the same objects in the same places, values only changing
            samples = ",".join(f'{{"value":{rng.choice(values)}{tails[i]}' for i in range(n))
        calls.append(("CP1", MV, f'{{"connectorId":1,"transactionId":7,"meterValue":[{{"timestamp":'
                                 f'"2025-03-01T12:00:00Z","sampledValue":[{samples}]}}]}}'))
    monkeypatch.setattr(walk_module, "_PIECE", 100)  # (two pieces, each with its own templates)
    compiled, reference = both_ways(conversation(calls), monkeypatch)
    assert compiled[1].height > 500
    assert_same(compiled, reference)
    s = pl.Series([p for *_, p in calls])
    kinds = pl.Series([_KINDS[MV]] * len(calls), dtype=pl.UInt8)
    enums = schemas.enum_values()
    for energy_only in (False, True):
        walked = walk(s, _CONFIGS, kinds, energy_only=energy_only, enums=enums)
        assert walked.sure.sum() > 100
        assert_frame_equal(walked.keys.filter(walked.sure), class_keys(s, enums).filter(walked.sure))
