"""Text that reaches a terminal, neutralised: the one helper every printed name goes through.

Class, group, option, system and file names come from files anyone can write. Printed raw, a
name holding ``ESC[2J`` clears the screen, an OSC sequence retitles the terminal, BEL rings it,
and ``\\n`` or ``\\r`` forges a table row. :func:`printable` escapes every such character so the
name shows as what it is; :func:`control_characters` lists them (the system validator refuses
names that hold any).

Escaped: the C0 controls (NUL … US, with TAB, LF and CR shown as ``\\t``, ``\\n``, ``\\r``), DEL,
the C1 controls (U+0080 … U+009F), the line and paragraph separators (U+2028, U+2029) and the
bidirectional overrides and isolates (U+200E, U+200F, U+202A … U+202E, U+2066 … U+2069), which
reorder what the terminal shows. Other text, non-ASCII letters and emoji included, is unchanged.
"""

from __future__ import annotations

import re
from typing import Any

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029" + _BIDI + "]")


def _escape(m: re.Match) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: Any) -> str:
    """``str(text)`` with every control character escaped (see the module docstring); safe to print."""
    s = text if isinstance(text, str) else str(text)
    return s if s.isprintable() else _CONTROL.sub(_escape, s)


def control_characters(text: str) -> list[str]:
    """The control characters in ``text``, escaped, in order of first appearance (empty when it has none)."""
    if text.isprintable():
        return []
    return list(dict.fromkeys(_escape(m) for m in _CONTROL.finditer(text)))
