"""DS2 score curation: find and repair noisy LLM ratings from neighbour consensus.

Method (METHODS.md §3; Pang et al., "Improving Data Efficiency via Curating LLM-Driven Rating
Systems", arXiv 2410.10877; reference code UCSC-REAL/DS2 ``score_curation/``, itself built on
HOC, Zhu et al. ICML'21, and SimiFeat, Zhu et al. ICML'22):

1. ``to_classes`` maps raw ratings onto K integer classes (the DS2 1–10 scale becomes 6).
2. ``TransitionEstimator`` estimates T[i, j] = P(rated j | true i) and the true-class prior p
   without labels, from how often a sample and its two nearest neighbours agree (HOC).
3. ``detect_misratings`` (SimiFeat-rank) scores each rating by how little its neighbours vote
   for it, flags each class's expected noisy share, and suggests a replacement class.
4. ``curate`` ties these together; ``dual_sort_select`` picks a budget by curated class, then
   by the long-tail (rarity) score.

Deliberate differences from the reference (each is named where it happens):
- kNN comes from the workspace graph (self excluded), computed once; the reference
  concatenates the dataset with itself and recomputes a GPU fp16 kNN per subsample.
- Everything is seeded; the same seed gives identical output.
- The Adam fit really keeps its best iterate (the reference keeps a ``detach()`` view that
  later steps overwrite, so it returns the last iterate).
- Noise rates are clipped to [0.05, 0.95] (the reference only replaces values ≥ 1 or ≤ 0).
- A sample whose neighbours all vote for its own rating is never flagged (the reference's
  ``score >= threshold`` would flag a whole class when all its scores tie).
- SimiFeat subsamples 90 % of the rated samples each epoch (the reference caps the subsample
  at 50,000 for GPU memory); votes come from the first k neighbours inside the subsample.

Missing ratings (NaN) are class −1: they are never flagged, never vote, never count in the
consensus, and their ``curated`` value stays −1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .names import check_score_owner, ds2_score_name
from .progress import Progress, report

SCALES = ("classes", "ds2-10", "0-5", "1-5")
MISSING = -1
# More classes than any rating scale in use (DS2 has 6): a larger label is a raw score read
# as a class by mistake, and K x K transition fits would not end.
MAX_CLASSES = 100
VERSION = "ds2-1"  # bump when the numbers this module produces change

# Independent random streams per stage, so changing one stage's draws leaves the others alone.
_STREAM_HOC, _STREAM_FIT, _STREAM_SIMIFEAT = 1, 2, 3


# =========================================================================================
# 1. rating scales
# =========================================================================================
_UNPARSEABLE = object()


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _as_number(value: Any):
    """float(value), ``None`` for missing, ``_UNPARSEABLE`` when it is not a number."""
    if _is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return _UNPARSEABLE
        if math.isnan(number):
            return None
    else:
        return _UNPARSEABLE
    return number if math.isfinite(number) else _UNPARSEABLE  # infinity is no rating


def _numbers(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(float array with NaN for missing, bool array marking unparseable entries)."""
    if isinstance(values, pd.Series):
        arr = values.to_numpy()
    elif isinstance(values, np.ndarray):
        arr = values
    else:
        arr = np.asarray(list(values), dtype=object)
    if arr.dtype.kind in "biuf":
        out = arr.astype(np.float64)
        bad = np.isinf(out)  # infinity is no rating: unparseable, as in _as_number
        out[bad] = np.nan
        return out, bad
    out = np.empty(len(arr), dtype=np.float64)
    bad = np.zeros(len(arr), dtype=bool)
    for i, v in enumerate(arr.ravel()):
        x = _as_number(v)
        if x is _UNPARSEABLE:
            out[i] = np.nan
            bad[i] = True
        else:
            out[i] = np.nan if x is None else x
    return out, bad


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def to_classes(values: Any, scale: str | Mapping | None = None, *,
               num_classes: int | None = None, field: str = "rating",
               rows: Sequence | None = None) -> tuple[np.ndarray, dict]:
    """Map raw ratings onto integer classes 0..K−1 (−1 = missing).

    ``scale``: ``"classes"`` (integer labels as they are; the default for integer columns),
    ``"ds2-10"`` (DS2's 1–10 overall rating: clip to [4, 9] − 4, unparseable → 0, K = 6),
    ``"0-5"`` (AlpaGasus: round half up, K = 6, so class 5 means ≥ 4.5), ``"1-5"`` (round half
    up − 1, K = 5), or a dict ``{raw value: class}``. ``rows`` names the rows in error
    messages (default: the 0-based position). Returns the classes and a record of the
    mapping used (scale, K, table, counts), which callers store with the result.
    """
    if not isinstance(values, (pd.Series, np.ndarray)):
        values = list(values)
    numbers, bad = _numbers(values)
    row_name = (lambda i: int(rows[i]) if rows is not None else int(i))
    missing = np.isnan(numbers) & ~bad
    record: dict[str, Any] = {"field": field}

    def fail(i: int, why: str):
        raw = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values,
                         dtype=object)[i]
        raise InputError(f"rating {raw!r} {why}", row=row_name(i), field=field)

    if scale is None:
        has = ~np.isnan(numbers)
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), "is not a number; pass a scale with a mapping "
                                             "(--mapping '{\"good\": 1, \"bad\": 0}')")
        if np.any(numbers[has] != np.round(numbers[has])):
            fail(int(np.flatnonzero(has & (numbers != np.round(numbers)))[0]),
                 "is not an integer class; pass --scale (ds2-10, 0-5, 1-5) or --mapping")
        scale = "classes"

    if isinstance(scale, Mapping):
        if not scale:
            raise InputError("the mapping is empty; give {raw value: class, ...}", field=field)
        table = {}
        for key, cls in scale.items():
            if not isinstance(cls, (int, np.integer)) or isinstance(cls, bool) or cls < 0:
                raise InputError(f"mapping value for {key!r} must be a class ≥ 0, got {cls!r}",
                                 field=field)
            if cls >= MAX_CLASSES:  # the cap of the scale path: K x K fits would not end
                raise InputError(f"mapping value for {key!r} is class {int(cls)}, not a class "
                                 f"label (at most {MAX_CLASSES - 1})", field=field)
            k = _as_number(key)
            table[("num", k) if isinstance(k, float) else ("str", str(key))] = int(cls)
        raw = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values,
                         dtype=object)
        out = np.full(len(numbers), MISSING, dtype=np.int64)
        for i in range(len(numbers)):
            if missing[i]:
                continue
            key = ("str", str(raw[i]).strip()) if bad[i] else ("num", float(numbers[i]))
            if key not in table and not bad[i]:
                key = ("str", str(raw[i]).strip())
            if key not in table:
                fail(i, f"is not in the mapping (keys: {', '.join(map(str, scale))})")
            out[i] = table[key]
        k_classes = max(table.values()) + 1
        record.update(scale="mapping", table={str(k): int(v) for k, v in scale.items()})
    elif scale == "classes":
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), "is not a number; integer class labels expected")
        has = ~missing
        wrong = has & ((numbers != np.round(numbers)) | (numbers < 0))
        if wrong.any():
            fail(int(np.flatnonzero(wrong)[0]), "is not a class label (an integer ≥ 0); "
                                                "pass --scale or --mapping")
        too_big = has & (numbers >= MAX_CLASSES)
        if too_big.any():
            fail(int(np.flatnonzero(too_big)[0]), f"is not a class label (at most "
                                                  f"{MAX_CLASSES - 1}); pass --scale or "
                                                  "--mapping")
        out = np.where(has, np.nan_to_num(numbers), MISSING).astype(np.int64)
        k_classes = int(out.max()) + 1 if has.any() else 2
        record.update(scale="classes", table="identity")
    elif scale == "ds2-10":
        out = np.where(missing, MISSING, 0).astype(np.int64)
        ok = ~missing & ~bad
        out[ok] = (_round_half_up(np.clip(numbers[ok], 4, 9)) - 4).astype(np.int64)
        k_classes = 6
        record.update(scale="ds2-10", table={"<=4": 0, "5": 1, "6": 2, "7": 3, "8": 4,
                                             ">=9": 5, "unparseable": 0},
                      unparseable=int(bad.sum()))
    elif scale in ("0-5", "1-5"):
        lo, hi = (0.0, 5.0) if scale == "0-5" else (1.0, 5.0)
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), f"is not a number on the {scale} scale")
        has = ~missing
        out_of_range = has & ((numbers < lo) | (numbers > hi))
        if out_of_range.any():
            fail(int(np.flatnonzero(out_of_range)[0]), f"is outside the {scale} scale")
        out = np.full(len(numbers), MISSING, dtype=np.int64)
        out[has] = (_round_half_up(numbers[has]) - lo).astype(np.int64)
        k_classes = int(hi - lo) + 1
        record.update(scale=scale, table={f"[{c + lo - 0.5:g}, {c + lo + 0.5:g})": c
                                          for c in range(k_classes)},
                      rounding="half up")
    else:
        raise InputError(f"unknown rating scale {scale!r}; use one of {', '.join(SCALES)} "
                         "or a mapping", field=field)

    k_classes = max(int(k_classes), 2)
    if num_classes is not None:
        if out.max(initial=MISSING) >= num_classes:
            raise InputError(f"class {int(out.max())} does not fit num_classes={num_classes}",
                             field=field)
        k_classes = int(num_classes)
    record.update(num_classes=k_classes, missing=int(missing.sum()),
                  counts=np.bincount(out[out >= 0], minlength=k_classes).tolist())
    return out, record


# =========================================================================================
# kNN graph helpers
# =========================================================================================
def _check_graph(ratings: np.ndarray, knn_indices, knn_similarities=None):
    """Validate a kNN graph; return (indices int64, similarities float64|None, usable mask).

    ``usable`` is False for padding (−1, as faiss returns when N is small) and for self edges,
    so a graph that accidentally contains self still behaves as if self were excluded.
    """
    idx = np.asarray(knn_indices)
    n = len(ratings)
    if idx.ndim != 2 or idx.shape[0] != n:
        raise InputError(f"kNN indices have shape {idx.shape}, expected ({n}, k): the graph "
                         "does not match the ratings; rerun `neighbors`")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.max() >= n or idx.min() < -1):
        raise InputError("kNN indices point outside the dataset; rerun `neighbors`")
    usable = (idx >= 0) & (idx != np.arange(n)[:, None])
    sims = None
    if knn_similarities is not None:
        sims = np.asarray(knn_similarities, dtype=np.float64)
        if sims.shape != idx.shape:
            raise InputError(f"kNN similarities have shape {sims.shape}, indices {idx.shape}")
    return np.where(usable, idx, 0), sims, usable


def _first_valid(mask: np.ndarray, count: int) -> np.ndarray:
    """Keep, per row, only the first ``count`` True entries of ``mask``."""
    return mask & (np.cumsum(mask, axis=1, dtype=np.int16) <= count)


# =========================================================================================
# 2. HOC: consensus counts and the transition matrix
# =========================================================================================
def consensus_patterns(ratings: np.ndarray, knn_indices) -> tuple[np.ndarray, np.ndarray]:
    """Eligible points and their (own, 1st NN, 2nd NN) ratings.

    Unrated neighbours are skipped (the next rated neighbour takes their place); a point
    is eligible when it is rated and has two rated neighbours in the graph.
    """
    ratings = np.asarray(ratings, dtype=np.int64)
    idx, _, usable = _check_graph(ratings, knn_indices)
    rated_nbr = usable & (ratings[idx] >= 0)
    first_two = _first_valid(rated_nbr, 2)
    eligible = (ratings >= 0) & (first_two.sum(axis=1) == 2)
    points = np.flatnonzero(eligible)
    rows = first_two[points]
    nbr = idx[points][rows].reshape(len(points), 2)  # row-major: 1st then 2nd neighbour
    patterns = np.column_stack([ratings[points], ratings[nbr[:, 0]], ratings[nbr[:, 1]]])
    return points, patterns


def hoc_subsamples(n_eligible: int, rounds: int, sample_size: int | None, seed: int
                   ) -> list[np.ndarray]:
    """The subsamples (positions into the eligible points) HOC draws, one per round."""
    size = int(0.9 * n_eligible)
    if sample_size is not None:
        size = min(int(sample_size), size)
    size = max(size, 1)
    rng = np.random.default_rng([seed, _STREAM_HOC])
    return [rng.choice(n_eligible, size, replace=False) for _ in range(rounds)]


def consensus_counts(ratings, knn_indices, num_classes: int, rounds: int = 50,
                     sample_size: int | None = 50_000, seed: int = 0,
                     progress: Progress | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical first-, second- and third-order consensus frequencies (c1, c2, c3).

    Per round a subsample of min(sample_size, 0.9 n) eligible points is drawn; each point
    adds its pattern (own, 1st NN, 2nd NN rating) to counts normalised by the subsample
    size; the rounds are averaged (HOC's ``estimator_hoc``).
    """
    k = int(num_classes)
    points, patterns = consensus_patterns(ratings, knn_indices)
    if len(points) < 3:
        raise InputError(f"only {len(points)} rated samples have two rated neighbours; DS2 "
                         "needs many rated samples (thousands) to estimate rater noise")
    codes = (patterns[:, 0] * k + patterns[:, 1]) * k + patterns[:, 2]
    c3 = np.zeros(k ** 3)
    subsamples = hoc_subsamples(len(points), rounds, sample_size, seed)
    for r, sub in enumerate(subsamples):
        c3 += np.bincount(codes[sub], minlength=k ** 3) / len(sub)
        report(progress, r + 1, rounds, "consensus")
    c3 = (c3 / rounds).reshape(k, k, k)
    # c1 and c2 are marginals of the same patterns (each point adds to all three orders).
    return c3.sum(axis=(1, 2)), c3.sum(axis=2), c3


def consensus_from_transition(T, p):
    """c1, c2, c3 implied by T and p: c_j sums p_r times products of T's row r."""
    c1 = p @ T
    c2 = np.einsum("r,ra,rb->ab", p, T, T)
    c3 = np.einsum("r,ra,rb,rc->abc", p, T, T, T)
    return c1, c2, c3


def consensus_loss(W, v, targets) -> tuple[float, np.ndarray, np.ndarray]:
    """Σ_j ‖ĉ_j − c_j(T, p)‖_F with T = row-softmax(W), p = softmax(v), and its gradient.

    Analytic gradient (numpy): for K ≤ ~10 this is much cheaper than an autograd framework
    and has no thread start-up cost on a busy machine.
    """
    T = _softmax(W, axis=1)
    p = _softmax(v, axis=0)
    implied = consensus_from_transition(T, p)
    loss = 0.0
    grads = []
    for target, c in zip(targets, implied):
        err = c - target
        norm = float(np.sqrt((err ** 2).sum()))
        loss += norm
        grads.append(err / norm if norm > 0 else np.zeros_like(err))
    g1, g2, g3 = grads
    s2 = g2 + g2.T
    s3 = g3 + g3.transpose(1, 0, 2) + g3.transpose(2, 0, 1)
    gT = p[:, None] * (g1[None, :] + T @ s2.T + np.einsum("abc,rb,rc->ra", s3, T, T))
    gp = T @ g1 + np.einsum("ab,ra,rb->r", g2, T, T) + np.einsum("abc,ra,rb,rc->r", g3, T, T, T)
    gW = T * (gT - (gT * T).sum(axis=1, keepdims=True))
    gv = p * (gp - (gp * p).sum())
    return loss, gW, gv


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def fit_transition(c1, c2, c3, steps: int = 1500, lr: float = 0.1, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Solve the consensus equations for (T, p): Adam on ‖ĉ − c(T, p)‖ summed over orders.

    T = row-softmax(W) with W initialised to 5I − 1; p = softmax(v) with v initialised near
    uniform (1/K + U(0, 0.1), seeded). Adam as in torch (β = 0.9, 0.999, ε = 1e-8).
    Returns the best iterate's T, p and its loss.
    """
    targets = [np.asarray(c, dtype=np.float64) for c in (c1, c2, c3)]
    k = len(targets[0])
    rng = np.random.default_rng([seed, _STREAM_FIT])
    params = [5.0 * np.eye(k) - 1.0, 1.0 / k + rng.random(k) * 0.1]
    first = [np.zeros_like(x) for x in params]
    second = [np.zeros_like(x) for x in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    best = (math.inf, params[0].copy(), params[1].copy())
    for step in range(1, int(steps) + 2):
        loss, *grads = consensus_loss(params[0], params[1], targets)
        if loss < best[0]:
            best = (loss, params[0].copy(), params[1].copy())
        if step == steps + 1:
            break
        for x, g, m, s in zip(params, grads, first, second):
            m *= beta1
            m += (1 - beta1) * g
            s *= beta2
            s += (1 - beta2) * g * g
            denom = np.sqrt(s) / math.sqrt(1 - beta2 ** step) + eps
            x -= lr / (1 - beta1 ** step) * m / denom
    return _softmax(best[1], axis=1), _softmax(best[2], axis=0), best[0]


class TransitionEstimator:
    """Estimate the rater's noise transition matrix T and true-class prior p (HOC).

    ``fit(ratings, knn_indices)``: ratings are classes (−1 missing), ``knn_indices`` the
    kNN graph (self excluded, nearest first). Learned: ``transition_matrix_`` (K×K, rows sum
    to 1), ``prior_``, the consensus counts ``c1_``, ``c2_``, ``c3_`` and ``loss_``.
    """

    def __init__(self, num_classes: int | None = None, rounds: int = 50,
                 sample_size: int | None = 50_000, steps: int = 1500, lr: float = 0.1,
                 seed: int = 0):
        self.num_classes = num_classes
        self.rounds = rounds
        self.sample_size = sample_size
        self.steps = steps
        self.lr = lr
        self.seed = seed

    def fit(self, ratings, knn_indices, progress: Progress | None = None
            ) -> "TransitionEstimator":
        ratings = np.asarray(ratings, dtype=np.int64)
        k = self.num_classes or max(int(ratings.max(initial=0)) + 1, 2)
        self.c1_, self.c2_, self.c3_ = consensus_counts(
            ratings, knn_indices, k, self.rounds, self.sample_size, self.seed, progress)
        self.transition_matrix_, self.prior_, self.loss_ = fit_transition(
            self.c1_, self.c2_, self.c3_, self.steps, self.lr, self.seed)
        self.num_classes_ = k
        return self


# =========================================================================================
# 3. SimiFeat-rank mis-rating detection
# =========================================================================================
def class_noise_rates(T, p, histogram) -> np.ndarray:
    """ρ_c = 1 − P(true c | rated c) = 1 − T[c,c]·p[c] / P(rated c), clipped to [0.05, 0.95].

    NaN for classes nobody was rated with.
    """
    hist = np.asarray(histogram, dtype=np.float64)
    share = hist / max(hist.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        clean = np.diag(np.asarray(T)) * np.asarray(p) / share
    rho = np.clip(1.0 - np.minimum(clean, 1.0), 0.05, 0.95)
    rho[share == 0] = np.nan
    return rho


def neighbour_votes(nbr_ratings: np.ndarray, weights: np.ndarray, use: np.ndarray,
                    num_classes: int) -> np.ndarray:
    """v[i, c] = Σ_j w_ij [rating_j = c] over the neighbours j marked in ``use``.

    ``nbr_ratings[i, j]`` is the rating of row i's j-th neighbour.
    """
    n = len(nbr_ratings)
    flat = np.arange(n)[:, None] * num_classes + nbr_ratings
    return np.bincount(flat[use], weights=weights[use],
                       minlength=n * num_classes).reshape(n, num_classes)


def simifeat_subsamples(ratings, epochs: int, sample_fraction: float, seed: int):
    """The sorted sample ids SimiFeat scores in each epoch (a seeded draw of rated ids)."""
    rated = np.flatnonzero(np.asarray(ratings) >= 0)
    size = max(int(sample_fraction * len(rated)), 1)
    rng = np.random.default_rng([seed, _STREAM_SIMIFEAT])
    for _ in range(epochs):
        yield np.sort(rng.choice(rated, size, replace=False))


def detect_misratings(ratings, knn_indices, knn_similarities, noise_rates, k: int = 10,
                      epochs: int = 51, sample_fraction: float = 0.9, seed: int = 0,
                      self_vote: bool = False, progress: Progress | None = None
                      ) -> pd.DataFrame:
    """SimiFeat-rank: how often each rating looks like the noisy tail of its class.

    Per epoch a random ``sample_fraction`` of the rated samples is drawn. Each sampled
    sample gets votes v_c = Σ_j (1 − d_j)[rating_j = c] from its first k rated neighbours
    inside the subsample (1 − d = cosine similarity, clipped at 0), and the score
    −log(v̂[own rating]) with v̂ = v / ‖v‖₂. In each class c the samples in the top ρ_c share
    of scores are flagged. ``self_vote=True`` is the reference's variant: the sample votes
    too, with weight 1 − (2 d₁ − d₂), and k − 1 neighbours.

    Returns per sample: ``times_sampled``, ``times_flagged``, ``noisy_avg`` =
    (flagged + 1)/(sampled + 2), ``flagged`` (noisy_avg > 0.5), ``suggested`` (the class
    other than its own most often voted top in flagged epochs, ties by total vote mass) and
    ``confidence`` = smoothed share of that suggestion × noisy_avg.
    """
    ratings = np.asarray(ratings, dtype=np.int64)
    n = len(ratings)
    rho = np.asarray(noise_rates, dtype=np.float64)
    num_classes = len(rho)
    idx, sims, usable = _check_graph(ratings, knn_indices, knn_similarities)
    nbr_ratings = ratings[idx]
    base = usable & (nbr_ratings >= 0)
    weights = np.clip(sims, 0.0, None)
    n_nbrs = k - 1 if self_vote else k

    sampled = np.zeros(n, dtype=np.int64)
    flagged = np.zeros(n, dtype=np.int64)
    tally = np.zeros((n, num_classes), dtype=np.int64)
    vote_mass = np.zeros((n, num_classes))
    in_sample = np.zeros(n, dtype=bool)
    for epoch, rows in enumerate(simifeat_subsamples(ratings, epochs, sample_fraction, seed)):
        in_sample[:] = False
        in_sample[rows] = True
        nbr = idx[rows]
        use = _first_valid(base[rows] & in_sample[nbr], n_nbrs)
        votes = neighbour_votes(nbr_ratings[rows], weights[rows], use, num_classes)
        own = ratings[rows]
        if self_vote:
            d = 1.0 - sims[rows]
            d1 = np.where(usable[rows, 0], d[:, 0], 1.0)
            d2 = np.where(usable[rows, 1], d[:, 1], 1.0) if idx.shape[1] > 1 else d1
            votes[np.arange(len(rows)), own] += np.clip(1.0 - (2 * d1 - d2), 0.0, None)
        norm = np.linalg.norm(votes, axis=1)
        voted = norm > 0
        vhat = votes / np.where(voted, norm, 1.0)[:, None]
        score = -np.log(vhat[np.arange(len(rows)), own] + 1e-8)
        top = np.argmax(votes, axis=1)
        flag = np.zeros(len(rows), dtype=bool)
        for c in range(num_classes):
            members = (own == c) & voted
            if not members.any() or np.isnan(rho[c]):
                continue
            threshold = np.percentile(score[members], 100 * (1 - rho[c]))
            # score > 1e-6: neighbours that all agree with the rating are never evidence.
            flag |= members & (score >= threshold) & (score > 1e-6)
        sampled[rows[voted]] += 1
        flagged[rows[flag]] += 1
        np.add.at(tally, (rows[flag], top[flag]), 1)
        vote_mass[rows] += votes
        report(progress, epoch + 1, epochs, "mis-rating detection")

    noisy_avg = (flagged + 1) / (sampled + 2)
    is_rated = ratings >= 0
    # Suggestion: most tallied class other than the own rating; vote mass breaks ties (it is
    # scaled below 1, so it never outweighs one tally).
    mass_share = vote_mass / np.maximum(vote_mass.sum(axis=1, keepdims=True), 1e-12)
    key = tally + 0.5 * mass_share
    key[np.arange(n)[is_rated], ratings[is_rated]] = -np.inf
    suggested = np.argmax(key, axis=1)
    smoothed = (tally + 1) / (tally.sum(axis=1, keepdims=True) + num_classes)
    confidence = smoothed[np.arange(n), suggested] * noisy_avg
    return pd.DataFrame({
        "times_sampled": sampled,
        "times_flagged": flagged,
        "noisy_avg": np.where(is_rated, noisy_avg, np.nan),
        "flagged": is_rated & (noisy_avg > 0.5),
        "suggested": np.where(is_rated, suggested, MISSING),
        "confidence": np.where(is_rated, confidence, np.nan),
    })


def long_tail_score(knn_similarities, k: int = 10, knn_indices=None) -> np.ndarray:
    """tanh(d̄ / 2), d̄ = mean cosine distance to the k nearest neighbours (self excluded).

    Equals the reference's 2/(1 + e^(−d̄)) − 1. Higher = rarer. NaN without neighbours.
    """
    sims = np.asarray(knn_similarities, dtype=np.float64)[:, :k]
    valid = np.ones_like(sims, dtype=bool)
    if knn_indices is not None:
        idx = np.asarray(knn_indices)[:, :k]
        valid = (idx >= 0) & (idx != np.arange(len(idx))[:, None])
    count = valid.sum(axis=1)
    dist = np.where(valid, 1.0 - sims, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.tanh(np.where(count > 0, dist / count, np.nan) / 2.0)


# =========================================================================================
# 4. the whole curation, evidence, selection, agreement
# =========================================================================================
COLUMNS = ("rating_class", "flagged", "noisy_avg", "suggested", "confidence", "curated",
           "long_tail")


def curate(ratings, knn_indices, knn_similarities, k: int = 10, seed: int = 0, *,
           num_classes: int | None = None, rounds: int = 50,
           hoc_sample_size: int | None = 50_000, steps: int = 1500, lr: float = 0.1,
           epochs: int = 51, sample_fraction: float = 0.9, min_confidence: float = 0.5,
           self_vote: bool = False, sample_ids=None, progress: Progress | None = None
           ) -> tuple[pd.DataFrame, dict]:
    """DS2 score curation of one rater's classes (−1 = missing) over a kNN graph.

    Returns a frame in sample order with ``sample_id`` and ``rating_class, flagged,
    noisy_avg, suggested, confidence, curated, long_tail`` (missing ratings: rating_class
    −1, not flagged, noisy_avg/confidence NaN, suggested and curated −1), and a report
    with T, p, raw and curated class histograms, noise rates, parameters and warnings.
    """
    ratings = np.asarray(ratings, dtype=np.int64)
    n = len(ratings)
    if n == 0:
        raise InputError("no samples to curate")
    if ratings.min() < MISSING:
        raise InputError("rating classes must be ≥ 0 (−1 for missing); map them with "
                         "to_classes first")
    k_classes = num_classes or max(int(ratings.max()) + 1, 2)
    if ratings.max() >= k_classes:
        raise InputError(f"rating class {int(ratings.max())} does not fit "
                         f"num_classes={k_classes}")
    idx, sims, usable = _check_graph(ratings, knn_indices, knn_similarities)
    if sims is None:
        raise InputError("kNN similarities are required")
    rated = ratings >= 0
    hist = np.bincount(ratings[rated], minlength=k_classes)
    warnings = _warnings(ratings, hist, usable, k)
    params = dict(k=k, seed=seed, num_classes=k_classes, rounds=rounds,
                  hoc_sample_size=hoc_sample_size, steps=steps, lr=lr, epochs=epochs,
                  sample_fraction=sample_fraction, min_confidence=min_confidence,
                  self_vote=self_vote, version=VERSION)
    total = rounds + epochs + 1
    stage = (lambda offset: None if progress is None else
             (lambda done, _total, note: progress(offset + done, total, note)))

    estimator = TransitionEstimator(k_classes, rounds, hoc_sample_size, steps, lr, seed)
    estimator.fit(ratings, knn_indices, progress=stage(0))
    report(progress, rounds + 1, total, "fitting T")
    rho = class_noise_rates(estimator.transition_matrix_, estimator.prior_, hist)
    detection = detect_misratings(ratings, knn_indices, knn_similarities, rho, k, epochs,
                                  sample_fraction, seed, self_vote, stage(rounds + 1))
    change = detection["flagged"].to_numpy() & \
        (detection["confidence"].to_numpy() >= min_confidence)
    curated = np.where(change, detection["suggested"].to_numpy(), ratings)
    frame = pd.DataFrame({
        "sample_id": np.arange(n) if sample_ids is None else np.asarray(sample_ids),
        "rating_class": ratings,
        "flagged": detection["flagged"].to_numpy(),
        "noisy_avg": detection["noisy_avg"].to_numpy(),
        "suggested": detection["suggested"].to_numpy(),
        "confidence": detection["confidence"].to_numpy(),
        "curated": curated.astype(np.int64),
        "long_tail": long_tail_score(knn_similarities, k, knn_indices),
    })
    flagged_per_class = np.bincount(ratings[frame["flagged"].to_numpy()],
                                     minlength=k_classes)
    changed_per_class = np.bincount(ratings[change], minlength=k_classes)
    result = {
        "num_classes": k_classes,
        "transition_matrix": _rounded(estimator.transition_matrix_),
        "prior": _rounded(estimator.prior_),
        "fit_loss": float(estimator.loss_),
        "histogram_raw": hist.tolist(),
        "histogram_curated": np.bincount(curated[rated], minlength=k_classes).tolist(),
        "noise_rates": [None if np.isnan(r) else float(r) for r in rho],
        "flagged_per_class": flagged_per_class.tolist(),
        "changed_per_class": changed_per_class.tolist(),
        "rated": int(rated.sum()),
        "missing": int((~rated).sum()),
        "flagged": int(frame["flagged"].sum()),
        "changed": int(change.sum()),
        "parameters": params,
        "seed": seed,
        "warnings": warnings,
    }
    report(progress, total, total, "done")
    return frame, result


def _rounded(a) -> list:
    """Plain floats for JSON (full precision: later steps recompute from these)."""
    return np.asarray(a, dtype=np.float64).tolist()


def _warnings(ratings, hist, usable, k) -> list[str]:
    out = []
    rated = int((ratings >= 0).sum())
    if rated < 2000:
        out.append(f"only {rated} rated samples: the transition matrix estimate is rough "
                   "(it needs thousands; ≈ 0.09 max error at 6,000, ≈ 0.05 at 20,000)")
    absent = [c for c, h in enumerate(hist) if h == 0]
    if absent:
        out.append(f"no sample is rated with class {', '.join(map(str, absent))}: T rows for "
                   "absent classes are guesses")
    if (hist > 0).sum() == 1:
        out.append("all rated samples have the same class: there is nothing to curate")
    have = usable.sum(axis=1)
    if have.size and have.min() < k:
        out.append(f"some samples have only {int(have.min())} neighbours (k={k}); the kNN "
                   f"graph holds {usable.shape[1]} columns. Rerun `neighbors` with a larger k "
                   "(≥ k + 5 recommended: votes use neighbours inside each 90 % subsample)")
    return out


def neighbour_evidence(sample_id: int, knn_indices, knn_similarities, ratings, k: int = 10
                       ) -> pd.DataFrame:
    """The k neighbours of one sample with their similarity and rating (for the audit page).

    ``ratings`` is indexed by sample id (any values: classes, raw ratings, curated).
    """
    idx = np.asarray(knn_indices)[sample_id]
    sims = np.asarray(knn_similarities)[sample_id]
    keep = (idx >= 0) & (idx != sample_id)
    idx, sims = idx[keep][:k], sims[keep][:k]
    values = ratings.to_numpy() if isinstance(ratings, pd.Series) else np.asarray(ratings)
    return pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "neighbour_id": idx.astype(np.int64),
                         "similarity": sims.astype(np.float64), "rating": values[idx]})


def dual_sort_select(curated, long_tail, budget: int, sample_ids=None) -> np.ndarray:
    """Select ``budget`` samples: best curated class first, long-tail score within a class.

    Classes are taken whole from the best (highest) down while they fit; in the class that
    does not fit, the highest long-tail scores fill the rest. Missing ratings (−1 or NaN)
    are never selected. Returns the selected ids in selection order (within a class:
    long-tail descending, then id ascending).
    """
    if sample_ids is None:
        sample_ids = curated.index.to_numpy() if isinstance(curated, pd.Series) \
            else np.arange(len(curated))
    cls = pd.to_numeric(pd.Series(np.asarray(curated)), errors="coerce").to_numpy(np.float64)
    tail = np.nan_to_num(np.asarray(long_tail, dtype=np.float64), nan=-np.inf)
    ids = np.asarray(sample_ids)
    if budget < 0:
        raise InputError(f"budget must be ≥ 0, got {budget}")
    keep = ~np.isnan(cls) & (cls >= 0)
    # lexsort: last key is primary. Class descending, long-tail descending, id ascending.
    order = np.lexsort((ids[keep], -tail[keep], -cls[keep]))
    return ids[keep][order][:int(budget)]


def rater_agreement(ratings: pd.DataFrame, curated: pd.DataFrame | None = None
                    ) -> pd.DataFrame:
    """Pairwise exact agreement and Cohen's kappa between raters (columns), on the rows
    both rated (−1 or NaN = missing). With ``curated`` (same columns), adds the same two
    numbers after curation as ``*_curated`` columns.
    """
    def pairs(frame: pd.DataFrame) -> dict:
        out = {}
        cols = list(frame.columns)
        for i, a in enumerate(cols):
            for b in cols[i + 1:]:
                x = pd.to_numeric(frame[a], errors="coerce").to_numpy(np.float64)
                y = pd.to_numeric(frame[b], errors="coerce").to_numpy(np.float64)
                both = ~np.isnan(x) & ~np.isnan(y) & (x >= 0) & (y >= 0)
                out[(a, b)] = (int(both.sum()), *_agreement(x[both], y[both]))
        return out

    before = pairs(ratings)
    rows = [{"rater_a": a, "rater_b": b, "n": n, "exact_agreement": agree, "kappa": kappa}
            for (a, b), (n, agree, kappa) in before.items()]
    if curated is not None:
        after = pairs(curated[list(ratings.columns)])
        for row in rows:
            _, agree, kappa = after[(row["rater_a"], row["rater_b"])]
            row.update(exact_agreement_curated=agree, kappa_curated=kappa)
    return pd.DataFrame(rows)


def _agreement(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    observed = float(np.mean(x == y))
    labels = np.union1d(x, y)
    px = np.array([np.mean(x == c) for c in labels])
    py = np.array([np.mean(y == c) for c in labels])
    expected = float(px @ py)
    kappa = float("nan") if expected == 1.0 else (observed - expected) / (1.0 - expected)
    return observed, kappa


# =========================================================================================
# 5. workspace wiring
# =========================================================================================
@dataclass
class CurationRun:
    """What ``run_curate`` returns: the frame, its sidecar and where they are."""

    frame: pd.DataFrame
    meta: dict
    parquet: Path
    sidecar: Path
    cached: bool


def _parse_scale(scale):
    if isinstance(scale, str) and scale.strip().startswith("{"):
        try:
            return json.loads(scale)
        except json.JSONDecodeError as err:
            raise InputError(f"the mapping is not valid JSON: {err}", field="mapping")
    return scale


def _ratings_from_samples(ws, column: str) -> tuple[pd.Series, np.ndarray]:
    import pyarrow.parquet as pq

    names = pq.read_schema(ws.path("samples.parquet")).names
    if column in names:
        frame = ws.samples(columns=["sample_id", "source_row", column])
        return frame[column], frame["source_row"].to_numpy()
    if "record" in names:
        frame = ws.samples(columns=["sample_id", "source_row", "record"])
        values = []
        for rec in frame["record"]:
            rec = json.loads(rec) if isinstance(rec, str) else rec
            values.append(rec.get(column) if isinstance(rec, dict) else None)
        if any(v is not None for v in values):
            return pd.Series(values, dtype=object), frame["source_row"].to_numpy()
    extra = [c for c in names if c not in ("sample_id", "source_row", "instruction", "input",
                                           "output", "record", "duplicate_of", "source")]
    raise InputError(f"no rating column '{column}' in the samples (other columns: "
                     f"{', '.join(extra) or 'none'}); pass --ratings-file for ratings kept "
                     "elsewhere", field=column)


def _ratings_from_file(ws, path: str | Path, column: str) -> tuple[pd.Series, np.ndarray]:
    """Ratings from a JSONL/JSON/CSV file keyed by ``sample_id`` or ``source_row``."""
    path = Path(path)
    if not path.exists():
        raise InputError("ratings file not found", file=str(path))
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        else:
            table = pd.read_json(path, lines=path.suffix.lower() in (".jsonl", ".ndjson"),
                                 dtype=False)
    except ValueError as err:
        raise InputError(f"cannot read the ratings file: {err}", file=str(path))
    if column not in table:
        raise InputError(f"no column '{column}' (columns: {', '.join(map(str, table))})",
                         file=str(path), field=column)
    key = next((c for c in ("sample_id", "source_row") if c in table), None)
    if key is None:
        raise InputError("the ratings file needs a sample_id or source_row column to join on",
                         file=str(path))
    cols = ["sample_id", "source_row"] + (["source"] if "source" in table else [])
    samples = ws.samples(columns=cols)
    join = [key] + (["source"] if key == "source_row" and "source" in table else [])
    if key == "source_row" and "source" not in table and "source" in samples \
            and samples["source"].nunique() > 1:
        raise InputError("the workspace pools several source files, so source_row is "
                         "ambiguous: add a source column or key the ratings by sample_id",
                         file=str(path))
    dup = table.duplicated(join)
    if dup.any():
        raise InputError(f"{key} {table.loc[dup.idxmax(), key]} appears twice",
                         file=str(path), row=int(dup.idxmax()), field=key)
    merged = samples.merge(table[join + [column]], on=join, how="left", validate="1:1")
    unknown = ~table.set_index(join).index.isin(samples.set_index(join).index)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise InputError(f"{key} {table[key].iloc[row]} is not in the workspace",
                         file=str(path), row=row, field=key)
    merged = merged.sort_values("sample_id")
    return merged[column].reset_index(drop=True), merged["source_row"].to_numpy()


def run_curate(ws, rating_column: str | None = None, scale=None, seed: int = 0, k: int = 10,
               ratings_file: str | Path | None = None, progress: Progress | None = None,
               force: bool = False, rater: str | None = None, **options) -> CurationRun:
    """Curate one rater's ratings in a workspace: ``scores/ds2_<column>.parquet`` + sidecar
    (the name is ``core.names.ds2_score_name``; the sidecar keeps the exact column).

    Ratings come from the samples column ``rating_column``, from ``ratings_file`` (JSONL,
    JSON or CSV keyed by ``sample_id`` or ``source_row``), or from a rater of ``core.rate``
    (``rater``: its ``overall`` ratings, scale ds2-10 by default, column ``rating_<rater>``).
    ``scale`` is a name from ``SCALES``, a mapping dict, or a JSON mapping string. The kNN
    graph is the workspace's (``neighbors`` step). Several raters = several calls.
    ``options`` go to ``curate`` (rounds, steps, epochs, ...).
    """
    scale = _parse_scale(scale)
    if (rating_column is None) == (rater is None):
        raise InputError("name the ratings: either a rating column or a rater")
    if rater is not None and ratings_file is not None:
        raise InputError("a rater's ratings come from the workspace; drop the ratings file")
    knn_indices, knn_similarities = ws.knn()
    if rater is not None:
        from .rate import rating_score_name, ratings_for_curation

        values = ratings_for_curation(ws, rater).reset_index(drop=True)
        source_rows = ws.samples(columns=["sample_id", "source_row"]).sort_values(
            "sample_id")["source_row"].to_numpy()
        rating_column = rating_score_name(rater)
        scale = "ds2-10" if scale is None else scale
        ratings_fp = ws.fingerprint(f"scores/{rating_column}.parquet")
    elif ratings_file is not None:
        values, source_rows = _ratings_from_file(ws, ratings_file, rating_column)
        ratings_fp = _sha256(ratings_file)
    else:
        values, source_rows = _ratings_from_samples(ws, rating_column)
        ratings_fp = ws.samples_fingerprint()
    classes, mapping = to_classes(values, scale, field=rating_column, rows=source_rows)
    if len(classes) != len(knn_indices):
        raise InputError(f"the kNN graph has {len(knn_indices)} rows for {len(classes)} "
                         "samples; rerun `neighbors`")
    name = ds2_score_name(rating_column)
    if not force:
        check_score_owner(ws, rating_column)
    params = {"rating_column": rating_column, "scale": scale, "k": k, "seed": seed,
              "ratings_file": str(ratings_file) if ratings_file else None,
              "version": VERSION, **options}
    inputs = {"ratings": ratings_fp, "knn": ws.fingerprint("knn.npz")}
    parquet = ws.path("scores", f"{name}.parquet")
    holder: dict = {}

    def compute():
        frame, result = curate(classes, knn_indices, knn_similarities, k=k, seed=seed,
                               num_classes=mapping["num_classes"], progress=progress,
                               **options)
        holder["report"] = result
        return frame

    def extra(_frame):
        return {"rows": int(len(_frame)), "mapping": mapping, **holder["report"]}

    from . import atomic

    step = ws.run_whole(f"scores/{name}.parquet", params, inputs, compute,
                        write=atomic.write_parquet, read=pd.read_parquet, force=force,
                        extra_meta=extra)
    return CurationRun(step.value, step.meta, parquet, ws.sidecar_path(parquet), step.cached)


def _sha256(path) -> str:
    from .workspace import sha256_file

    return sha256_file(path)


# =========================================================================================
# 6. CLI
# =========================================================================================
def register_cli(subparsers) -> None:
    from .args import positive_int, seed

    p = subparsers.add_parser(
        "curate", help="DS2: find and repair noisy LLM ratings from neighbour consensus",
        description="Estimate the rater's noise transition matrix (HOC), flag ratings that "
                    "disagree with their neighbours (SimiFeat-rank), suggest curated "
                    "ratings and a long-tail score. Needs `neighbors` first. Writes "
                    "scores/ds2_<column>.parquet and .json.")
    p.add_argument("--workspace", required=True, help="workspace folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--rating-column", metavar="COL",
                       help="the rating column (in the samples or in --ratings-file)")
    which.add_argument("--rater", metavar="NAME",
                       help="a rater's ratings from `rate` (scores/rating_NAME; scale ds2-10 "
                            "unless --scale/--mapping says otherwise)")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="rating scale (default: classes for integer ratings)")
    p.add_argument("--mapping", metavar="JSON",
                   help="explicit {raw value: class} mapping, e.g. '{\"low\": 0, \"high\": 1}'")
    p.add_argument("--ratings-file", metavar="PATH",
                   help="JSONL/JSON/CSV with sample_id or source_row and the rating column")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours that vote (default 10)")
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.set_defaults(func=_cmd_curate)


def _cmd_curate(args) -> int:
    from .progress import TqdmProgress
    from .text import terminal_safe
    from .workspace import Workspace

    if args.mapping and args.scale:
        raise InputError("give either --scale or --mapping, not both")
    scale = _parse_scale(args.mapping) if args.mapping else args.scale
    if args.mapping and not isinstance(scale, dict):
        raise InputError("--mapping must be a JSON object {raw value: class}", field="mapping")
    if args.ratings_file and Path(args.ratings_file).is_dir():
        raise InputError("is a folder; give the ratings file (JSONL, JSON or CSV)",
                         file=args.ratings_file, field="ratings_file")
    ws = Workspace.open(args.workspace)
    with TqdmProgress(desc="curate", unit="step") as bar:
        run = run_curate(ws, args.rating_column, scale=scale, seed=args.seed, k=args.k,
                         ratings_file=args.ratings_file, progress=bar, force=args.force,
                         rater=args.rater)
    print(terminal_safe(format_summary(run.meta), keep_newlines=True))
    print(terminal_safe(f"wrote {run.parquet}"))
    print(terminal_safe(f"      {run.sidecar}") + (" (cached)" if run.cached else ""))
    return 0


def format_summary(meta: dict) -> str:
    """T as a small table plus flagged counts per class (for the CLI)."""
    T = np.asarray(meta["transition_matrix"])
    k = len(T)
    head = "true\\rated " + " ".join(f"{c:>6d}" for c in range(k))
    lines = ["Transition matrix T[true, rated]:", head]
    for i in range(k):
        lines.append(f"{i:>10d} " + " ".join(f"{x:6.3f}" for x in T[i]))
    lines.append("prior p: " + " ".join(f"{x:.3f}" for x in meta["prior"]))
    lines.append(f"{'class':>6} {'rated':>8} {'flagged':>8} {'changed':>8} {'curated':>8} "
                 f"{'noise':>6}")
    for c in range(k):
        rho = meta["noise_rates"][c]
        lines.append(f"{c:>6d} {meta['histogram_raw'][c]:>8d} "
                     f"{meta['flagged_per_class'][c]:>8d} {meta['changed_per_class'][c]:>8d} "
                     f"{meta['histogram_curated'][c]:>8d} "
                     f"{'-' if rho is None else format(rho, '.3f'):>6}")
    lines.append(f"flagged {meta['flagged']:,} of {meta['rated']:,} rated samples; "
                 f"{meta['changed']:,} ratings changed; {meta['missing']:,} missing")
    for w in meta.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)
