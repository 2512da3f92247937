"""A word-level diff of two texts for people to read (the Reflect view).

``difflib.SequenceMatcher`` on words and the whitespace between them, written in the style of
``git diff --word-diff=plain``: ``[-removed words-]`` and ``{+added words+}``, unchanged text
as it is. The result is plain text: show it with ``st.code``/``st.text``, never as Markdown.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_TOKENS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class WordDiff:
    text: str
    removed: int  # words
    added: int
    same: int


def _words(tokens: list[str]) -> int:
    return sum(1 for t in tokens if not t.isspace())


def word_diff(old: str | None, new: str | None) -> WordDiff:
    """``old`` → ``new`` word by word, with counts of removed, added and unchanged words."""
    a = _TOKENS.findall(old if isinstance(old, str) else "")
    b = _TOKENS.findall(new if isinstance(new, str) else "")
    parts, removed, added, same = [], 0, 0, 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append("".join(a[i1:i2]))
            same += _words(a[i1:i2])
            continue
        if op in ("delete", "replace"):
            parts.append("[-" + "".join(a[i1:i2]) + "-]")
            removed += _words(a[i1:i2])
        if op in ("insert", "replace"):
            parts.append("{+" + "".join(b[j1:j2]) + "+}")
            added += _words(b[j1:j2])
    return WordDiff("".join(parts), removed, added, same)
