"""Selections in a workspace: run a recipe on the workspace's scores, save it as
``selections/<name>.json`` (recipe, sha256 of every file read, counts per step, the chosen
ids in ranking order), load, list, rerun and compare saved selections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import atomic
from ..audit import audit_state, curated_in_force, read_log
from ..errors import InputError
from ..names import ds2_score_name, ds2_scores, resolve_rating_column
from ..paths import child_path, is_valid_name
from ..workspace import AUDIT, EMBEDDINGS, MAP, SAMPLES, Workspace, now_iso
from .blocks import cluster_sizes, group_label, label_sort_key
from .recipe import Recipe, Selection, shown
from .steps import Context, DS2Ranking, ExcludeRejected, Tagged
from .table import map_clusters, read_source, score_table

SELECTIONS = "selections"


def _reads_audit(recipe: Recipe) -> bool:
    return any(isinstance(s, (ExcludeRejected, DS2Ranking, Tagged)) for s in recipe.steps())


def _needs_embeddings(recipe: Recipe) -> bool:
    return any(s.needs_embeddings() for s in recipe.steps())


def selection_context(ws: Workspace, recipe: Recipe,
                      embeddings: Callable[[], np.ndarray] | None = None) -> Context:
    """What ``recipe`` needs from ``ws`` besides its columns: the embeddings (from
    ``embeddings()`` when given, e.g. the app's cached copy, else ``ws.embeddings()``), the
    audit log's entries and the cluster sizes over the whole map."""
    ctx = Context(n_all=len(ws))
    if _needs_embeddings(recipe):
        ctx.embeddings = embeddings() if embeddings is not None else ws.embeddings()
    if _reads_audit(recipe):
        ctx.audit = read_log(ws)
    if any(isinstance(s, Tagged) for s in recipe.steps()):
        from ..tags import tag_sets

        ctx.tags = tag_sets(ws)
    if recipe.budget.stratified:
        ctx.cluster_sizes = cluster_sizes(map_clusters(ws)["cluster"].to_numpy())
    return ctx


def _inputs(ws: Workspace, recipe: Recipe, files: list[str]) -> dict:
    """The fingerprint of samples.parquet and the sha256 of every other file read."""
    inputs: dict[str, str | None] = {SAMPLES: ws.samples_fingerprint()}
    if _needs_embeddings(recipe):
        inputs[EMBEDDINGS] = ws.file_sha256(EMBEDDINGS)
    if _reads_audit(recipe):
        inputs[AUDIT] = ws.file_sha256(AUDIT)
    for rel in files:
        if rel != SAMPLES:
            inputs[rel] = ws.file_sha256(rel)
    return dict(sorted(inputs.items()))


def run_selection(ws: Workspace, recipe: Recipe | dict | str | Path,
                  name: str | None = None) -> Selection:
    """Load the columns the recipe needs (``score_table``), apply it, and record the sha256
    of every file read. Does not save: see ``save_selection``."""
    if isinstance(recipe, (str, Path)):
        recipe = Recipe.load(recipe)
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    for step in recipe.steps():
        if isinstance(step, DS2Ranking):  # a DS2 score name typed for its column
            step.rating_column = resolve_rating_column(ws, step.rating_column)
    _require_scores(ws, recipe)
    frame = score_table(ws, recipe.columns())
    selection = recipe.apply(frame, selection_context(ws, recipe))
    selection.inputs = _inputs(ws, recipe, frame.attrs.get("files", []))
    selection.name = name
    selection.created = now_iso()
    return selection


def _require_scores(ws: Workspace, recipe: Recipe) -> None:
    """A preset reads named score files (``presets.PresetStep.required_scores``): a missing
    one is a one-line error naming it and the command that makes it."""
    have = set(ws.score_names())
    for step in recipe.steps():
        for name, command in getattr(step, "required_scores", dict)().items():
            if name not in have:
                raise InputError(f"{step.label()} needs the score scores/{name}.parquet, "
                                 f"which this workspace lacks; make it with `"
                                 f"{command.replace('WS', str(ws.root))}`",
                                 field=f"scores/{name}")


def selection_path(ws: Workspace, name: str) -> Path:
    """``selections/<name>.json``; the name is checked by ``core.paths``."""
    return child_path(ws.path(SELECTIONS), name, ".json", what="selection name")


def save_selection(ws: Workspace, name: str, selection: Selection,
                   force: bool = False) -> Path:
    """Write ``selections/<name>.json`` atomically (recipe, inputs with sha256, counts per
    step, chosen ids in ranking order, created). An existing name is replaced only with
    ``force``; without it the file is created exclusively, so of two concurrent saves of one
    name exactly one succeeds and the other gets an ``InputError``."""
    path = selection_path(ws, name)
    selection.name = name
    selection.created = selection.created or now_iso()
    body = selection.to_dict()
    from .. import __version__

    body["cherrypick"] = __version__
    try:
        atomic.write_json(path, body, replace=force)
    except FileExistsError:
        raise InputError(f"a selection named '{name}' already exists; choose another name "
                         "or replace it (--force, or tick Replace in the app)",
                         file=str(path)) from None
    return path


def load_selection(ws: Workspace, name: str) -> dict:
    """A saved selection as written by ``save_selection``."""
    path = selection_path(ws, name)
    if not path.exists():
        known = ", ".join(list_selections(ws)) or "none yet"
        raise InputError(f"no selection named '{name}' (saved: {known})", file=str(path))
    return _checked_selection(path, len(ws))


# key -> (type, what it must be) of a saved selection; sample_ids and recipe are required
_SELECTION_KEYS = {"sample_ids": (list, "a list of sample ids"),
                   "recipe": (dict, "a recipe mapping"),
                   "name": ((str, type(None)), "text"), "created": ((str, type(None)), "text"),
                   "inputs": (dict, "a mapping"), "counts": (dict, "a mapping"),
                   "steps": (list, "a list")}


def _checked_selection(path: Path, n_samples: int) -> dict:
    """A saved selection file, checked: a hand-edited or damaged one is an ``InputError``
    naming the file and the field (never a traceback, never ids outside the workspace)."""
    try:
        body = atomic.read_json(path)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise InputError(f"not a readable selection file ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); save it again",
                         file=str(path)) from None
    if not isinstance(body, dict):
        raise InputError(f"a selection file holds a JSON object, not {shown(body)}",
                         file=str(path))
    for key, (kind, what) in _SELECTION_KEYS.items():
        if key not in body:
            if key in ("sample_ids", "recipe"):
                raise InputError("missing; save the selection again", file=str(path),
                                 field=key)
            continue
        if not isinstance(body[key], kind):
            raise InputError(f"must be {what}, not {shown(body[key])}", file=str(path),
                             field=key)
    seen: set[int] = set()
    for i, sid in enumerate(body["sample_ids"]):
        where = f"sample_ids[{i}]"
        if isinstance(sid, bool) or not isinstance(sid, int):
            raise InputError(f"must be a whole-number sample id, not {shown(sid)}",
                             file=str(path), field=where)
        if not 0 <= sid < n_samples:
            raise InputError(f"sample id {sid} is not in the workspace (ids 0..{n_samples - 1})",
                             file=str(path), field=where)
        if sid in seen:
            raise InputError(f"sample id {sid} appears twice", file=str(path), field=where)
        seen.add(sid)
    return body


def list_selections(ws: Workspace) -> list[str]:
    """Names of the saved selections (files whose name ``core.paths`` would accept)."""
    folder = ws.path(SELECTIONS)
    return sorted(p.stem for p in folder.glob("*.json")
                  if is_valid_name(p.stem)) if folder.exists() else []


def rerun_selection(ws: Workspace, name: str) -> Selection:
    """Run a saved selection's recipe again on the workspace as it is now."""
    try:
        recipe = Recipe.from_dict(load_selection(ws, name)["recipe"])
    except InputError as err:
        if err.file is not None:
            raise
        raise InputError(err.message, file=str(selection_path(ws, name)),
                         field="recipe" if err.field is None else f"recipe.{err.field}"
                         ) from None
    return run_selection(ws, recipe, name=name)


def diff_selections(ws: Workspace, a: str | Selection, b: str | Selection,
                    rating_column: str | None = None) -> dict:
    """What changes from selection ``a`` to ``b``: ids added and removed, and counts per
    cluster (when a map exists) and per curated rating class (``core.audit.curated_in_force``
    for ``rating_column``; by default the rating column of a DS2 ranking in either recipe,
    else the only DS2 file)."""
    sa, sb = (_selection_dict(ws, x) for x in (a, b))
    ids_a, ids_b = set(sa["sample_ids"]), set(sb["sample_ids"])
    out = {"a": sa.get("name"), "b": sb.get("name"), "count_a": len(ids_a),
           "count_b": len(ids_b), "common": len(ids_a & ids_b),
           "added": sorted(ids_b - ids_a), "removed": sorted(ids_a - ids_b)}
    if ws.exists(MAP):
        out["per_cluster"] = _group_changes(map_clusters(ws), "cluster", ids_a, ids_b)
    if rating_column is None:
        for s in (sa, sb):
            r = (s.get("recipe") or {}).get("ranking") or {}
            if r.get("type") == "ds2":
                rating_column = r["rating_column"]
                break
    if rating_column is None:
        ds2 = list(ds2_scores(ws).values())
        rating_column = ds2[0] if len(ds2) == 1 else None
    if rating_column is not None:
        rating_column = resolve_rating_column(ws, rating_column)
    if rating_column is not None and ds2_score_name(rating_column) in ws.score_names():
        curated = read_source(ws, ds2_score_name(rating_column), ["curated"]).set_index(
            "sample_id")["curated"]
        rating = curated_in_force(curated, audit_state(ws), rating_column)
        out["rating_column"] = rating_column
        out["per_rating_class"] = _group_changes(
            pd.DataFrame({"sample_id": rating.index, "curated": rating.to_numpy()}),
            "curated", ids_a, ids_b)
    return out


def _selection_dict(ws: Workspace, s: str | Selection) -> dict:
    return s.to_dict() if isinstance(s, Selection) else load_selection(ws, s)


def _group_changes(frame: pd.DataFrame, column: str, ids_a: set, ids_b: set) -> dict:
    """{group: {a, b, added, removed}} for the groups either selection touches."""
    groups: dict[int, Any] = dict(zip(frame["sample_id"].astype(int), frame[column]))
    out: dict[str, dict[str, int]] = {}
    for ids, key in ((ids_a, "a"), (ids_b, "b"), (ids_b - ids_a, "added"),
                     (ids_a - ids_b, "removed")):
        for sid in ids:
            g = group_label(groups.get(sid))
            out.setdefault(g, {"a": 0, "b": 0, "added": 0, "removed": 0})[key] += 1
    return dict(sorted(out.items(), key=lambda kv: label_sort_key(kv[0])))
