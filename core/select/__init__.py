"""Selection: turn per-sample scores into a chosen subset, reproducibly.

A selection is a *recipe* (``recipe.py``): filters in order, then one ranking, then a budget
(the steps, ``steps.py``), built from plain functions over frames and arrays (``blocks.py``)
and run on the wide score table (``table.py``). ``saved.py`` runs recipes on a workspace and
saves, loads, reruns and compares selections; ``cli.py`` is ``python -m core select|diff``.
``presets.py`` holds the papers' selections exactly as their reference scripts and
``baselines.py`` the baselines (longest, random, k-center) to compare them with.
The policies and their reference scripts: docs/methods.md §1a (IFD presets), §2a
(reflection), §3 (DS2 dual sort), §4 (RECOST), §5 (coverage).
"""

from .blocks import (as_float, cap_per_cluster, cluster_sizes, diversity_consistent_sample,
                     dual_sort, stratified_quotas, stratified_take)
from .baselines import (BASELINES, KCenterRanking, LongestRanking, RandomRanking,
                        k_center_greedy)
from .presets import (PRESETS, CherryRanking, ReflectionFilter, SuperfilteringDRanking,
                      SuperfilteringRanking, facility_location)
from .recipe import Recipe, Selection, make_recipe, named_ranking, with_ranking
from .saved import (diff_selections, list_selections, load_selection, rerun_selection,
                    run_selection, save_selection, selection_context)
from .steps import (Budget, Context, DS2Ranking, ExcludeDuplicates, ExcludeRejected,
                    IFDRanking, NoRanking, RecostRanking, ReflectionRanking, ScoreRanking, Step,
                    Threshold)
from .table import column_dtypes, numeric_score_columns, resolve_columns, score_table

__all__ = [
    # plain blocks
    "as_float", "cap_per_cluster", "cluster_sizes", "diversity_consistent_sample",
    "dual_sort", "stratified_quotas", "stratified_take",
    # recipe steps and recipes
    "Step", "Context", "Threshold", "ExcludeDuplicates", "ExcludeRejected", "ScoreRanking",
    "NoRanking", "IFDRanking", "ReflectionRanking", "DS2Ranking", "RecostRanking", "Budget",
    "Recipe", "Selection", "make_recipe",
    # the papers' presets and the baselines (docs/methods.md §1a, §5)
    "PRESETS", "BASELINES", "named_ranking", "with_ranking", "CherryRanking",
    "SuperfilteringRanking", "SuperfilteringDRanking", "ReflectionFilter", "LongestRanking",
    "RandomRanking", "KCenterRanking", "facility_location", "k_center_greedy",
    # the wide score table
    "score_table", "resolve_columns", "numeric_score_columns", "column_dtypes",
    # selections in a workspace
    "selection_context", "run_selection", "save_selection", "load_selection",
    "list_selections", "rerun_selection", "diff_selections",
]
