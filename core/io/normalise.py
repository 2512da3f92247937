"""One record → the normalised ``instruction``/``input``/``output`` text, the checks on that
text, and the record's other fields as extra sample columns. The rules for multi-turn chats
are in the ``core.io`` docstring."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..errors import InputError

RESERVED = ("sample_id", "source_row", "instruction", "input", "output", "record",
            "duplicate_of", "source")
_ROLE_ALIASES = {
    "human": "user", "user": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant",
    "system": "system", "developer": "system",
}
_ROLE_TITLES = {"system": "System", "user": "User", "assistant": "Assistant"}
_CHAT_KEYS = {"sharegpt": ("conversations", "from", "value"),
              "messages": ("messages", "role", "content")}


class RowError(Exception):
    """A record that cannot be imported: the reason and the field it names (or None)."""

    def __init__(self, reason: str, field_name: str | None):
        super().__init__(reason)
        self.reason = reason
        self.field = field_name


def parse_mapping(text: str | None) -> dict:
    """Parse ``instruction=prompt,output=completion`` into a dict."""
    if not text:
        return {}
    mapping = {}
    for part in text.split(","):
        if "=" not in part:
            raise InputError(f"bad --map entry '{part}': use target=column, e.g. "
                             "instruction=prompt,output=completion")
        target, column = (s.strip() for s in part.split("=", 1))
        if target not in ("instruction", "input", "output"):
            raise InputError(f"bad --map target '{target}': must be instruction, input or "
                             "output")
        mapping[target] = column
    return mapping


def guess_record_format(record: Any, mapping: dict) -> str | None:
    """'alpaca', 'sharegpt' or 'messages' by the record's keys, or None."""
    if not isinstance(record, dict):
        return None
    if "conversations" in record and "conversations" not in mapping.values():
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if mapping.get("instruction", "instruction") in record and \
            mapping.get("output", "output") in record:
        return "alpaca"
    return None


def normalise_record(record: Any, record_format: str, mapping: dict) -> tuple[str, str, str]:
    """(instruction, input, output) of one record; raises ``RowError`` naming the field."""
    if not isinstance(record, dict):
        raise RowError(f"a record must be a JSON object, found {type(record).__name__}", None)
    if record_format == "alpaca":
        return _normalise_alpaca(record, mapping)
    return _normalise_chat(record, *_CHAT_KEYS[record_format])


def _text_field(record: dict, key: str, name: str, optional: bool = False) -> str:
    if key not in record or record[key] is None:
        if optional:
            return ""
        raise RowError(f"missing field (record keys: {', '.join(map(str, record)) or 'none'})",
                       name if key == name else f"{name} (column '{key}')")
    value = record[key]
    if not isinstance(value, str):
        raise RowError(f"must be text, found {type(value).__name__}", name)
    return value


def _normalise_alpaca(record: dict, mapping: dict) -> tuple[str, str, str]:
    instruction = _text_field(record, mapping.get("instruction", "instruction"), "instruction")
    inp = _text_field(record, mapping.get("input", "input"), "input", optional=True)
    output = _text_field(record, mapping.get("output", "output"), "output")
    return instruction, inp, output


def _normalise_chat(record: dict, key: str, role_key: str,
                    text_key: str) -> tuple[str, str, str]:
    turns = record.get(key)
    if not isinstance(turns, list):
        raise RowError("missing or not a list", key)
    parsed = []
    for t, turn in enumerate(turns):
        where = f"{key}[{t}]"
        if not isinstance(turn, dict):
            raise RowError("a turn must be an object", where)
        role = _ROLE_ALIASES.get(str(turn.get(role_key, "")).strip().lower())
        if role is None:
            raise RowError(f"unknown role {turn.get(role_key)!r}", f"{where}.{role_key}")
        text = turn.get(text_key)
        if isinstance(text, list):  # OpenAI content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise RowError(f"must be text, found {type(text).__name__}", f"{where}.{text_key}")
        parsed.append((role, text))
    last = max((i for i, (role, _) in enumerate(parsed) if role == "assistant"), default=None)
    if last is None:
        raise RowError("no assistant turn to use as the answer", key)
    before = parsed[:last]
    if not any(role == "user" for role, _ in before):
        raise RowError("no user turn before the last assistant turn", key)
    if len(before) == 1:
        instruction = before[0][1]
    else:
        instruction = "\n\n".join(f"{_ROLE_TITLES[r]}: {txt}" for r, txt in before)
    return instruction, "", parsed[last][1]


def check_length(instruction: str, inp: str, output: str, max_chars: int) -> None:
    """No field longer than ``max_chars`` characters (0: no limit)."""
    if max_chars:
        for name, value in (("instruction", instruction), ("input", inp), ("output", output)):
            if len(value) > max_chars:
                raise RowError(f"is {len(value):,} characters long (limit {max_chars:,}); "
                               "pass --max-chars 0 to lift the limit", name)


def empty_fields(instruction: str, inp: str, output: str) -> list[str]:
    """Fields that are empty: real datasets have them (Alpaca has empty answers), so they are
    imported with a warning, and scores that need the text are missing with a reason."""
    empty = []
    if not instruction.strip() and not inp.strip():
        empty.append("instruction")
    if not output.strip():
        empty.append("output")
    return empty


def record_json(record: Any) -> str:
    """The record as JSON text for ``samples.record``. A JSON escape can decode to a lone
    surrogate (``"\\ud800"``), which is not Unicode and cannot be stored: name its field."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start:err.end]
        where = next((str(k) for k, v in record.items()
                      if bad in json.dumps({k: v}, ensure_ascii=False)), None) \
            if isinstance(record, dict) else None
        raise RowError(f"holds {bad.encode('unicode_escape').decode()}, half of a UTF-16 "
                       "surrogate pair, which is not valid Unicode; fix the escape", where)
    return text


def extra_columns(records: list[Any], record_format: str) -> dict[str, list]:
    """Every other top-level field of the records, as columns (nested values as JSON); a
    field named like a sample column (``RESERVED``) becomes ``src_<name>``."""
    skip = {"alpaca": {"instruction", "input", "output"}, "sharegpt": {"conversations"},
            "messages": {"messages"}}.get(record_format, set())
    names: list[str] = []
    seen: set[str] = set()
    for rec in records:
        if isinstance(rec, dict):
            for k in rec:
                if k not in seen and k not in skip:
                    seen.add(k)
                    names.append(k)
    out = {}
    for k in names:
        values = [rec.get(k) if isinstance(rec, dict) else None for rec in records]
        col = f"src_{k}" if k in RESERVED else k
        out[col] = _column_values(values)
    return out


def _column_values(values: list) -> list:
    """One extra column: nullable integers, booleans or floats where every value is one,
    text otherwise (an integer beyond int64 keeps its digits as text)."""
    kinds = {type(v) for v in values if v is not None}
    if int in kinds and any(isinstance(v, int) and not -2**63 <= v < 2**63 for v in values):
        kinds.add(str)  # beyond int64 (and float precision): keep the digits as text
    if kinds == {int}:
        return pd.array(values, dtype="Int64")
    if kinds == {bool}:
        return pd.array(values, dtype="boolean")
    if kinds <= {int, float}:
        return pd.array([None if v is None else float(v) for v in values], dtype="Float64")
    if kinds <= {str}:
        return values
    return [None if v is None else (v if isinstance(v, str) else
                                    json.dumps(v, ensure_ascii=False)) for v in values]
