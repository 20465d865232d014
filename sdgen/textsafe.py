"""Text from users and the spool made inert before it reaches a terminal or a log.

A request name, a rejection reason or a file name may hold ESC and other controls (a
terminal runs them: clear the screen, retitle the window, fake a line of output) or bidi
overrides that make text read differently than it is. Intake refuses them in new requests,
but spool files written before that, reasons quoting input, and file names can still hold
them, so every place that prints such text passes it through `printable` first.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: a name printed on one row must stay one row),
# DEL, C1 controls, and the Unicode format characters that reorder or hide text:
# bidi embeddings/overrides/isolates, LRM/RLM/ALM, zero-width joiners, line/paragraph
# separators, and the BOM. Lone surrogates too: file names read with surrogateescape hold
# them, and printing one raises UnicodeEncodeError instead of showing anything.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ud800-\udfff\ufeff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(s, limit: int | None = None) -> str:
    """`s` (any value: it is str()-ed) with every control and bidi character shown as a
    visible `\\x1b` / `\\u202e` escape; shortened to `limit` characters with `...` if given.
    Backslashes are left alone: the output is for people, not for parsing back."""
    text = _UNSAFE.sub(_escape, s if isinstance(s, str) else str(s))
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text
