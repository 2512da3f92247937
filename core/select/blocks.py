"""The plain building blocks of selection: frames and arrays in, ordered sample ids out.

Every block is deterministic: ties are broken by ``sample_id`` ascending. This equals
Superfiltering's stable sort; Cherry's ``data_by_IFD.py`` sorts ``(ifd, index)`` tuples and so
prefers the larger index on an exact tie (a deliberate difference; exact ties are rare with
real losses). The recipe steps (``recipe.py``) only wire these together.

Budgets from a ratio are ``floor(ratio × base)`` as in the references (``int(...)``), after
rounding away float noise (0.29 × 100 gives 29, where ``int`` alone would give 28). Cherry
selects *everything* when ``int(len × rate)`` is 0 (``list[-0:]``); we select nothing
(docs/methods.md §1a).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError


def as_float(values: Any) -> np.ndarray:
    """Any numeric column (nullable, bool, object with None) as float64 with NaN."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    return np.asarray(pd.to_numeric(series, errors="coerce").astype("Float64").to_numpy(
        dtype=np.float64, na_value=np.nan))


def rank_ids(frame: pd.DataFrame, column: str, descending: bool = True) -> np.ndarray:
    """``sample_id`` of ``frame`` ordered by ``column`` (ties: smaller sample_id first)."""
    ids = frame["sample_id"].to_numpy(dtype=np.int64)
    values = as_float(frame[column])
    key = -values if descending else values
    return ids[np.lexsort((ids, key))]


def missing_mask(values: pd.Series | np.ndarray) -> np.ndarray:
    """True where a score is missing (NaN, ±inf or null): such rows are never ranked."""
    return ~np.isfinite(as_float(values))


def ifd_keep_mask(values: pd.Series | np.ndarray, drop: str = "ge1") -> np.ndarray:
    """Rows the IFD references keep: finite and < 1 (``ge1``, Superfiltering) or ≤ 1 (``gt1``,
    Cherry LLM; docs/methods.md §1a)."""
    if drop not in ("ge1", "gt1"):
        raise InputError(f"drop must be 'ge1' (keep IFD < 1) or 'gt1' (keep IFD ≤ 1), "
                         f"not {drop!r}")
    v = as_float(values)
    with np.errstate(invalid="ignore"):
        below = v < 1.0 if drop == "ge1" else v <= 1.0
    return np.isfinite(v) & below


def threshold_mask(values: pd.Series | np.ndarray, min: float | None = None,
                   max: float | None = None, keep_missing: bool = False) -> np.ndarray:
    """True where ``min ≤ value ≤ max`` (bounds inclusive); missing values fail unless
    ``keep_missing``."""
    v = as_float(values)
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


def dual_sort(frame: pd.DataFrame, budget: int | None = None, rating: str = "curated",
              long_tail: str = "long_tail") -> np.ndarray:
    """DS2 dual sort (docs/methods.md §3): curated rating best first, inside a rating the
    rarest (highest long-tail score) first; taking the first ``budget`` equals "whole classes
    while they fit, then the rarest of the class that does not". Rows without a rating
    (missing, or DS2's class -1 for an unrated sample) are left out; a missing long-tail
    score sorts last within its class."""
    values = as_float(frame[rating])
    with np.errstate(invalid="ignore"):
        rated = frame[np.isfinite(values) & (values >= 0)]
    ids = rated["sample_id"].to_numpy(dtype=np.int64)
    r = as_float(rated[rating])
    lt = as_float(rated[long_tail])
    lt = np.where(np.isfinite(lt), lt, -np.inf)
    order = ids[np.lexsort((ids, -lt, -r))]
    return order if budget is None else order[:int(budget)]


BLOCK_ROWS = 4096  # window members per block in diversity_consistent_sample


def diversity_consistent_sample(sample_ids: Sequence[int], scores: Sequence[float],
                                embeddings: np.ndarray, budget: int) -> np.ndarray:
    """RECOST's diversity-consistent sampling (docs/methods.md §4).

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


# ----- coverage: clusters (docs/methods.md §5) ----------------------------------------------
def group_label(value: Any) -> str:
    """A cluster or rating class as a label: ``3.0`` and ``3`` are ``"3"``, missing ``none``."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return "none"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def label_sort_key(label: Any) -> tuple:
    """Numeric labels in numeric order, then the others as text."""
    s = str(label)
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def cluster_keys(clusters: Sequence[Any]) -> list[str]:
    return [group_label(c) for c in clusters]


def cluster_sizes(clusters: Sequence[Any]) -> dict[str, int]:
    """Rows per cluster label (what a stratified budget splits in proportion to)."""
    return pd.Series(cluster_keys(clusters), dtype=object).value_counts().to_dict()


def cap_per_cluster(order: Sequence[int], clusters: Sequence[Any], budget: int | None,
                    cap: int) -> np.ndarray:
    """Walk ``order`` and take a sample unless its cluster already has ``cap`` taken; stop at
    ``budget``. Returns the taken ids in ranking order."""
    taken: list[int] = []
    counts: dict[Any, int] = {}
    limit = len(order) if budget is None else int(budget)
    for sid, c in zip(order, cluster_keys(clusters)):
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
    by_remainder = sorted(sizes, key=lambda c: (-remainder[c], -sizes[c], label_sort_key(c)))
    for c in by_remainder[:left]:
        quotas[c] += 1
    return quotas


def stratified_take(order: Sequence[int], clusters: Sequence[Any], budget: int,
                    sizes: dict[Any, int] | None = None) -> np.ndarray:
    """Take the best of each cluster up to its quota (proportional to ``sizes``, default the
    cluster sizes in ``order``); quota a cluster cannot fill goes to the best rows left in
    ``order``. Returns the taken ids in ranking order."""
    order = np.asarray(order, dtype=np.int64)
    keys = cluster_keys(clusters)
    quotas = stratified_quotas(dict(sizes if sizes is not None else cluster_sizes(clusters)),
                               int(budget))
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
