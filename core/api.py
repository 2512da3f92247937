"""The notebook surface: each of Cherrypick's jobs in one call, on a workspace or a DataFrame.

``import core`` exposes these names (loaded on first use, so ``import core`` stays fast). They
are the same step functions the CLI and the app call, with their caching and resuming when
given a workspace; on a DataFrame (columns ``instruction``, ``output`` and optionally
``input``) they compute in memory and return a frame in the frame's row order.

    ws = core.import_data("my_data.jsonl", "workspaces/mine")
    core.prepare(ws)                                   # embeddings, neighbours, map
    ifd = core.score_ifd(ws, reverse=True)             # IFD and r-IFD per sample
    sel = core.select_subset(ws, "cherry", ratio=0.1, name="cherry-10")  # a paper's preset
    core.export_selection(ws, "cherry-10", "cherry-10.jsonl")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .errors import InputError
from .workspace import Workspace

Data = Workspace | pd.DataFrame

__all__ = ["open_workspace", "import_data", "prepare", "score_ifd", "score_recost",
           "curate_ratings", "select_subset", "export_selection"]


def open_workspace(path: str | os.PathLike) -> Workspace:
    """An existing workspace folder (one dataset and everything computed on it)."""
    return Workspace.open(path)


def import_data(files: str | os.PathLike | Sequence[str | os.PathLike],
                workspace: str | os.PathLike, overwrite: bool = False,
                **read_options) -> Workspace:
    """Read dataset file(s) in any supported format into a new workspace (``read_options``:
    ``format``, ``mapping``, ``skip_invalid``, ``sample``, ``seed``... as ``import``)."""
    from .io import import_to_workspace

    ws, _ = import_to_workspace(files, workspace, overwrite=overwrite, **read_options)
    return ws


def prepare(ws: Workspace, k: int = 10, progress=None) -> Workspace:
    """Embeddings, the kNN graph and the 2-D map with clusters: what DS2, RECOST's retrieval,
    the diversity policies and the Explore page read. Cached like every step."""
    from .embed import run_embed
    from .knn import run_neighbors
    from .maps import run_map

    run_embed(ws, progress=progress)
    run_neighbors(ws, k=k, progress=progress)
    run_map(ws, progress=progress)
    return ws


def _texts(frame: pd.DataFrame) -> tuple[list, list, list]:
    """instruction, input, output columns of a user's frame, checked at the boundary."""
    for column in ("instruction", "output"):
        if column not in frame.columns:
            raise InputError(f"the DataFrame has no {column!r} column "
                             f"(columns: {', '.join(map(str, frame.columns))})", field=column)
    inputs = frame["input"] if "input" in frame.columns else pd.Series([""] * len(frame))
    return (frame["instruction"].fillna("").astype(str).tolist(),
            inputs.fillna("").astype(str).tolist(),
            frame["output"].fillna("").astype(str).tolist())


def score_ifd(data: Data, reverse: bool = False, model=None, template: str = "none",
              max_length: int = 512, dtype: str = "auto", progress=None) -> pd.DataFrame:
    """IFD (Cherry LLM, arXiv 2308.12032) and its perplexity form ``ifd_ppl``
    (Superfiltering, arXiv 2402.00530); with ``reverse`` also r-IFD (Selective
    Reflection-Tuning, arXiv 2402.10110). One row per sample (``sample_id`` for a workspace)."""
    from .scores.ifd import ifd_scores, load_scoring_lm, rifd_scores, run_ifd

    if isinstance(data, Workspace):
        results = run_ifd(data, model=model, template=template, max_length=max_length,
                          with_reverse=reverse, dtype=dtype, progress=progress)
        frame = data.read_score("ifd")
        if reverse and results.get("rifd") is not None:
            frame = frame.merge(data.read_score("rifd"), on="sample_id", how="left")
        return frame
    instructions, inputs, outputs = _texts(data)
    lm = load_scoring_lm(model, dtype)
    frame = ifd_scores(lm, instructions, inputs, outputs, template=template,
                       max_length=max_length, progress=progress)
    if reverse:
        frame = pd.concat([frame, rifd_scores(lm, instructions, inputs, outputs,
                                              max_length=max_length, progress=progress,
                                              template=template)],
                          axis=1)
    frame.index = data.index
    return frame


def score_recost(data: Data, reference: str | pd.DataFrame, k: int = 5, model=None,
                 template: str = "none", max_length: int = 512, dtype: str = "auto",
                 progress=None) -> pd.DataFrame:
    """RECOST-style relative entropy against trusted data (arXiv 2402.17355): ``reference`` is
    a saved selection's name for a workspace, or a frame of trusted rows for a DataFrame."""
    from .scores.recost import demonstrations, recost_scores, run_recost
    from .scores.ifd import load_scoring_lm

    if isinstance(data, Workspace):
        if not isinstance(reference, str):
            raise InputError("on a workspace, reference is the name of a saved selection",
                             field="reference")
        run_recost(data, reference, k=k, model=model, template=template,
                   max_length=max_length, dtype=dtype, progress=progress)
        return data.read_score("recost")
    if not isinstance(reference, pd.DataFrame):
        raise InputError("on a DataFrame, reference is a DataFrame of trusted rows",
                         field="reference")
    from .embed import embed_texts, embedding_text

    q, x, a = _texts(data)
    rows = pd.DataFrame({"instruction": q, "input": x, "output": a})
    ref_rows = list(zip(*_texts(reference)))
    ref = pd.DataFrame(ref_rows, columns=["instruction", "input", "output"])
    ref_emb = embed_texts(embedding_text(ref, "instruction"))
    demos, _ = demonstrations(rows, ref_rows, ref_emb, k)
    frame = recost_scores(load_scoring_lm(model, dtype), q, x, a, demos, template=template,
                          max_length=max_length, progress=progress)
    frame.index = data.index
    return frame


def curate_ratings(data: Data, rating_column: str, scale=None, k: int = 10, seed: int = 0,
                   progress=None, **options) -> pd.DataFrame:
    """DS2 (arXiv 2410.10877): an LLM rater's scores corrected by a transition matrix estimated
    from embedding neighbours; per sample ``flagged``, ``suggested``, ``confidence``,
    ``curated`` and ``long_tail``. ``scale`` maps raw ratings to classes as ``curate --scale``
    (``core.scores.ratings.to_classes``); on a DataFrame the neighbours come from MiniLM
    embeddings of the rows (the text ``embed`` uses)."""
    from .scores.ds2 import curate, run_curate
    from .scores.ratings import to_classes

    if isinstance(data, Workspace):
        return run_curate(data, rating_column=rating_column, scale=scale, k=k, seed=seed,
                          progress=progress, **options).frame
    if rating_column not in data.columns:
        raise InputError(f"the DataFrame has no {rating_column!r} column", field=rating_column)
    from .embed import embed_texts, embedding_text
    from .knn import knn_search

    ratings, _ = to_classes(data[rating_column], scale, field=rating_column)
    q, x, a = _texts(data)
    rows = pd.DataFrame({"instruction": q, "input": x, "output": a})
    emb = embed_texts(embedding_text(rows, "full"))     # the text `embed` uses by default
    indices, similarities = knn_search(emb, k=k)
    frame, _ = curate(ratings, indices, similarities, k=k, seed=seed, progress=progress,
                      **options)
    frame.index = data.index
    return frame


def select_subset(ws: Workspace, policy: str | None = None, recipe=None,
                  name: str | None = None, force: bool = False, ifd_num: int | None = None,
                  seed: int = 0, **options):
    """Run a selection: a paper's preset (``cherry``, ``superfiltering``,
    ``superfiltering-d``, ``reflection``), a baseline (``longest``, ``random``, ``kcenter``)
    or a policy of ``core.select.make_recipe``, with its options (``ratio=0.1``,
    ``budget=1000``, ``exclude_duplicates=True``...); or a ``recipe`` (a Recipe, a dict or
    a JSON file). With ``name`` the selection is saved under ``selections/`` (``force``
    replaces one of that name). Returns the Selection."""
    from .select import make_recipe, run_selection, save_selection
    from .select.baselines import BASELINES
    from .select.presets import DEFAULT_FLA_SHARE, PRESETS
    from .select.recipe import named_ranking, with_ranking

    if (policy is None) == (recipe is None):
        raise InputError("give either a policy (or preset) name or a recipe", field="policy")
    if recipe is None and policy in (*PRESETS, *BASELINES):
        if policy == "superfiltering-d" and options.get("budget") is None:
            options.setdefault("ratio", DEFAULT_FLA_SHARE)
        recipe = with_ranking(make_recipe("threshold", **options),
                              named_ranking(policy, ifd_num=ifd_num, seed=seed))
    elif recipe is None:
        recipe = make_recipe(policy, **options)
    selection = run_selection(ws, recipe, name=name)
    if name is not None:
        save_selection(ws, name, selection, force=force)
    return selection


def export_selection(ws: Workspace, selection: str, out: str | os.PathLike | None = None,
                     **options) -> dict:
    """Write the saved selection ``selection`` as JSONL in the input's own schema, with a
    manifest beside it (default ``exports/<selection>.jsonl``); returns the manifest."""
    from .export import export_selection as write_selection
    from .paths import child_path

    out_path = Path(out) if out is not None else child_path(ws.root / "exports", selection,
                                                            ".jsonl", "export name")
    return write_selection(ws, selection, out_path, **options)
