"""``read_dataset``: one file → normalised samples (the ``core.io`` docstring has the rules);
the import flow is in docs/architecture.md."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from .files import (FORMATS, RECORD_FORMATS, ImportReport, decode_text, detect_format,
                    read_bytes)
from .json_records import iter_json_records
from .normalise import (RowError, check_length, empty_fields, extra_columns, guess_record_format,
                        normalise_record, record_json)
from .hf import is_arrow_file, load_hub_table, read_arrow_source
from .tables import arrow_records, read_table

DEFAULT_MAX_CHARS = 1_000_000


@dataclass
class ImportResult:
    """What ``read_dataset`` returns."""

    samples: pd.DataFrame
    format: str
    source: dict
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)


def read_dataset(path: str | Path, format: str | None = None, mapping: dict | None = None,
                 skip_invalid: bool = False, sample: int | None = None, seed: int = 0,
                 limit: int | None = None, encoding: str = "utf-8",
                 max_chars: int = DEFAULT_MAX_CHARS, split: str | None = None
                 ) -> ImportResult:
    """Read one dataset file (or a ``save_to_disk`` folder, of which ``split``) into
    normalised samples (see the ``core.io`` docstring)."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format '{format}'; choose one of {', '.join(FORMATS)}",
                         file=str(path))
    report = ImportReport(path, skip_invalid)
    if path.is_dir() or (path.is_file() and is_arrow_file(path, _head(path))):
        table, digest, split = read_arrow_source(path, split)
        return _table_result(table, report, str(path.resolve()), digest, format,
                             {"split": split}, mapping, sample, seed, limit, max_chars)
    if split is not None:
        raise InputError("--split is for save_to_disk folders and --hf", file=str(path),
                         field="split")
    raw, data = read_bytes(path)
    kind, detected, records = _read_records(data, format, encoding, report)
    return _result(records, kind, detected, report, str(path.resolve()),
                   hashlib.sha256(raw).hexdigest(), {}, mapping, sample, seed, limit,
                   max_chars)


def read_hub_dataset(name: str, split: str | None = None, revision: str | None = None,
                     format: str | None = None, mapping: dict | None = None,
                     skip_invalid: bool = False, sample: int | None = None, seed: int = 0,
                     limit: int | None = None, max_chars: int = DEFAULT_MAX_CHARS,
                     encoding: str = "utf-8") -> ImportResult:
    """Read a dataset from the Hugging Face Hub (``import --hf NAME``; needs the network).
    ``encoding`` is accepted as for files and unused: Arrow text is UTF-8."""
    table, fingerprint, split = load_hub_table(name, split, revision)
    report = ImportReport(Path(f"hf:{name}"), skip_invalid)
    return _table_result(table, report, f"hf:{name}", fingerprint, format,
                         {"hf": name, "split": split, "revision": revision}, mapping, sample,
                         seed, limit, max_chars)


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def _table_result(table, report: ImportReport, label: str, digest: str, format: str | None,
                  where: dict, *rest) -> ImportResult:
    """An Arrow table's rows (saved dataset, Arrow file, Hub) through the common rules."""
    if format in ("csv", "parquet"):
        raise InputError(f"is an Arrow dataset, not {format}; drop --format", file=label)
    columns, records = arrow_records(table, report.path)
    if not records:
        raise InputError("dataset has no rows", file=label)
    detected = format if format in RECORD_FORMATS else None
    if detected is None and not {"conversations", "messages"} & set(columns):
        detected = "alpaca"  # a table is Alpaca-like through its column mapping
    return _result(records, "arrow", detected, report, label, digest, where, *rest)


def _result(records, kind: str, detected: str | None, report: ImportReport, label: str,
            digest: str, where: dict, mapping: dict | None, sample: int | None, seed: int,
            limit: int | None, max_chars: int) -> ImportResult:
    mapping = dict(mapping or {})
    rows, detected = _normalise_rows(records, detected, mapping, limit, max_chars, report)
    pick = sample_positions(len(rows), sample, seed)
    if pick is not None:
        rows = [rows[i] for i in pick]
    out_format = kind if kind in ("csv", "parquet", "arrow") else detected
    samples = _samples_frame(rows, detected)
    source = {"path": label, "sha256": digest,
              "format": out_format, "record_format": detected, "mapping": mapping,
              "records_read": len(rows) + len(report.skipped), "imported": len(samples),
              "skipped": len(report.skipped), "sample": sample,
              "seed": seed if sample is not None else None, "limit": limit,
              **{k: v for k, v in where.items() if v is not None}}
    if report.warnings:
        rows_list = ", ".join(str(w["source_row"]) for w in report.warnings[:10])
        report.notes.append(f"{len(report.warnings)} rows have an empty field (rows {rows_list}"
                            f"{', ...' if len(report.warnings) > 10 else ''}): imported; LM "
                            "scores will be missing for them")
    return ImportResult(samples=samples, format=out_format, source=source,
                        skipped=report.skipped, notes=report.notes, warnings=report.warnings)


def _read_records(data: bytes, format: str | None, encoding: str,
                  report: ImportReport) -> tuple[str, str | None, list[tuple[int, Any]]]:
    """(file kind, record format if known before the rows, [(source_row, record)]). The
    whole structure is decoded first, so a cut-off file is reported before row checks."""
    path = report.path
    kind = detect_format(path, data[:4])
    if format in ("csv", "parquet"):
        kind = format
    elif format is not None:
        kind = "json"
    detected = format if format in RECORD_FORMATS else None
    first = data.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if kind == "csv" and format is None and first in (b"[", b"{"):
        raise InputError(f"the name says CSV but the file holds JSON (first character "
                         f"{first.decode()!r}); rename it .jsonl or pass --format alpaca, "
                         "sharegpt or messages", file=str(path))
    if kind in ("csv", "parquet"):
        columns, records = read_table(data, kind, encoding, report)
        if not records and not report.skipped:
            raise InputError("file has no rows", file=str(path))
        if not {"conversations", "messages"} & set(columns):
            detected = "alpaca"  # a table is Alpaca-like through its column mapping
        return kind, detected, records
    text = decode_text(data, path, encoding)
    if not text.strip():
        raise InputError("file is empty", file=str(path))
    if text.lstrip()[:1] not in ("[", "{"):
        raise InputError("does not look like JSON or JSON lines (first character "
                         f"{text.lstrip()[:1]!r}); pass --format csv or parquet for "
                         "tables", file=str(path))
    return kind, detected, list(iter_json_records(text, report))


def _normalise_rows(records: list[tuple[int, Any]], detected: str | None, mapping: dict,
                    limit: int | None, max_chars: int,
                    report: ImportReport) -> tuple[list[dict], str]:
    """(the first ``limit`` valid rows, the record format). The first record whose format
    can be told fixes it for the file; a record that breaks a rule is rejected."""
    rows: list[dict] = []
    for source_row, record in records:
        if limit is not None and len(rows) >= limit:
            break
        record_kind = detected or guess_record_format(record, mapping)
        if record_kind is None:
            keys = list(record) if isinstance(record, dict) else type(record).__name__
            report.reject(f"cannot tell the format of this record (keys: {keys}); expected "
                          "Alpaca (instruction, output), ShareGPT (conversations) or OpenAI "
                          "chat (messages); pass --format and --map", source_row)
            continue
        detected = detected or record_kind
        try:
            q, inp, a = normalise_record(record, detected, mapping)
            check_length(q, inp, a, max_chars)
            text = record_json(record)
        except RowError as err:
            report.reject(err.reason, source_row, field=err.field)
            continue
        for name in empty_fields(q, inp, a):
            report.warnings.append({"source_row": source_row, "field": name,
                                    "reason": f"{'answer' if name == 'output' else name} is "
                                              "empty: imported, LM scores will be missing"})
        rows.append({"source_row": source_row, "instruction": q, "input": inp, "output": a,
                     "record": record, "record_json": text})
    if not rows:
        if report.skipped:
            first = report.skipped[0]
            raise InputError(f"no valid rows: all {len(report.skipped)} rows were invalid, the "
                             f"first because {first['reason']}", file=str(report.path),
                             row=first["source_row"], field=first["field"])
        raise InputError("file has no records", file=str(report.path))
    return rows, detected


def sample_positions(n: int, sample: int | None, seed: int) -> np.ndarray | None:
    """Sorted positions of a reproducible random ``sample`` of ``n`` rows (numpy's
    ``default_rng(seed)``), or None to keep every row (no sample, or not fewer than ``n``)."""
    if sample is None:
        return None
    if sample <= 0:
        raise InputError("--sample must be positive")
    if sample >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def _samples_frame(rows: list[dict], record_format: str) -> pd.DataFrame:
    base = pd.DataFrame({
        "sample_id": np.arange(len(rows), dtype=np.int64),
        "source_row": np.asarray([r["source_row"] for r in rows], dtype=np.int64),
        "instruction": [r["instruction"] for r in rows],
        "input": [r["input"] for r in rows],
        "output": [r["output"] for r in rows],
        "record": [r["record_json"] for r in rows],
    })
    base["duplicate_of"] = find_duplicates(base)
    for name, values in extra_columns([r["record"] for r in rows], record_format).items():
        base[name] = values
    return base


def find_duplicates(samples: pd.DataFrame) -> pd.Series:
    """sample_id of the first sample with identical instruction, input and output, else NA
    (exact duplicates only: docs/methods.md §5)."""
    key = samples["instruction"] + "\x00" + samples["input"] + "\x00" + samples["output"]
    first = pd.Series(samples["sample_id"].to_numpy(), index=key.to_numpy())
    first = first[~first.index.duplicated(keep="first")]
    owner = key.map(first).to_numpy()
    dup = pd.array(owner, dtype="Int64")
    dup[owner == samples["sample_id"].to_numpy()] = pd.NA
    return pd.Series(dup, index=samples.index)
