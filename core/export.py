"""Export chosen samples as JSONL in the input's own schema, with a manifest.

Each line is the sample's original record (``samples.record``) unchanged: Alpaca stays
Alpaca, ShareGPT stays ShareGPT, OpenAI messages stay messages, and CSV/Parquet rows are JSON
objects of their columns. Lines are in ``sample_id`` order, ``json.dumps(ensure_ascii=False)``.
The one change: JSON has no NaN or Infinity (Python's reader accepts them, so a source may
hold them), so such a number is written as ``null`` and counted per field in the manifest's
``non_finite_as_null``; ``allow_nan=False`` guards every line that is written again.
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
from .names import ds2_score_name, resolve_rating_column
from .audit import audit_state, curated_in_force
from .select import as_float, column_dtypes, load_selection, resolve_columns, score_table
from .workspace import Workspace, frame_fingerprint, now_iso, package_versions, sha256_file


def manifest_path(out_path: str | os.PathLike) -> Path:
    """``subset.jsonl`` → ``subset.manifest.json`` (next to the output)."""
    out = Path(out_path)
    stem = out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.stem
    return out.with_name(stem + ".manifest.json")


def check_out(out: Path) -> None:
    """The output path must name a file: a folder (or a manifest path that is one), or a
    parent that is a file, is a one-line ``InputError`` before anything is read or written
    (``--force`` must never try to replace a folder)."""
    for path in (out, manifest_path(out)):
        if path.is_dir():
            raise InputError("is a folder; give the output file, e.g. "
                             f"{Path(path, 'subset.jsonl')}", file=str(path), field="out")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot write here: {parent} is a file, not a folder",
                                 file=str(out), field="out")
            break


def curated_ratings(ws: Workspace, rating_column: str) -> pd.Series:
    """Curated rating per sample_id for ``rating_column`` (the exact column, or its DS2
    score name): ``core.audit.curated_in_force`` of DS2's curated rating
    (``core.names.ds2_score_name``), as JSON values (classes as integers, missing None)."""
    column = resolve_rating_column(ws, rating_column)
    name = ds2_score_name(column)
    if name not in ws.score_names():
        raise InputError(f"no DS2 scores for rating column {column!r} "
                         f"(scores/{name}.parquet); run DS2 curation first",
                         field="write_back_rating")
    table = score_table(ws, [f"{name}.curated"])
    curated = pd.Series(table[f"{name}.curated"].to_numpy(),
                        index=table["sample_id"].to_numpy())
    return curated_in_force(curated, audit_state(ws), column).map(_as_rating)


def export_jsonl(ws: Workspace, sample_ids: Iterable[int], out_path: str | os.PathLike,
                 with_scores: Sequence[str] = (), write_back_rating: str | None = None,
                 rating_field: str | None = None, selection: str | dict | None = None,
                 record: bool = False, force: bool = False,
                 allow_contaminated: bool = False, reflected: str | None = None,
                 with_tags: bool = False) -> dict:
    """Write the records of ``sample_ids`` (sorted, unique) to ``out_path`` as JSONL and a
    manifest ``<stem>.manifest.json`` beside it; return the manifest.

    - ``with_scores``: score columns (plain or qualified names, see ``core.select.score_table``)
      added to each record under the name given; a missing score is ``null``.
    - ``write_back_rating``: a rating column (its exact name, e.g. ``claude_ge_4_5`` or
      ``quality score``, or its DS2 score name, see ``core.names``) whose curated rating is
      written into ``rating_field`` (default ``<column>_curated``, so the raw rating stays).
    - ``selection``: the saved selection's name (or its dict) to record in the manifest.
    - ``record``: also keep a copy of the manifest in the workspace's ``exports/``.
    - ``force``: replace an existing output or manifest (else that is an ``InputError``).
    - ``reflected``: a teacher run of ``python -m core reflect`` ("" = the only one): write,
      for the samples among ``sample_ids`` that its rule kept a version of (and no person
      rejected), that recycled version in the record's schema, with a ``reflection``
      provenance field (``core.reflect.recycle``); the others are left out.
    - ``with_tags``: add each record's tags (``core.tags``, a sorted list) as a ``tags`` field.
    - ``allow_contaminated``: export rows ``decontaminate`` flagged as overlapping an eval set
      (refused otherwise, ``core.decontam.check_export``); the manifest counts them.

    Both files are written to temp files first and renamed only once both are complete, so
    a failure (a full disk) leaves the previous export and its manifest as they were.
    """
    out = Path(out_path)
    check_out(out)
    if not force:
        for existing in (out, manifest_path(out)):
            if existing.exists():
                raise InputError("already exists; choose another name or pass --force to "
                                 "replace it", file=str(existing))
    # the samples are read once: the records written and the fingerprint in the manifest
    # both come from this frame, so the manifest describes the data actually exported
    samples = ws.samples()
    samples_fingerprint = frame_fingerprint(samples)
    ids = _check_ids(ws, sample_ids, len(samples))
    from .decontam import check_export

    contaminated = check_export(ws, ids, allow=allow_contaminated)
    with_scores = [c for c in dict.fromkeys(with_scores) if c]
    records = samples.set_index("sample_id")["record"].reindex(ids)
    extra: dict[str, np.ndarray | list] = {}
    reflection = None
    if reflected is not None:
        from .reflect.recycle import PROVENANCE_FIELD, pick_run, recycled_records

        ids, records, extra[PROVENANCE_FIELD], reflection = recycled_records(
            ws, pick_run(ws, reflected), ids, records)
    summaries: dict[str, dict] = {}
    score_files: set[str] = set()
    if with_scores:
        table = score_table(ws, with_scores).set_index("sample_id").reindex(ids)
        where = resolve_columns(ws, with_scores)
        score_files.update(src for src, _ in where.values())
        for col in with_scores:
            values = table[col]
            if _integer_in_source(ws, *where[col]) and pd.api.types.is_float_dtype(values):
                values = values.astype("Int64")  # a row missing from the file made it float
            extra[col] = [_json_value(v) for v in values.to_numpy(dtype=object)]
            summaries[col] = _summary(table[col])
    if with_tags:
        from .tags import TAGS_FIELD, tags_for

        if TAGS_FIELD in extra:
            raise InputError(f"field {TAGS_FIELD!r} is both a score and the tags field",
                             field="with_scores")
        extra[TAGS_FIELD] = tags_for(ws, ids)
    write_back = None
    if write_back_rating:
        column = resolve_rating_column(ws, write_back_rating)
        field = rating_field or f"{column}_curated"
        if field in extra:
            raise InputError(f"field {field!r} is both a score and the rating field; pass "
                             "another rating_field", field="rating_field")
        rating = curated_ratings(ws, column).reindex(ids)
        extra[field] = [_json_value(v) for v in rating.to_numpy(dtype=object)]
        summaries[field] = _summary(rating)
        score_files.add(ds2_score_name(column))
        write_back = {"column": column, "field": field, "score": ds2_score_name(column)}

    lines_written = 0
    non_finite: dict[str, int] = {}
    with atomic.atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for i, (sid, text) in enumerate(zip(ids, records.to_numpy())):
                fh.write(_export_line(text, {name: values[i] for name, values in extra.items()},
                                      int(sid), non_finite))
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
            "samples_sha256": samples_fingerprint,
            "counts": {"workspace_samples": int(len(samples)), "exported": lines_written,
                       **({"contaminated_exported": contaminated} if contaminated else {})},
            "selection": sel,
            "with_scores": list(with_scores),
            "with_tags": bool(with_tags),
            "write_back_rating": write_back,
            "reflected": reflection,
            # JSON has no NaN or Infinity: such values in a record are written as null,
            # counted here per top-level field
            "non_finite_as_null": dict(sorted(non_finite.items())),
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
        keep_manifest_copy(ws, manifest, out)
    return manifest


def keep_manifest_copy(ws: Workspace, manifest: dict, out: Path) -> None:
    """A copy of an export's manifest in the workspace's ``exports/`` (``--record``)."""
    stamp = manifest["created"].replace(":", "").replace("-", "")
    atomic.write_json(ws.path("exports", f"{stamp}-{manifest_path(out).name}"), manifest)


EXPORT_FORMATS = ("jsonl", "hf")  # hf: a datasets.save_to_disk folder (core/io/hf.py)


def _write(ws: Workspace, ids, out_path, format: str = "jsonl", **kwargs) -> dict:
    if format not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {format!r}; choose "
                         f"{' or '.join(EXPORT_FORMATS)}", field="format")
    if format == "hf":
        from .io.hf import export_saved_dataset

        return export_saved_dataset(ws, ids, out_path, **kwargs)
    return export_jsonl(ws, ids, out_path, **kwargs)


def export_all(ws: Workspace, out_path: str | os.PathLike, **kwargs) -> dict:
    """Export every sample (the importer's round-trip check)."""
    ids = ws.samples(["sample_id"])["sample_id"].to_numpy()
    return _write(ws, ids, out_path, **kwargs)


def export_selection(ws: Workspace, name: str, out_path: str | os.PathLike,
                     **kwargs) -> dict:
    """Export the rows of the saved selection ``name``."""
    saved = load_selection(ws, name)
    return _write(ws, saved["sample_ids"], out_path, selection=saved, **kwargs)


# --------------------------------------------------------------------------------------
def _check_ids(ws: Workspace, sample_ids: Iterable[int], n: int) -> np.ndarray:
    """``sample_ids`` sorted and unique, each one of the ``n`` samples read."""
    ids = np.asarray([int(i) for i in sample_ids], dtype=np.int64)
    ids = np.unique(ids)  # sorted, unique
    bad = ids[(ids < 0) | (ids >= n)]
    if len(bad):
        raise InputError(f"{len(bad)} sample ids are not in the workspace (it has ids 0.."
                         f"{n - 1}); first: {int(bad[0])}", file=str(ws.root))
    return ids


def _export_line(text: str, extra: dict[str, Any], sid: int, non_finite: dict[str, int]) -> str:
    """One output line: the stored record text verbatim, unless fields are added or it holds
    NaN/Infinity (Python's JSON reader accepts them, JSON does not): then the record is
    parsed, every non-finite number becomes null (counted per top-level field in
    ``non_finite``), and it is written again with ``allow_nan=False`` as the guard."""
    if not extra and "NaN" not in text and "Infinity" not in text:
        return _escape_line_separators(text)  # json.dumps spells a non-finite float only
        # as NaN, Infinity or -Infinity
    try:
        obj = json.loads(text)
    except (TypeError, ValueError) as err:
        raise InputError(f"the stored record is not JSON ({err}); re-import the source",
                         row=sid, field="record") from None
    if isinstance(obj, dict):
        obj = {key: _finite(value, key, non_finite) for key, value in obj.items()}
    else:
        obj = _finite(obj, "(record)", non_finite)
    if extra:
        if not isinstance(obj, dict):
            raise InputError("record is not a JSON object; scores cannot be added", row=sid)
        for name, value in extra.items():
            if name in obj:
                raise InputError(f"the record already has a field {name!r}; choose another "
                                 "name", row=sid, field=name)
            obj[name] = value
    return _escape_line_separators(json.dumps(obj, ensure_ascii=False, allow_nan=False))


def _escape_line_separators(line: str) -> str:
    """U+2028/U+2029 as JSON escapes: valid JSON either way (they can only stand inside a
    string), but readers that split lines with ``str.splitlines`` would cut the record."""
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _finite(value: Any, field: str, counts: dict[str, int]) -> Any:
    """``value`` with every NaN/±Inf inside it replaced by None, counted under ``field``."""
    if isinstance(value, float) and not math.isfinite(value):
        counts[field] = counts.get(field, 0) + 1
        return None
    if isinstance(value, dict):
        return {k: _finite(v, field, counts) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, field, counts) for v in value]
    return value


def _integer_in_source(ws: Workspace, source: str, column: str) -> bool:
    """Whether ``column`` of the file ``source`` (``select.column_dtypes``) holds integers."""
    return pd.api.types.is_integer_dtype(column_dtypes(ws, source)[column])


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
    v = as_float(pd.Series(values))
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
    return {"sha256": ws.file_sha256(f"scores/{name}.parquet"), "model": model,
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
    p.add_argument("--out", required=True,
                   help="output .jsonl file (with --format hf: a new folder)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl",
                   help="jsonl (default) or hf: a Hugging Face datasets save_to_disk folder "
                        "(load it with datasets.load_from_disk), manifest beside it")
    p.add_argument("--with-scores", metavar="COL,...",
                   help="score columns to add as fields, e.g. ifd,rifd")
    p.add_argument("--write-back-rating", metavar="COLUMN",
                   help="write the curated rating of this rating column (e.g. claude_ge_4_5 "
                        "or ds2_claude_ge_4_5) into a field")
    p.add_argument("--rating-field", help="field name for the curated rating (default "
                                          "COLUMN_curated)")
    p.add_argument("--reflected", nargs="?", const="", default=None, metavar="NAME",
                   help="write the recycled version the `reflect` rule kept for each "
                        "selected sample (teacher run NAME; default: the only one), with a "
                        "reflection provenance field; samples without one are left out")
    p.add_argument("--with-tags", action="store_true",
                   help="add each record's tags (see `tag`) as a `tags` field")
    p.add_argument("--record", action="store_true",
                   help="also keep a copy of the manifest in the workspace's exports/")
    p.add_argument("--force", action="store_true",
                   help="replace OUT and its manifest if they exist")
    p.add_argument("--allow-contaminated", action="store_true",
                   help="export rows that `decontaminate` flagged (refused otherwise)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    ws = Workspace.open(args.workspace)
    scores = [c.strip() for c in (args.with_scores or "").split(",") if c.strip()]
    kwargs = dict(with_scores=scores, write_back_rating=args.write_back_rating,
                  rating_field=args.rating_field, record=args.record, force=args.force,
                  allow_contaminated=args.allow_contaminated, reflected=args.reflected,
                  format=args.format, with_tags=args.with_tags)
    if args.all:
        manifest = export_all(ws, args.out, **kwargs)
    else:
        manifest = export_selection(ws, args.selection, args.out, **kwargs)
    from .text import terminal_safe

    print(terminal_safe(f"exported {manifest['rows']:,} of "
                        f"{manifest['counts']['workspace_samples']:,} samples "
                        f"({manifest['format']}) to {args.out}"))
    print(terminal_safe(f"manifest {manifest_path(args.out)}"))
    if manifest.get("non_finite_as_null"):
        fields = ", ".join(f"{k} ({n:,})" for k, n in manifest["non_finite_as_null"].items())
        print(terminal_safe(f"note: NaN/Infinity written as null (JSON has neither): {fields}"))
    if manifest.get("licence_note"):
        print(terminal_safe(f"licence: {manifest['licence_note']}"))
    return 0
