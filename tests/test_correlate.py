from ocpptool.protocol import Correlator, Event, MessageType

C, R, E = MessageType.CALL, MessageType.CALLRESULT, MessageType.CALLERROR
UP, DOWN = "cp->csms", "csms->cp"


def play(script):
    """Feed (conn, direction, type, id) events; return {response index: call index} and open calls."""
    cor = Correlator()
    matches = {}
    for i, (conn, d, t, mid) in enumerate(script):
        m = cor.feed(Event(i, conn, d, t, mid))
        if m is not None:
            matches[i] = m.call_index
    return matches, cor.open_calls()


def test_a_response_pairs_with_the_call_of_the_same_id_in_the_other_direction():
    """A CALLRESULT answers the earlier CALL with its id that travelled the other way."""
    assert play([("c", UP, C, "1"), ("c", DOWN, R, "1")]) == ({1: 0}, [])


def test_same_direction_responses_do_not_pair():
    """A response travelling the same way as the call is an orphan, and the call stays open."""
    assert play([("c", UP, C, "1"), ("c", UP, R, "1")]) == ({}, [0])


def test_the_most_recent_unanswered_call_wins_when_ids_repeat():
    """With a reused id the response goes to the latest open call, then to the older one."""
    script = [("c", UP, C, "7"), ("c", UP, C, "7"), ("c", DOWN, R, "7"), ("c", DOWN, E, "7"), ("c", DOWN, R, "7")]
    assert play(script) == ({2: 1, 3: 0}, [])


def test_connections_are_kept_apart():
    """A response on another connection does not answer a call."""
    assert play([("a", UP, C, "1"), ("b", DOWN, R, "1")]) == ({}, [0])


def test_unknown_directions_match_either_way():
    """When a log does not say the direction, the response still finds its call."""
    assert play([("c", None, C, "1"), ("c", None, R, "1")]) == ({1: 0}, [])


def test_a_response_before_its_call_is_an_orphan():
    """A response that precedes every call with its id correlates with nothing."""
    assert play([("c", DOWN, R, "1"), ("c", UP, C, "1")]) == ({}, [1])


def test_send_is_never_answered_and_never_waits():
    """OCPP 2.1 SEND frames take no part in correlation."""
    assert play([("c", UP, MessageType.SEND, "1"), ("c", DOWN, R, "1")]) == ({}, [])


# The table builder resolves the common case with joins and replays tricky groups through the Correlator;
# both must give exactly the reference answer on any trace.
import polars as pl  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ocpptool.sources.base import conform  # noqa: E402
from ocpptool.tables.build import build_tables  # noqa: E402

_TEXT = {C: '[2,"{id}","DataTransfer",{{}}]', R: '[3,"{id}",{{}}]', E: '[4,"{id}","GenericError","",{{}}]'}
events = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([UP, DOWN, None]), st.sampled_from([C, R, E]),
              st.sampled_from(["1", "2", "3"])),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_table_correlation_equals_the_reference_correlator(script):
    """call_index and response_index in the messages table follow the correlation rule exactly."""
    expected, open_calls = play(script)
    raw = conform(pl.DataFrame(
        {"text": [_TEXT[t].format(id=mid) for _, _, t, mid in script],
         "conn": [c for c, *_ in script], "direction": [d for _, d, *_ in script],
         "source": ["s"] * len(script), "source_pos": list(range(len(script)))},
        schema={"text": pl.String, "conn": pl.String, "direction": pl.String, "source": pl.String,
                "source_pos": pl.Int64}))
    m = build_tables([raw]).messages
    got = {r["idx"]: r["call_index"] for r in m.iter_rows(named=True) if r["call_index"] is not None}
    assert got == expected
    assert sorted(m.filter((pl.col("message_type") == "CALL") & pl.col("response_index").is_null())["idx"]) == open_calls
    for r in m.iter_rows(named=True):
        if r["call_index"] is not None:
            assert m["response_index"][r["call_index"]] == r["idx"]
