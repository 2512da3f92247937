"""Export chosen samples as JSONL in the input's own schema, with a manifest.

Each line is the sample's original record (``samples.record``) unchanged: Alpaca stays
Alpaca, ShareGPT stays ShareGPT, OpenAI messages stay messages, and CSV/Parquet rows are JSON
objects of their columns. Lines are in ``sample_id`` order, ``json.dumps(ensure_ascii=False)``.
Chosen score columns can be added as extra top-level fields named after the column, and the
curated rating (hand decisions from the audit log first, then DS2's curated rating) can be
written into a field. The output and its manifest are written atomically; the workspace is
only read, except for an optional copy of the manifest in ``exports/``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import atomic
from .errors import InputError
from .select import (DS2_PREFIX, _float, _rating_key, audit_decisions, load_selection,
                     resolve_columns, score_table)
from .workspace import Workspace, now_iso, package_versions, sha256_file


def manifest_path(out_path: str | os.PathLike) -> Path:
    """``subset.jsonl`` → ``subset.manifest.json`` (next to the output)."""
    out = Path(out_path)
    stem = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.stem
    return out.with_name(stem + ".manifest.json")


def curated_ratings(ws: Workspace, rating_column: str) -> pd.Series:
    """Curated rating per sample_id for ``rating_column``: a rating set by hand in the audit
    log, else DS2's curated rating (``scores/ds2_<column>``), else missing."""
    name = DS2_PREFIX + _rating_key(rating_column)
    if name not in ws.score_names():
        raise InputError(f"no DS2 scores for rating column '{_rating_key(rating_column)}' "
                         f"(scores/{name}.parquet); run DS2 curation first")
    table = score_table(ws, [f"{name}.curated"])
    rating = pd.Series(table[f"{name}.curated"].to_numpy(dtype=object),
                       index=table["sample_id"].to_numpy())
    rating = rating.map(_as_rating)
    for sid, value in audit_decisions(ws, rating_column).items():
        if sid in rating.index:
            rating[sid] = _as_rating(value)
    return rating


def export_jsonl(ws: Workspace, sample_ids: Iterable[int], out_path: str | os.PathLike,
                 with_scores: Sequence[str] = (), write_back_rating: str | None = None,
                 rating_field: str | None = None, selection: str | dict | None = None,
                 record: bool = False, force: bool = False) -> dict:
    """Write the records of ``sample_ids`` (sorted, unique) to ``out_path`` as JSONL and a
    manifest ``<stem>.manifest.json`` beside it; return the manifest.

    - ``with_scores``: score columns (plain or qualified names, see ``select.score_table``)
      added to each record under the name given; a missing score is ``null``.
    - ``write_back_rating``: a rating column (``claude_ge_4_5`` or ``ds2_claude_ge_4_5``)
      whose curated rating is written into ``rating_field`` (default
      ``<column>_curated``, so the raw rating stays as it was).
    - ``selection``: the saved selection's name (or its dict) to record in the manifest.
    - ``record``: also keep a copy of the manifest in the workspace's ``exports/``.
    - ``force``: replace an existing output or manifest (else that is an ``InputError``).

    Both files are written to temp files first and renamed only once both are complete, so
    a failure (a full disk) leaves the previous export and its manifest as they were.
    """
    out = Path(out_path)
    if not force:
        for existing in (out, manifest_path(out)):
            if existing.exists():
                raise InputError("already exists; choose another name or pass --force to "
                                 "replace it", file=str(existing))
    ids = _check_ids(ws, sample_ids)
    with_scores = [c for c in dict.fromkeys(with_scores) if c]
    samples = ws.samples(["sample_id", "record"]).set_index("sample_id")
    records = samples["record"].reindex(ids)
    extra: dict[str, np.ndarray | list] = {}
    summaries: dict[str, dict] = {}
    score_files: set[str] = set()
    if with_scores:
        table = score_table(ws, with_scores).set_index("sample_id").reindex(ids)
        score_files.update(src for src, _ in resolve_columns(ws, with_scores).values())
        for col in with_scores:
            extra[col] = [_json_value(v) for v in table[col].to_numpy(dtype=object)]
            summaries[col] = _summary(table[col])
    if write_back_rating:
        field = rating_field or f"{_rating_key(write_back_rating)}_curated"
        if field in extra:
            raise InputError(f"field '{field}' is both a score and the rating field; pass "
                             "another rating_field")
        rating = curated_ratings(ws, write_back_rating).reindex(ids)
        extra[field] = [_json_value(v) for v in rating.to_numpy(dtype=object)]
        summaries[field] = _summary(rating)
        score_files.add(DS2_PREFIX + _rating_key(write_back_rating))

    lines_written = 0
    with atomic.atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for i, (sid, text) in enumerate(zip(ids, records.to_numpy())):
                if extra:
                    obj = json.loads(text)
                    if not isinstance(obj, dict):
                        raise InputError("record is not a JSON object; scores cannot be added",
                                         row=int(sid))
                    for name, values in extra.items():
                        if name in obj:
                            raise InputError(f"the record already has a field '{name}'; "
                                             "choose another name", row=int(sid), field=name)
                        obj[name] = values[i]
                    text = json.dumps(obj, ensure_ascii=False)
                fh.write(text)
                fh.write("\n")
                lines_written += 1

        src = ws.manifest.get("source") or {}
        sel = _selection_info(ws, selection)
        for rel in (sel or {}).get("inputs", {}) or {}:
            if rel.startswith("scores/"):
                score_files.add(Path(rel).stem)
        manifest = {
            "output": str(out.resolve()),
            "output_sha256": sha256_file(tmp),
            "created": now_iso(),
            "format": src.get("format"),
            "rows": lines_written,
            "source": {"path": src.get("path"), "sha256": src.get("sha256"),
                       "format": src.get("format")},
            "licence_note": src.get("licence_note"),
            "workspace": str(ws.root.resolve()),
            "samples_sha256": ws.samples_fingerprint(),
            "counts": {"workspace_samples": len(ws), "exported": lines_written},
            "selection": sel,
            "with_scores": list(with_scores),
            "write_back_rating": (None if not write_back_rating else
                                  {"column": _rating_key(write_back_rating),
                                   "field": rating_field or
                                   f"{_rating_key(write_back_rating)}_curated"}),
            "score_summaries": summaries,
            "scores": {name: _score_provenance(ws, name) for name in sorted(score_files)
                       if name not in ("map", "samples")},
            "versions": package_versions(("numpy", "pandas", "pyarrow")),
            "cherrypick": _own_version(),
        }
        # the manifest describes the temp file's bytes; it is renamed into place first, the
        # output on leaving the block, so a full disk while writing either changes neither
        atomic.write_json(manifest_path(out), manifest)
    if record:
        stamp = manifest["created"].replace(":", "").replace("-", "")
        atomic.write_json(ws.path("exports", f"{stamp}-{manifest_path(out).name}"), manifest)
    return manifest


def export_all(ws: Workspace, out_path: str | os.PathLike, **kwargs) -> dict:
    """Export every sample (the importer's round-trip check)."""
    ids = ws.samples(["sample_id"])["sample_id"].to_numpy()
    return export_jsonl(ws, ids, out_path, **kwargs)


def export_selection(ws: Workspace, name: str, out_path: str | os.PathLike,
                     **kwargs) -> dict:
    """Export the rows of the saved selection ``name``."""
    saved = load_selection(ws, name)
    return export_jsonl(ws, saved["sample_ids"], out_path, selection=saved, **kwargs)


# --------------------------------------------------------------------------------------
def _check_ids(ws: Workspace, sample_ids: Iterable[int]) -> np.ndarray:
    ids = np.asarray([int(i) for i in sample_ids], dtype=np.int64)
    ids = np.unique(ids)  # sorted, unique
    n = len(ws)
    bad = ids[(ids < 0) | (ids >= n)]
    if len(bad):
        raise InputError(f"{len(bad)} sample ids are not in the workspace (it has ids 0.."
                         f"{n - 1}); first: {int(bad[0])}", file=str(ws.root))
    return ids


def _json_value(value: Any) -> Any:
    """Plain JSON value: numpy scalars unwrapped, NaN/NA/inf → null, integral floats kept."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _as_rating(value: Any) -> Any:
    """Ratings are classes: 3.0 (a float only because of missing rows) is written as 3."""
    value = _json_value(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _summary(values: pd.Series) -> dict:
    v = _float(pd.Series(values))
    ok = v[np.isfinite(v)]
    if not len(ok):
        return {"min": None, "median": None, "max": None, "missing": int(len(v))}
    return {"min": float(ok.min()), "median": float(np.median(ok)), "max": float(ok.max()),
            "missing": int(len(v) - len(ok))}


def _score_provenance(ws: Workspace, name: str) -> dict:
    """Model, parameters and versions from a score file's sidecar, plus its sha256."""
    meta = ws.score_meta(name) or {}
    params = meta.get("params") or {}
    model = meta.get("model") or params.get("model") or params.get("model_name") \
        or params.get("embedding_model")
    path = ws.path("scores", f"{name}.parquet")
    return {"sha256": sha256_file(path) if path.exists() else None, "model": model,
            "params": params, "versions": meta.get("versions"), "created": meta.get("created")}


def _selection_info(ws: Workspace, selection: str | dict | None) -> dict | None:
    if selection is None:
        return None
    saved = load_selection(ws, selection) if isinstance(selection, str) else selection
    return {"name": saved.get("name"), "created": saved.get("created"),
            "recipe": saved.get("recipe"), "inputs": saved.get("inputs"),
            "counts": saved.get("counts"), "steps": saved.get("steps")}


def _own_version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a saved selection (or every row) as JSONL with a manifest",
        description="Write the records of a selection verbatim in the input's schema, one "
                    "JSON object per line in sample_id order, and OUT-stem.manifest.json "
                    "(source, selection recipe, score provenance, sha256).")
    p.add_argument("--workspace", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--selection", metavar="NAME", help="saved selection to export")
    which.add_argument("--all", action="store_true", help="export every row")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--with-scores", metavar="COL,...",
                   help="score columns to add as fields, e.g. ifd,rifd")
    p.add_argument("--write-back-rating", metavar="COLUMN",
                   help="write the curated rating of this rating column (e.g. claude_ge_4_5 "
                        "or ds2_claude_ge_4_5) into a field")
    p.add_argument("--rating-field", help="field name for the curated rating (default "
                                          "COLUMN_curated)")
    p.add_argument("--record", action="store_true",
                   help="also keep a copy of the manifest in the workspace's exports/")
    p.add_argument("--force", action="store_true",
                   help="replace OUT and its manifest if they exist")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    ws = Workspace.open(args.workspace)
    scores = [c.strip() for c in (args.with_scores or "").split(",") if c.strip()]
    kwargs = dict(with_scores=scores, write_back_rating=args.write_back_rating,
                  rating_field=args.rating_field, record=args.record, force=args.force)
    if args.all:
        manifest = export_all(ws, args.out, **kwargs)
    else:
        manifest = export_selection(ws, args.selection, args.out, **kwargs)
    print(f"exported {manifest['rows']:,} of {manifest['counts']['workspace_samples']:,} "
          f"samples ({manifest['format']}) to {args.out}")
    print(f"manifest {manifest_path(args.out)}")
    if manifest.get("licence_note"):
        print(f"licence: {manifest['licence_note']}")
    return 0
