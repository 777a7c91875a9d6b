"""The decode speed paths give exactly what the general paths give (property tests on generated input)."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpptool.sources.log_engine import extract, lines_frame
from ocpptool.sources.log_lines import MOBILITYHOUSE, MOBILITYHOUSE_BASIC

_ODD_TS = st.sampled_from(["2024-05-01 10:00:00,1234", "2024-05-01T10:00:00,123", "2024-05-01 10:00:00.123",
                           "[2024-05-01 10:00:00,123]", "2024-05-01 10:00:00,123 +0200", "",
                           "\u0662024-05-01 10:00:00,123"])  # fmt: skip
_WORD = st.text(alphabet="ab:-_. 0[]9\tZ", max_size=6)
_ODD_FRAME = st.sampled_from(["[", "[4,", '["x"]', "x [2]", '[3,"1",{}] trailing', '[3,"1",{}]]'])


def _part(draw, usual: str, odd) -> str:
    """Mostly the usual basicConfig part, sometimes a perturbed one."""
    return usual if draw(st.integers(0, 3)) else draw(odd)


@st.composite
def mobilityhouse_lines(draw) -> str:
    """Lines near the basicConfig layout: each part is either the usual one or a perturbed one."""
    ts = _part(draw, "2024-05-01 10:00:00,123", _ODD_TS)
    name = _part(draw, "ocpp", st.sampled_from(["ocpp.v16", "0cpp", "_x", "", "a b", "a:b"]) | _WORD)
    level = _part(draw, "INFO", st.sampled_from(["WARNING", "info", "", "IN FO", "A:"]) | _WORD)
    cp = _part(draw, "CP-0001", st.sampled_from(["CP_1", "cp:1", "", "a]b", "x y", "a[b", "a\u00a0b", "\u00e91", "a\\b", "a^b"]) | _WORD)
    verb = _part(draw, "receive message", st.sampled_from(["send", "receive", "send message", "sent", "receive  message"]))
    sep = _part(draw, " - ", st.sampled_from([" -  ", "-", " | ", ": "]))
    frame = _part(draw, '[2,"1","Heartbeat",{}]', _ODD_FRAME)
    return f"{ts}{sep}{name}{sep}{level}{sep}{cp}: {verb} {frame}"


@settings(max_examples=200, deadline=None)
@given(st.lists(mobilityhouse_lines(), min_size=1, max_size=8))
def test_mobilityhouse_fast_regex_captures_what_the_general_one_does(lines):
    """Reading mobilityhouse lines with the basicConfig fast regex gives the same rows and groups as without."""
    df = lines_frame(1, "\n".join(lines))
    general = extract(df, MOBILITYHOUSE.pattern, prefilter=MOBILITYHOUSE.prefilter, literal=False)
    fast = extract(df, MOBILITYHOUSE.pattern, prefilter=MOBILITYHOUSE.prefilter, literal=False,
                   fast=MOBILITYHOUSE_BASIC)
    assert fast.to_dicts() == general.to_dicts()


def test_mobilityhouse_fast_regex_matches_the_basicconfig_layout():
    """The fast regex really takes the common basicConfig line (so the benchmark measures it)."""
    line = '2024-05-01 00:00:02,576 - ocpp - INFO - CP-0255: receive message [2,"a","Heartbeat",{}]'
    got = pl.Series([line]).str.extract_groups(MOBILITYHOUSE_BASIC).struct.unnest().row(0, named=True)
    assert got == {"ts": "2024-05-01 00:00:02,576", "cp": "CP-0255", "dir": "receive",
                   "frame": '[2,"a","Heartbeat",{}]'}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ab\n", max_size=12), max_size=12), st.integers(1, 30))
def test_merged_chunks_keep_every_line_and_its_number(texts, target):
    """Merging a reader's chunks into bigger pieces keeps every line, its number and the cuts of long lines."""
    from ocpptool.sources.log_engine import merged_chunks

    chunks, line = [], 1
    for i, text in enumerate(texts):
        cut = i % 3 == 2  # every third chunk is the cut-off rest of the previous chunk's last line
        start = line - 1 if cut and chunks else line
        chunks.append((start, text))
        line = start + text.count("\n") + 1

    def lines(pieces):
        out = []
        for first, text in pieces:
            out.extend((first + i, part) for i, part in enumerate(text.split("\n")))
        return out

    assert lines(merged_chunks(chunks, target)) == lines(chunks)
