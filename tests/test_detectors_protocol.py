"""Protocol detectors: request/response discipline and the official OCPP schemas."""

from __future__ import annotations

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ocpptool.analysis import run, schemas
from ocpptool.pipeline import load
from ocpptool.tables.build import Tables

from .conftest import PUBLIC, REPO, need
from .test_detectors_time import call, down, error, findings, fleet, frames, meter, result, up

HB = call("h", "Heartbeat")


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Tables:
    return fleet(str(tmp_path_factory.getbasetemp()))  # the recording the time tests made, if they ran


# --------------------------------------------------------------------------- unanswered-call


def test_a_call_never_answered_while_the_capture_goes_on_is_an_error():
    """No response and a minute more of capture: unanswered-call, error."""
    t = frames(up(0, meter("m", 0)), up(60, call("x", "Heartbeat")), down(60.1, result("x")))
    f = findings(t, "unanswered-call")
    assert f.select("severity", "evidence").rows() == [("error", [0])]


def test_a_call_at_the_end_of_the_capture_is_only_info():
    """The capture ends 5 s after the call, before the 30 s timeout: info, and the summary says so."""
    t = frames(up(0, HB), down(0.1, result("h")), up(10, meter("m", 10)), down(15, result("other")))
    f = findings(t, "unanswered-call")
    assert f["severity"].to_list() == ["info"]
    assert "capture ends" in f["summary"][0]


def test_a_call_skipped_by_the_peer_is_an_error_even_in_compressed_time():
    """When a later call of the same side was answered, the missing answer will never come."""
    t = frames(up(0, meter("m", 0)), up(1, call("x", "Heartbeat")), down(1.1, result("x")))
    assert findings(t, "unanswered-call")["severity"].to_list() == ["error"]


def test_an_answer_after_the_timeout_is_a_warning():
    """A response 45 s late (timeout 30 s) is reported as late, with its latency."""
    t = frames(up(0, HB), down(45, result("h")))
    f = findings(t, "unanswered-call")
    assert f.select("severity", "value", "evidence").rows() == [("warning", 45.0, [0, 1])]


def test_answered_calls_are_not_unanswered():
    """Every call answered in time: nothing."""
    assert findings(frames(up(0, HB), down(0.2, result("h"))), "unanswered-call").is_empty()


# --------------------------------------------------------------------------- call-error


def test_identical_errors_are_one_finding_and_non_standard_codes_are_flagged():
    """Three MeterValues answered "Handler not implemented" make one finding with count 3."""
    rows = []
    for i in range(3):
        rows += [up(i, meter(f"m{i}", i)), down(i + 0.1, error(f"m{i}", "Handler not implemented", "nope"))]
    f = findings(frames(*rows), "call-error")
    assert_frame_equal(
        f.select("severity", "value", "evidence"),
        pl.DataFrame({"severity": ["warning"], "value": [3.0], "evidence": [[1, 3, 5]]}),
    )
    assert "not a standard OCPP-J error code" in f["summary"][0]
    assert "3 MeterValues call(s)" in f["summary"][0]


def test_a_standard_error_code_is_not_called_non_standard():
    """InternalError is in the OCPP-J set."""
    f = findings(frames(up(0, meter("m", 0)), down(0.1, error("m", "InternalError"))), "call-error")
    assert f.height == 1 and "not a standard" not in f["summary"][0]


def test_different_codes_are_different_findings():
    """Two codes for the same action are two findings."""
    t = frames(up(0, meter("a", 0)), down(0.1, error("a", "InternalError")), up(1, meter("b", 1)),
               down(1.1, error("b", "GenericError")))  # fmt: skip
    assert findings(t, "call-error").height == 2


# --------------------------------------------------------------------------- orphan-response


def test_a_response_to_nothing_mid_capture_is_an_orphan():
    """A CALLRESULT long after the start whose id no call used: warning."""
    t = frames(up(0, HB), down(0.1, result("h")), down(100, result("ghost")))
    f = findings(t, "orphan-response")
    assert f.select("severity", "evidence").rows() == [("warning", [2])]


def test_an_orphan_at_the_start_of_the_capture_is_info():
    """Its call was most likely sent just before the capture began."""
    t = frames(down(0, result("ghost")), up(100, HB), down(100.1, result("h")))
    f = findings(t, "orphan-response")
    assert f["severity"].to_list() == ["info"]
    assert "likely before" in f["summary"][0]


# --------------------------------------------------------------------------- duplicate-message-id


def test_reusing_an_id_while_the_first_call_is_open_is_a_duplicate():
    """Two calls with id 7 from the charger before any answer: one finding with both."""
    t = frames(up(0, call("7", "Heartbeat")), up(1, meter("7", 1)), down(1.5, result("7")))
    f = findings(t, "duplicate-message-id")
    assert f["evidence"].to_list() == [[0, 1]]


def test_an_id_reused_much_later_is_not_a_duplicate():
    """Id 7 reused an hour after its answer (a counter restart) is not reported."""
    t = frames(up(0, call("7", "Heartbeat")), down(0.1, result("7")), up(3600, call("7", "Heartbeat")),
               down(3600.1, result("7")))  # fmt: skip
    assert findings(t, "duplicate-message-id").is_empty()


def test_the_same_id_in_both_directions_is_not_a_duplicate():
    """Each side has its own ids."""
    t = frames(up(0, call("1", "Heartbeat")), down(0.1, result("1")), down(1, call("1", "GetConfiguration")),
               up(1.1, result("1", {"configurationKey": []})))  # fmt: skip
    assert findings(t, "duplicate-message-id").is_empty()


# --------------------------------------------------------------------------- concurrent-calls


def test_calls_in_flight_together_are_one_episode_with_the_maximum():
    """Three calls sent before the first answer: one finding, value 3."""
    t = frames(up(0, call("a", "Heartbeat")), up(0.1, meter("b", 0)), up(0.2, call("c", "Heartbeat")),
               down(0.3, result("a")), down(0.4, result("b")), down(0.5, result("c")),
               up(5, call("d", "Heartbeat")), down(5.1, result("d")))  # fmt: skip
    f = findings(t, "concurrent-calls")
    assert f.select("value", "evidence").rows() == [(3.0, [0, 1, 2])]


def test_one_call_per_side_at_a_time_is_fine():
    """A charger call and a CSMS call open at once are not concurrent: each side has one."""
    t = frames(up(0, HB), down(0.1, call("g", "GetConfiguration")), down(0.2, result("h")),
               up(0.3, result("g", {"configurationKey": []})))  # fmt: skip
    assert findings(t, "concurrent-calls").is_empty()


def test_an_unanswered_call_does_not_make_later_calls_concurrent():
    """A call that never got an answer is unanswered-call's business, not an open call forever."""
    t = frames(up(0, meter("m", 0)), up(5, HB), down(5.1, result("h")), up(10, call("x", "Heartbeat")),
               down(10.1, result("x")))  # fmt: skip
    assert findings(t, "concurrent-calls").is_empty()


# --------------------------------------------------------------------------- schema-violation

BOOT = {"chargePointVendor": "Acme", "chargePointModel": "M" * 36}


def test_a_model_longer_than_cistring20_is_a_schema_violation():
    """A 36-character chargePointModel breaks BootNotification's CiString20."""
    f = findings(frames(up(0, call("b", "BootNotification", BOOT))), "schema-violation")
    assert f["evidence"].to_list() == [[0]]
    assert "$.chargePointModel is longer than 20 characters (36)" in f["summary"][0]


def test_identical_violations_group_into_one_finding_with_a_count():
    """Two boots with the same fault on one charger: one finding, value 2."""
    t = frames(up(0, call("a", "BootNotification", BOOT)), up(9, call("b", "BootNotification", BOOT)))
    assert findings(t, "schema-violation").select("value", "evidence").rows() == [(2.0, [0, 1])]


def test_valid_requests_and_responses_give_no_violation():
    """A correct boot and its correct response are quiet."""
    t = frames(
        up(0, call("a", "BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "M1"})),
        down(
            0.1, result("a", {"currentTime": "2026-01-05T10:00:00Z", "interval": 300, "status": "Accepted"})
        ),
    )
    assert findings(t, "schema-violation").is_empty()


def test_a_response_breaking_its_schema_is_a_violation():
    """A BootNotification response without status is reported against BootNotificationResponse.json."""
    t = frames(up(0, call("a", "BootNotification", {"chargePointVendor": "A", "chargePointModel": "M"})),
               down(0.1, result("a", {"currentTime": "2026-01-05T10:00:00Z", "interval": 300})))  # fmt: skip
    f = findings(t, "schema-violation")
    assert "BootNotificationResponse.json" in f["summary"][0] and "'status' is a required" in f["summary"][0]


def sampled(phase: str, value: object = "12.5", connector: object = 1) -> str:
    mv = {"connectorId": connector, "meterValue": [{"timestamp": "2026-01-05T10:00:00Z",
          "sampledValue": [{"value": value, "measurand": "Voltage", "phase": phase, "unit": "V"}]}]}  # fmt: skip
    return call("m", "MeterValues", mv)


def naive(tables) -> dict[int, list[str]]:
    """The reference: jsonschema on every row, one by one."""
    out = {}
    m = tables.messages.filter(
        pl.col("message_type").is_in(["CALL", "CALLRESULT"]), pl.col("action").is_not_null()
    )
    for r in m.iter_rows(named=True):
        d = schemas.VERSION_DIRS.get(r["ocpp_version"])
        v = d and schemas.validator(
            d, schemas.schema_name(d, r["action"], "request" if r["message_type"] == "CALL" else "response")
        )
        if v:
            errs = sorted({schemas.describe(e) for e in v.iter_errors(orjson.loads(r["payload"]))})
            if errs:
                out[r["idx"]] = errs
    return out


def flagged(tables) -> dict[int, int]:
    f = findings(tables, "schema-violation").explode("evidence")
    return dict(f.group_by("evidence").len().iter_rows())


def test_rows_coded_by_number_check_the_schemas_named_by_text():
    """The compiled check codes each row's schema as a number (action, version, kind) instead of building its
    name per row: every version, message type and action, known or not, picks the same schema (or none)."""
    files = schemas._schema_files()
    actions = sorted({n for _, n in files} | {n.removesuffix("Request") for _, n in files} | {"NoSuchAction"})
    rows = [
        (version, mtype, action)
        for version in [*schemas.VERSION_DIRS, "9.9", None]
        for mtype in ("CALL", "CALLRESULT", "CALLERROR")
        for action in [*actions, None]
    ]
    m = pl.DataFrame(rows, schema=["ocpp_version", "message_type", "action"], orient="row").with_row_index("idx")
    m = m.with_columns(idx=pl.col("idx").cast(pl.Int64), payload=pl.lit("{}"), note=pl.lit(None, pl.String),
                       ts=pl.lit(None, pl.Datetime("us", "UTC")), conn=pl.lit("c"), charge_point_id=pl.lit("cp"))
    by_name = schemas._rows(m.lazy()).select("idx", "ocpp_version", "action", "kind", "dir", "schema")
    by_code = schemas._coded_rows(m.lazy()).join(schemas._checked_schemas()[2].lazy(), on="sid").select(by_name.collect_schema().names())
    want = by_name.collect()
    assert want.height > 500 and {"v16", "v201", "v21"} <= set(want["dir"])
    assert want.filter(pl.col("action") == "BootNotificationResponse", pl.col("kind") == "request")["schema"].to_list() == [
        "BootNotificationResponse"]
    assert_frame_equal(by_code.collect().sort("idx"), want)


def test_blurring_digits_never_hides_a_violation():
    """Payloads that differ only in digits (L1 vs L4, 1 vs 1.5, short vs long numbers) get exact verdicts."""
    variants = [sampled("L1"), sampled("L2-N", "99999"), sampled("L4"), sampled("L9"), sampled("L3", "1"),
                sampled("L1", 12.5), sampled("L1", connector=1.5), sampled("L1", connector=1.0),
                sampled("L1", connector=-1), sampled("L4-N")]  # fmt: skip
    t = frames(*[up(i, v) for i, v in enumerate(variants)])
    expected = naive(t)
    assert set(expected) >= {2, 3, 5, 9}
    assert flagged(t) == {i: len(e) for i, e in expected.items()}


def test_meter_values_classed_by_template_get_exact_verdicts():
    """MeterValues classed through their templates (values and timestamps cut out) get row-by-row verdicts."""

    def mv(value: object, stamp: object = "2026-01-05T10:00:00Z", phase: str = "L1", **extra) -> str:
        sample = {"value": value, "measurand": "Voltage", "phase": phase, "unit": "V", **extra}
        return call("m", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": [sample]}]})

    variants = [mv("230"), mv("23.5"), mv("2350"), mv("L1"), mv("L4"), mv("abc"), mv("12", "2026-01-05T10:00:00.5Z"),
                mv("12", "2026-01-05T10:00:00+01:00"), mv("12", "yesterday"), mv("12", 5), mv("12", phase="L4"),
                mv("12", context="Sample.Periodik"), mv("12", context="Sample.Periodic"), mv(12), mv("")]  # fmt: skip
    t = frames(*[up(i, v) for i, v in enumerate(variants)])
    expected = naive(t)
    assert set(expected) >= {9, 10, 11, 13}
    assert flagged(t) == {i: len(e) for i, e in expected.items()}


def flagged_lines(tables) -> dict[int, list[str]]:
    """The detector's error lines per message (read back from the summaries)."""
    out: dict[int, list[str]] = {}
    for summary, evidence in findings(tables, "schema-violation").select("summary", "evidence").iter_rows():
        for idx in evidence:
            out.setdefault(idx, []).append(summary.split(".json: ", 1)[1][:-1])
    return {k: sorted(v) for k, v in out.items()}


def test_blurring_letters_with_digits_never_hides_a_violation():
    """Payloads that differ only in letters and digits (ids, enum values, exponents, true/null) get exact error lines."""

    def stop(tag: str, reason: str = '"Local"', meter: str = "1234") -> str:
        body = f'{{"meterStop":{meter},"timestamp":"2026-01-05T10:00:00Z","transactionId":7,"reason":{reason},"idTag":{tag}}}'
        return f'[2,"s","StopTransaction",{body}]'

    def status(connector: str, value: str = "Available") -> str:
        body = f'{{"connectorId":{connector},"errorCode":"NoError","status":"{value}"}}'
        return f'[2,"n","StatusNotification",{body}]'

    texts = [stop('"04DE1B8AFC5BEE"'), stop('"0412A7"'), stop('"AB12"'), stop(f'"{"A" * 21}"'), stop(f'"{"0" * 21}"'),
             stop('"ab"', '"Locak"'), stop('"ab"', '"Lacal"'), stop('"ab"', '"Remote"'), stop("123"), stop("1e3"),
             stop("150"), stop("1.5e0"), stop("true"), stop("null"), stop('"ab"', meter="1234"),
             stop('"ab"', meter='"1234"'), stop('"ab"', meter="1e3"), status("1"), status("1e0"), status("9"),
             status("true"), status("null"), status("1", "Charging"), status("1", "Chargink"), status("1", "Faulted"),
             status("1", "faulted"), status("1", "Faulter")]  # fmt: skip
    t = frames(*[up(i, x) for i, x in enumerate(texts)])
    expected = naive(t)
    assert set(expected) >= {3, 4, 5, 6, 8, 9, 12, 15, 20, 21, 23, 25, 26}
    assert flagged_lines(t) == expected


def test_unicode_escapes_do_not_blur_string_lengths():
    """Two escapes count as two characters, one surrogate pair as one: CiString20 verdicts stay exact."""
    pair, two = "\\ud83d\\ude00", "\\u0041\\u0042"
    texts = [f'[2,"b{i}","BootNotification",{{"chargePointVendor":"A","chargePointModel":"{"M" * 19}{e}"}}]'
             for i, e in enumerate([pair, two])]  # fmt: skip
    t = frames(*[up(i, x) for i, x in enumerate(texts)])
    assert flagged(t) == {i: len(e) for i, e in naive(t).items()} == {1: 1}


def test_2x_bounds_are_checked_exactly():
    """A 2.0.1 value under a numeric bound is validated payload by payload, not by class."""

    def notify(soc):
        return call("n", "NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_single_phase"}, "maxScheduleTuples": soc})  # fmt: skip

    t = frames(up(0, notify(5)), up(1, notify(-5)), version="ocpp2.0.1")
    assert flagged(t) == {i: len(e) for i, e in naive(t).items()}


def test_public_captures_with_real_violations_are_found():
    """capt_error.pcapng: a 36-character chargePointModel against CiString20."""
    path = need(PUBLIC / "checkocpp" / "capt_error.pcapng")
    try:
        tables, _ = load([str(path)], progress=False)
    except Exception as exc:  # the capture engine may be missing on this machine
        pytest.skip(f"capture does not decode here: {exc}")
    f = run(tables, only=["schema-violation"]).findings
    assert any("chargePointModel is longer than 20" in s for s in f["summary"])


# --------------------------------------------------------------------------- recorded and public traffic


def test_a_recorded_unanswered_call_is_an_error(recorded):
    """The CSMS never answers CP-MUTE's first MeterValues: one unanswered-call error there."""
    f = findings(recorded, "unanswered-call").filter(pl.col("severity") == "error")
    assert f["charge_point_id"].to_list() == ["CP-MUTE"]
    assert "MeterValues" in f["summary"][0]


def test_a_recorded_callerror_is_a_call_error(recorded):
    """The CSMS handler raising once gives one InternalError call-error on CP-ERR."""
    f = findings(recorded, "call-error")
    assert f.select("charge_point_id", "value").rows() == [("CP-ERR", 1.0)]
    assert '"InternalError"' in f["summary"][0]


def test_the_recorded_fleet_breaks_no_schema(recorded):
    """Traffic produced by the ocpp library validates against the schemas that library ships."""
    assert findings(recorded, "schema-violation").is_empty()


def test_filmar_log_gives_grouped_non_standard_errors_and_its_unanswered_calls():
    """filmar-client-sim: 790 non-standard CALLERRORs in 4 findings (735 in one) and 5 unanswered calls."""
    tables, _ = load([str(need(PUBLIC / "filmar-client-sim" / "ocpp.log"))], progress=False)
    f = run(tables, only=["call-error", "unanswered-call"]).findings
    errors = f.filter(pl.col("code") == "call-error")
    assert sorted(errors["value"].to_list()) == [1.0, 2.0, 52.0, 735.0]
    assert all("not a standard" in s for s in errors["summary"])
    assert f.filter(pl.col("code") == "unanswered-call").height == 5


def test_quench_charger_has_calls_in_flight_together():
    """TS0064: three StatusNotifications in flight, then two of them and an Authorize (log order)."""
    path = need(PUBLIC / "quench-dc-charger" / "TS0064-emergency-stop.excerpt.log")
    tables, _ = load([str(path)], progress=False)
    f = run(tables, only=["concurrent-calls"]).findings
    assert f.select("value", "evidence").rows() == [(3.0, [0, 1, 2, 4])]


def test_fleet_demo_protocol_findings_are_its_ground_truth():
    """fleet-demo: CP-004's MeterValues unanswered (error), CP-005's InternalError, nothing else."""
    tables, _ = load([str(REPO / "captures" / "fleet-demo.jsonl")], progress=False)
    codes = ["unanswered-call", "call-error", "orphan-response", "duplicate-message-id", "concurrent-calls",
             "schema-violation"]  # fmt: skip
    f = run(tables, only=codes).findings
    assert sorted(f.select("code", "severity", "charge_point_id").rows()) == [
        ("call-error", "warning", "CP-005"),
        ("unanswered-call", "error", "CP-004"),
    ]


@pytest.mark.parametrize("given", [False, True])
def test_side_codes_group_calls_exactly_as_connection_and_direction(given):
    """The one number per side that concurrent-calls and unanswered-call group by: equal for the rows of one
    (conn, direction), different across them, nulls included, whether run() gave the connection's code or
    it is computed (fails if the direction or a null is dropped from the code)."""
    from ocpptool.analysis.registry import CONN_CODE, side_code

    frame = pl.DataFrame({
        "conn": ["a", "a", "b", None, None, "a", "b", None, "a"],
        "direction": ["cp->csms", "csms->cp", "cp->csms", "cp->csms", None, None, "csms->cp", "cp->csms", "x"],
    })  # fmt: skip
    if given:
        frame = frame.with_columns(**{CONN_CODE: pl.col("conn").cast(pl.Categorical).to_physical()})
    got = frame.lazy().with_columns(_side=side_code(frame.lazy())).collect()
    pairs = got.group_by("conn", "direction").agg(pl.col("_side").n_unique().alias("n"), pl.col("_side").first())
    assert pairs["n"].to_list() == [1] * pairs.height  # one code per pair
    assert pairs["_side"].n_unique() == pairs.height == 8  # a code of its own for each pair
