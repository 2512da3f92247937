"""``python -m core select`` (a policy's flags or a recipe file → a saved selection) and
``python -m core diff`` (two saved selections compared)."""

from __future__ import annotations

import json
import math

from ..errors import InputError
from ..text import terminal_safe
from ..workspace import Workspace
from .baselines import BASELINES
from .presets import DEFAULT_FLA_SHARE, PRESETS
from .recipe import POLICIES, Recipe, Selection, make_recipe, named_ranking, with_ranking
from .saved import diff_selections, run_selection, save_selection, selection_path
from .steps import RATIO_BASES


def _parse_bound(text: str, flag: str) -> tuple[str, float]:
    col, sep, value = text.partition("=")
    try:
        if not sep or not col or not math.isfinite(float(value)):
            raise ValueError
        return col.strip(), float(value)
    except ValueError:
        raise InputError(f"bad {flag} '{text}': use COLUMN=VALUE, e.g. {flag} ifd=0.2") from None


def recipe_from_args(args) -> Recipe:
    """The recipe the ``select`` flags describe (``--recipe`` or ``make_recipe``)."""
    if args.recipe:
        return Recipe.load(args.recipe)
    named = args.preset or args.baseline
    if not args.policy and not named:
        raise InputError("give --policy or --recipe (or --preset, --baseline)")
    ratio = _named_checks(args) if named else args.ratio
    bounds: dict[str, dict[str, float]] = {"min": {}, "max": {}}
    for key in ("min", "max"):
        for text in getattr(args, key) or []:
            col, value = _parse_bound(text, f"--{key}")
            bounds[key][col] = value
    recipe = make_recipe(args.policy or "threshold", budget=args.budget, ratio=ratio,
                       ratio_of=args.ratio_of or "all", column=args.column,
                       ascending=args.ascending,
                       drop=args.drop, rating_column=args.rating_column, min=bounds["min"],
                       max=bounds["max"], exclude_duplicates=args.exclude_duplicates,
                       exclude_rejected=args.exclude_rejected,
                       exclude_near_duplicates=args.exclude_near_duplicates,
                       exclude_contaminated=args.exclude_contaminated,
                       per_cluster_cap=args.per_cluster_cap, stratified=args.stratified)
    if not named:
        return recipe
    return with_ranking(recipe, named_ranking(named, ifd_num=args.ifd_num,
                                               seed=args.seed or 0))


def _named_checks(args) -> float | None:
    """Refuse flags a preset or baseline does not take; the ratio it runs with."""
    name = args.preset or args.baseline
    flag = "--preset" if args.preset else "--baseline"
    wrong = [f for f, given in (("--column", args.column), ("--ascending", args.ascending),
                                ("--rating-column", args.rating_column),
                                ("--ratio-of", args.preset and args.ratio_of),
                                ("--ifd-num", name != "superfiltering-d" and
                                 args.ifd_num is not None),
                                ("--seed", name not in ("random", "kcenter") and
                                 args.seed is not None)) if given]
    if wrong:
        why = " (a preset fixes its budget's base)" if wrong[0] == "--ratio-of" else ""
        raise InputError(f"{flag} {name} does not take {wrong[0]}{why}")
    if name == "reflection" and (args.budget is not None or args.ratio is not None):
        raise InputError("--preset reflection takes every row that passes its filter (the "
                         "reference script has no budget): drop --ratio/--budget")
    if name == "superfiltering-d" and args.budget is None and args.ratio is None:
        return DEFAULT_FLA_SHARE  # do_fla's shell default fla_num, 2 % of the rows
    return args.ratio


def format_steps(selection: Selection) -> str:
    """The per-step table the CLI prints."""
    width = max([len(s["step"]) for s in selection.steps] + [4])
    lines = [f"{'step':<{width}}  {'in':>9}  {'out':>9}  dropped"]
    for s in selection.steps:
        why = ", ".join(f"{n:,} {r}" for r, n in s["dropped"].items()) or "-"
        lines.append(f"{s['step']:<{width}}  {s['rows_in']:>9,}  {s['rows_out']:>9,}  {why}")
    return "\n".join(lines)


def register_cli(subparsers) -> None:
    from ..args import positive_int, ratio, seed

    p = subparsers.add_parser(
        "select", help="choose a subset by a policy or a recipe and save it",
        description="Run a selection policy (or a YAML recipe: filters, ranking, budget) on "
                    "a workspace's scores and save it as selections/NAME.json.")
    p.add_argument("--workspace", required=True)
    p.add_argument("--name", required=True, help="selection name (file selections/NAME.json)")
    p.add_argument("--recipe", metavar="FILE", help="recipe YAML/JSON instead of the flags")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--policy", choices=POLICIES)
    how.add_argument("--preset", choices=list(PRESETS),
                     help="a paper's selection exactly as its reference script: " + "; ".join(
                         f"{k}: {v[1]}" for k, v in PRESETS.items()))
    how.add_argument("--baseline", choices=list(BASELINES),
                     help="a baseline to compare with: " + "; ".join(
                         f"{k}: {v[2]}" for k, v in BASELINES.items()))
    p.add_argument("--ifd-num", type=positive_int, metavar="N",
                   help="superfiltering-d: facility location runs on the top N by ifd_ppl "
                        "(default 20%% of all rows); --budget/--ratio is fla_num "
                        "(default 2%%)")
    p.add_argument("--seed", type=seed, help="random and kcenter baselines (default 0)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--ratio", type=ratio, help="share of rows to take, e.g. 0.05")
    size.add_argument("--budget", type=positive_int, metavar="N",
                      help="number of rows to take")
    p.add_argument("--ratio-of", choices=RATIO_BASES,
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
    p.add_argument("--exclude-near-duplicates", action="store_true",
                   help="drop near-duplicates found by `dedup` (each group's keeper stays)")
    p.add_argument("--exclude-contaminated", action="store_true",
                   help="drop rows `decontaminate` found overlapping the eval set")
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
    for s in selection.steps:
        for key, value in (s.get("notes") or {}).items():
            print(terminal_safe(f"{s['step']}: {key}: {value}"))
    if not args.dry_run:
        path = save_selection(ws, args.name, selection, force=args.force)
        print(terminal_safe(f"saved {path}"))
    return 0


def _cmd_diff(args) -> int:
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
