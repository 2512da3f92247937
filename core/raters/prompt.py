"""The DS2 rating prompt and the parser of its answers (docs/methods.md §3, "Rating scale").

The rating follows DS2 (arXiv 2410.10877, repo UCSC-REAL/DS2, ``LLM_scoring/``): the rater
judges a sample on Rarity, Complexity and Informativeness, each 1–10, and gives an Overall
rating 1–10, answered as a JSON object with exactly DS2's keys (``"Rarity"``,
``"Complexity"``, ``"Informativeness"``, ``"Overall rating"``). The prompt text below is our
own wording of the same request. Like DS2 it

- puts the task and criteria in the system message and the sample plus the answer format
  in the user message (as DS2's local-model script does);
- renders the sample as a conversation, one ``### <role>: <text>`` line per turn;
- asks the rater to spread its scores rather than pile them on one value;
- reads the *last* JSON object in the answer;
- treats an answer it cannot read as unrated. DS2 stores ``[0, 0, 0, 0]`` for it, which its
  score compression (clip the overall to [4, 9], minus 4) turns into class 0. We record the
  raw overall as NaN with the reason in ``parse_error``; ``raters.run.ratings_for_curation``
  hands DS2 the value ``"unparseable"`` for it, which the ``ds2-10`` scale puts in class 0
  (the same class) while the file keeps "unreadable" visible. A request that failed
  (``request_error``) or a sample not rated is no rating at all: missing for DS2.

Where we differ, on purpose: decoding is greedy (temperature 0) so a rerun asks the same
question and gets the same answer; DS2's API script re-asks up to 3 times when no JSON is
found, which at temperature 0 would return the same text, so we do not. The parser is more
forgiving than DS2's ``json.loads`` + ``int()`` (fenced blocks, single quotes, numbers as
strings, ``"7/10"``, a truncated object); a missing or invalid Rarity/Complexity/
Informativeness leaves that field NaN instead of discarding the overall rating, which is the
only field DS2 uses.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

PROMPT_VERSION = "ds2-rating-v1"
FIELDS = ("rarity", "complexity", "informativeness", "overall")
# The JSON keys the rater is asked for: DS2's own, so answers stay comparable to its ratings.
ANSWER_KEYS = {"rarity": "Rarity", "complexity": "Complexity",
               "informativeness": "Informativeness", "overall": "Overall rating"}
SCALE = (1.0, 10.0)

SYSTEM_PROMPT = (
    "You judge the quality of training data for instruction-tuned language models. "
    "Look at one data sample and rate it on three criteria: Rarity, Complexity and "
    "Informativeness, each on a scale from 1 to 10. Then give an overall rating from 1 to 10; "
    "a higher number means a higher-quality sample.\n"
    "Use the whole scale. Do not give most samples the same score: when samples are of "
    "similar quality, let small differences between them show in your scores.")

USER_TEMPLATE = (
    "Rate the data sample below.\n\n"
    "## Data sample (conversation)\n"
    "{conversation}\n"
    "## Your answer\n"
    "Reply with whole numbers in this JSON format and nothing else:\n"
    + "{{" + ", ".join(f'"{key}": <1-10>' for key in ANSWER_KEYS.values()) + "}}")


def prompt_sha256() -> str:
    """Hash of the prompt wording: recorded with every rating file and request."""
    blob = json.dumps([PROMPT_VERSION, SYSTEM_PROMPT, USER_TEMPLATE])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _text(value: Any) -> str:
    """A text field as a string; missing values (None, NaN, pd.NA) are empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _conversation(instruction: str, input: str, output: str) -> str:
    """DS2's rendering of a sample: one ``### role: text`` line per turn."""
    user = _text(instruction)
    if _text(input).strip():
        user += "\n\n" + _text(input)
    return f"### user: {user}\n### assistant: {_text(output)}\n"


def rating_prompt(instruction: str, input: str, output: str) -> list[dict]:
    """The chat messages asking for a DS2 rating of one sample (system + user)."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(
                conversation=_conversation(instruction, input, output))}]



# ----- parsing the answer --------------------------------------------------------------------
@dataclass
class ParsedRating:
    """A parsed answer: the four fields (NaN where missing), or why it could not be read."""

    rating: dict | None
    error: str | None


_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:(?:/|out of)\s*10(?:\.0+)?)?\s*$",
                     re.IGNORECASE)
# "Overall rating": 7  |  'Rarity': '5'  |  Complexity = 6/10  (inside one object's text)
_PAIR_TEXT = (r"""["']?([A-Za-z][A-Za-z _-]{1,40}?)["']?\s*[:=]\s*["']?\s*"""
              r"""([-+]?\d+(?:\.\d+)?)(?:\s*/\s*10)?""")
_PAIR = re.compile(_PAIR_TEXT)
# In an object cut off by the token limit, a number at the very end may itself be cut
# ("1" of "10"): only pairs followed by a separator count there.
_PAIR_FINISHED = re.compile(_PAIR_TEXT + r"""(?=\s*["']?\s*[,;}\n])""")


def _field_of(key: str) -> str | None:
    """Which of the four fields a JSON key names (case, spaces and underscores ignored)."""
    k = re.sub(r"[^a-z]", "", str(key).lower())
    if k in ("rarity",):
        return "rarity"
    if k in ("complexity",):
        return "complexity"
    if k in ("informativeness", "informative", "informativity"):
        return "informativeness"
    if k in ("overallrating", "overall", "overallscore", "overallquality"):
        return "overall"
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        m = _NUMBER.match(value)
        if not m:
            return None
        number = float(m.group(1))
    else:
        return None
    return number if math.isfinite(number) else None


def _json_objects(text: str) -> list[tuple[str, bool]]:
    """Top-level ``({...}, True)`` spans of ``text`` in order (strings respected), plus an
    unclosed trailing ``({..., False)`` (an answer cut off by the token limit)."""
    spans, depth, start, quote, escaped = [], 0, -1, None, False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or ch == "\n":
                quote = None
            continue
        if ch == '"' or (ch == "'" and depth > 0 and not text[i - 1].isalnum()):
            if depth > 0:
                quote = ch
            continue
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((text[start:i + 1], True))
    if depth > 0 and start >= 0:
        spans.append((text[start:], False))
    return spans


def _fields_from_json(obj: Any, found: dict) -> None:
    """Collect the four fields from a decoded object (nested objects searched too)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = _field_of(key)
            if name is not None and name not in found:
                if isinstance(value, dict):  # {"Overall rating": {"score": 7}}
                    inner = [v for v in value.values() if _number(v) is not None]
                    value = inner[0] if len(inner) == 1 else value
                found[name] = value
            elif isinstance(value, (dict, list)):
                _fields_from_json(value, found)
    elif isinstance(obj, list):
        for item in obj:
            _fields_from_json(item, found)


def _fields_of(candidate: str, closed: bool) -> dict:
    """The fields named in one object: real JSON first, else ``key: number`` pairs."""
    if closed:
        try:
            found: dict = {}
            _fields_from_json(json.loads(candidate), found)
            if found:
                return found
        except (json.JSONDecodeError, RecursionError):
            pass
    found = {}
    for key, value in (_PAIR if closed else _PAIR_FINISHED).findall(candidate):
        name = _field_of(key)
        if name is not None and name not in found:
            found[name] = value
    return found


def explain_rating(text: str | None) -> ParsedRating:
    """Parse a rater's answer, saying why when it cannot (``parse_rating`` without reason)."""
    if text is None or not str(text).strip():
        return ParsedRating(None, "empty answer")
    candidates = _json_objects(str(text))
    if not candidates:
        return ParsedRating(None, "no JSON object in the answer")
    error = "no overall rating in the JSON" if candidates[-1][1] else \
        "answer cut off before a complete overall rating"
    for candidate, closed in reversed(candidates):  # DS2 reads the last object
        found = _fields_of(candidate, closed)
        if "overall" not in found:
            continue
        overall = _number(found["overall"])
        if overall is None:
            error = f"overall rating is not a number: {str(found['overall'])[:40]!r}"
            continue
        if not SCALE[0] <= overall <= SCALE[1]:
            error = f"overall rating {overall:g} is outside 1-10"
            continue
        rating = {}
        for name in FIELDS:
            value = _number(found.get(name))
            ok = value is not None and SCALE[0] <= value <= SCALE[1]
            rating[name] = value if ok else float("nan")
        return ParsedRating(rating, None)
    return ParsedRating(None, error)


def parse_rating(text: str | None) -> dict | None:
    """The four fields of a DS2-style answer as floats (NaN where a criterion is missing),
    or None when no valid overall rating 1-10 can be read."""
    return explain_rating(text).rating

