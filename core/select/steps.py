"""The steps of a selection recipe: filters, one ranking, a budget (``recipe.Recipe`` runs
them in that order). Not to be confused with the workspace's step contract
(``core/workspace/steps.py``): these run in memory on a frame and write nothing.

Every step records how many rows it dropped and why (datatrove style), so the app can show
where each sample left the pipeline. The steps only wire the plain blocks (``blocks.py``)
together. Policies (docs/methods.md):

- IFD top-k (§1a, Cherry LLM / Superfiltering): drop missing scores and IFD ≥ 1 (``ge1``,
  Superfiltering keeps IFD < 1) or IFD > 1 (``gt1``, Cherry keeps IFD ≤ 1), highest first.
- Reflection (§2a, Selective Reflection-Tuning): keep IFD < 1 and r-IFD < 1, rank by a column.
- DS2 dual sort (§3): curated rating (hand decisions from the audit log override it) best
  first, then the long-tail score.
- RECOST diversity-consistent sampling (§4).
- Filters: score thresholds, exact duplicates, rows rejected in the audit log; coverage (§5):
  a per-cluster cap, or a budget stratified by cluster size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..audit import curated_in_force, fold_log, rejected_in
from ..errors import InputError
from ..names import ds2_score_name
from ..tags import check_tag
from .blocks import (as_float, budget_size, cap_per_cluster, diversity_consistent_sample,
                     dual_sort, ifd_keep_mask, missing_mask, rank_ids, stratified_take,
                     threshold_mask)

RATIO_BASES = ("all", "candidates", "ranked")


@dataclass
class Context:
    """What steps may need besides the frame. ``selection_context`` fills it from a
    workspace; tests and the app can build it by hand."""

    embeddings: np.ndarray | None = None      # row = sample_id, L2-normalised
    audit: list[dict] = field(default_factory=list)  # the audit log's entries
    cluster_sizes: dict[Any, int] | None = None  # for stratified budgets
    n_all: int = 0                              # rows in the workspace
    n_candidates: int = 0                       # rows left after the filters
    tags: dict[str, set[int]] = field(default_factory=dict)  # core.tags.tag_sets


@dataclass
class StepOutcome:
    """Rows kept by a step, in order, and for each dropped row the reason."""

    kept: pd.DataFrame
    reasons: dict[str, np.ndarray]  # reason -> dropped sample ids
    notes: dict = field(default_factory=dict)  # extra facts for the step's report


class Step:
    """A recipe step: its parameters as a dict and the columns it reads."""

    kind: str = ""

    def params(self) -> dict:
        """The step's fields, in order: what a recipe file sets."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict:
        return {"type": self.kind, **self.params()}

    def columns(self) -> list[str]:
        return []

    def label(self) -> str:
        return self.kind

    def needs_embeddings(self) -> bool:
        return False


def _ids(frame: pd.DataFrame) -> np.ndarray:
    return frame["sample_id"].to_numpy(dtype=np.int64)


def _split(frame: pd.DataFrame, keep: np.ndarray, reason: str) -> StepOutcome:
    keep = np.asarray(keep, dtype=bool)
    dropped = _ids(frame)[~keep]
    return StepOutcome(frame[keep], {reason: dropped} if len(dropped) else {})


def _reorder(outcome: StepOutcome, order: np.ndarray) -> StepOutcome:
    kept = outcome.kept.set_index("sample_id", drop=False).loc[order].reset_index(drop=True)
    return StepOutcome(kept, outcome.reasons)


def _feasible_first(frame: pd.DataFrame, needed: list[str], feasible: np.ndarray,
                    why_not: str, rank_by: str, descending: bool) -> StepOutcome:
    """Drop rows missing any ``needed`` column, then the rows not ``feasible`` (reason
    ``why_not``); order the rest by ``rank_by``. IFD top-k and reflection are this."""
    ids = _ids(frame)
    missing = np.zeros(len(frame), dtype=bool)
    for col in needed:
        missing |= missing_mask(frame[col])
    reasons = {}
    if missing.any():
        reasons["missing " + "/".join(needed)] = ids[missing]
    if (~missing & ~feasible).any():
        reasons[why_not] = ids[~missing & ~feasible]
    kept = frame[~missing & feasible]
    return _reorder(StepOutcome(kept, reasons), rank_ids(kept, rank_by, descending))


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
        ids = _ids(frame)
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
    """Drop rows rejected in the audit log (``core.audit.rejected_in``)."""

    kind = "exclude_rejected"

    def apply(self, frame, ctx):
        rejected = rejected_in(fold_log(ctx.audit))
        return _split(frame, ~frame["sample_id"].isin(rejected).to_numpy(),
                      "rejected in audit")


@dataclass
class ExcludeNearDuplicates(Step):
    """Drop near-duplicates (``core.dedup``: in a group of ``scores/dedup.parquet`` and not
    its keeper); run ``python -m core dedup`` first."""

    kind = "exclude_near_duplicates"

    def columns(self):
        return ["dedup.near_duplicate"]

    def apply(self, frame, ctx):
        return _split(frame, as_float(frame["dedup.near_duplicate"]) != 1, "near-duplicate")


@dataclass
class ExcludeContaminated(Step):
    """Drop rows that overlap an eval set (``core.decontam``: ``contaminated`` in
    ``scores/decontam.parquet``); run ``python -m core decontaminate`` first."""

    kind = "exclude_contaminated"

    def columns(self):
        return ["decontam.contaminated"]

    def apply(self, frame, ctx):
        return _split(frame, as_float(frame["decontam.contaminated"]) != 1,
                      "overlaps the eval set")


@dataclass
class Tagged(Step):
    """Keep only rows carrying ``tag`` (``core.tags``: tags live in the audit log)."""

    tag: str
    kind = "tagged"

    def __post_init__(self):
        check_tag(self.tag)

    def label(self):
        return f"tagged {self.tag}"

    def apply(self, frame, ctx):
        return _split(frame, frame["sample_id"].isin(ctx.tags.get(self.tag, set())).to_numpy(),
                      f"not tagged {self.tag}")


@dataclass
class ExcludeTagged(Tagged):
    """Drop rows carrying ``tag``."""

    kind = "exclude_tagged"

    def label(self):
        return f"exclude tagged {self.tag}"

    def apply(self, frame, ctx):
        return _split(frame, ~frame["sample_id"].isin(ctx.tags.get(self.tag, set())).to_numpy(),
                      f"tagged {self.tag}")


# ----- rankings ---------------------------------------------------------------------------
@dataclass
class ScoreRanking(Step):
    """Order by any score column (missing scores dropped)."""

    column: str
    descending: bool = True
    kind = "score"

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
    """IFD top-k (docs/methods.md §1a): drop missing and IFD ≥ 1 (``ge1``) or > 1 (``gt1``),
    highest first. ``column`` is ``ifd`` (loss ratio) or ``ifd_ppl`` (perplexity ratio)."""

    column: str = "ifd"
    drop: str = "ge1"
    kind = "ifd"

    def __post_init__(self):
        ifd_keep_mask(np.empty(0), self.drop)  # validates ``drop``

    def columns(self):
        return [self.column]

    def label(self):
        return f"IFD top ({self.column}, keep {'< 1' if self.drop == 'ge1' else '≤ 1'})"

    def rank(self, frame, ctx):
        why_not = f"{self.column} {'≥' if self.drop == 'ge1' else '>'} 1"
        return _feasible_first(frame, [self.column], ifd_keep_mask(frame[self.column],
                                                                   self.drop),
                               why_not, self.column, True)


@dataclass
class ReflectionRanking(Step):
    """Selective Reflection-Tuning (docs/methods.md §2a): keep IFD < 1 and r-IFD < 1 (both
    present), order by ``rank_by``."""

    ifd_column: str = "ifd"
    rifd_column: str = "rifd"
    rank_by: str = "ifd"
    descending: bool = True
    kind = "reflection"

    def columns(self):
        return list(dict.fromkeys([self.ifd_column, self.rifd_column, self.rank_by]))

    def label(self):
        return f"reflection ({self.ifd_column} < 1, {self.rifd_column} < 1, by {self.rank_by})"

    def rank(self, frame, ctx):
        feasible = (ifd_keep_mask(frame[self.ifd_column], "ge1")
                    & ifd_keep_mask(frame[self.rifd_column], "ge1"))
        return _feasible_first(frame, self.columns(), feasible,
                               f"{self.ifd_column} ≥ 1 or {self.rifd_column} ≥ 1",
                               self.rank_by, self.descending)


@dataclass
class DS2Ranking(Step):
    """DS2 dual sort (docs/methods.md §3) on the DS2 scores of ``rating_column`` (the exact
    column; its score file is ``core.names.ds2_score_name``): the curated rating in force
    (``core.audit.curated_in_force``), then the long-tail score."""

    rating_column: str
    kind = "ds2"

    @property
    def score_name(self) -> str:
        return ds2_score_name(self.rating_column)

    def columns(self):
        return [f"{self.score_name}.curated", f"{self.score_name}.long_tail"]

    def label(self):
        return f"DS2 dual sort ({self.rating_column})"

    def rank(self, frame, ctx):
        curated = pd.Series(frame[f"{self.score_name}.curated"].to_numpy(), index=_ids(frame))
        rating = curated_in_force(curated, ctx.audit, self.rating_column).to_numpy()
        work = pd.DataFrame({"sample_id": _ids(frame), "rating": rating,
                             "long_tail": as_float(frame[f"{self.score_name}.long_tail"])})
        out = _split(frame, ~missing_mask(rating), f"missing {self.score_name} rating")
        return _reorder(out, dual_sort(work, None, "rating", "long_tail"))


@dataclass
class RecostRanking(Step):
    """RECOST diversity-consistent sampling (docs/methods.md §4): window picks for the budget
    first (one per window of w = pool / budget), then the other scored rows by score."""

    column: str = "recost"
    kind = "recost"

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
        ids = _ids(kept)
        picks = diversity_consistent_sample(ids, as_float(kept[self.column]),
                                            np.asarray(ctx.embeddings[ids]), budget)
        rest = by_score[~np.isin(by_score, picks)]
        return _reorder(out, np.concatenate([picks, rest]))


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
        order = _ids(ranked)
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


FILTERS = {"threshold": Threshold, "exclude_duplicates": ExcludeDuplicates,
           "exclude_rejected": ExcludeRejected, "exclude_near_duplicates": ExcludeNearDuplicates,
           "exclude_contaminated": ExcludeContaminated, "tagged": Tagged,
           "exclude_tagged": ExcludeTagged}
RANKINGS = {"ifd": IFDRanking, "reflection": ReflectionRanking, "ds2": DS2Ranking,
            "recost": RecostRanking, "score": ScoreRanking, "none": NoRanking}
