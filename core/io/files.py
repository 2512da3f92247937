"""Reading one dataset file: its bytes (a ``.gz`` is read through, a ZIP refused), its text,
its kind from the name and first bytes, and the report of its bad rows (strict: an
``InputError`` naming file, row and field; ``skip_invalid``: skipped and reported).
The import flow is in docs/architecture.md."""

from __future__ import annotations

import gzip
from pathlib import Path

from ..errors import InputError

RECORD_FORMATS = ("alpaca", "sharegpt", "messages")  # how a record holds Q and A
FORMATS = (*RECORD_FORMATS, "csv", "parquet")  # what --format accepts
IMPORTABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".pq", ".arrow",
                       ".feather")


def read_bytes(path: Path) -> tuple[bytes, bytes]:
    """(the file's bytes, its content): the content is the gunzipped bytes of a gzip file.
    The file's bytes are what the workspace fingerprints (``source.sha256``)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a file", file=str(path)) from None
    if raw[:4] == b"PK\x03\x04":
        raise InputError("is a ZIP archive; unzip it and import the file inside (a .gz file "
                         "is read directly)", file=str(path))
    if raw[:2] != b"\x1f\x8b":
        return raw, raw
    try:
        return raw, gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise InputError(f"gzip data is damaged ({err})", file=str(path)) from None


def decode_text(data: bytes, path: Path, encoding: str) -> str:
    """The file's text; a UTF-8 BOM is dropped, UTF-16 and undecodable bytes are errors
    that say how to re-save the file."""
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


def logical_name(path: Path) -> str:
    """The lower-case file name without a ``.gz``: ``data.jsonl.gz`` → ``data.jsonl``."""
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def detect_format(path: str | Path, head: bytes | None = None) -> str:
    """Guess the file kind from its name and first bytes: 'json', 'csv' or 'parquet'."""
    path = Path(path)
    name = logical_name(path)
    if head is not None and head[:4] == b"PAR1":
        return "parquet"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    return "json"


def is_importable(path: Path) -> bool:
    """A file of a folder import: a dataset by its name (a ``.gz`` of one too)."""
    return logical_name(path).endswith(IMPORTABLE_SUFFIXES)


class ImportReport:
    """What reading one file collects beside its samples, for ``ImportResult`` and
    import_report.json: skipped rows with their reasons, rows imported with a warning, notes.
    ``skip_invalid`` decides whether a bad row is an error or skipped (``reject``)."""

    def __init__(self, path: Path, skip_invalid: bool):
        self.path = path
        self.skip_invalid = skip_invalid
        self.skipped: list[dict] = []
        self.warnings: list[dict] = []
        self.notes: list[str] = []

    def reject(self, reason: str, row: int, field: str | None = None,
               line: int | None = None, strict_reason: str | None = None) -> None:
        """A bad row: raise its ``InputError`` (strict), or record it as skipped and go on.
        ``strict_reason`` replaces ``reason`` in the error where the advice differs."""
        if not self.skip_invalid:
            raise InputError(strict_reason or reason, file=str(self.path), row=row,
                             field=field) from None
        entry: dict = {"source_row": row}
        if line is not None:
            entry["line"] = line
        entry.update(field=field, reason=reason)
        self.skipped.append(entry)
