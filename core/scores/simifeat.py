"""SimiFeat-rank mis-rating detection, the long-tail score and the neighbour evidence
(docs/methods.md §3, "Mis-rating detection", "Suggestion", "Long-tail score"; Zhu et al.,
ICML 2022; reference code UCSC-REAL/DS2, docta ``simi_feat_batch``, ``DetectLabel``).

``detect_misratings`` scores each rating by how little its neighbours vote for it, flags each
class's expected noisy share (``class_noise_rates`` from HOC's T and p) and suggests a
replacement class. Deliberate differences from the reference: a sample whose neighbours all
vote for its own rating is never flagged (the reference's ``score >= threshold`` would flag a
whole class when all its scores tie); noise rates are clipped to [0.05, 0.95] (the reference
only replaces values ≥ 1 or ≤ 0); each epoch subsamples 90 % of the rated samples (the
reference caps the subsample at 50,000 for GPU memory) and votes come from the first k
neighbours inside the subsample.

Reference variants (docs/methods.md §3, "Reference variants"): ``self_vote`` (docta
``count_knn_distribution``: k votes counting the sample itself, whose distance is replaced by
2·d₁ − d₂ of its first two neighbours in the subsample) and the majority-vote detector
``detector="mv"`` (docta ``simi_feat_batch`` with ``method='mv'``: flag a sample whenever
its neighbours' top class is not its rating; T and the noise rates are not used).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ..progress import Progress, report
from .hoc import check_graph, first_valid
from .ratings import MISSING

_STREAM_SIMIFEAT = 3  # the random stream of the epochs' subsamples (``hoc`` uses 1 and 2)
DETECTORS = ("rank", "mv")  # SimiFeat-rank (the paper's) and majority vote


def check_detector(detector: str) -> None:
    if detector not in DETECTORS:
        raise InputError(f"unknown detector {detector!r}; choose {' or '.join(DETECTORS)}",
                         field="detector")


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
                      self_vote: bool = False, progress: Progress | None = None,
                      detector: str = "rank") -> pd.DataFrame:
    """SimiFeat: how often each rating looks wrong to its neighbours.

    Per epoch a random ``sample_fraction`` of the rated samples is drawn. Each sampled
    sample gets votes v_c = Σ_j (1 − d_j)[rating_j = c] from its first k rated neighbours
    inside the subsample (1 − d = cosine similarity, clipped at 0), and the score
    −log(v̂[own rating]) with v̂ = v / ‖v‖₂. In each class c the samples in the top ρ_c share
    of scores are flagged (``detector="rank"``); with ``detector="mv"`` a sample is flagged
    when the class its neighbours vote most for is not its rating (``noise_rates`` unused).
    ``self_vote=True`` is the reference's variant: the sample votes too, with weight
    1 − (2 d₁ − d₂) from its first two voting neighbours, beside k − 1 neighbours.

    Returns per sample: ``times_sampled``, ``times_flagged``, ``noisy_avg`` =
    (flagged + 1)/(sampled + 2), ``flagged`` (noisy_avg > 0.5), ``suggested`` (the class
    other than its own most often voted top in flagged epochs, ties by total vote mass) and
    ``confidence`` = smoothed share of that suggestion × noisy_avg.
    """
    check_detector(detector)
    ratings = np.asarray(ratings, dtype=np.int64)
    n = len(ratings)
    rho = np.asarray(noise_rates, dtype=np.float64)
    num_classes = len(rho)
    idx, sims, usable = check_graph(ratings, knn_indices, knn_similarities)
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
        use = first_valid(base[rows] & in_sample[nbr], n_nbrs)
        votes = neighbour_votes(nbr_ratings[rows], weights[rows], use, num_classes)
        own = ratings[rows]
        if self_vote:
            votes[np.arange(len(rows)), own] += _self_weight(sims[rows], use)
        norm = np.linalg.norm(votes, axis=1)
        voted = norm > 0
        vhat = votes / np.where(voted, norm, 1.0)[:, None]
        score = -np.log(vhat[np.arange(len(rows)), own] + 1e-8)
        top = np.argmax(votes, axis=1)
        flag = np.zeros(len(rows), dtype=bool)
        if detector == "mv":
            flag = voted & (top != own)
        for c in range(num_classes if detector == "rank" else 0):
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


def _self_weight(sims: np.ndarray, use: np.ndarray) -> np.ndarray:
    """The reference's self vote 1 − (2 d₁ − d₂), clipped at 0: d₁, d₂ are the cosine
    distances of the first two voting neighbours (distance 1 for a missing one)."""
    order = np.cumsum(use, axis=1)
    d = 1.0 - sims

    def nth(m: int) -> np.ndarray:
        hit = use & (order == m)
        return np.where(hit.any(axis=1), np.where(hit, d, 0.0).sum(axis=1), 1.0)

    return np.clip(1.0 - (2.0 * nth(1) - nth(2)), 0.0, None)


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
