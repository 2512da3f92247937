"""JSON and JSON-lines records of one file, with a cut-off or broken file reported where it
breaks: strict, the error names the record; with ``skip_invalid`` the complete records are
kept and the rest is reported (see ``ImportReport``)."""

from __future__ import annotations

import json
from typing import Any, Iterator

from ..errors import InputError
from .files import ImportReport


def iter_json_records(text: str, report: ImportReport) -> Iterator[tuple[int, Any]]:
    """Yield (source_row, record) from a JSON array, a single object, or JSON lines."""
    stripped = text.lstrip()
    if not stripped:
        raise InputError("file is empty", file=str(report.path))
    if stripped[0] == "[":
        yield from _iter_json_array(text, report)
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
        report.reject(msg, row, line=lineno)
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


def _iter_json_array(text: str, report: ImportReport) -> Iterator[tuple[int, Any]]:
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
            _array_stopped(report, row, pos, text, "the file ends where record "
                           f"{row} should start")
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
            _array_stopped(report, row, err.pos, text, reason)
            return
        except RecursionError:
            line = text.count("\n", 0, pos) + 1
            _array_stopped(report, row, pos, text, f"record {row} (line {line}) is nested too "
                           "deeply for the JSON reader")
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
                _array_stopped(report, row, pos, text,
                               f"unexpected text after the end of the JSON array (line {line})")
            return
        line = text.count("\n", 0, pos) + 1
        reason = (f"the file is cut off after record {row - 1}: the JSON array holds {row:,} "
                  "complete records and then ends" if pos >= n else
                  f"expected ',' or ']' after record {row - 1} (line {line})")
        _array_stopped(report, row, pos, text, reason)
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


def _array_stopped(report: ImportReport, row: int, pos: int, text: str, reason: str) -> None:
    """The array cannot be read past ``pos``: the records before it are kept (lenient)."""
    report.reject(reason + "; the rest of the file was not read", row,
                  line=text.count("\n", 0, pos) + 1,
                  strict_reason=reason + "; pass --skip-invalid to import the complete records")
    report.notes.append(reason)
