"""A recipe: filters in order, then one ranking, then the budget (``steps.py``), with its
hand-written form (YAML/JSON, checked field by field) and the presets of the named policies
(``make_recipe``, docs/methods.md §1a). ``Recipe.apply`` runs on a frame and returns a
``Selection``; reading the frame from a workspace and saving are ``saved.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from .blocks import cluster_sizes, missing_mask
from .steps import (FILTERS, RANKINGS, Budget, Context, DS2Ranking, ExcludeDuplicates,
                    ExcludeRejected, IFDRanking, NoRanking, RecostRanking, ReflectionRanking,
                    ScoreRanking, Step, StepOutcome, Threshold)
from .baselines import BASELINE_RANKINGS, BASELINES
from .presets import PRESET_RANKINGS, PRESETS, SuperfilteringDRanking

POLICIES = ("ifd", "reflection", "ds2", "recost", "threshold")
# every ranking a recipe file may name: the plain ones, the papers' presets, the baselines
ALL_RANKINGS = {**RANKINGS, **PRESET_RANKINGS, **BASELINE_RANKINGS}


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


@dataclass
class Recipe:
    """Filters in order, then one ranking, then the budget."""

    filters: list[Step] = field(default_factory=list)
    ranking: Step = field(default_factory=NoRanking)
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self):
        # A preset fixes its budget's base (presets.py): the same ratio means what its
        # reference script means; "none": the script takes every row that passes.
        base = getattr(self.ranking, "budget_base", None)
        if base == "none":
            self.budget = Budget()
        elif base is not None and self.budget.ratio_of != base:
            self.budget = dataclasses.replace(self.budget, ratio_of=base)

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
            raise InputError(f"must be a list of filters, not {shown(filters)}",
                             field="filters")
        filters = [_make(f, FILTERS, "filter", f"filters[{i}]") for i, f in enumerate(filters)]
        ranking = _make(spec.get("ranking") or {"type": "none"}, ALL_RANKINGS, "ranking",
                        "ranking")
        budget_spec = spec.get("budget") or {}
        if not isinstance(budget_spec, dict):
            raise InputError(f"must be a mapping (n, ratio, ...), not {shown(budget_spec)}",
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

    def apply(self, frame: pd.DataFrame, ctx: Context | None = None) -> Selection:
        """Run on a frame holding ``sample_id`` and every column in ``columns()``."""
        absent = [c for c in ["sample_id", *self.columns()] if c not in frame.columns]
        if absent:
            raise InputError(f"the frame lacks column(s) {', '.join(absent)} that this recipe "
                             "reads (use score_table to build it)")
        ctx = ctx or Context()
        if not ctx.n_all:
            ctx.n_all = len(frame)
        if self.budget.stratified and ctx.cluster_sizes is None:
            ctx.cluster_sizes = cluster_sizes(frame["map.cluster"].to_numpy())
        current = frame.sort_values("sample_id", kind="stable").reset_index(drop=True)
        reports: list[dict] = []
        dropped: list[pd.DataFrame] = []

        def record(step: Step, rows_in: int, outcome: StepOutcome) -> None:
            reports.append({"step": step.label(), "type": step.kind,
                            "rows_in": rows_in, "rows_out": len(outcome.kept),
                            "dropped": {r: int(len(v)) for r, v in outcome.reasons.items()},
                            **({"notes": outcome.notes} if outcome.notes else {})})
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
        elif getattr(self.ranking, "wants_budget", False):  # facility location, k-center
            outcome = self.ranking.rank(current, ctx, self.budget.size(ctx, len(current)))
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


def make_recipe(policy: str, *, budget: int | None = None, ratio: float | None = None,
                ratio_of: str = "all", column: str | None = None, ascending: bool = False,
                drop: str = "ge1", rating_column: str | None = None,
                min: dict[str, float] | None = None, max: dict[str, float] | None = None,
                exclude_duplicates: bool = False, exclude_rejected: bool = False,
                exclude_near_duplicates: bool = False, exclude_contaminated: bool = False,
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
    if exclude_near_duplicates:
        filters.append(FILTERS["exclude_near_duplicates"]())
    if exclude_contaminated:
        filters.append(FILTERS["exclude_contaminated"]())
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


def named_ranking(name: str, *, ifd_num: int | None = None, seed: int = 0) -> Step:
    """The ranking of a paper's preset (``presets.PRESETS``: cherry, superfiltering,
    superfiltering-d, reflection) or of a baseline (``baselines.BASELINES``: longest, random,
    kcenter). ``ifd_num`` is Superfiltering.D's, ``seed`` the random and k-center one's."""
    if name in PRESETS:
        kind = PRESETS[name][0]
        return SuperfilteringDRanking(ifd_num) if kind == "superfiltering_d" else \
            PRESET_RANKINGS[kind]()
    if name in BASELINES:
        kind = BASELINES[name][0]
        return BASELINE_RANKINGS[kind](seed=int(seed)) if kind in ("random", "kcenter") \
            else BASELINE_RANKINGS[kind]()
    raise InputError(f"unknown preset or baseline {name!r}; choose one of "
                     f"{', '.join([*PRESETS, *BASELINES])}")


def with_ranking(recipe: Recipe, ranking: Step) -> Recipe:
    """``recipe``'s filters and budget with another ranking (a preset fixes the budget's
    base, ``Recipe.__post_init__``): how the CLI and the app put a preset or a baseline
    behind the usual filters."""
    return Recipe(list(recipe.filters), ranking, recipe.budget)


# ----- checking a hand-written recipe -------------------------------------------------------
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
        raise InputError(f"unknown {what} type {shown(kind)}; choose one of "
                         f"{', '.join(registry)}", field=f"{where}.type")
    return _construct(registry[kind], spec, f"{what} {kind}", where)


def _construct(cls, params: dict, what: str, where: str):
    """``cls(**params)`` once every value has the type its field declares (a recipe file is
    hand-written: ``ratio: "ten"`` or a list for a number is an error naming the field)."""
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
        raise InputError(f"must be {wanted}, not {shown(value)}", field=where)


def shown(value: Any) -> str:
    """A value for an error message: short, with its type when that is the problem."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = {list: "a list", dict: "a mapping", bool: "a boolean"}.get(type(value))
    return f"{text} ({kind})" if kind else text
