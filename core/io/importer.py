"""Import for both faces (CLI and app): several files pooled into one frame, and a workspace
created from it (docs/architecture.md, import)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import atomic
from ..errors import InputError
from ..workspace import Workspace
from .dataset import (ImportResult, find_duplicates, read_dataset, read_hub_dataset,
                      sample_positions)
from .files import is_importable
from .hf import is_saved_dataset

ALPACA_LICENCE = ("Alpaca-derived data is for non-commercial research (CC BY-NC 4.0); check "
                  "the licence of every source before you train on or share an export.")


def read_datasets(paths: Sequence[str | Path], **kwargs) -> ImportResult:
    """Read several files into one pool with a ``source`` column naming each file.

    A folder stands for its dataset files (README files left out), unless it is a
    ``save_to_disk`` folder, which is one dataset (``split`` picks a split). ``hf=NAME``
    (with ``split``, ``revision``) reads a Hugging Face Hub dataset instead of files.
    ``sample``/``limit`` apply to the pooled rows; per-file options are shared.
    """
    paths = [Path(p) for p in paths]
    hub, revision = kwargs.pop("hf", None), kwargs.pop("revision", None)
    if hub is not None:
        if paths:
            raise InputError("give dataset files or --hf NAME, not both", field="hf")
        return read_hub_dataset(hub, revision=revision, **kwargs)
    if revision is not None:
        raise InputError("--revision is for --hf", field="revision")
    if len(paths) == 1 and (not paths[0].is_dir() or is_saved_dataset(paths[0])):
        return read_dataset(paths[0], **kwargs)
    files: list[Path] = []
    for p in paths:
        if p.is_dir() and not is_saved_dataset(p):
            files.extend(sorted(q for q in p.iterdir() if q.is_file() and not
                                q.name.lower().startswith("readme") and is_importable(q)))
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
    pick = sample_positions(len(pool), sample, seed)
    if pick is not None:
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


def import_to_workspace(paths: Sequence[str | Path] | str | Path, root: str | Path,
                        overwrite: bool = False, **read_options) -> tuple[Workspace,
                                                                           ImportResult]:
    """Read dataset file(s) and create a workspace; skipped rows go to import_report.json.

    The inputs are read before anything is deleted, and ``Workspace.create`` refuses to
    replace a workspace that holds one of them or a folder that is not a workspace."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    result = read_datasets(paths, **read_options)
    source = dict(result.source)
    source["notes"] = result.notes
    ws = Workspace.create(root, result.samples, source=source, overwrite=overwrite,
                          keep=paths)
    atomic.write_json(ws.path("import_report.json"), {
        "skipped": result.skipped, "warnings": result.warnings, "notes": result.notes})
    return ws, result
