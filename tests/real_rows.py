"""Reading real rows from the shared data folder (``alpaca_random_9k.jsonl.gz`` and its kin)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def first_rows(path: str | Path, n: int) -> list[dict]:
    """The first ``n`` records of a gzipped JSONL file, parsed, blank lines skipped; reads only
    as far as it needs, so a test on 30 rows does not decompress 9,000."""
    rows: list[dict] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if len(rows) == n:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows
