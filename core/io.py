"""Import instruction datasets into one normalised frame of samples.

Formats (detected, or forced with ``format=``): Alpaca records (``instruction``, ``input``
optional, ``output``) as a JSON array or JSONL; ShareGPT (``conversations: [{from, value}]``);
OpenAI chat (``messages: [{role, content}]``); CSV and Parquet with a column mapping; a ``.gz``
of any of them.

Every sample keeps ``sample_id`` (0..n-1 in workspace order), ``source_row`` (0-based record
position in its file), the normalised ``instruction``/``input``/``output`` text, ``record``
(the original record as JSON, so export writes the input schema back verbatim),
``duplicate_of`` (sample_id of the first identical Q/A, or missing) and every other source
field untouched.

Multi-turn chats: Q is the system prompt and every turn before the last assistant turn,
rendered as ``"System: ...\\n\\nUser: ...\\n\\nAssistant: ...\\n\\nUser: ..."`` (a chat with a single
user turn and no system prompt gives that turn's text alone); A is the last assistant turn;
turns after it are ignored for scoring (they stay in ``record``).

Values are kept as read. JSON values stay as they are (NaN/Infinity too; export writes them
as ``null`` and says so). CSV cells are text, exactly as in the file. Parquet values are read
by pyarrow as Python values, never through a float column: integers stay integers (nullable
ones included); types JSON has no value for get one documented text form in ``record``:
binary → standard base64, date/time/timestamp → ISO 8601 (``2024-01-31``,
``2024-01-31T12:00:00+00:00``), decimal → its exact digits (``"12.340"``), duration → ISO
8601 (``P0DT0H1M30S``).

Bad input raises ``InputError`` naming the file, the row and the field (strict, the default);
with ``skip_invalid=True`` the valid rows are imported and each skipped row is reported with
its reason.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from .errors import InputError

FORMATS = ("alpaca", "sharegpt", "messages", "csv", "parquet")
RESERVED = ("sample_id", "source_row", "instruction", "input", "output", "record",
            "duplicate_of", "source")
DEFAULT_MAX_CHARS = 1_000_000
_ROLE_ALIASES = {
    "human": "user", "user": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant",
    "system": "system", "developer": "system",
}
_ROLE_TITLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class ImportResult:
    """What ``read_dataset`` returns."""

    samples: pd.DataFrame
    format: str
    source: dict
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# reading bytes and text
# --------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a file", file=str(path)) from None
    if data[:4] == b"PK\x03\x04":
        raise InputError("is a ZIP archive; unzip it and import the file inside (a .gz file "
                         "is read directly)", file=str(path))
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise InputError(f"gzip data is damaged ({err})", file=str(path)) from None
    return data


def _decode(data: bytes, path: Path, encoding: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError("file is UTF-16 encoded; re-save it as UTF-8", file=str(path))
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(
            f"not valid {encoding} at line {line} (byte {err.start}); re-save the file as "
            "UTF-8 or pass --encoding (e.g. latin-1)", file=str(path)) from None
    except LookupError:
        raise InputError(f"unknown encoding '{encoding}'", file=str(path)) from None


def _logical_name(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def detect_format(path: str | Path, head: bytes | None = None) -> str:
    """Guess the file kind from its name and first bytes: 'json', 'csv' or 'parquet'."""
    path = Path(path)
    name = _logical_name(path)
    if head is not None and head[:4] == b"PAR1":
        return "parquet"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    return "json"


# --------------------------------------------------------------------------------------
# JSON and JSONL records
# --------------------------------------------------------------------------------------
def _iter_json_records(text: str, path: Path, skipped: list[dict],
                       skip_invalid: bool, notes: list[str]) -> Iterator[tuple[int, Any]]:
    """Yield (source_row, record) from a JSON array, a single object, or JSON lines."""
    stripped = text.lstrip()
    if not stripped:
        raise InputError("file is empty", file=str(path))
    if stripped[0] == "[":
        yield from _iter_json_array(text, path, skipped, skip_invalid, notes)
        return
    # JSON lines (a single object over several lines is also accepted)
    lines = text.split("\n")
    if stripped[0] == "{" and len(lines) > 1:
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            obj = None
        if isinstance(obj, dict) and not _looks_like_jsonl(lines):
            yield 0, obj
            return
    row = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            msg = f"line {lineno} is not valid JSON ({_json_reason(err)} at column {err.colno})"
        except RecursionError:
            msg = f"line {lineno} is nested too deeply for the JSON reader"
        else:
            yield row, record
            row += 1
            continue
        if not skip_invalid:
            raise InputError(msg, file=str(path), row=row) from None
        skipped.append({"source_row": row, "line": lineno, "field": None, "reason": msg})
        row += 1


def _json_reason(err: json.JSONDecodeError) -> str:
    """The decoder's message without its dangling 'at' ("Invalid control character at")."""
    return err.msg[:-3] if err.msg.endswith(" at") else err.msg


def _looks_like_jsonl(lines: list[str]) -> bool:
    non_empty = [ln for ln in lines if ln.strip()]
    if len(non_empty) < 2:
        return False
    try:
        json.loads(non_empty[0])
        return True
    except (json.JSONDecodeError, RecursionError):
        return False


def _iter_json_array(text: str, path: Path, skipped: list[dict], skip_invalid: bool,
                     notes: list[str]) -> Iterator[tuple[int, Any]]:
    """Decode a JSON array record by record, so a cut-off or broken file says where."""
    decoder = json.JSONDecoder()
    n = len(text)
    pos = text.index("[") + 1
    row = 0

    def skip_ws(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        return
    while True:
        pos = skip_ws(pos)
        if pos >= n:
            _array_stopped(path, row, pos, text, "the file ends where record "
                           f"{row} should start", skipped, skip_invalid, notes)
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            line = text.count("\n", 0, err.pos) + 1
            if err.pos >= n - 1 or _is_truncated(text, pos):
                reason = (f"the file is cut off in the middle of record {row} (line {line}): "
                          f"the JSON array holds {row:,} complete records and then ends")
            else:
                reason = f"record {row} is not valid JSON ({_json_reason(err)} at line {line})"
            _array_stopped(path, row, err.pos, text, reason, skipped, skip_invalid, notes)
            return
        except RecursionError:
            line = text.count("\n", 0, pos) + 1
            _array_stopped(path, row, pos, text, f"record {row} (line {line}) is nested too "
                           "deeply for the JSON reader", skipped, skip_invalid, notes)
            return
        yield row, obj
        row += 1
        pos = skip_ws(end)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            rest = text[pos + 1:].strip()
            if rest:
                line = text.count("\n", 0, pos) + 1
                _array_stopped(path, row, pos, text,
                               f"unexpected text after the end of the JSON array (line {line})",
                               skipped, skip_invalid, notes)
            return
        line = text.count("\n", 0, pos) + 1
        reason = (f"the file is cut off after record {row - 1}: the JSON array holds {row:,} "
                  "complete records and then ends" if pos >= n else
                  f"expected ',' or ']' after record {row - 1} (line {line})")
        _array_stopped(path, row, pos, text, reason, skipped, skip_invalid, notes)
        return


def _is_truncated(text: str, start: int) -> bool:
    """True when nothing after ``start`` closes the record (the file was cut off)."""
    depth, in_str, esc = 0, False, False
    for ch in text[start:]:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return False
    return True


def _array_stopped(path: Path, row: int, pos: int, text: str, reason: str,
                   skipped: list[dict], skip_invalid: bool, notes: list[str]) -> None:
    if not skip_invalid:
        raise InputError(reason + "; pass --skip-invalid to import the complete records",
                         file=str(path), row=row)
    skipped.append({"source_row": row, "line": text.count("\n", 0, pos) + 1, "field": None,
                    "reason": reason + "; the rest of the file was not read"})
    notes.append(reason)


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------
def _read_table(data: bytes, path: Path, kind: str, encoding: str, skipped: list[dict],
                skip_invalid: bool) -> tuple[list[str], list[tuple[int, dict]]]:
    """(column names, [(source_row, record)]) of a CSV/TSV or Parquet file."""
    if not data.strip():
        raise InputError("file is empty", file=str(path))
    if kind == "parquet":
        return _parquet_records(data, path)
    text = _decode(data, path, encoding)
    sep = "\t" if _logical_name(path).endswith(".tsv") else ","
    return _csv_records(text, path, sep, skipped, skip_invalid)


def _parquet_records(data: bytes, path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a Parquet file as Python values read by pyarrow, not through a pandas frame:
    an int64 column with a null keeps its exact integers (pandas would make it float64 and
    9007199254740993 would become 9007199254740992.0). Other types in ``_plain``."""
    import io as _io

    import pyarrow.parquet as pq

    try:
        table = pq.read_table(_io.BytesIO(data))
    except Exception as err:  # pyarrow raises several types
        raise InputError(f"not a readable Parquet file ({' '.join(str(err).split())[:300]})",
                         file=str(path)) from None
    meta = table.schema.pandas_metadata or {}
    index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    keep = [i for i, name in enumerate(table.column_names) if name not in index]
    names = [table.column_names[i] for i in keep]
    columns = []
    for i, name in zip(keep, names):
        try:
            columns.append([_plain(v) for v in table.column(i).to_pylist()])
        except Exception as err:  # an Arrow type without a Python value
            raise InputError(f"column of type {table.schema.field(i).type} cannot be read "
                             f"({' '.join(str(err).split())[:200]})", file=str(path),
                             field=str(name)) from None
    return names, [(row, dict(zip(names, values))) for row, values in enumerate(zip(*columns))]


def _csv_records(text: str, path: Path, sep: str, skipped: list[dict],
                 skip_invalid: bool) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a CSV/TSV text as ``{column: text}``. Every cell stays text (CSV has no
    types); a short row's missing cells are empty; blank lines are skipped. A row with more
    cells than the header (an unquoted separator) shifts nothing: it is an error naming its
    0-based data row, or skipped with ``skip_invalid``."""
    import csv
    import io as _io

    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # --max-chars is the limit
    reader = csv.reader(_io.StringIO(text, newline=""), delimiter=sep, strict=True)
    names: list[str] | None = None
    records: list[tuple[int, dict]] = []
    row = 0
    try:
        for cells in reader:
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if names is None:
                names = _header_names(cells)
                continue
            if len(cells) > len(names):
                reason = (f"has {len(cells)} cells for {len(names)} columns (line "
                          f"{reader.line_num}): quote a cell that holds {sep!r}")
                if not skip_invalid:
                    raise InputError(reason, file=str(path), row=row)
                skipped.append({"source_row": row, "line": reader.line_num, "field": None,
                                "reason": reason})
            else:
                cells = cells + [""] * (len(names) - len(cells))
                records.append((row, dict(zip(names, cells))))
            row += 1
    except csv.Error as err:
        raise InputError(f"not a readable CSV file (line {reader.line_num}: {err})",
                         file=str(path), row=row) from None
    if names is None:
        raise InputError("file is empty", file=str(path))
    return names, records


def _header_names(cells: list[str]) -> list[str]:
    """Column names as pandas would give them: an empty name is ``Unnamed: i``, a repeated
    one gets ``.1``, ``.2``."""
    names: list[str] = []
    for i, name in enumerate(cells):
        name = name or f"Unnamed: {i}"
        base, n = name, 0
        while name in names:
            n += 1
            name = f"{base}.{n}"
        names.append(name)
    return names


def _plain(value: Any) -> Any:
    """A Parquet value as a plain JSON value, kept verbatim where JSON has a type for it and
    in a documented text form where it has not (see the module docstring): integers stay
    integers, NaN/±Inf stay floats (export writes them as null and counts them), binary is
    base64 text, date/time/timestamp ISO 8601 text, decimal its digits, duration ISO 8601."""
    import base64
    import datetime
    import decimal

    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time)):  # datetime and pd.Timestamp too
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return pd.Timedelta(value).isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


# --------------------------------------------------------------------------------------
# normalising one record
# --------------------------------------------------------------------------------------
def _guess_record_format(record: Any, mapping: dict) -> str | None:
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


def _text_field(record: dict, key: str, name: str, optional: bool = False) -> str:
    if key not in record or record[key] is None:
        if optional:
            return ""
        raise _RowError(f"missing field (record keys: {', '.join(map(str, record)) or 'none'})",
                        name if key == name else f"{name} (column '{key}')")
    value = record[key]
    if not isinstance(value, str):
        raise _RowError(f"must be text, found {type(value).__name__}", name)
    return value


class _RowError(Exception):
    def __init__(self, reason: str, field_name: str | None):
        super().__init__(reason)
        self.reason = reason
        self.field = field_name


def _normalise_alpaca(record: Any, mapping: dict) -> tuple[str, str, str]:
    if not isinstance(record, dict):
        raise _RowError(f"a record must be a JSON object, found {type(record).__name__}", None)
    instruction = _text_field(record, mapping.get("instruction", "instruction"), "instruction")
    inp = _text_field(record, mapping.get("input", "input"), "input", optional=True)
    output = _text_field(record, mapping.get("output", "output"), "output")
    return instruction, inp, output


def _normalise_chat(record: Any, kind: str) -> tuple[str, str, str]:
    if not isinstance(record, dict):
        raise _RowError(f"a record must be a JSON object, found {type(record).__name__}", None)
    key, role_key, text_key = (("conversations", "from", "value") if kind == "sharegpt"
                               else ("messages", "role", "content"))
    turns = record.get(key)
    if not isinstance(turns, list):
        raise _RowError("missing or not a list", key)
    parsed = []
    for t, turn in enumerate(turns):
        where = f"{key}[{t}]"
        if not isinstance(turn, dict):
            raise _RowError("a turn must be an object", where)
        role = _ROLE_ALIASES.get(str(turn.get(role_key, "")).strip().lower())
        if role is None:
            raise _RowError(f"unknown role {turn.get(role_key)!r}", f"{where}.{role_key}")
        text = turn.get(text_key)
        if isinstance(text, list):  # OpenAI content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise _RowError(f"must be text, found {type(text).__name__}", f"{where}.{text_key}")
        parsed.append((role, text))
    last = max((i for i, (role, _) in enumerate(parsed) if role == "assistant"), default=None)
    if last is None:
        raise _RowError("no assistant turn to use as the answer", key)
    before = parsed[:last]
    if not any(role == "user" for role, _ in before):
        raise _RowError("no user turn before the last assistant turn", key)
    if len(before) == 1:
        instruction = before[0][1]
    else:
        instruction = "\n\n".join(f"{_ROLE_TITLES[r]}: {txt}" for r, txt in before)
    return instruction, "", parsed[last][1]


def _empty_fields(instruction: str, inp: str, output: str) -> list[str]:
    """Fields that are empty: real datasets have them (Alpaca has empty answers), so they are
    imported with a warning, and scores that need the text are missing with a reason."""
    empty = []
    if not instruction.strip() and not inp.strip():
        empty.append("instruction")
    if not output.strip():
        empty.append("output")
    return empty


def _record_json(record: Any) -> str:
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
        raise _RowError(f"holds {bad.encode('unicode_escape').decode()}, half of a UTF-16 "
                        "surrogate pair, which is not valid Unicode; fix the escape", where)
    return text


def _check_text(instruction: str, inp: str, output: str, max_chars: int) -> None:
    if max_chars:
        for name, value in (("instruction", instruction), ("input", inp), ("output", output)):
            if len(value) > max_chars:
                raise _RowError(f"is {len(value):,} characters long (limit {max_chars:,}); "
                                "pass --max-chars 0 to lift the limit", name)


# --------------------------------------------------------------------------------------
# the public entry points
# --------------------------------------------------------------------------------------
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


def read_dataset(path: str | Path, format: str | None = None, mapping: dict | None = None,
                 skip_invalid: bool = False, sample: int | None = None, seed: int = 0,
                 limit: int | None = None, encoding: str = "utf-8",
                 max_chars: int = DEFAULT_MAX_CHARS) -> ImportResult:
    """Read one dataset file into normalised samples (see the module docstring)."""
    path = Path(path)
    mapping = dict(mapping or {})
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format '{format}'; choose one of {', '.join(FORMATS)}",
                         file=str(path))
    raw = path.read_bytes() if path.is_file() else None
    data = _read_bytes(path)
    kind = detect_format(path, data[:4])
    if format in ("csv", "parquet"):
        kind = format
    elif format is not None:
        kind = "json"
    skipped: list[dict] = []
    notes: list[str] = []
    warnings: list[dict] = []
    detected: str | None = format if format in ("alpaca", "sharegpt", "messages") else None
    first = data.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if kind == "csv" and format is None and first in (b"[", b"{"):
        raise InputError(f"the name says CSV but the file holds JSON (first character "
                         f"{first.decode()!r}); rename it .jsonl or pass --format alpaca, "
                         "sharegpt or messages", file=str(path))
    if kind in ("csv", "parquet"):
        columns, records = _read_table(data, path, kind, encoding, skipped, skip_invalid)
        if not records and not skipped:
            raise InputError("file has no rows", file=str(path))
        if not {"conversations", "messages"} & set(columns):
            detected = "alpaca"  # a table is Alpaca-like through its column mapping
    else:
        text = _decode(data, path, encoding)
        if not text.strip():
            raise InputError("file is empty", file=str(path))
        if text.lstrip()[:1] not in ("[", "{"):
            raise InputError("does not look like JSON or JSON lines (first character "
                             f"{text.lstrip()[:1]!r}); pass --format csv or parquet for "
                             "tables", file=str(path))
        # decode the whole structure first, so a cut-off file is reported before row checks
        records = list(_iter_json_records(text, path, skipped, skip_invalid, notes))

    rows: list[dict] = []
    for source_row, record in records:
        if limit is not None and len(rows) >= limit:
            break
        record_kind = detected or _guess_record_format(record, mapping)
        if record_kind is None:
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            reason = (f"cannot tell the format of this record (keys: {keys}); expected Alpaca "
                      "(instruction, output), ShareGPT (conversations) or OpenAI chat "
                      "(messages); pass --format and --map")
            if not skip_invalid:
                raise InputError(reason, file=str(path), row=source_row)
            skipped.append({"source_row": source_row, "field": None, "reason": reason})
            continue
        if detected is None:
            detected = record_kind
        try:
            if detected == "alpaca":
                q, inp, a = _normalise_alpaca(record, mapping)
            else:
                q, inp, a = _normalise_chat(record, detected)
            _check_text(q, inp, a, max_chars)
            record_json = _record_json(record)
            for name in _empty_fields(q, inp, a):
                warnings.append({"source_row": source_row, "field": name,
                                 "reason": f"{'answer' if name == 'output' else name} is "
                                           "empty: imported, LM scores will be missing"})
        except _RowError as err:
            if not skip_invalid:
                raise InputError(err.reason, file=str(path), row=source_row,
                                 field=err.field) from None
            skipped.append({"source_row": source_row, "field": err.field, "reason": err.reason})
            continue
        rows.append({"source_row": source_row, "instruction": q, "input": inp, "output": a,
                     "record": record, "record_json": record_json})
    if not rows:
        if skipped:
            raise InputError(f"no valid rows: all {len(skipped)} rows were invalid, the first "
                             f"because {skipped[0]['reason']}", file=str(path),
                             row=skipped[0]["source_row"], field=skipped[0]["field"])
        raise InputError("file has no records", file=str(path))

    if sample is not None:
        if sample <= 0:
            raise InputError("--sample must be positive")
        if sample < len(rows):
            pick = np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))
            rows = [rows[i] for i in pick]
    out_format = kind if kind in ("csv", "parquet") else detected
    samples = _to_frame(rows, detected)
    digest = hashlib.sha256(raw if raw is not None else data).hexdigest()
    source = {"path": str(path.resolve()), "sha256": digest, "format": out_format,
              "record_format": detected, "mapping": mapping, "records_read":
                  len(rows) + len(skipped), "imported": len(samples), "skipped": len(skipped),
              "sample": sample, "seed": seed if sample is not None else None, "limit": limit}
    if warnings:
        rows_list = ", ".join(str(w["source_row"]) for w in warnings[:10])
        notes.append(f"{len(warnings)} rows have an empty field (rows {rows_list}"
                     f"{', ...' if len(warnings) > 10 else ''}): imported; LM scores will be "
                     "missing for them")
    return ImportResult(samples=samples, format=out_format, source=source, skipped=skipped,
                        notes=notes, warnings=warnings)


def _to_frame(rows: list[dict], record_format: str) -> pd.DataFrame:
    base = pd.DataFrame({
        "sample_id": np.arange(len(rows), dtype=np.int64),
        "source_row": np.asarray([r["source_row"] for r in rows], dtype=np.int64),
        "instruction": [r["instruction"] for r in rows],
        "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows],
        "record": [r["record_json"] for r in rows],
    })
    base["duplicate_of"] = find_duplicates(base)
    extra = _extra_columns([r["record"] for r in rows], record_format)
    for name, values in extra.items():
        base[name] = values
    return base


def find_duplicates(samples: pd.DataFrame) -> pd.Series:
    """sample_id of the first sample with identical instruction, input and output, else NA."""
    key = samples["instruction"] + "\x00" + samples["input"] + "\x00" + samples["output"]
    first = pd.Series(samples["sample_id"].to_numpy(), index=key.to_numpy())
    first = first[~first.index.duplicated(keep="first")]
    owner = key.map(first).to_numpy()
    dup = pd.array(owner, dtype="Int64")
    dup[owner == samples["sample_id"].to_numpy()] = pd.NA
    return pd.Series(dup, index=samples.index)


def _extra_columns(records: list[Any], record_format: str) -> dict[str, list]:
    """Every other top-level field of the records, as columns (nested values as JSON)."""
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


def read_datasets(paths: Sequence[str | Path], **kwargs) -> ImportResult:
    """Read several files into one pool with a ``source`` column naming each file.

    ``sample``/``limit`` apply to the pooled rows; per-file options are shared.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and not paths[0].is_dir():
        return read_dataset(paths[0], **kwargs)
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.is_file() and not
                                q.name.lower().startswith("readme") and _importable(q)))
        else:
            files.append(p)
    if not files:
        raise InputError("no dataset files found", file=", ".join(map(str, paths)))
    sample, seed, limit = kwargs.pop("sample", None), kwargs.get("seed", 0), kwargs.pop("limit",
                                                                                        None)
    results = [read_dataset(f, **kwargs) for f in files]
    frames = []
    for f, res in zip(files, results):
        frame = res.samples.drop(columns=["duplicate_of"])
        if "source" in frame:
            frame = frame.rename(columns={"source": "src_source"})
        frame.insert(1, "source", f.name)
        frames.append(frame)
    pool = pd.concat(frames, ignore_index=True)
    if limit is not None:
        pool = pool.iloc[:limit]
    if sample is not None and sample < len(pool):
        pick = np.sort(np.random.default_rng(seed).choice(len(pool), sample, replace=False))
        pool = pool.iloc[pick]
    pool = pool.reset_index(drop=True)
    pool["sample_id"] = np.arange(len(pool), dtype=np.int64)
    pool["duplicate_of"] = find_duplicates(pool)
    formats = sorted({r.format for r in results})
    source = {"files": [r.source for r in results], "format": formats[0] if len(formats) == 1
              else "mixed", "imported": len(pool), "sample": sample, "seed": seed,
              "limit": limit, "path": ", ".join(str(f.resolve()) for f in files)}
    skipped = [dict(s, source=f.name) for f, r in zip(files, results) for s in r.skipped]
    notes = [f"{f.name}: {n}" for f, r in zip(files, results) for n in r.notes]
    warnings = [dict(w, source=f.name) for f, r in zip(files, results) for w in r.warnings]
    return ImportResult(samples=pool, format=source["format"], source=source, skipped=skipped,
                        notes=notes, warnings=warnings)


def _importable(path: Path) -> bool:
    name = _logical_name(path)
    return name.endswith((".json", ".jsonl", ".csv", ".tsv", ".parquet", ".pq"))
