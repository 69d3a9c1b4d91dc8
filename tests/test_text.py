"""Streaming detokenisation: whole characters only, stop strings never leak."""

from __future__ import annotations

import pytest

from edgespec.text import TextStream


def stream(pieces: list[bytes], stop=()):
    ts = TextStream(lambda i: pieces[i], stop)
    shown = [ts.push([i]) for i in range(len(pieces))]
    shown.append(ts.flush())
    return shown, ts


def test_character_split_across_tokens_is_held_until_complete():
    data = "é✓日".encode()  # 2 + 3 + 3 bytes, fed one byte per token
    shown, ts = stream([bytes([b]) for b in data])
    assert "".join(shown) == "é✓日"
    assert all("\ufffd" not in s for s in shown)
    assert shown[0] == "" and shown[1] == "é"


def test_incomplete_character_at_the_end_is_replaced():
    shown, _ = stream([b"ok", b"\xe6\x97"])
    assert "".join(shown) == "ok\ufffd"


@pytest.mark.parametrize(
    "pieces,stop,expected",
    [
        ([b"Hello", b" ##", b"#", b"END"], ["###"], "Hello "),
        ([b"a<", b"/s", b">b"], ["</s>"], "a"),
        ([b"ab", b"c", b"d"], ["cx"], "abcd"),
        ([b"x", b"STOP", b"more"], ["STOP", "x"], ""),
    ],
)
def test_stop_strings(pieces, stop, expected):
    shown, ts = stream(pieces, stop)
    assert "".join(shown) == expected == ts.text
    assert ts.stopped == any(s in b"".join(pieces).decode() for s in stop)


def test_text_that_might_start_a_stop_string_is_held_back():
    ts = TextStream(lambda i: [b"abc", b"<e", b"nd"][i], ["<end>"])
    assert ts.push([0]) == "abc"
    assert ts.push([1]) == ""  # could be the start of <end>
    assert ts.push([2]) == ""
    assert ts.flush() == "<end"
