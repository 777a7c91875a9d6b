import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpptool.protocol import Frame, MessageType, Weird, decode
from ocpptool.protocol.frames import encode
from ocpptool.sources.base import conform
from ocpptool.tables.build import decode_batch


@pytest.mark.parametrize(
    ("text", "mtype", "mid", "action", "payload"),
    [
        ('[2,"a1","Heartbeat",{}]', MessageType.CALL, "a1", "Heartbeat", "{}"),
        ('[3, "a1" , {"currentTime": "2024-01-01T00:00:00Z"} ]', MessageType.CALLRESULT, "a1", None,
         '{"currentTime": "2024-01-01T00:00:00Z"}'),
        ('[6,"s1","NotifyPeriodicEventStream",{"id":1}]', MessageType.SEND, "s1", "NotifyPeriodicEventStream", '{"id":1}'),
        ('  [2,"x","Authorize",{"idTag":"AB\\"C"}]\n', MessageType.CALL, "x", "Authorize", '{"idTag":"AB\\"C"}'),
        ('[3,"x",[]]', MessageType.CALLRESULT, "x", None, "[]"),
    ],
)
def test_well_formed_frames_decode_with_their_payload_verbatim(text, mtype, mid, action, payload):
    """A well-formed frame decodes to its type, id, action and the payload text exactly as sent."""
    f = decode(text)
    assert isinstance(f, Frame)
    assert (f.message_type, f.message_id, f.action, f.payload) == (mtype, mid, action, payload)


def test_call_errors_keep_code_description_and_details():
    """CALLERROR and 2.1 CALLRESULTERROR carry their error code, description and details."""
    f = decode('[4,"m","NotImplemented","no handler",{"k":1}]')
    assert isinstance(f, Frame)
    assert (f.message_type, f.error_code, f.error_description, f.error_details) == (
        MessageType.CALLERROR, "NotImplemented", "no handler", '{"k":1}')
    g = decode('[5,"m","InternalError","boom",{}]')
    assert isinstance(g, Frame) and g.message_type is MessageType.CALLRESULTERROR


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("[]", "empty"),
        ("hello", "not-json"),
        ('[2,"a","Heartbeat",{}', "not-json"),
        ('[2,"a","Heartbeat",{}] trailing', "not-json"),
        ('{"a":1}', "not-an-array"),
        ('[9,"a",{}]', "unknown-message-type"),
        ('[true,"a",{}]', "unknown-message-type"),
        ('["2","a","Heartbeat",{}]', "unknown-message-type"),
        ('[2,"a","Heartbeat"]', "wrong-arity"),
        ('[2,"a","Heartbeat",{},{}]', "wrong-arity"),
        ('[3,"a",{},1]', "wrong-arity"),
        ('[2,5,"Heartbeat",{}]', "bad-field-type"),
        ('[2,"a",7,{}]', "bad-field-type"),
        ('[2,"a","Heartbeat","x"]', "bad-field-type"),
        ('[3,"a","x"]', "bad-field-type"),
        ('[4,"a",1,"d",{}]', "bad-field-type"),
    ],
)
def test_broken_frames_become_weirds_with_a_reason(text, reason):
    """Anything that is not OCPP-J becomes a weird naming what is wrong, never an exception."""
    w = decode(text)
    assert isinstance(w, Weird)
    assert w.reason == reason


def test_encode_round_trips_the_usual_layout():
    """Decoding then encoding a compact frame gives back the same text."""
    for text in ['[2,"a","Heartbeat",{}]', '[3,"a",{"status":"Accepted"}]', '[4,"a","GenericError","x",{}]']:
        f = decode(text)
        assert isinstance(f, Frame)
        assert encode(f) == text


def test_every_prefix_of_a_frame_is_a_weird_not_a_crash():
    """A frame cut at any byte (a truncated log line) decodes to a weird, and only the whole frame is a frame."""
    text = '[2,"19223201","MeterValues",{"connectorId":1,"meterValue":[{"sampledValue":[{"value":"1.5"}]}]}]'
    for cut in range(len(text)):
        assert isinstance(decode(text[:cut]), Weird)
    assert isinstance(decode(text), Frame)


def _vectorised(texts):
    raw = conform(pl.DataFrame({"text": texts, "source": ["t"] * len(texts), "source_pos": list(range(len(texts)))},
                               schema={"text": pl.String, "source": pl.String, "source_pos": pl.Int64}))
    msgs, weirds = decode_batch(raw)
    out = {}
    for r in msgs.with_row_index("i").iter_rows(named=True):
        out[r["source_pos"]] = ("frame", r["message_type"], r["message_id"], r["action"], r["payload"],
                                r["error_code"], r["error_description"], r["error_details"])
    for r in weirds.iter_rows(named=True):
        out[r["source_pos"]] = ("weird", r["reason"])
    return [out[i] for i in range(len(texts))]


def _reference(text):
    f = decode(text)
    if isinstance(f, Weird):
        return ("weird", f.reason)
    return ("frame", f.message_type.name, f.message_id, f.action, f.payload, f.error_code, f.error_description,
            f.error_details)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10), st.text(max_size=6))
frames_like = st.one_of(
    st.text(max_size=40),
    st.builds(lambda t, i, a, p, sp: f"[{t},{sp}{i},{sp}{a},{p}]",
              st.sampled_from(["2", "3", "4", "6", "7", '"2"']),
              st.sampled_from(['"id"', '"a\\"b"', "5", '""']),
              st.sampled_from(['"Heartbeat"', "{}", '"x"', "3"]),
              st.sampled_from(["{}", '{"a":[1,{"b":"c"}]}', "{}, {}", "[]", '"s"', "{", '{"a":1}]']),
              st.sampled_from(["", " ", "\n"])),
    st.lists(json_scalars, max_size=6).map(lambda xs: __import__("json").dumps(xs)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames_like, min_size=1, max_size=12))
def test_vectorised_decoder_agrees_with_the_reference_decoder(texts):
    """The fast column decoder gives exactly what the reference decoder gives, row by row."""
    assert _vectorised(texts) == [_reference(t) for t in texts]


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_decoder_never_raises_on_arbitrary_text(text):
    """decode() returns a frame or a weird for any text at all."""
    assert isinstance(decode(text), Frame | Weird)
