"""Data printed to a terminal is never terminal control.

A record key, a column name, a file name or a value can hold ESC sequences (ANSI CSI
``\\x1b[2J`` clears the screen, OSC ``\\x1b]0;title\\x07`` retitles the window and in some
terminals writes the clipboard), other C0/C1 control characters, DEL, bidi controls that
reorder what the reader sees, or line and paragraph separators that break a one-line error.
``terminal_safe`` shows each of them as a visible escape (``\\x1b``, ``\\u202e``), so the
message reads exactly as the data is and the terminal only ever receives printable text.
Every CLI message that quotes data goes through it (the error line, warnings, summaries).
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included), DEL, C1 controls, the Arabic letter mark, LRM/RLM,
# line/paragraph separators, the bidi embeddings/overrides/isolates, and the BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069\ufeff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(value: object, *, keep_newlines: bool = False) -> str:
    """``str(value)`` with every control, bidi and separator character shown as an escape.

    ``keep_newlines`` keeps the line breaks of a multi-line block the CLI built itself (a
    table, a summary); everything else in it is escaped as usual."""
    text = str(value)
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)
