"""Steps that tie modules together for both faces (CLI and app): import into a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import atomic
from .io import ImportResult, read_datasets
from .workspace import Workspace

ALPACA_LICENCE = ("Alpaca-derived data is for non-commercial research (CC BY-NC 4.0); check "
                  "the licence of every source before you train on or share an export.")


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
