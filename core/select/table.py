"""THE wide score table: one row per sample with columns joined from the score files, the
map and the samples, used by selection, export and the app (Explore, Select & Export).

A column is named plainly (``ifd``) or qualified by its file (``ds2_claude.curated``,
``map.cluster``, ``samples.duplicate_of``). Every file is read through the workspace
(``Workspace.read_score``, ``map``, ``samples``) and checked here (``check_frame``): a
damaged or hand-edited file is an ``InputError`` naming the file, the row and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..names import DS2_PREFIX
from ..workspace import MAP, SAMPLES, Workspace


def score_sources(ws: Workspace) -> dict[str, str]:
    """Files a column can come from (workspace paths): each score file by its name, ``map``
    and ``samples``."""
    out = {name: f"scores/{name}.parquet" for name in ws.score_names()}
    if ws.exists(MAP):
        out["map"] = MAP
    out["samples"] = SAMPLES
    return out


def column_dtypes(ws: Workspace, source: str) -> dict[str, object]:
    """The columns of one source (``score_sources``) and the pandas dtype each is read as."""
    return ws.column_dtypes(score_sources(ws)[source])


def numeric_score_columns(ws: Workspace) -> list[str]:
    """Every number or boolean column of every score file with sample ids, qualified
    (``<score file>.<column>``), files in name order and columns in file order: what the
    Explore frame shows."""
    out = []
    for name in ws.score_names():
        dtypes = column_dtypes(ws, name)
        if "sample_id" not in dtypes:
            continue
        out += [f"{name}.{col}" for col, dtype in dtypes.items() if col != "sample_id" and
                (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype))]
    return out


def resolve_columns(ws: Workspace, columns: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Where each requested column comes from: ``{column: (source, column in that file)}``.

    A plain name is looked up in the score files first: found in exactly one, it is used; in
    several (e.g. ``curated`` in two DS2 files, ``answer_tokens`` in ``ifd`` and ``rifd``) it
    is an error asking for the qualified name. Not in any score file, it is looked up in
    ``map`` and then in ``samples``.
    """
    sources = score_sources(ws)
    schema = {name: [c for c in column_dtypes(ws, name) if c != "sample_id"]
              for name in sources}
    out: dict[str, tuple[str, str]] = {}
    for col in columns:
        if col in out or col == "sample_id":
            continue
        src, _, rest = col.partition(".")
        if rest and src in sources:
            if rest not in schema[src]:
                raise InputError(f"no column '{rest}' in {src} (it has: "
                                 f"{', '.join(schema[src]) or 'nothing'})",
                                 file=str(ws.path(sources[src])), field=col)
            out[col] = (src, rest)
            continue
        if rest and src.startswith(DS2_PREFIX):
            raise InputError(f"no DS2 scores '{src}' (scores/{src}.parquet); run DS2 curation "
                             "for that rating column first", field=col)
        scored = [s for s in sources if s not in ("map", "samples") and col in schema[s]]
        if len(scored) > 1:
            raise InputError(f"column '{col}' is in several score files; name one of "
                             f"{', '.join(f'{s}.{col}' for s in scored)}", field=col)
        if scored:
            out[col] = (scored[0], col)
        elif "map" in sources and col in schema["map"]:
            out[col] = ("map", col)
        elif col in schema["samples"]:
            out[col] = ("samples", col)
        else:
            known = sorted({c for cols in schema.values() for c in cols})
            hint = (" (run `python -m core map` first)" if col == "cluster" else "")
            raise InputError(f"no score column '{col}'{hint}; known columns: "
                             f"{', '.join(known)}", field=col)
    return out


def read_source(ws: Workspace, source: str, columns: Sequence[str]) -> pd.DataFrame:
    """``sample_id`` and ``columns`` of one source (``score_sources``), read through the
    workspace and checked (``check_frame``; numbers required except in ``samples``)."""
    path = ws.path(score_sources(ws)[source])
    _require_columns(list(column_dtypes(ws, source)), columns, path)
    wanted = ["sample_id", *columns]
    if source == "samples":
        part = ws.samples(wanted)
    elif source == "map":
        part = ws.map()[wanted]
    else:
        part = ws.read_score(source, wanted)
    return check_frame(part, path, columns, len(ws), numeric=source != "samples")


def _require_columns(names: Sequence, columns: Sequence[str], path: Path) -> None:
    for col in ["sample_id", *columns]:
        if col not in names:
            raise InputError(f"no column '{col}' (it has: "
                             f"{', '.join(map(str, names)) or 'nothing'}); rerun the step "
                             "that made it", file=str(path), field=col)


def check_frame(part: pd.DataFrame, path: Path, columns: Sequence[str], n_samples: int,
                numeric: bool = True) -> pd.DataFrame:
    """``part`` (read from ``path``) once checked: sample ids are whole numbers of the
    workspace (0 .. n_samples - 1), each once, and with ``numeric`` the columns hold numbers
    or booleans. A damaged or hand-edited file is an ``InputError`` naming the file, the row
    and the field, never a traceback or a silent NaN."""
    _require_columns(list(part.columns), columns, path)
    ids = part["sample_id"]
    if not pd.api.types.is_integer_dtype(ids.dtype) or ids.isna().any():
        raise InputError(f"must hold whole-number sample ids, found {ids.dtype}",
                         file=str(path), field="sample_id")
    values = ids.to_numpy(dtype=np.int64)
    outside = np.flatnonzero((values < 0) | (values >= n_samples))
    if len(outside):
        row = int(outside[0])
        raise InputError(f"sample id {values[row]} is not in the workspace (ids 0.."
                         f"{n_samples - 1})", file=str(path), row=row, field="sample_id")
    repeated = np.flatnonzero(ids.duplicated().to_numpy())
    if len(repeated):
        row = int(repeated[0])
        raise InputError(f"sample_id repeats in this file (id {values[row]})", file=str(path),
                         row=row, field="sample_id")
    for col in columns if numeric else ():
        dtype = part[col].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
                or part[col].isna().all()):
            raise InputError(f"must hold numbers, found {dtype}", file=str(path), field=col)
    return part


def map_clusters(ws: Workspace) -> pd.DataFrame:
    """``sample_id`` and ``cluster`` of the map, checked."""
    return read_source(ws, "map", ["cluster"])


def score_table(ws: Workspace, columns: Iterable[str]) -> pd.DataFrame:
    """One row per sample (``sample_id`` ascending) with the requested columns joined from the
    score files, ``map.parquet`` and ``samples.parquet`` under the names asked for (see
    ``resolve_columns`` for plain vs qualified names). Rows a file lacks get missing values.
    ``frame.attrs["files"]`` lists the workspace files read (relative paths)."""
    where = resolve_columns(ws, list(columns))
    table = ws.samples(["sample_id"])
    by_source: dict[str, list[tuple[str, str]]] = {}
    for want, (src, col) in where.items():
        by_source.setdefault(src, []).append((want, col))
    sources = score_sources(ws)
    files = []
    for src, pairs in by_source.items():
        part = read_source(ws, src, sorted({c for _, c in pairs}))
        out = pd.DataFrame({"sample_id": part["sample_id"].astype(np.int64)})
        for want, col in pairs:
            out[want] = part[col]
        table = table.merge(out, on="sample_id", how="left", validate="one_to_one")
        files.append(sources[src])
    table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
    table.attrs["files"] = sorted(files)
    return table
