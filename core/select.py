"""Selection: turn per-sample scores into a chosen subset, reproducibly.

A selection is a *recipe*: filters in order, then one ranking, then a budget. Every step
records how many rows it dropped and why (datatrove style), so the app can show where each
sample left the pipeline. The building blocks are plain functions over frames and arrays
(each returns sample ids in a deterministic order, ties broken by ``sample_id`` ascending);
the recipe classes only wire them together.

Policies (METHODS.md):

- IFD top-k (Cherry LLM §1 / Superfiltering): drop missing scores and IFD ≥ 1 (``drop="ge1"``,
  Superfiltering keeps IFD < 1) or IFD > 1 (``drop="gt1"``, Cherry keeps IFD ≤ 1), then the
  highest IFD (``ifd`` or ``ifd_ppl``).
- Reflection (Selective Reflection-Tuning §2): keep IFD < 1 and r-IFD < 1, rank by a column.
- DS2 dual sort (§3): curated rating (hand decisions from the audit log override it) best
  first, then the long-tail score, for a budget.
- RECOST diversity-consistent sampling (§4): rank by the relative-entropy score, walk windows
  of w = pool / budget, take from each the sample farthest (cosine) from those taken.
- Filters: score thresholds, exact duplicates, rows rejected in the audit log.
- Coverage: a per-cluster cap, or a budget stratified by cluster size.

Budgets from a ratio are ``floor(ratio × base)`` as in the references (``int(...)``), after
rounding away float noise (0.29 × 100 gives 29, where ``int`` alone would give 28). The base
is ``all`` rows of the workspace (Superfiltering's ``select_data.py`` and Cherry's
``select_from_ifd_json.py``), the ``candidates`` left after the filters, or the ``ranked``
rows left after the ranking's own drops (Cherry's ``data_by_IFD.py``).

Ties: always broken by ``sample_id`` ascending. This equals Superfiltering's stable sort;
Cherry's ``data_by_IFD.py`` sorts ``(ifd, index)`` tuples and so prefers the larger index on
an exact tie (a deliberate difference; exact ties are rare with real losses). Cherry also
selects *everything* when ``int(len × rate)`` is 0 (``list[-0:]``); we select nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import atomic
from .errors import InputError
from .names import DS2_PREFIX, ds2_score_name, ds2_scores, resolve_rating_column
from .paths import child_path, is_valid_name
from .workspace import AUDIT, MAP, SAMPLES, Workspace, now_iso, sha256_file

SELECTIONS = "selections"
RATIO_BASES = ("all", "candidates", "ranked")


# ======================================================================================
# plain building blocks: frames/arrays in, ordered sample ids out
# ======================================================================================
def rank_ids(frame: pd.DataFrame, column: str, descending: bool = True) -> np.ndarray:
    """``sample_id`` of ``frame`` ordered by ``column`` (ties: smaller sample_id first)."""
    ids = frame["sample_id"].to_numpy(dtype=np.int64)
    values = _float(frame[column])
    key = -values if descending else values
    return ids[np.lexsort((ids, key))]


def missing_mask(values: pd.Series | np.ndarray) -> np.ndarray:
    """True where a score is missing (NaN, ±inf or null): such rows are never ranked."""
    return ~np.isfinite(_float(values))


def ifd_keep_mask(values: pd.Series | np.ndarray, drop: str = "ge1") -> np.ndarray:
    """Rows the IFD references keep: finite and < 1 (``ge1``, Superfiltering) or ≤ 1 (``gt1``,
    Cherry LLM)."""
    if drop not in ("ge1", "gt1"):
        raise InputError(f"drop must be 'ge1' (keep IFD < 1) or 'gt1' (keep IFD ≤ 1), "
                         f"not {drop!r}")
    v = _float(values)
    with np.errstate(invalid="ignore"):
        below = v < 1.0 if drop == "ge1" else v <= 1.0
    return np.isfinite(v) & below


def budget_size(budget: int | None = None, ratio: float | None = None,
                base: int | None = None) -> int | None:
    """Number of rows to take: ``budget``, or ``floor(ratio × base)``; None means no budget."""
    if budget is not None and ratio is not None:
        raise InputError("give a budget (N rows) or a ratio, not both")
    if budget is not None:
        if int(budget) < 0:
            raise InputError(f"the budget must be ≥ 0, not {budget}", field="n")
        return int(budget)
    if ratio is not None:
        if not 0.0 <= float(ratio) <= 1.0:
            raise InputError(f"the ratio must be between 0 and 1, not {ratio}", field="ratio")
        return int(math.floor(round(float(ratio) * int(base or 0), 9)))
    return None


def ifd_top_k(frame: pd.DataFrame, column: str = "ifd", drop: str = "ge1",
              budget: int | None = None, ratio: float | None = None,
              ratio_of: str = "all") -> np.ndarray:
    """Cherry/Superfiltering selection: the highest IFD among the kept rows, best first.

    ``ratio_of="all"`` takes ``ratio`` of every row in ``frame``; ``"ranked"`` takes it of
    the kept rows (Cherry's ``data_by_IFD.py``).
    """
    kept = frame[ifd_keep_mask(frame[column], drop)]
    order = rank_ids(kept, column, descending=True)
    if ratio_of not in ("all", "ranked"):
        raise InputError(f"ratio_of must be 'all' or 'ranked' here, not {ratio_of!r}")
    n = budget_size(budget, ratio, len(frame) if ratio_of == "all" else len(kept))
    return order if n is None else order[:n]


def reflection_order(frame: pd.DataFrame, ifd_column: str = "ifd", rifd_column: str = "rifd",
                     rank_by: str = "ifd", descending: bool = True) -> np.ndarray:
    """Selective Reflection-Tuning's feasibility rule: keep IFD < 1 and r-IFD < 1 (both
    present), then order by ``rank_by``."""
    keep = ifd_keep_mask(frame[ifd_column], "ge1") & ifd_keep_mask(frame[rifd_column], "ge1")
    kept = frame[keep]
    if rank_by not in (ifd_column, rifd_column):
        kept = kept[~missing_mask(kept[rank_by])]
    return rank_ids(kept, rank_by, descending)


def dual_sort(frame: pd.DataFrame, budget: int | None = None, rating: str = "curated",
              long_tail: str = "long_tail") -> np.ndarray:
    """DS2 dual sort: curated rating best first, inside a rating the rarest (highest long-tail
    score) first; taking the first ``budget`` equals "whole classes while they fit, then the
    rarest of the class that does not". Rows without a rating are left out; a missing
    long-tail score sorts last within its class."""
    rated = frame[~missing_mask(frame[rating])]
    ids = rated["sample_id"].to_numpy(dtype=np.int64)
    r = _float(rated[rating])
    lt = _float(rated[long_tail])
    lt = np.where(np.isfinite(lt), lt, -np.inf)
    order = ids[np.lexsort((ids, -lt, -r))]
    return order if budget is None else order[:int(budget)]


BLOCK_ROWS = 4096  # window members per block in diversity_consistent_sample


def diversity_consistent_sample(sample_ids: Sequence[int], scores: Sequence[float],
                                embeddings: np.ndarray, budget: int) -> np.ndarray:
    """RECOST's diversity-consistent sampling (METHODS §4).

    Rank by ``scores`` (high first, ties by sample_id), cut the ranking into ``budget``
    consecutive windows of w = pool / budget rows (window k spans ranks
    ``floor(k·w) .. floor((k+1)·w) - 1``), and from each window take the sample whose highest
    cosine similarity to the samples already taken is lowest (the farthest; ties go to the
    better rank; the first window gives its best-ranked sample). ``embeddings`` are
    L2-normalised rows aligned with ``sample_ids``. Returns the picks in window order.
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    emb = np.asarray(embeddings, dtype=np.float32)
    if len(ids) != len(s) or len(ids) != len(emb):
        raise ValueError("sample_ids, scores and embeddings must have the same length")
    ok = np.isfinite(s)
    ids, s, emb = ids[ok], s[ok], emb[ok]
    order = np.lexsort((ids, -s))
    ids, emb = ids[order], emb[order]
    n = len(ids)
    budget = int(budget)
    if budget <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    if budget >= n:
        return ids
    width = n / budget
    bounds = [int(math.floor(k * width)) for k in range(budget + 1)]
    bounds[-1] = n
    picks = np.empty(budget, dtype=np.int64)
    taken = np.empty((budget, emb.shape[1]), dtype=np.float32)
    # Windows go in blocks of about BLOCK_ROWS members: one product per block gives each
    # member its highest similarity to the picks made before its block, and only the picks
    # inside the block are compared one window at a time. Same picks as a window-by-window
    # loop, but the bulk of the (quadratic) work runs as a few large matrix products.
    # One BLAS thread: the inner products are tiny, and threads stall on a busy machine.
    with _single_thread_blas():
        k = 0
        while k < budget:
            end = k + 1
            while end < budget and bounds[end + 1] - bounds[k] <= BLOCK_ROWS:
                end += 1
            lo_b, hi_b = bounds[k], bounds[end]
            before = (emb[lo_b:hi_b] @ taken[:k].T).max(axis=1) if k else \
                np.full(hi_b - lo_b, -np.inf, dtype=np.float32)
            for j in range(k, end):
                lo, hi = bounds[j], bounds[j + 1]
                if j == 0:
                    best = lo  # nothing taken yet: the best-ranked sample
                else:
                    nearest = before[lo - lo_b:hi - lo_b]
                    if j > k:
                        nearest = np.maximum(nearest, (emb[lo:hi] @ taken[k:j].T).max(axis=1))
                    best = lo + int(np.argmin(nearest))  # argmin: first (best rank) on ties
                picks[j] = ids[best]
                taken[j] = emb[best]
            k = end
    return picks


def _single_thread_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def threshold_mask(values: pd.Series | np.ndarray, min: float | None = None,
                   max: float | None = None, keep_missing: bool = False) -> np.ndarray:
    """True where ``min ≤ value ≤ max`` (bounds inclusive); missing values fail unless
    ``keep_missing``."""
    v = _float(values)
    ok = np.isfinite(v)
    keep = ok.copy()
    with np.errstate(invalid="ignore"):
        if min is not None:
            keep &= v >= float(min)
        if max is not None:
            keep &= v <= float(max)
    if keep_missing:
        keep |= ~ok
    return keep


def cap_per_cluster(order: Sequence[int], clusters: Sequence[Any], budget: int | None,
                    cap: int) -> np.ndarray:
    """Walk ``order`` and take a sample unless its cluster already has ``cap`` taken; stop at
    ``budget``. Returns the taken ids in ranking order."""
    taken: list[int] = []
    counts: dict[Any, int] = {}
    limit = len(order) if budget is None else int(budget)
    for sid, c in zip(order, _cluster_keys(clusters)):
        if len(taken) >= limit:
            break
        if counts.get(c, 0) < cap:
            counts[c] = counts.get(c, 0) + 1
            taken.append(int(sid))
    return np.asarray(taken, dtype=np.int64)


def stratified_quotas(sizes: dict[Any, int], budget: int) -> dict[Any, int]:
    """Split ``budget`` over clusters in proportion to their sizes (largest remainder; equal
    remainders go to the larger cluster, then the smaller cluster key)."""
    total = sum(sizes.values())
    if total == 0 or budget <= 0:
        return {c: 0 for c in sizes}
    # integer arithmetic: budget·n = quota·total + remainder, so equal shares tie exactly
    quotas = {c: (budget * int(n)) // total for c, n in sizes.items()}
    remainder = {c: (budget * int(n)) % total for c, n in sizes.items()}
    left = budget - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda c: (-remainder[c], -sizes[c], _sort_key(c)))
    for c in by_remainder[:left]:
        quotas[c] += 1
    return quotas


def stratified_take(order: Sequence[int], clusters: Sequence[Any], budget: int,
                    sizes: dict[Any, int] | None = None) -> np.ndarray:
    """Take the best of each cluster up to its quota (proportional to ``sizes``, default the
    cluster sizes in ``order``); quota a cluster cannot fill goes to the best rows left in
    ``order``. Returns the taken ids in ranking order."""
    order = np.asarray(order, dtype=np.int64)
    keys = _cluster_keys(clusters)
    if sizes is None:
        sizes = pd.Series(keys).value_counts().to_dict()
    quotas = stratified_quotas(dict(sizes), int(budget))
    chosen = np.zeros(len(order), dtype=bool)
    counts: dict[Any, int] = {}
    for i, c in enumerate(keys):
        if counts.get(c, 0) < quotas.get(c, 0):
            counts[c] = counts.get(c, 0) + 1
            chosen[i] = True
    short = int(budget) - int(chosen.sum())
    if short > 0:
        fill = np.flatnonzero(~chosen)[:short]
        chosen[fill] = True
    return order[chosen]


# ======================================================================================
# the audit log: folding decisions
# ======================================================================================
def read_audit(ws: Workspace, problems: list[str] | None = None) -> list[dict]:
    """Entries of ``audit.jsonl`` in file order (``core.audit.read_log``: a malformed line is
    skipped with a warning naming it, also appended to ``problems``)."""
    from .audit import read_log

    return read_log(ws, problems)



def _entries(source: Workspace | Iterable[dict]) -> list[dict]:
    return read_audit(source) if isinstance(source, Workspace) else list(source)


def audit_decisions(ws: Workspace | Iterable[dict], rating_column: str) -> dict[int, Any]:
    """sample_id → rating a person put in force for ``rating_column`` (``core.audit`` rules).
    Takes a workspace or the log's entries, so a selection can run on a bare frame."""
    from .audit import fold_log, ratings_in_force

    return ratings_in_force(fold_log(_entries(ws)), rating_column)


def rejected_ids(ws: Workspace | Iterable[dict]) -> set[int]:
    """Samples rejected in the audit log over every rating column (``core.audit`` rules).
    Takes a workspace or the log's entries."""
    from .audit import fold_log, rejected_in

    return rejected_in(fold_log(_entries(ws)))


# ======================================================================================
# loading scores into one frame
# ======================================================================================
def score_sources(ws: Workspace) -> dict[str, Path]:
    """Files a column can come from: each score file by its name, ``map`` and ``samples``."""
    out = {name: ws.path("scores", f"{name}.parquet") for name in ws.score_names()}
    if ws.exists(MAP):
        out["map"] = ws.path(MAP)
    out["samples"] = ws.path(SAMPLES)
    return out


def resolve_columns(ws: Workspace, columns: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Where each requested column comes from: ``{column: (source, column in that file)}``.

    A column is named plainly (``ifd``) or qualified by its file (``ds2_claude.curated``,
    ``map.cluster``, ``samples.duplicate_of``). A plain name is looked up in the score files
    first: found in exactly one, it is used; in several (e.g. ``curated`` in two DS2 files,
    ``answer_tokens`` in ``ifd`` and ``rifd``) it is an error asking for the qualified name.
    Not in any score file, it is looked up in ``map`` and then in ``samples``.
    """
    sources = score_sources(ws)
    schema = {name: [c for c in _column_names(path) if c != "sample_id"]
              for name, path in sources.items()}
    out: dict[str, tuple[str, str]] = {}
    for col in columns:
        if col in out or col == "sample_id":
            continue
        src, _, rest = col.partition(".")
        if rest and src in sources:
            if rest not in schema[src]:
                raise InputError(f"no column '{rest}' in {src} (it has: "
                                 f"{', '.join(schema[src]) or 'nothing'})",
                                 file=str(sources[src]), field=col)
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


def _column_names(path: Path) -> list[str]:
    """The columns of a Parquet file in the workspace (an unreadable one is an
    ``InputError`` naming it, not a pyarrow traceback)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as err:  # pyarrow raises several types for a bad footer
        raise InputError(f"not a readable Parquet file ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); rerun the step that made it",
                         file=str(path)) from None


def read_checked(path: Path, columns: Sequence[str], n_samples: int,
                 numeric: bool = True) -> pd.DataFrame:
    """``sample_id`` and ``columns`` of a score, map or samples file, checked: sample ids are
    whole numbers of the workspace (0 .. n_samples - 1), each once, and with ``numeric`` the
    columns hold numbers or booleans. A damaged or hand-edited file is an ``InputError``
    naming the file, the row and the field, never a traceback or a silent NaN."""
    _require_columns(_column_names(path), columns, path)
    return check_frame(pd.read_parquet(path, columns=["sample_id", *columns]), path, columns,
                       n_samples, numeric)


def _require_columns(names: Sequence, columns: Sequence[str], path: Path) -> None:
    for col in ["sample_id", *columns]:
        if col not in names:
            raise InputError(f"no column '{col}' (it has: "
                             f"{', '.join(map(str, names)) or 'nothing'}); rerun the step "
                             "that made it", file=str(path), field=col)


def check_frame(part: pd.DataFrame, path: Path, columns: Sequence[str], n_samples: int,
                numeric: bool = True) -> pd.DataFrame:
    """``read_checked`` for a frame already read from ``path`` (``Workspace.map()``)."""
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
        cols = sorted({c for _, c in pairs})
        part = read_checked(sources[src], cols, len(ws), numeric=src != "samples")
        out = pd.DataFrame({"sample_id": part["sample_id"].astype(np.int64)})
        for want, col in pairs:
            out[want] = part[col]
        table = table.merge(out, on="sample_id", how="left", validate="one_to_one")
        files.append(str(sources[src].relative_to(ws.root)))
    table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
    table.attrs["files"] = sorted(files)
    return table


# ======================================================================================
# recipe steps
# ======================================================================================
@dataclass
class Context:
    """What steps may need besides the frame. ``run_selection`` fills it from a workspace;
    tests and the app can build it by hand."""

    embeddings: np.ndarray | None = None      # row = sample_id, L2-normalised
    audit: list[dict] = field(default_factory=list)
    cluster_sizes: dict[Any, int] | None = None  # for stratified budgets
    n_all: int = 0                              # rows in the workspace
    n_candidates: int = 0                       # rows left after the filters


@dataclass
class StepOutcome:
    """Rows kept by a step, in order, and for each dropped row the reason."""

    kept: pd.DataFrame
    reasons: dict[str, np.ndarray]  # reason -> dropped sample ids


class Step:
    """A recipe step: its parameters as a dict and the columns it reads."""

    kind: str = ""

    def params(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        return {"type": self.kind, **self.params()}

    def columns(self) -> list[str]:
        return []

    def label(self) -> str:
        return self.kind

    def needs_embeddings(self) -> bool:
        return False


def _split(frame: pd.DataFrame, keep: np.ndarray, reason: str) -> StepOutcome:
    keep = np.asarray(keep, dtype=bool)
    dropped = frame["sample_id"].to_numpy(dtype=np.int64)[~keep]
    return StepOutcome(frame[keep], {reason: dropped} if len(dropped) else {})


# ----- filters ----------------------------------------------------------------------------
@dataclass
class Threshold(Step):
    """Keep rows with ``min ≤ column ≤ max`` (inclusive); missing values are dropped unless
    ``keep_missing``."""

    column: str
    min: float | None = None
    max: float | None = None
    keep_missing: bool = False
    kind = "threshold"

    def __post_init__(self):
        if self.min is None and self.max is None:
            raise InputError(f"threshold on '{self.column}' needs a min or a max")

    def params(self):
        return {"column": self.column, "min": self.min, "max": self.max,
                "keep_missing": self.keep_missing}

    def columns(self):
        return [self.column]

    def label(self):
        lo = "" if self.min is None else f"{self.min} ≤ "
        hi = "" if self.max is None else f" ≤ {self.max}"
        return f"threshold {lo}{self.column}{hi}"

    def apply(self, frame: pd.DataFrame, ctx: Context) -> StepOutcome:
        values = frame[self.column]
        missing = missing_mask(values)
        inside = threshold_mask(values, self.min, self.max, keep_missing=True)
        reasons = {}
        ids = frame["sample_id"].to_numpy(dtype=np.int64)
        out_of_range = ~inside & ~missing
        if out_of_range.any():
            reasons[f"{self.column} outside range"] = ids[out_of_range]
        keep = inside & (~missing | self.keep_missing)
        if (missing & ~keep).any():
            reasons[f"missing {self.column}"] = ids[missing & ~keep]
        return StepOutcome(frame[keep], reasons)


@dataclass
class ExcludeDuplicates(Step):
    """Drop exact duplicates (``duplicate_of`` set): the first copy stays."""

    kind = "exclude_duplicates"

    def columns(self):
        return ["samples.duplicate_of"]

    def apply(self, frame, ctx):
        return _split(frame, frame["samples.duplicate_of"].isna().to_numpy(), "duplicate")


@dataclass
class ExcludeRejected(Step):
    """Drop rows rejected in the audit log (latest surviving decision is ``reject``)."""

    kind = "exclude_rejected"

    def apply(self, frame, ctx):
        rejected = rejected_ids(ctx.audit)
        return _split(frame, ~frame["sample_id"].isin(rejected).to_numpy(),
                      "rejected in audit")


# ----- rankings ---------------------------------------------------------------------------
@dataclass
class ScoreRanking(Step):
    """Order by any score column (missing scores dropped)."""

    column: str
    descending: bool = True
    kind = "score"

    def params(self):
        return {"column": self.column, "descending": self.descending}

    def columns(self):
        return [self.column]

    def label(self):
        return f"rank by {self.column} {'desc' if self.descending else 'asc'}"

    def rank(self, frame, ctx):
        out = _split(frame, ~missing_mask(frame[self.column]), f"missing {self.column}")
        return _reorder(out, rank_ids(out.kept, self.column, self.descending))


@dataclass
class NoRanking(Step):
    """Keep the candidates in sample_id order (threshold-only selections)."""

    kind = "none"

    def label(self):
        return "sample_id order"

    def rank(self, frame, ctx):
        return StepOutcome(frame.sort_values("sample_id", kind="stable"), {})


@dataclass
class IFDRanking(Step):
    """Cherry/Superfiltering: drop missing and IFD ≥ 1 (``ge1``) or > 1 (``gt1``), highest
    first. ``column`` is ``ifd`` (loss ratio) or ``ifd_ppl`` (perplexity ratio)."""

    column: str = "ifd"
    drop: str = "ge1"
    kind = "ifd"

    def __post_init__(self):
        ifd_keep_mask(np.empty(0), self.drop)  # validates ``drop``

    def params(self):
        return {"column": self.column, "drop": self.drop}

    def columns(self):
        return [self.column]

    def label(self):
        return f"IFD top ({self.column}, keep {'< 1' if self.drop == 'ge1' else '≤ 1'})"

    def rank(self, frame, ctx):
        v = frame[self.column]
        missing = missing_mask(v)
        keep = ifd_keep_mask(v, self.drop)
        ids = frame["sample_id"].to_numpy(dtype=np.int64)
        reasons = {}
        if missing.any():
            reasons[f"missing {self.column}"] = ids[missing]
        if (~keep & ~missing).any():
            reasons[f"{self.column} {'≥' if self.drop == 'ge1' else '>'} 1"] = ids[~keep & ~missing]
        kept = frame[keep]
        return _reorder(StepOutcome(kept, reasons), rank_ids(kept, self.column, True))


@dataclass
class ReflectionRanking(Step):
    """Selective Reflection-Tuning: keep IFD < 1 and r-IFD < 1, order by ``rank_by``."""

    ifd_column: str = "ifd"
    rifd_column: str = "rifd"
    rank_by: str = "ifd"
    descending: bool = True
    kind = "reflection"

    def params(self):
        return {"ifd_column": self.ifd_column, "rifd_column": self.rifd_column,
                "rank_by": self.rank_by, "descending": self.descending}

    def columns(self):
        return list(dict.fromkeys([self.ifd_column, self.rifd_column, self.rank_by]))

    def label(self):
        return f"reflection ({self.ifd_column} < 1, {self.rifd_column} < 1, by {self.rank_by})"

    def rank(self, frame, ctx):
        ids = frame["sample_id"].to_numpy(dtype=np.int64)
        missing = np.zeros(len(frame), dtype=bool)
        for col in self.columns():
            missing |= missing_mask(frame[col])
        reasons = {}
        if missing.any():
            reasons["missing " + "/".join(self.columns())] = ids[missing]
        order = reflection_order(frame[~missing], self.ifd_column, self.rifd_column,
                                 self.rank_by, self.descending)
        not_feasible = ~missing & ~np.isin(ids, order)
        if not_feasible.any():
            reasons[f"{self.ifd_column} ≥ 1 or {self.rifd_column} ≥ 1"] = ids[not_feasible]
        return _reorder(StepOutcome(frame[np.isin(ids, order)], reasons), order)


@dataclass
class DS2Ranking(Step):
    """DS2 dual sort on the DS2 scores of ``rating_column`` (the exact column; its score
    file is ``core.names.ds2_score_name``): curated rating (a rating set by hand in the
    audit log for that exact column overrides the raw and suggested one), then long-tail
    score."""

    rating_column: str
    kind = "ds2"

    def params(self):
        return {"rating_column": self.rating_column}

    @property
    def score_name(self) -> str:
        return ds2_score_name(self.rating_column)

    def columns(self):
        return [f"{self.score_name}.curated", f"{self.score_name}.long_tail"]

    def label(self):
        return f"DS2 dual sort ({self.rating_column})"

    def rank(self, frame, ctx):
        rating = _float(frame[f"{self.score_name}.curated"]).copy()
        overrides = audit_decisions(ctx.audit, self.rating_column)
        if overrides:
            ids = frame["sample_id"].to_numpy(dtype=np.int64)
            hand = pd.Series(overrides, dtype="float64")
            pos = np.isin(ids, hand.index.to_numpy())
            rating[pos] = hand.reindex(ids[pos]).to_numpy()
        work = pd.DataFrame({"sample_id": frame["sample_id"].to_numpy(), "rating": rating,
                             "long_tail": _float(frame[f"{self.score_name}.long_tail"])})
        out = _split(frame, ~missing_mask(rating), f"missing {self.score_name} rating")
        return _reorder(out, dual_sort(work, None, "rating", "long_tail"))


@dataclass
class RecostRanking(Step):
    """RECOST diversity-consistent sampling: window picks for the budget first (one per
    window of w = pool / budget), then the other scored rows by score."""

    column: str = "recost"
    kind = "recost"

    def params(self):
        return {"column": self.column}

    def columns(self):
        return [self.column]

    def label(self):
        return f"RECOST windows ({self.column})"

    def needs_embeddings(self):
        return True

    def rank(self, frame, ctx, budget: int | None = None):
        out = _split(frame, ~missing_mask(frame[self.column]), f"missing {self.column}")
        kept = out.kept
        by_score = rank_ids(kept, self.column, True)
        if budget is None or budget >= len(kept):
            return _reorder(out, by_score)
        if ctx.embeddings is None:
            raise InputError("RECOST sampling needs embeddings; run `python -m core embed`")
        ids = kept["sample_id"].to_numpy(dtype=np.int64)
        picks = diversity_consistent_sample(ids, _float(kept[self.column]),
                                            np.asarray(ctx.embeddings[ids]), budget)
        rest = by_score[~np.isin(by_score, picks)]
        return _reorder(out, np.concatenate([picks, rest]))


def _reorder(outcome: StepOutcome, order: np.ndarray) -> StepOutcome:
    kept = outcome.kept.set_index("sample_id", drop=False).loc[order].reset_index(drop=True)
    return StepOutcome(kept, outcome.reasons)


# ----- budget -----------------------------------------------------------------------------
@dataclass
class Budget(Step):
    """Take the first ``n`` ranked rows (or ``floor(ratio × base)``, base ``all`` rows,
    ``candidates`` after the filters or ``ranked`` rows); optionally at most
    ``per_cluster_cap`` per cluster, or quotas proportional to cluster sizes (``stratified``,
    sizes over the whole workspace; quota a cluster cannot fill goes to the best rows left).
    No n and no ratio: keep every ranked row."""

    n: int | None = None
    ratio: float | None = None
    ratio_of: str = "all"
    per_cluster_cap: int | None = None
    stratified: bool = False
    kind = "budget"

    def __post_init__(self):
        budget_size(self.n, self.ratio, 0)  # validates
        if self.ratio_of not in RATIO_BASES:
            raise InputError(f"ratio_of must be one of {', '.join(RATIO_BASES)}, not "
                             f"{self.ratio_of!r}", field="ratio_of")
        if self.per_cluster_cap is not None and self.stratified:
            raise InputError("choose a per-cluster cap or a stratified budget, not both")
        if self.per_cluster_cap is not None and int(self.per_cluster_cap) < 1:
            raise InputError("the per-cluster cap must be ≥ 1", field="per_cluster_cap")
        if self.stratified and self.n is None and self.ratio is None:
            raise InputError("a stratified budget needs n or ratio")

    def params(self):
        return {"n": self.n, "ratio": self.ratio, "ratio_of": self.ratio_of,
                "per_cluster_cap": self.per_cluster_cap, "stratified": self.stratified}

    def to_dict(self):
        return self.params()

    def columns(self):
        return ["map.cluster"] if self.per_cluster_cap is not None or self.stratified else []

    def size(self, ctx: Context, n_ranked: int) -> int | None:
        base = {"all": ctx.n_all, "candidates": ctx.n_candidates, "ranked": n_ranked}
        return budget_size(self.n, self.ratio, base[self.ratio_of])

    def label(self):
        what = (f"{self.n} rows" if self.n is not None else
                f"{self.ratio:g} of {self.ratio_of}" if self.ratio is not None else "all")
        extra = (f", ≤ {self.per_cluster_cap} per cluster" if self.per_cluster_cap else
                 ", stratified by cluster" if self.stratified else "")
        return f"budget {what}{extra}"

    def take(self, ranked: pd.DataFrame, ctx: Context, size: int | None) -> StepOutcome:
        order = ranked["sample_id"].to_numpy(dtype=np.int64)
        if self.per_cluster_cap is not None:
            chosen = cap_per_cluster(order, ranked["map.cluster"].to_numpy(), size,
                                     int(self.per_cluster_cap))
        elif self.stratified:
            chosen = stratified_take(order, ranked["map.cluster"].to_numpy(), int(size),
                                     ctx.cluster_sizes)
        else:
            chosen = order if size is None else order[:size]
        keep = np.isin(order, chosen)
        reasons = {}
        if (~keep).any():
            if self.per_cluster_cap is not None:
                # rows skipped while the budget was still open were skipped by the cap
                last = np.flatnonzero(keep)[-1] if keep.any() else -1
                capped = ~keep & (np.arange(len(order)) < last)
                if size is None or len(chosen) < size:
                    capped = ~keep
                if capped.any():
                    reasons["cluster cap reached"] = order[capped]
                if (~keep & ~capped).any():
                    reasons["beyond budget"] = order[~keep & ~capped]
            else:
                reasons["beyond budget" if not self.stratified else
                        "beyond cluster quota"] = order[~keep]
        return StepOutcome(ranked[keep].reset_index(drop=True), reasons)


# ----- the recipe -------------------------------------------------------------------------
FILTERS = {"threshold": Threshold, "exclude_duplicates": ExcludeDuplicates,
           "exclude_rejected": ExcludeRejected}
RANKINGS = {"ifd": IFDRanking, "reflection": ReflectionRanking, "ds2": DS2Ranking,
            "recost": RecostRanking, "score": ScoreRanking, "none": NoRanking}


@dataclass
class Recipe:
    """Filters in order, then one ranking, then the budget."""

    filters: list[Step] = field(default_factory=list)
    ranking: Step = field(default_factory=NoRanking)
    budget: Budget = field(default_factory=Budget)

    # ----- (de)serialisation -----
    def to_dict(self) -> dict:
        return {"filters": [f.to_dict() for f in self.filters],
                "ranking": self.ranking.to_dict(), "budget": self.budget.to_dict()}

    @classmethod
    def from_dict(cls, spec: dict) -> "Recipe":
        """Build from ``{"filters": [...], "ranking": {"type": ...}, "budget": {...}}``; a
        filter without parameters may be a bare string (``exclude_duplicates``)."""
        if not isinstance(spec, dict):
            raise InputError("a recipe must be a mapping with filters, ranking and budget")
        unknown = set(spec) - {"filters", "ranking", "budget"}
        if unknown:
            raise InputError(f"unknown recipe key(s) {', '.join(sorted(map(str, unknown)))}; "
                             "expected filters, ranking, budget")
        filters = spec.get("filters") or []
        if not isinstance(filters, list):
            raise InputError(f"must be a list of filters, not {_shown(filters)}",
                             field="filters")
        filters = [_make(f, FILTERS, "filter", f"filters[{i}]") for i, f in enumerate(filters)]
        ranking = _make(spec.get("ranking") or {"type": "none"}, RANKINGS, "ranking",
                        "ranking")
        budget_spec = spec.get("budget") or {}
        if not isinstance(budget_spec, dict):
            raise InputError(f"must be a mapping (n, ratio, ...), not {_shown(budget_spec)}",
                             field="budget")
        budget_spec = dict(budget_spec)
        budget_spec.pop("type", None)
        budget = _construct(Budget, budget_spec, "budget", "budget")
        return cls(filters, ranking, budget)

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        """Read a recipe from YAML (``.yaml``/``.yml``) or JSON."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError("recipe file not found", file=str(path)) from None
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read the recipe ({type(err).__name__}: {err})",
                             file=str(path)) from None
        try:
            if path.suffix.lower() == ".json":
                spec = json.loads(text)
            else:
                import yaml

                spec = yaml.safe_load(text)
        except Exception as err:  # yaml and json raise several types
            raise InputError(f"not a readable recipe ({err})", file=str(path)) from None
        try:
            return cls.from_dict(spec)
        except InputError as err:
            raise InputError(err.message, file=str(path), field=err.field) from None

    # ----- running -----
    def steps(self) -> list[Step]:
        return [*self.filters, self.ranking, self.budget]

    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for s in self.steps() for c in s.columns()))

    def apply(self, frame: pd.DataFrame, ctx: Context | None = None) -> "Selection":
        """Run on a frame holding ``sample_id`` and every column in ``columns()``."""
        absent = [c for c in ["sample_id", *self.columns()] if c not in frame.columns]
        if absent:
            raise InputError(f"the frame lacks column(s) {', '.join(absent)} that this recipe "
                             "reads (use score_table to build it)")
        ctx = ctx or Context()
        if not ctx.n_all:
            ctx.n_all = len(frame)
        if self.budget.stratified and ctx.cluster_sizes is None:
            ctx.cluster_sizes = pd.Series(_cluster_keys(frame["map.cluster"].to_numpy())
                                          ).value_counts().to_dict()
        current = frame.sort_values("sample_id", kind="stable").reset_index(drop=True)
        reports: list[dict] = []
        dropped: list[pd.DataFrame] = []

        def record(step: Step, rows_in: int, outcome: StepOutcome) -> None:
            reports.append({"step": step.label(), "type": step.kind,
                            "rows_in": rows_in, "rows_out": len(outcome.kept),
                            "dropped": {r: int(len(v)) for r, v in outcome.reasons.items()}})
            for reason, ids in outcome.reasons.items():
                dropped.append(pd.DataFrame({"sample_id": ids, "step": step.label(),
                                             "reason": reason}))

        for f in self.filters:
            outcome = f.apply(current, ctx)
            record(f, len(current), outcome)
            current = outcome.kept.reset_index(drop=True)
        ctx.n_candidates = len(current)
        if isinstance(self.ranking, RecostRanking):
            n_scored = int((~missing_mask(current[self.ranking.column])).sum())
            outcome = self.ranking.rank(current, ctx, self.budget.size(ctx, n_scored))
        else:
            outcome = self.ranking.rank(current, ctx)
        record(self.ranking, len(current), outcome)
        current = outcome.kept
        outcome = self.budget.take(current, ctx, self.budget.size(ctx, len(current)))
        record(self.budget, len(current), outcome)
        reasons = (pd.concat(dropped, ignore_index=True) if dropped else
                   pd.DataFrame({"sample_id": pd.Series(dtype=np.int64),
                                 "step": pd.Series(dtype=str), "reason": pd.Series(dtype=str)}))
        reasons = reasons.sort_values("sample_id", kind="stable").reset_index(drop=True)
        ids = [int(i) for i in outcome.kept["sample_id"]]
        return Selection(sample_ids=ids, recipe=self.to_dict(), steps=reports,
                         counts={"all": int(ctx.n_all), "candidates": int(ctx.n_candidates),
                                 "selected": len(ids)},
                         dropped=reasons)


def _make(spec: Any, registry: dict, what: str, where: str) -> Step:
    """A step from its spec; ``where`` names it in errors (``filters[1]``, ``ranking``)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise InputError(f"each {what} needs a type (one of {', '.join(registry)})",
                         field=where)
    spec = dict(spec)
    kind = spec.pop("type")
    if not isinstance(kind, str) or kind not in registry:
        raise InputError(f"unknown {what} type {_shown(kind)}; choose one of "
                         f"{', '.join(registry)}", field=f"{where}.type")
    return _construct(registry[kind], spec, f"{what} {kind}", where)


def _construct(cls, params: dict, what: str, where: str):
    """``cls(**params)`` once every value has the type its field declares (a recipe file is
    hand-written: ``ratio: "ten"`` or a list for a number is an error naming the field)."""
    import dataclasses
    import typing

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - names
    if unknown:
        raise InputError(f"unknown parameter(s) {', '.join(sorted(map(str, unknown)))} for "
                         f"{what}; expected {', '.join(sorted(names)) or 'none'}", field=where)
    hints = typing.get_type_hints(cls)
    for name, value in params.items():
        _check_type(value, hints[name], f"{where}.{name}")
    try:
        return cls(**params)
    except TypeError as err:
        raise InputError(f"{what}: {err}", field=where) from None
    except InputError as err:  # a value the step refuses (a ratio of 5)
        field_name = where if err.field is None else f"{where}.{err.field}"
        raise InputError(err.message, field=field_name) from None


_TYPE_NAMES = {str: "text", bool: "true or false", int: "a whole number", float: "a number"}


def _check_type(value: Any, hint: Any, where: str) -> None:
    """Raise unless ``value`` fits ``hint`` (str, bool, int, float, or one of them | None).
    Booleans are not numbers here, and numbers must be finite."""
    import typing

    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return
    if isinstance(value, bool):
        ok = bool in allowed
    elif isinstance(value, int):
        ok = int in allowed or float in allowed
    elif isinstance(value, float):
        ok = float in allowed and math.isfinite(value)
    else:
        ok = isinstance(value, str) and str in allowed
    if not ok:
        wanted = " or ".join(_TYPE_NAMES[t] for t in allowed if t in _TYPE_NAMES)
        if type(None) in allowed:
            wanted += " (or null)"
        raise InputError(f"must be {wanted}, not {_shown(value)}", field=where)


def _shown(value: Any) -> str:
    """A value for an error message: short, with its type when that is the problem."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = {list: "a list", dict: "a mapping", bool: "a boolean"}.get(type(value))
    return f"{text} ({kind})" if kind else text


# ======================================================================================
# selections in a workspace
# ======================================================================================
@dataclass
class Selection:
    """A recipe's result: the chosen ids in ranking order and what each step dropped.

    ``dropped`` (sample_id, step, reason) is kept in memory for the app; the saved file holds
    the counts, and rerunning the saved recipe reproduces the rows.
    """

    sample_ids: list[int]
    recipe: dict
    steps: list[dict]
    counts: dict
    dropped: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    inputs: dict = field(default_factory=dict)
    name: str | None = None
    created: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "created": self.created, "recipe": self.recipe,
                "inputs": self.inputs, "counts": self.counts, "steps": self.steps,
                "sample_ids": self.sample_ids}


def selection_context(ws: Workspace, recipe: Recipe) -> tuple[Context, dict]:
    """The context a recipe needs from ``ws`` and the fingerprints of what was read."""
    inputs: dict[str, str] = {SAMPLES: ws.samples_fingerprint()}
    ctx = Context(n_all=len(ws))
    if any(s.needs_embeddings() for s in recipe.steps()):
        ctx.embeddings = ws.embeddings()
        inputs["embeddings.npy"] = sha256_file(ws.path("embeddings.npy"))
    if any(isinstance(s, (ExcludeRejected, DS2Ranking)) for s in recipe.steps()):
        ctx.audit = read_audit(ws)
        inputs[AUDIT] = sha256_file(ws.path(AUDIT)) if ws.exists(AUDIT) else None
    if recipe.budget.stratified:
        clusters = check_frame(ws.map(), ws.path(MAP), ["cluster"], len(ws))["cluster"]
        ctx.cluster_sizes = pd.Series(_cluster_keys(clusters.to_numpy())).value_counts().to_dict()
    return ctx, inputs


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
    frame = score_table(ws, recipe.columns())
    ctx, inputs = selection_context(ws, recipe)
    for rel in frame.attrs.get("files", []):
        if rel != SAMPLES:
            inputs[rel] = sha256_file(ws.path(rel))
    selection = recipe.apply(frame, ctx)
    selection.inputs = dict(sorted(inputs.items()))
    selection.name = name
    selection.created = now_iso()
    return selection


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
    from . import __version__

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
        raise InputError(f"a selection file holds a JSON object, not {_shown(body)}",
                         file=str(path))
    for key, (kind, what) in _SELECTION_KEYS.items():
        if key not in body:
            if key in ("sample_ids", "recipe"):
                raise InputError("missing; save the selection again", file=str(path),
                                 field=key)
            continue
        if not isinstance(body[key], kind):
            raise InputError(f"must be {what}, not {_shown(body[key])}", file=str(path),
                             field=key)
    seen: set[int] = set()
    for i, sid in enumerate(body["sample_ids"]):
        where = f"sample_ids[{i}]"
        if isinstance(sid, bool) or not isinstance(sid, int):
            raise InputError(f"must be a whole-number sample id, not {_shown(sid)}",
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
    cluster (when a map exists) and per curated rating class (``ds2_<rating_column>``; by
    default the rating column of a DS2 ranking in either recipe, else the only DS2 file)."""
    sa, sb = (_selection_dict(ws, x) for x in (a, b))
    ids_a, ids_b = set(sa["sample_ids"]), set(sb["sample_ids"])
    out = {"a": sa.get("name"), "b": sb.get("name"), "count_a": len(ids_a),
           "count_b": len(ids_b), "common": len(ids_a & ids_b),
           "added": sorted(ids_b - ids_a), "removed": sorted(ids_a - ids_b)}
    if ws.exists(MAP):
        clusters = check_frame(ws.map(), ws.path(MAP), ["cluster"], len(ws))
        out["per_cluster"] = _group_changes(clusters[["sample_id", "cluster"]], "cluster",
                                            ids_a, ids_b)
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
        score = ds2_score_name(rating_column)
        frame = ws.read_score(score)[["sample_id", "curated"]]
        overrides = audit_decisions(ws, rating_column)
        if overrides:
            hand = pd.Series(overrides)
            pos = frame["sample_id"].isin(hand.index)
            frame.loc[pos, "curated"] = hand.reindex(frame.loc[pos, "sample_id"]).to_numpy()
        out["rating_column"] = rating_column
        out["per_rating_class"] = _group_changes(frame, "curated", ids_a, ids_b)
    return out


def _selection_dict(ws: Workspace, s: str | Selection) -> dict:
    return s.to_dict() if isinstance(s, Selection) else load_selection(ws, s)


def _group_changes(frame: pd.DataFrame, column: str, ids_a: set, ids_b: set) -> dict:
    """{group: {a, b, added, removed}} for the groups either selection touches."""
    groups = dict(zip(frame["sample_id"].astype(int), frame[column]))
    out: dict[str, dict[str, int]] = {}
    for ids, key in ((ids_a, "a"), (ids_b, "b"), (ids_b - ids_a, "added"),
                     (ids_a - ids_b, "removed")):
        for sid in ids:
            g = _group_label(groups.get(sid))
            out.setdefault(g, {"a": 0, "b": 0, "added": 0, "removed": 0})[key] += 1
    return dict(sorted(out.items(), key=lambda kv: _sort_key(kv[0])))


def _group_label(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return "none"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# ======================================================================================
# helpers
# ======================================================================================
def _float(values: Any) -> np.ndarray:
    """Any numeric column (nullable, bool, object with None) as float64 with NaN."""
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").astype("Float64").to_numpy(
            dtype=np.float64, na_value=np.nan)
    return np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").astype("Float64")
                      .to_numpy(dtype=np.float64, na_value=np.nan))


def _cluster_keys(clusters: Sequence[Any]) -> list:
    return [_group_label(c) for c in clusters]


def _sort_key(label: Any) -> tuple:
    s = str(label)
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


# ======================================================================================
# CLI
# ======================================================================================
POLICIES = ("ifd", "reflection", "ds2", "recost", "threshold")


def _parse_bound(text: str, flag: str) -> tuple[str, float]:
    col, sep, value = text.partition("=")
    try:
        if not sep or not col or not math.isfinite(float(value)):
            raise ValueError
        return col.strip(), float(value)
    except ValueError:
        raise InputError(f"bad {flag} '{text}': use COLUMN=VALUE, e.g. {flag} ifd=0.2") from None


def make_recipe(policy: str, *, budget: int | None = None, ratio: float | None = None,
                ratio_of: str = "all", column: str | None = None, ascending: bool = False,
                drop: str = "ge1", rating_column: str | None = None,
                min: dict[str, float] | None = None, max: dict[str, float] | None = None,
                exclude_duplicates: bool = False, exclude_rejected: bool = False,
                per_cluster_cap: int | None = None, stratified: bool = False) -> Recipe:
    """The recipe of one named policy with the common options (what the ``select`` flags and
    the app's simple mode build). Filters run in the order: duplicates, rejected, then the
    thresholds (``min``/``max`` map a column to its bound, inclusive)."""
    if policy not in POLICIES:
        raise InputError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    filters: list[Step] = []
    if exclude_duplicates:
        filters.append(ExcludeDuplicates())
    if exclude_rejected:
        filters.append(ExcludeRejected())
    bounds: dict[str, dict] = {}
    for key, given in (("min", min), ("max", max)):
        for col, value in (given or {}).items():
            bounds.setdefault(col, {})[key] = float(value)
    filters += [Threshold(col, **b) for col, b in bounds.items()]
    if policy == "ifd":
        ranking: Step = IFDRanking(column or "ifd", drop)
    elif policy == "reflection":
        ranking = ReflectionRanking(rank_by=column or "ifd", descending=not ascending)
    elif policy == "ds2":
        if not rating_column:
            raise InputError("the ds2 policy needs a rating column (the rated column, e.g. "
                             "claude_ge_4_5)")
        ranking = DS2Ranking(rating_column)
    elif policy == "recost":
        ranking = RecostRanking(column or "recost")
    elif column:
        ranking = ScoreRanking(column, not ascending)
    else:
        ranking = NoRanking()
    return Recipe(filters, ranking, Budget(n=budget, ratio=ratio, ratio_of=ratio_of,
                                           per_cluster_cap=per_cluster_cap,
                                           stratified=stratified))


def recipe_from_args(args) -> Recipe:
    """The recipe the ``select`` flags describe (``--recipe`` or ``make_recipe``)."""
    if args.recipe:
        return Recipe.load(args.recipe)
    if not args.policy:
        raise InputError("give --policy or --recipe")
    bounds: dict[str, dict[str, float]] = {"min": {}, "max": {}}
    for key in ("min", "max"):
        for text in getattr(args, key) or []:
            col, value = _parse_bound(text, f"--{key}")
            bounds[key][col] = value
    return make_recipe(args.policy, budget=args.budget, ratio=args.ratio,
                       ratio_of=args.ratio_of, column=args.column, ascending=args.ascending,
                       drop=args.drop, rating_column=args.rating_column, min=bounds["min"],
                       max=bounds["max"], exclude_duplicates=args.exclude_duplicates,
                       exclude_rejected=args.exclude_rejected,
                       per_cluster_cap=args.per_cluster_cap, stratified=args.stratified)


def format_steps(selection: Selection) -> str:
    """The per-step table the CLI prints."""
    width = max([len(s["step"]) for s in selection.steps] + [4])
    lines = [f"{'step':<{width}}  {'in':>9}  {'out':>9}  dropped"]
    for s in selection.steps:
        why = ", ".join(f"{n:,} {r}" for r, n in s["dropped"].items()) or "-"
        lines.append(f"{s['step']:<{width}}  {s['rows_in']:>9,}  {s['rows_out']:>9,}  {why}")
    return "\n".join(lines)


def register_cli(subparsers) -> None:
    from .args import positive_int, ratio

    p = subparsers.add_parser(
        "select", help="choose a subset by a policy or a recipe and save it",
        description="Run a selection policy (or a YAML recipe: filters, ranking, budget) on "
                    "a workspace's scores and save it as selections/NAME.json.")
    p.add_argument("--workspace", required=True)
    p.add_argument("--name", required=True, help="selection name (file selections/NAME.json)")
    p.add_argument("--recipe", metavar="FILE", help="recipe YAML/JSON instead of the flags")
    p.add_argument("--policy", choices=POLICIES)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--ratio", type=ratio, help="share of rows to take, e.g. 0.05")
    size.add_argument("--budget", type=positive_int, metavar="N",
                      help="number of rows to take")
    p.add_argument("--ratio-of", choices=RATIO_BASES, default="all",
                   help="base of --ratio: all rows (default), candidates after the filters, "
                        "or ranked rows (Cherry's data_by_IFD.py)")
    p.add_argument("--column", help="score column to rank by (ifd: ifd or ifd_ppl; "
                                    "reflection: the ranking column; recost: recost; "
                                    "threshold: optional ranking)")
    p.add_argument("--ascending", action="store_true",
                   help="rank low values first (reflection/threshold rankings)")
    p.add_argument("--drop", choices=["ge1", "gt1"], default="ge1",
                   help="IFD: drop IFD ≥ 1 (Superfiltering, default) or IFD > 1 (Cherry)")
    p.add_argument("--rating-column", help="DS2: the rated column (file scores/ds2_COL)")
    p.add_argument("--min", action="append", metavar="COL=V", help="keep COL ≥ V (repeatable)")
    p.add_argument("--max", action="append", metavar="COL=V", help="keep COL ≤ V (repeatable)")
    p.add_argument("--exclude-duplicates", action="store_true",
                   help="drop exact duplicates (the first copy stays)")
    p.add_argument("--exclude-rejected", action="store_true",
                   help="drop rows rejected in the audit log")
    cover = p.add_mutually_exclusive_group()
    cover.add_argument("--per-cluster-cap", type=positive_int, metavar="N",
                       help="at most N rows per map cluster")
    cover.add_argument("--stratified", action="store_true",
                       help="budget split over clusters in proportion to their size")
    p.add_argument("--dry-run", action="store_true", help="print the counts, save nothing")
    p.add_argument("--force", action="store_true",
                   help="replace a saved selection of the same name")
    p.set_defaults(func=_cmd_select)

    d = subparsers.add_parser("diff", help="compare two saved selections",
                              description="Ids added and removed from selection A to B, "
                                          "per cluster and per curated rating class.")
    d.add_argument("--workspace", required=True)
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--rating-column", help="DS2 rating column for the per-class counts")
    d.add_argument("--json", action="store_true", help="print the whole diff as JSON")
    d.set_defaults(func=_cmd_diff)


def _cmd_select(args) -> int:
    from .text import terminal_safe

    ws = Workspace.open(args.workspace)
    path = selection_path(ws, args.name)
    if path.exists() and not args.force and not args.dry_run:  # fail before the slow part
        raise InputError(f"a selection named '{args.name}' already exists; choose another "
                         "name or pass --force to replace it", file=str(path))
    recipe = recipe_from_args(args)
    selection = run_selection(ws, recipe, name=args.name)
    print(terminal_safe(format_steps(selection), keep_newlines=True))
    c = selection.counts
    print(f"selected {c['selected']:,} of {c['all']:,} samples")
    if not args.dry_run:
        path = save_selection(ws, args.name, selection, force=args.force)
        print(terminal_safe(f"saved {path}"))
    return 0


def _cmd_diff(args) -> int:
    from .text import terminal_safe

    ws = Workspace.open(args.workspace)
    diff = diff_selections(ws, args.a, args.b, rating_column=args.rating_column)
    if args.json:
        print(json.dumps(diff, indent=2))
        return 0
    print(terminal_safe(f"{diff['a']}: {diff['count_a']:,}  {diff['b']}: {diff['count_b']:,}  "
                        f"common: {diff['common']:,}  added: {len(diff['added']):,}  "
                        f"removed: {len(diff['removed']):,}"))
    for title, key in (("cluster", "per_cluster"), ("rating class", "per_rating_class")):
        if key in diff:
            print(f"{title:<14} {'a':>7} {'b':>7} {'added':>7} {'removed':>7}")
            for g, n in diff[key].items():
                print(terminal_safe(f"{g:<14} {n['a']:>7,} {n['b']:>7,} {n['added']:>7,} "
                                    f"{n['removed']:>7,}"))
    return 0
