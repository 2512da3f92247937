"""Baselines to compare the papers' selections with (issue 15 item 4), as ranking steps:

- ``longest``: the longest responses first ("Long Is More for Alignment", Zhao et al.,
  arXiv 2402.04833, which fine-tunes on the 1,000 longest). Length = characters of the
  response (``output``); ties: smaller sample_id first.
- ``random``: a seeded random order. Each sample's place comes from one permutation of all
  the workspace's ids, so a filter removes rows without reshuffling the others.
- ``kcenter``: k-center greedy on the embeddings (the coreset of Sener & Savarese, ICLR
  2018): start from the candidate the seeded permutation puts first, then repeatedly take the
  candidate farthest (euclidean on the L2-normalised embeddings) from those taken; ties:
  smaller sample_id.

Their budget is the usual ``Budget`` (any base). Saved, diffed and exported like any
selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from .steps import Context, Step, StepOutcome, _ids, _reorder


def response_lengths(texts: pd.Series) -> np.ndarray:
    """Characters of each response; a missing response has length 0."""
    return texts.fillna("").astype(str).str.len().to_numpy(dtype=np.int64)


def random_keys(n_all: int, seed: int) -> np.ndarray:
    """A sample's place in one seeded permutation of ids 0 .. n_all - 1."""
    keys = np.empty(n_all, dtype=np.int64)
    keys[np.random.default_rng(int(seed)).permutation(n_all)] = np.arange(n_all)
    return keys


def k_center_greedy(vectors: np.ndarray, budget: int, first: int = 0) -> np.ndarray:
    """Farthest-first traversal: positions of ``budget`` rows of ``vectors``, starting at
    ``first``, each next the row whose distance to its nearest taken row is largest (ties:
    the smaller position). Identical vectors are merged first, so copies tie exactly and a
    copy of a taken row is never taken while another row is left."""
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    budget = min(int(budget), n)
    if budget <= 0:
        return np.empty(0, dtype=np.int64)
    unique, inverse = np.unique(x, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    m = len(unique)
    position = np.full(m, n, dtype=np.int64)  # the first row stands for its copies
    np.minimum.at(position, inverse, np.arange(n))
    sq = np.einsum("ij,ij->i", unique, unique)
    nearest = np.full(m, np.inf)
    taken = np.zeros(m, dtype=bool)
    picks = [int(first)]
    u = int(inverse[first])
    while True:
        taken[u] = True
        d2 = sq + sq[u] - 2.0 * (unique @ unique[u])
        nearest = np.minimum(nearest, np.sqrt(np.maximum(d2, 0.0)))
        nearest[u] = 0.0
        if len(picks) >= min(budget, m):
            break
        open_ = np.flatnonzero(~taken)
        far = open_[nearest[open_] == nearest[open_].max()]
        u = int(far[np.argmin(position[far])])
        picks.append(int(position[u]))
    if budget > m:  # every distinct vector taken: the copies, in position order
        rest = np.setdiff1d(np.arange(n), picks)[:budget - m]
        picks += [int(i) for i in rest]
    return np.asarray(picks, dtype=np.int64)


@dataclass
class LongestRanking(Step):
    """Longest responses first (Long Is More; characters of ``output``)."""

    column: str = "output"
    kind = "longest"

    def columns(self):
        return [self.column]

    def label(self):
        return f"longest {self.column} first (Long Is More)"

    def rank(self, frame, ctx):
        ids = _ids(frame)
        order = ids[np.lexsort((ids, -response_lengths(frame[self.column])))]
        return _reorder(StepOutcome(frame, {}), order)


@dataclass
class RandomRanking(Step):
    """A seeded random order (one permutation of all ids, so filters do not reshuffle)."""

    seed: int = 0
    kind = "random"

    def label(self):
        return f"random order (seed {self.seed})"

    def rank(self, frame, ctx):
        ids = _ids(frame)
        keys = random_keys(max(ctx.n_all, int(ids.max()) + 1 if len(ids) else 0), self.seed)
        return _reorder(StepOutcome(frame, {}), ids[np.argsort(keys[ids], kind="stable")])


@dataclass
class KCenterRanking(Step):
    """k-center greedy on the embeddings; the first center is the candidate the seeded
    permutation (``RandomRanking``) puts first. Needs a budget."""

    seed: int = 0
    kind = "kcenter"
    wants_budget = True

    def needs_embeddings(self):
        return True

    def label(self):
        return f"k-center greedy on embeddings (seed {self.seed})"

    def rank(self, frame, ctx: Context, budget: int | None = None):
        if budget is None:
            raise InputError("k-center needs a budget: give a number of rows or a ratio",
                             field="budget")
        if ctx.embeddings is None:
            raise InputError("k-center needs embeddings; run `python -m core embed "
                             "--workspace WS`")
        ids = np.sort(_ids(frame))
        if not len(ids):
            return StepOutcome(frame, {})
        keys = random_keys(max(ctx.n_all, int(ids.max()) + 1), self.seed)
        first = int(np.argmin(keys[ids]))
        picks = ids[k_center_greedy(np.asarray(ctx.embeddings[ids]), budget, first)]
        rest = ids[~np.isin(ids, picks)]
        kept = frame.set_index("sample_id", drop=False).loc[picks].reset_index(drop=True)
        return StepOutcome(kept, {"not picked by k-center": rest} if len(rest) else {})


BASELINE_RANKINGS = {"longest": LongestRanking, "random": RandomRanking,
                     "kcenter": KCenterRanking}
# baseline name (CLI and app) -> (ranking type, source, one line for the app and --help)
BASELINES = {
    "longest": ("longest", "Long Is More (Zhao et al., 2402.04833)",
                "the longest responses (characters) first"),
    "random": ("random", "Random (seeded)", "a seeded random sample"),
    "kcenter": ("kcenter", "k-center greedy (Sener & Savarese, 1708.00489)",
                "farthest-first on the embeddings: the most spread-out rows"),
}
