"""The papers' selections as presets: each ranking step reproduces one reference script
(docs/methods.md §1a; the specification is METHODS.md §1a).

- ``cherry``: Cherry_LLM ``cherry_seletion/data_by_IFD.py``: the loss ratio ``ifd``, keep
  ifd ≤ 1 and drop rows whose prompt + answer did not fit ``max_length`` (``truncated``);
  budget ``int(rate × rows kept)``; highest first, an exact tie goes to the later sample (the
  script sorts ``(ifd, index)`` tuples and takes the tail).
- ``superfiltering``: Superfiltering ``code_ifd/select_data.py``: the perplexity ratio
  ``ifd_ppl``, keep ifd_ppl < 1; budget ``int(rate × all rows)``; highest first, ties in
  dataset order (Python's stable sort).
- ``superfiltering-d``: Superfiltering ``code_diversity_fla/do_fla.py``: the same filter, the
  top ``ifd_num`` by ifd_ppl, then facility location picks ``fla_num`` of them
  (``facility_location``).
- ``reflection``: Reflection_Tuning ``selection_code/get_select_data.py``. Its rule compares a
  sample's reflected versions; on original pairs only its filter (ifd_ppl < 1 and
  rifd_ppl < 1) applies, and the step says so in its label and notes.

A preset fixes its budget's base (``budget_base``: ``Recipe`` sets ``Budget.ratio_of`` to it),
so the same ratio means what the script means. Baselines to compare them with are in
``baselines.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from .blocks import as_float, missing_mask, rank_ids
from .steps import Context, Step, StepOutcome, _ids, _reorder

IFD_SCORES = "ifd"    # scores/ifd.parquet: ifd, ifd_ppl, truncated
RIFD_SCORES = "rifd"  # scores/rifd.parquet: rifd, rifd_ppl
SCORE_COMMAND = "python -m core score ifd --workspace WS"
DEFAULT_IFD_SHARE = 0.2   # do_fla's shell default 10,400 = 20 % of Alpaca's 52,002 rows
DEFAULT_FLA_SHARE = 0.02  # and 1,040 = 2 %


def _reasons(ids: np.ndarray, masks: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each row dropped once, by the first reason that applies (in list order)."""
    taken = np.zeros(len(ids), dtype=bool)
    out = {}
    for reason, mask in masks:
        mask = np.asarray(mask, dtype=bool) & ~taken
        if mask.any():
            out[reason] = ids[mask]
        taken |= mask
    return out


def _keep(frame: pd.DataFrame, masks: list[tuple[str, np.ndarray]]) -> StepOutcome:
    ids = _ids(frame)
    reasons = _reasons(ids, masks)
    drop = np.zeros(len(frame), dtype=bool)
    for mask in (m for _, m in masks):
        drop |= np.asarray(mask, dtype=bool)
    return StepOutcome(frame[~drop], reasons)


def below_one(values) -> np.ndarray:
    """Finite and < 1: what Superfiltering's ``x < filter_threash`` keeps (NaN never passes)."""
    v = as_float(values)
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (v < 1.0)


class PresetStep(Step):
    """A ranking that reproduces a reference script: reads named score files (``scores``
    must exist, else a one-line error naming them) and fixes the budget's base."""

    budget_base: str | None = None  # "all", "ranked", or "none" (the script has no budget)
    wants_budget = False             # rank() gets the budget size (facility location)

    def required_scores(self) -> dict[str, str]:
        """Score file -> the command that makes it."""
        return {self.scores: SCORE_COMMAND}


@dataclass
class CherryRanking(PresetStep):
    """Cherry LLM's ``data_by_IFD.py`` (docs/methods.md §1a)."""

    scores: str = IFD_SCORES
    kind = "cherry"
    budget_base = "ranked"

    def columns(self):
        return [f"{self.scores}.ifd", f"{self.scores}.truncated"]

    def label(self):
        return "Cherry LLM IFD (ifd ≤ 1, not truncated, later sample first on ties)"

    def rank(self, frame, ctx):
        ifd = as_float(frame[f"{self.scores}.ifd"])
        truncated = as_float(frame[f"{self.scores}.truncated"]) == 1.0
        missing = ~np.isfinite(ifd)
        with np.errstate(invalid="ignore"):
            above = ifd > 1.0
        out = _keep(frame, [(f"missing {self.scores}.ifd", missing),
                            ("prompt + answer over max_length", truncated),
                            ("ifd > 1", above)])
        kept = out.kept
        ids = _ids(kept)
        order = ids[np.lexsort((-ids, -as_float(kept[f"{self.scores}.ifd"])))]
        return _reorder(out, order)


@dataclass
class SuperfilteringRanking(PresetStep):
    """Superfiltering's ``code_ifd/select_data.py`` (docs/methods.md §1a)."""

    scores: str = IFD_SCORES
    kind = "superfiltering"
    budget_base = "all"

    def columns(self):
        return [f"{self.scores}.ifd_ppl"]

    def label(self):
        return "Superfiltering IFD (ifd_ppl < 1, highest first)"

    def rank(self, frame, ctx):
        return _superfiltering(frame, f"{self.scores}.ifd_ppl")


def _superfiltering(frame: pd.DataFrame, column: str) -> StepOutcome:
    values = frame[column]
    missing = missing_mask(values)
    out = _keep(frame, [(f"missing {column}", missing),
                        (f"{column} ≥ 1", ~below_one(values))])
    return _reorder(out, rank_ids(out.kept, column, True))


@dataclass
class SuperfilteringDRanking(PresetStep):
    """Superfiltering.D, ``code_diversity_fla/do_fla.py`` (docs/methods.md §1a): the
    Superfiltering filter, the top ``ifd_num`` by ifd_ppl (None: 20 % of all rows), then
    facility location picks the budget (``fla_num``) of them, in pick order."""

    ifd_num: int | None = None
    scores: str = IFD_SCORES
    kind = "superfiltering_d"
    budget_base = "all"
    wants_budget = True

    def __post_init__(self):
        if self.ifd_num is not None and int(self.ifd_num) < 1:
            raise InputError(f"ifd_num must be ≥ 1, not {self.ifd_num}", field="ifd_num")

    def columns(self):
        return [f"{self.scores}.ifd_ppl"]

    def needs_embeddings(self):
        return True

    def label(self):
        top = (f"top {self.ifd_num:,}" if self.ifd_num is not None
               else f"top {DEFAULT_IFD_SHARE:.0%}")
        return f"Superfiltering.D (ifd_ppl < 1, {top} by ifd_ppl, facility location)"

    def rank(self, frame, ctx: Context, budget: int | None = None):
        if budget is None:
            raise InputError("superfiltering-d needs a budget (fla_num): give a number of "
                             "rows or a ratio", field="budget")
        column = f"{self.scores}.ifd_ppl"
        ranked = _superfiltering(frame, column)
        ifd_num = (int(self.ifd_num) if self.ifd_num is not None
                   else int(DEFAULT_IFD_SHARE * (ctx.n_all or len(frame))))
        order = _ids(ranked.kept)
        top, beyond = order[:ifd_num], order[ifd_num:]
        reasons = dict(ranked.reasons)
        if len(beyond):
            reasons[f"beyond the top {ifd_num:,} by {column}"] = beyond
        if ctx.embeddings is None:
            raise InputError("superfiltering-d needs embeddings; run `python -m core embed "
                             "--workspace WS`")
        vectors = np.asarray(ctx.embeddings[top], dtype=np.float32)
        result = facility_location(vectors, min(int(budget), len(top)))
        picks = top[result.picks]
        unpicked = top[~np.isin(top, picks)]
        if len(unpicked):
            reasons["not picked by facility location"] = unpicked
        kept = frame.set_index("sample_id", drop=False).loc[picks].reset_index(drop=True)
        return StepOutcome(kept, reasons, notes={
            "objective": result.objective, "ifd_num": ifd_num, "fla_num": len(picks),
            "kernel": "exp(-‖x_i - x_j‖₂ / dim) on the workspace embeddings (embeddings.npy)",
            "optimizer": "lazy greedy; exact ties go to the lower-ranked row, as submodlib"})


@dataclass
class ReflectionFilter(PresetStep):
    """Selective Reflection-Tuning's ``get_select_data.py`` on original pairs: only the
    rule's filter applies (ifd_ppl < 1 and rifd_ppl < 1); every row that passes, in dataset
    order (the script has no budget). The method itself compares a sample's reflected
    versions (docs/methods.md §2a), which original pairs do not have."""

    scores: str = IFD_SCORES
    reverse_scores: str = RIFD_SCORES
    kind = "reflection_filter"
    budget_base = "none"

    NOTE = ("no reflected versions are used here: this is only the filter of "
            "Reflection-Tuning's selection rule (ifd_ppl < 1 and rifd_ppl < 1) on the original "
            "pairs, not the method; the method (a teacher rewrites each pair, the student "
            "keeps the better version) is `python -m core reflect` and `export --reflected` "
            "(docs/methods.md §2a)")

    def columns(self):
        return [f"{self.scores}.ifd_ppl", f"{self.reverse_scores}.rifd_ppl"]

    def required_scores(self):
        return {self.scores: SCORE_COMMAND,
                self.reverse_scores: SCORE_COMMAND + " --with-reverse"}

    def label(self):
        return "Reflection-Tuning filter only (ifd_ppl < 1, rifd_ppl < 1; no reflected versions)"

    def rank(self, frame, ctx):
        ifd, rifd = (frame[c] for c in self.columns())
        out = _keep(frame, [("missing " + "/".join(self.columns()),
                             missing_mask(ifd) | missing_mask(rifd)),
                            ("ifd_ppl ≥ 1 or rifd_ppl ≥ 1", ~(below_one(ifd) & below_one(rifd)))])
        kept = out.kept.sort_values("sample_id", kind="stable")
        return StepOutcome(kept, out.reasons, notes={"note": self.NOTE})


PRESET_RANKINGS = {"cherry": CherryRanking, "superfiltering": SuperfilteringRanking,
                   "superfiltering_d": SuperfilteringDRanking,
                   "reflection_filter": ReflectionFilter}
# preset name (CLI and app) -> (ranking type, paper, one line for the app and --help)
PRESETS = {
    "cherry": ("cherry", "Cherry LLM (Li et al., 2308.12032)",
               "rank the loss ratio IFD, keep IFD ≤ 1 and untruncated rows; the share is "
               "of the rows kept"),
    "superfiltering": ("superfiltering", "Superfiltering (Li et al., 2402.00530)",
                       "rank the perplexity ratio IFD_ppl, keep IFD_ppl < 1; the share is of "
                       "all rows"),
    "superfiltering-d": ("superfiltering_d", "Superfiltering.D (Li et al., 2402.00530)",
                         "Superfiltering's top IFD_ppl rows, then facility location on the "
                         "embeddings picks a diverse budget of them"),
    "reflection": ("reflection_filter", "Selective Reflection-Tuning (Li et al., 2402.10110)",
                   "filter only: IFD_ppl < 1 and r-IFD_ppl < 1 on the original pairs (the "
                   "method needs a teacher's reflected versions); every row that passes"),
}


# ----- facility location (Superfiltering.D) -------------------------------------------------
@dataclass
class FacilityLocationResult:
    picks: np.ndarray       # row positions in pick order
    gains: np.ndarray       # marginal gain of each pick
    objective: float        # f(S) = Σ_i max_{j∈S} K[i, j] over every row


def _kernel_columns(unique: np.ndarray, sq: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """K[:, cols] for K = exp(-‖u_i - u_j‖₂ / dim) (submodlib's dense euclidean kernel with
    gamma = 1/dim); the diagonal is exactly 1."""
    d2 = sq[:, None] + sq[cols][None, :] - 2.0 * (unique @ unique[cols].T)
    kernel = np.exp(-np.sqrt(np.maximum(d2, 0.0)) / unique.shape[1])
    kernel[cols, np.arange(len(cols))] = 1.0
    return kernel


DENSE_KERNEL_BYTES = 256 * 2**20  # below this the whole kernel is kept (gains cost m, not m·dim)


def facility_location(vectors: np.ndarray, budget: int, block: int = 256
                      ) -> FacilityLocationResult:
    """Maximise f(S) = Σ_i max_{j∈S} K[i, j] over |S| = ``budget`` by lazy greedy.

    Equal to the plain greedy (every step takes the row of largest marginal gain; an exact
    tie goes to the later row, as submodlib's max-heap of (gain, index) does), but gains are
    re-evaluated lazily: a row's last gain bounds its current one (submodularity), so only
    the rows whose bound could beat the best fresh gain are evaluated, a batch at a time.
    Identical vectors are merged into one weighted row first, so their gains tie exactly.
    The kernel is kept whole when it fits ``DENSE_KERNEL_BYTES`` (submodlib's dense mode);
    above that, kernel columns are computed when needed (memory O(rows × dim)).
    """
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    budget = min(int(budget), n)
    if budget <= 0:
        return FacilityLocationResult(np.empty(0, np.int64), np.empty(0), 0.0)
    unique, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    m = len(unique)
    weight = counts.astype(np.float64)
    position = np.full(m, -1, dtype=np.int64)  # the later row stands for its copies
    np.maximum.at(position, inverse, np.arange(n))
    sq = np.einsum("ij,ij->i", unique, unique)

    dense = np.empty((m, m)) if m * m * 8 <= DENSE_KERNEL_BYTES else None
    bound = np.empty(m)
    for lo in range(0, m, block):  # gains of the empty set: Σ_i w_i K[i, j]
        cols = np.arange(lo, min(lo + block, m))
        kernel = _kernel_columns(unique, sq, cols)
        bound[cols] = weight @ kernel
        if dense is not None:
            dense[:, cols] = kernel

    def columns(cols: np.ndarray) -> np.ndarray:
        if dense is None:
            return _kernel_columns(unique, sq, cols)
        return dense[cols].T  # rows gather contiguously; the kernel is symmetric
    best_cover = np.zeros(m)  # max_{j∈S} K[i, j] per unique row
    fresh = np.zeros(m, dtype=bool)  # bound is the exact gain for the current S
    open_ = np.ones(m, dtype=bool)
    picks: list[int] = []
    gains: list[float] = []

    def best(mask: np.ndarray) -> int:
        """The row of largest bound under ``mask``; ties: the later row. -1 if none."""
        idx = np.flatnonzero(mask)
        if not len(idx):
            return -1
        top = idx[bound[idx] == bound[idx].max()]
        return int(top[np.argmax(position[top])])

    while len(picks) < min(budget, m):
        batch = 8
        while True:
            cand = best(fresh & open_)
            rival = best(~fresh & open_)
            if cand >= 0 and (rival < 0 or (bound[cand], position[cand]) >=
                              (bound[rival], position[rival])):
                break
            stale = np.flatnonzero(~fresh & open_)
            if len(stale) > batch:  # the `batch` largest bounds (ties: later rows)
                keys = np.lexsort((position[stale], bound[stale]))
                stale = stale[keys[-batch:]]
            bound[stale] = weight @ np.maximum(columns(stale) - best_cover[:, None], 0.0)
            fresh[stale] = True
            batch = min(batch * 2, 512)
        picks.append(cand)
        gains.append(float(bound[cand]))
        open_[cand] = False
        best_cover = np.maximum(best_cover, columns(np.array([cand]))[:, 0])
        fresh[:] = False
    chosen = [int(position[u]) for u in picks]
    if budget > m:  # every distinct vector taken: copies add nothing; later rows first
        rest = np.setdiff1d(np.arange(n), chosen)[::-1][:budget - m]
        chosen += [int(i) for i in rest]
        gains += [0.0] * len(rest)
    return FacilityLocationResult(np.asarray(chosen, dtype=np.int64), np.asarray(gains),
                                  float(weight @ best_cover))
