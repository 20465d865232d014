"""printable(): user text made inert for terminals and logs."""

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from sdgen.textsafe import printable


def test_controls_and_bidi_overrides_become_visible_escapes():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\u202ey\u2066z\x9b\x7f\tq\n") == "x\\u202ey\\u2066z\\x9b\\x7f\\x09q\\x0a"
    assert printable("caf\u00e9 \u732b") == "caf\u00e9 \u732b"  # ordinary text is untouched
    assert printable("bad\udcff") == "bad\\udcff"
    assert printable(42) == "42"
    assert printable("abcdefghij", limit=6) == "abc..."


@given(st.text(st.characters(), max_size=200), st.one_of(st.none(), st.integers(3, 50)))
def test_nothing_a_terminal_acts_on_survives(text, limit):
    out = printable(text, limit)
    assert all(unicodedata.category(c) not in ("Cc", "Cs") for c in out)
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in out)
    out.encode("utf-8")  # printing it can never raise
    if limit is not None:
        assert len(out) <= limit
