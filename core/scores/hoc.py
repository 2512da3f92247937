"""HOC: the rater's noise transition matrix from neighbour consensus (docs/methods.md §3,
"Transition matrix"; Zhu et al., ICML 2021; reference code UCSC-REAL/DS2 ``score_curation/``,
docta ``estimator_hoc``).

``TransitionEstimator`` estimates T[i, j] = P(rated j | true i) and the true-class prior p
without labels, from how often a sample and its two nearest rated neighbours agree
(``consensus_counts``), by solving the consensus equations with Adam (``fit_transition``).
The kNN graph helpers (``check_graph``, ``first_valid``) are shared with ``simifeat``.
Deliberate difference: the fit really keeps its best iterate (the reference keeps a
``detach()`` view that later steps overwrite, so it returns the last iterate).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..progress import Progress, report

# Independent random streams per stage (``simifeat`` has its own), so changing one stage's
# draws leaves the others alone.
_STREAM_HOC, _STREAM_FIT = 1, 2


def check_graph(ratings: np.ndarray, knn_indices, knn_similarities=None):
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


def first_valid(mask: np.ndarray, count: int) -> np.ndarray:
    """Keep, per row, only the first ``count`` True entries of ``mask``."""
    return mask & (np.cumsum(mask, axis=1, dtype=np.int16) <= count)


def consensus_patterns(ratings: np.ndarray, knn_indices) -> tuple[np.ndarray, np.ndarray]:
    """Eligible points and their (own, 1st NN, 2nd NN) ratings.

    Unrated neighbours are skipped (the next rated neighbour takes their place); a point
    is eligible when it is rated and has two rated neighbours in the graph.
    """
    ratings = np.asarray(ratings, dtype=np.int64)
    idx, _, usable = check_graph(ratings, knn_indices)
    rated_nbr = usable & (ratings[idx] >= 0)
    first_two = first_valid(rated_nbr, 2)
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
