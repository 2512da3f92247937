"""CSV/TSV and Parquet files as ``(column names, [(source_row, record)])``. CSV cells stay
text exactly as in the file; Parquet values are read by pyarrow as Python values, never
through a float column, and types JSON has no value for get one documented text form
(see ``plain_value`` and the ``core.io`` docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from .files import ImportReport, decode_text, logical_name

Records = list[tuple[int, dict]]


def read_table(data: bytes, kind: str, encoding: str,
               report: ImportReport) -> tuple[list[str], Records]:
    """(column names, [(source_row, record)]) of a CSV/TSV or Parquet file."""
    path = report.path
    if not data.strip():
        raise InputError("file is empty", file=str(path))
    if kind == "parquet":
        return _parquet_records(data, path)
    text = decode_text(data, path, encoding)
    sep = "\t" if logical_name(path).endswith(".tsv") else ","
    return _csv_records(text, sep, report)


def _parquet_records(data: bytes, path: Path) -> tuple[list[str], Records]:
    """Rows of a Parquet file as Python values read by pyarrow, not through a pandas frame:
    an int64 column with a null keeps its exact integers (pandas would make it float64 and
    9007199254740993 would become 9007199254740992.0). Other types in ``plain_value``."""
    import io

    import pyarrow.parquet as pq

    try:
        # one thread: a user's file is small next to the work after it, and Arrow's thread
        # pool, once started, can abort the interpreter at exit after an error
        # ("terminate called without an active exception", exit -6 instead of 2)
        table = pq.read_table(io.BytesIO(data), use_threads=False)
    except Exception as err:  # pyarrow raises several types
        raise InputError(f"not a readable Parquet file ({' '.join(str(err).split())[:300]})",
                         file=str(path)) from None
    return arrow_records(table, path)


def arrow_records(table, path: Path) -> tuple[list[str], Records]:
    """Rows of a pyarrow Table (from Parquet, an Arrow file or a saved Hugging Face dataset)
    as plain Python values; a pandas index column is left out."""
    meta = table.schema.pandas_metadata or {}
    index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    keep = [i for i, name in enumerate(table.column_names) if name not in index]
    names = [table.column_names[i] for i in keep]
    columns = []
    for i, name in zip(keep, names):
        try:
            columns.append([plain_value(v) for v in table.column(i).to_pylist()])
        except Exception as err:  # an Arrow type without a Python value
            raise InputError(f"column of type {table.schema.field(i).type} cannot be read "
                             f"({' '.join(str(err).split())[:200]})", file=str(path),
                             field=str(name)) from None
    return names, [(row, dict(zip(names, values))) for row, values in enumerate(zip(*columns))]


def _csv_records(text: str, sep: str, report: ImportReport) -> tuple[list[str], Records]:
    """Rows of a CSV/TSV text as ``{column: text}``. Every cell stays text (CSV has no
    types); a short row's missing cells are empty; blank lines are skipped. A row with more
    cells than the header (an unquoted separator) shifts nothing: it is an error naming its
    0-based data row, or skipped with ``skip_invalid``."""
    import csv
    import io

    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # --max-chars is the limit
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    names: list[str] | None = None
    records: Records = []
    row = 0
    try:
        for cells in reader:
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if names is None:
                names = _header_names(cells)
                continue
            if len(cells) > len(names):
                report.reject(f"has {len(cells)} cells for {len(names)} columns (line "
                              f"{reader.line_num}): quote a cell that holds {sep!r}", row,
                              line=reader.line_num)
            else:
                cells = cells + [""] * (len(names) - len(cells))
                records.append((row, dict(zip(names, cells))))
            row += 1
    except csv.Error as err:
        raise InputError(f"not a readable CSV file (line {reader.line_num}: {err})",
                         file=str(report.path), row=row) from None
    if names is None:
        raise InputError("file is empty", file=str(report.path))
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


def plain_value(value: Any) -> Any:
    """A Parquet value as a plain JSON value, kept verbatim where JSON has a type for it and
    in a documented text form where it has not: integers stay integers, NaN/±Inf stay floats
    (export writes them as null and counts them), binary is base64 text, date/time/timestamp
    ISO 8601 text, decimal its digits, duration ISO 8601."""
    import base64
    import datetime
    import decimal

    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
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
