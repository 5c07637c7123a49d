"""RFC 6242 framing: 1.0 end-of-message and 1.1 chunked, split anywhere, size limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netconf_core.framing import _CHUNK_HEADER, OUT_CHUNK, Framer, FramingError, TooBig


def drain(f: Framer) -> list[bytes | TooBig]:
    out = []
    while (m := f.next_message()) is not None:
        out.append(m)
    return out


def test_eom_basic_and_split_delimiter() -> None:
    f = Framer()
    f.feed(b"<a/>]]>")
    assert drain(f) == []
    f.feed(b"]]><b/>]]>]]>")
    assert drain(f) == [b"<a/>", b"<b/>"]


def test_hello_then_chunked_in_one_read() -> None:
    f = Framer()
    f.feed(b"<hello/>]]>]]>\n#5\n<rpc/\n#1\n>\n##\n")
    assert f.next_message() == b"<hello/>"
    f.use_chunked()
    assert f.next_message() == b"<rpc/>"
    assert f.next_message() is None


def test_chunked_frame_roundtrip() -> None:
    f = Framer()
    f.use_chunked()
    f.feed(f.frame(b"<x/>") + f.frame(b"<y>" + b"z" * 100 + b"</y>"))
    assert drain(f) == [b"<x/>", b"<y>" + b"z" * 100 + b"</y>"]


@pytest.mark.parametrize("bad", [
    b"\n#0\nx\n##\n",       # zero-length chunk
    b"\n#01\nx\n##\n",      # leading zero
    b"#1\nx\n##\n",         # missing LF
    b"\n#abc\n",            # not a number
    b"\n##\n",              # end marker without chunk
    b"\n#99999999999\n",    # more than 10 digits
])
def test_chunked_framing_errors(bad: bytes) -> None:
    f = Framer()
    f.use_chunked()
    f.feed(bad)
    with pytest.raises(FramingError):
        drain(f)


def test_size_limit_chunked_discards_and_recovers() -> None:
    f = Framer(max_message=100)
    f.use_chunked()
    f.feed(b"\n#80\n" + b"a" * 80 + b"\n#80\n" + b"b" * 40)
    assert drain(f) == []
    assert f.pending() < 100  # discarded data is not kept
    f.feed(b"b" * 40 + b"\n##\n" + f.frame(b"<ok/>"))
    out = drain(f)
    assert isinstance(out[0], TooBig) and out[0].size == 160
    assert out[1] == b"<ok/>"


def test_size_limit_eom_discards_and_recovers() -> None:
    f = Framer(max_message=50)
    f.feed(b"x" * 60)
    assert drain(f) == []
    f.feed(b"y" * 1000)
    assert drain(f) == []
    assert f.pending() < 50
    f.feed(b"]]>]]><ok/>]]>]]>")
    out = drain(f)
    assert isinstance(out[0], TooBig) and out[0].size == 1060
    assert out[1] == b"<ok/>"


messages = st.lists(st.binary(min_size=1, max_size=300).filter(lambda b: b"]]>]]>" not in b),
                    min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
       chunked=st.booleans())
def test_any_split_gives_same_messages(msgs: list[bytes], cuts: list[int], chunked: bool) -> None:
    enc = Framer()
    if chunked:
        enc.use_chunked()
    stream = b"".join(enc.frame(m) for m in msgs)
    dec = Framer()
    if chunked:
        dec.use_chunked()
    got: list[bytes | TooBig] = []
    prev = 0
    for c in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        dec.feed(stream[prev:c])
        prev = c
        got += drain(dec)
    assert got == msgs


def test_big_messages_go_out_in_bounded_chunks() -> None:
    """ncclient's chunk parser is quadratic in the size of one chunk: replies are split."""
    enc = Framer()
    enc.use_chunked()
    msg = b"<data>" + b"x" * (3 * OUT_CHUNK + 5) + b"</data>"
    out = enc.frame(msg)
    sizes = [int(m.group(1)) for m in _CHUNK_HEADER.finditer(out)]
    assert sizes == [OUT_CHUNK, OUT_CHUNK, OUT_CHUNK, len(msg) - 3 * OUT_CHUNK]
    assert out.endswith(b"\n##\n")
    small = enc.frame(b"<ok/>")
    assert small == b"\n#5\n<ok/>\n##\n"
    dec = Framer()
    dec.use_chunked()
    dec.feed(out + small)
    assert drain(dec) == [msg, b"<ok/>"]
