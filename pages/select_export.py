"""Select & Export: build a selection recipe live, see what it keeps, save it, export it.

Controls make a ``core.select.Recipe`` (filters → one ranking policy → budget); it runs in
memory on a cached frame of every score, so moving a slider redraws in well under a second
even on 50k rows. Saving reruns the same recipe through ``core.select.run_selection`` (which
records the sha256 of every file read); export writes JSONL + manifest into the workspace's
``exports/`` folder through ``core.export`` and offers the file for download.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from components import state
from components.messages import plain, show_caption, show_error, show_success
from components.pool import embeddings, pool
from components.select_defaults import follow_default, may_replace, synced_percent, useful_cap
from components.inspector import selection_table, show_sample
from components.map import colour_label, selected_ids
from components.selection_view import (budget_map, cluster_retention, default_split,
                                       disagreement_scatter, disagreements, kept_histogram,
                                       retention_figure, steps_table)
from core import select
from core.errors import InputError
from core.names import ds2_scores
from core.paths import NAME_RULE, child_path, is_valid_name, show_name
from core.workspace import Workspace

POLICIES = {
    "ds2": "DS2 dual sort (curated rating, audit decisions, long tail)",
    "ifd": "IFD top-k, free-form (your column, filter and base)",
    "reflection": "Reflection (IFD < 1 and r-IFD < 1)",
    "recost": "RECOST diversity-consistent sampling",
    "threshold": "Thresholds only",
}
# the papers' presets and the baselines by paper name: option -> core.select.named_ranking
# (the free-form "reflection" policy keeps its option name)
NAMED = {("reflection-tuning" if n == "reflection" else n): n
         for n in [*select.PRESETS, *select.BASELINES]}
NAMED_INFO = {option: (select.PRESETS.get(name) or select.BASELINES[name])[1:]
              for option, name in NAMED.items()}  # option -> (paper, one line)
DS2_BOOKKEEPING = (".rating_class", ".flagged", ".suggested", ".noisy_avg")


# ----- cached data: components.pool ----------------------------------------------------
def score_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric score columns worth a control (DS2's bookkeeping columns left out)."""
    out = []
    for c in frame.columns:
        if "." not in c or c.startswith(("map.", "samples.")):
            continue
        if c.startswith("ds2_") and c.endswith(DS2_BOOKKEEPING):
            continue
        if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any():
            out.append(c)
    return out


def columns_ending(columns: list[str], suffix: str) -> list[str]:
    return [c for c in columns if c.split(".", 1)[1] == suffix]


# ----- the recipe from the controls ---------------------------------------------------------
def policy_controls(ws: Workspace, frame: pd.DataFrame, scores: list[str]
                    ) -> tuple[select.Step | None, list[str], str]:
    """The policy picker and its options: (ranking step, columns it ranks by, policy)."""
    ifd_cols = columns_ending(scores, "ifd") + columns_ending(scores, "ifd_ppl")
    recost_cols = [c for c in scores if "recost" in c.split(".", 1)[1]]
    ds2_columns = ds2_scores(ws)  # DS2 score name -> exact rating column (core.names)
    available = {"ds2": bool(ds2_columns), "ifd": bool(ifd_cols),
                 "reflection": bool(columns_ending(scores, "ifd") and
                                    columns_ending(scores, "rifd")),
                 "recost": bool(recost_cols), "threshold": True,
                 **named_available(ws, frame)}
    labels = {**POLICIES, **{o: f"{paper} — preset" if NAMED[o] in select.PRESETS
                             else f"{paper} — baseline" for o, (paper, _) in NAMED_INFO.items()}}
    options = [p for p in labels if available[p]]
    missing = [labels[p].split(" (")[0] for p in labels if not available[p]]
    policy = st.radio("Policy", options, format_func=labels.get, key="sel_policy",
                      captions=[NAMED_INFO[o][1] if o in NAMED_INFO else "" for o in options])
    if missing:
        st.caption("Not available until their scores exist: " + ", ".join(missing) +
                   " (score on the Data page or with `python -m core`).")
    if policy in NAMED:
        return named_controls(frame, policy)
    if policy == "ds2":
        name = st.selectbox("Rating", list(ds2_columns), key="sel_ds2",
                            format_func=ds2_columns.get)
        st.caption("Curated rating best first (your audit decisions override DS2's), then "
                   "the rarest (long-tail score) inside a rating.")
        ranking = select.DS2Ranking(ds2_columns[name])
        return ranking, ranking.columns(), policy
    if policy == "ifd":
        col = st.selectbox("IFD column", ifd_cols, key="sel_ifd_col", format_func=colour_label)
        drop = st.radio("Drop", ["ge1", "gt1"], horizontal=True, key="sel_ifd_drop",
                        format_func=lambda d: "IFD ≥ 1 (Superfiltering)" if d == "ge1"
                        else "IFD > 1 (Cherry)")
        return select.IFDRanking(col, drop), [col], policy
    if policy == "reflection":
        ifd = columns_ending(scores, "ifd")[0]
        rifd = columns_ending(scores, "rifd")[0]
        rank_by = st.selectbox("Rank by", [ifd, rifd], key="sel_refl_rank",
                               format_func=colour_label)
        return select.ReflectionRanking(ifd, rifd, rank_by), [ifd, rifd], policy
    if policy == "recost":
        col = st.selectbox("Score", recost_cols, key="sel_recost_col", format_func=colour_label)
        st.caption("Windows of pool/budget rows in score order; from each, the sample "
                   "farthest from those already taken. Slow on large pools (about 4 s for "
                   "2 % of 50k rows on 2 cores); each result is kept, so going back is instant.")
        return select.RecostRanking(col), [col], policy
    rank = st.selectbox("Order kept rows by", [None, *scores], key="sel_thr_rank",
                        format_func=lambda c: "sample order" if c is None else colour_label(c))
    if rank is None:
        return select.NoRanking(), [], policy
    return select.ScoreRanking(rank, True), [rank], policy


def named_available(ws: Workspace, frame: pd.DataFrame) -> dict[str, bool]:
    """Which presets and baselines this workspace has the columns (and embeddings) for."""
    rankings = {o: select.named_ranking(n) for o, n in NAMED.items()}
    return {o: all(c in frame and frame[c].notna().any() for c in r.columns()) and
            (not r.needs_embeddings() or ws.exists("embeddings.npy")) for o, r in rankings.items()}


def named_controls(frame: pd.DataFrame, option: str) -> tuple[select.Step, list[str], str]:
    """A paper's preset or a baseline (``core.select.named_ranking``) and its few options."""
    name, ifd_num, seed = NAMED[option], None, 0
    if name == "superfiltering-d":
        ifd_num = int(st.number_input("Facility location over the top N by IFD_ppl (ifd_num)",
                                      1, max(len(frame), 1), max(1, len(frame) // 5),
                                      key="sel_sfd_ifd_num"))
    elif name in ("random", "kcenter"):
        seed = int(st.number_input("Seed", 0, 2**32 - 1, 0, key="sel_seed"))
    elif name == "reflection":
        st.warning(f"{select.ReflectionFilter.NOTE}. The budget is not used: the script keeps "
                   "every row that passes.")
    if name in select.PRESETS:
        st.caption({"cherry": "The share is of the rows Cherry keeps (ifd ≤ 1, not truncated).",
                    "superfiltering": "The share is of all rows.",
                    "superfiltering-d": "The budget is fla_num, picked among the top ifd_num "
                                        "(the script's defaults: 2 % and 20 % of the rows)."
                    }.get(name, "") + " Equals the reference script when the filters are off.")
    ranked = {"cherry": ["ifd.ifd"], "reflection": ["ifd.ifd_ppl", "rifd.rifd_ppl"]}.get(
        name, ["ifd.ifd_ppl"] if name.startswith("superfiltering") else [])
    return select.named_ranking(name, ifd_num=ifd_num, seed=seed), ranked, option


def budget_controls(frame: pd.DataFrame, has_map: bool) -> select.Budget:
    mode = st.radio("Budget", ["ratio", "rows", "all"], horizontal=True, key="sel_budget_mode",
                    format_func={"ratio": "share of rows", "rows": "number of rows",
                                 "all": "everything that passes"}.get)
    n = ratio = None
    ratio_of = "all"
    if mode == "ratio":
        pct = synced_percent("Keep (% of all rows)", "sel_ratio", 0.5, 100.0, 10.0, 0.5)
        ratio = round(pct / 100.0, 6)
    elif mode == "rows":
        n = int(st.number_input("Rows to keep", 0, len(frame), min(1000, len(frame)),
                                step=max(1, len(frame) // 100), key="sel_rows"))
    cap = None
    stratified = False
    if has_map and mode != "all":
        cover = st.radio("Coverage", ["none", "cap", "stratified"], horizontal=True,
                         key="sel_cover",
                         format_func={"none": "no cluster rule", "cap": "cap per cluster",
                                      "stratified": "proportional to cluster size"}.get)
        if cover == "cap":
            kept = n if n is not None else round((ratio or 0) * len(frame))
            clusters = int(frame["cluster"].nunique()) if "cluster" in frame else 0
            cap = int(st.number_input("At most per cluster", 1, len(frame),
                                      useful_cap(kept, clusters), key="sel_cap",
                                      help="Starts at the average kept rows per cluster, "
                                           "so the largest clusters are cut"))
        stratified = cover == "stratified"
    return select.Budget(n=n, ratio=ratio, ratio_of=ratio_of, per_cluster_cap=cap,
                         stratified=stratified)


def filter_controls(frame: pd.DataFrame, scores: list[str]) -> list[select.Step]:
    filters: list[select.Step] = []
    dups = int(frame["samples.duplicate_of"].notna().sum())
    if st.checkbox(f"Drop exact duplicates ({dups:,})", value=dups > 0, key="sel_dups",
                   disabled=dups == 0):
        filters.append(select.ExcludeDuplicates())
    if st.checkbox("Drop samples rejected in the audit", value=True, key="sel_rejected"):
        filters.append(select.ExcludeRejected())
    active = st.multiselect("Thresholds on", scores, key="sel_thresholds",
                            format_func=colour_label)
    for col in active:
        values = frame[col].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            show_caption(f"{colour_label(col)}: every sample has {lo:g}")
            continue
        integer = bool(np.all(np.mod(finite, 1) == 0))
        step = 1.0 if integer else float(f"{(hi - lo) / 200:.2g}")
        picked = st.slider(plain(colour_label(col)), lo, hi, (lo, hi), step, key=f"sel_thr::{col}",
                           format="%.0f" if integer else "%.3f")
        filters.append(select.Threshold(col, min=float(picked[0]), max=float(picked[1])))
    return filters


def run_live(ws: Workspace, frame: pd.DataFrame, recipe: select.Recipe) -> select.Selection:
    """The recipe on the shared frame, memoised per recipe, workspace content and audit log
    (moving a slider back is instant; RECOST sampling is slow on large pools)."""
    return _live(str(ws.root), state.workspace_key(ws), state.file_key(ws, "audit.jsonl"),
                 json.dumps(recipe.to_dict(), sort_keys=True), frame)


@st.cache_resource(show_spinner="Running the selection…", max_entries=16)
def _live(root: str, pool_key: str, audit_key: str, recipe_json: str,
          _frame: pd.DataFrame) -> select.Selection:
    ws = Workspace(root)
    recipe = select.Recipe.from_dict(json.loads(recipe_json))
    ctx = select.selection_context(ws, recipe, embeddings=lambda: embeddings(ws))
    cols = ["sample_id", *[c for c in recipe.columns() if c != "sample_id"]]
    return recipe.apply(_frame[cols], ctx)


# ----- the page -----------------------------------------------------------------------------
@st.fragment
def workbench(ws: Workspace) -> None:
    frame = pool(ws)
    scores = score_columns(frame)
    has_map = bool(frame["x"].notna().any())
    titles = ws.cluster_titles()

    controls, results = st.columns([1, 2], gap="large")
    with controls:
        st.subheader("Recipe")
        ranking, rank_cols, policy = policy_controls(ws, frame, scores)
        budget = budget_controls(frame, has_map)
        with st.expander("Filters", expanded=True):
            filters = filter_controls(frame, scores)
    try:
        recipe = select.Recipe(filters, ranking, budget)
        selection = run_live(ws, frame, recipe)
    except InputError as err:
        show_error(err, results)
        return
    ids = np.asarray(selection.sample_ids, dtype=np.int64)
    kept = np.isin(frame["sample_id"].to_numpy(), ids)

    with results:
        m1, m2, m3 = st.columns(3)
        m1.metric("Kept", f"{len(ids):,}")
        m2.metric("Dropped", f"{len(frame) - len(ids):,}")
        m3.metric("Kept share", f"{len(ids) / max(len(frame), 1):.1%}")
        st.dataframe(steps_table(selection.steps), hide_index=True,
                     column_config={"dropped": st.column_config.TextColumn(width="large")})
        shown = list(dict.fromkeys([*rank_cols, *[f.column for f in filters
                                                  if isinstance(f, select.Threshold)]]))
        bounds = {f.column: (f.min, f.max) for f in filters if isinstance(f, select.Threshold)}
        for col in shown:
            lo, hi = bounds.get(col, (None, None))
            st.plotly_chart(kept_histogram(frame[col].to_numpy(np.float64), kept,
                                           colour_label(col), lo=lo, hi=hi),
                            key=f"sel_hist::{col}", config={"displayModeBar": False})

    tabs = st.tabs(["Budget simulator", "Save, compare, export"])
    with tabs[0]:
        simulator(frame, kept, titles, has_map)
    with tabs[1]:
        save_compare_export(ws, recipe, selection, scores)


def simulator(frame: pd.DataFrame, kept: np.ndarray, titles: dict, has_map: bool) -> None:
    if not has_map:
        st.info("No map yet: build it on the Data page to see where the kept samples sit.")
        return
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(budget_map(frame, kept, titles), key="sel_map",
                        config={"displaylogo": False})
        if len(frame) > 20_000:
            st.caption(f"Drawing a fixed random 20,000 of {len(frame):,} points; counts use "
                       "every sample.")
    with right:
        retention = cluster_retention(frame["cluster"].to_numpy(), kept, titles)
        st.markdown("**Kept share per cluster**")
        st.plotly_chart(retention_figure(retention, float(kept.mean()) if len(kept) else 0.0),
                        key="sel_retention", config={"displayModeBar": False})


def split_slider(where, label: str, values: np.ndarray, key: str) -> float:
    """A slider for a quadrant split; integer scores move by half classes."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    integer = bool(np.all(np.mod(values, 1) == 0))
    step = 0.5 if integer else float(f"{(hi - lo) / 200:.2g}")
    value = min(max(default_split(values), lo), hi)
    return float(where.slider(label, lo, hi, value, step, key=key))


@st.fragment
def disagreement(ws: Workspace) -> None:
    """Two scores against each other (its own fragment: the recipe controls never redraw it)."""
    st.subheader("Score disagreement")
    frame = pool(ws)
    scores = score_columns(frame)
    if len(scores) < 2:
        st.info("Two scores are needed to compare (e.g. IFD and a DS2 curated rating).")
        return
    prefer_x = [c for c in scores if c.endswith(".ifd")] or scores
    prefer_y = [c for c in scores if c.endswith(".curated")] or [s for s in scores
                                                                 if s != prefer_x[0]]
    c1, c2 = st.columns(2)
    x_col = c1.selectbox("x", scores, index=scores.index(prefer_x[0]), key="sel_dx",
                         format_func=colour_label)
    y_col = c2.selectbox("y", scores, index=scores.index(prefer_y[0]), key="sel_dy",
                         format_func=colour_label)
    x = frame[x_col].to_numpy(np.float64)
    y = frame[y_col].to_numpy(np.float64)
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 2:
        st.info("Fewer than two samples have both scores.")
        return
    x_cut = split_slider(c1, "x split", x[both], f"sel_dxcut::{x_col}")
    y_cut = split_slider(c2, "y split", y[both], f"sel_dycut::{y_col}")
    left, right = st.columns([3, 2])
    with left:
        event = st.plotly_chart(disagreement_scatter(frame, x_col, y_col, x_cut, y_cut),
                                key="sel_scatter", on_select="rerun",
                                selection_mode=("lasso", "box", "points"))
    picked = selected_ids(event.selection.points) if event is not None and \
        hasattr(event, "selection") else []
    with right:
        if picked:
            st.markdown(f"**{len(picked):,} selected on the scatter**")
            table = selection_table(frame, picked, [x_col, y_col])
        else:
            st.markdown("**Where they disagree most** (largest gap in percentile rank)")
            table = disagreements(frame, x_col, y_col, top=50)
            text = frame.set_index("sample_id")["instruction"]
            table["instruction"] = [" ".join(str(text.get(i, "")).split())[:80]
                                    for i in table["sample_id"]]
            table = table.rename(columns={x_col: colour_label(x_col),
                                          y_col: colour_label(y_col)})
        rows = st.dataframe(table, hide_index=True, height=360, key="sel_dis_table",
                            on_select="rerun", selection_mode="single-row")
    chosen = rows.selection.rows if rows is not None and hasattr(rows, "selection") else []
    if chosen:
        sid = int(table["sample_id"].iloc[chosen[0]])
        with st.container(border=True):
            show_sample(frame.set_index("sample_id", drop=False).loc[sid], [x_col, y_col])
    else:
        st.caption("Pick a row to read the sample; lasso points on the scatter to list them.")


def save_compare_export(ws: Workspace, recipe: select.Recipe, selection: select.Selection,
                        scores: list[str]) -> None:
    saved = select.list_selections(ws)
    save_col, diff_col = st.columns(2)
    with save_col:
        st.markdown("**Save this selection**")
        follow_default("sel_name", f"{recipe.ranking.kind}-{len(selection.sample_ids)}")
        name = st.text_input("Name", key="sel_name", help=NAME_RULE)
        replace = st.checkbox(f"Replace selection {name}", key=f"sel_replace::{name}",
                              help="A selection of this name is saved already; without "
                                   "this, Save stops and keeps it") \
            if is_valid_name(name) and name in saved else False
        if st.button("Save selection", key="sel_save", type="primary") and \
                name_ok(name, "selection name") and \
                may_replace(name in saved, replace, f"Replace selection {name}",
                            f"Selection {name}"):
            try:
                final = select.run_selection(ws, recipe, name=name)
                path = select.save_selection(ws, name, final, force=replace)
            except InputError as err:
                show_error(err)
            else:
                st.session_state["sel_saved_name"] = name
                show_success(f"Saved {len(final.sample_ids):,} samples to {path.name} "
                             f"(selections/ in the workspace).")
                if final.sample_ids != selection.sample_ids:
                    st.warning("The saved selection differs from the preview: the workspace "
                               "changed while you were choosing. The saved file is current.")
                saved = select.list_selections(ws)
    with diff_col:
        st.markdown("**Compare with a saved selection**")
        if not saved:
            st.caption("No saved selection yet.")
        elif st.toggle("Compare", key="sel_compare",
                       help="Ids added and removed, per cluster and per curated rating"):
            other = st.selectbox("Saved selection", saved, key="sel_diff_with")
            try:
                diff = select.diff_selections(ws, other, selection)
            except InputError as err:
                show_error(err)
            else:
                d1, d2, d3 = st.columns(3)
                d1.metric("In both", f"{diff['common']:,}")
                d2.metric("Added now", f"{len(diff['added']):,}")
                d3.metric("Removed now", f"{len(diff['removed']):,}")
                for key, title in (("per_rating_class", "rating class"),
                                   ("per_cluster", "cluster")):
                    if diff.get(key):
                        table = pd.DataFrame(diff[key]).T.rename(
                            columns={"a": other, "b": "current"})
                        if key == "per_cluster":
                            titles = ws.cluster_titles()
                            table.insert(0, "title", [titles.get(int(c), "") if c.isdigit()
                                                      else "" for c in table.index])
                        table.index.name = title
                        st.dataframe(table, height=200)

    st.divider()
    st.markdown("**Export**")
    e1, e2 = st.columns(2)
    with_scores = e1.multiselect("Add scores as fields", scores, key="sel_export_scores",
                                 format_func=colour_label)
    ds2 = list(ds2_scores(ws).values())  # exact rating columns
    write_back = e2.selectbox("Write the curated rating (with audit decisions) into a field",
                              [None, *ds2], key="sel_export_rating",
                              format_func=lambda c: "no" if c is None else f"{c}_curated")
    export_name = st.session_state.get("sel_name") or "selection"
    # the export goes to exports/<name>.jsonl only: arbitrary paths are the CLI's --out
    out = ws.path("exports", f"{export_name}.jsonl") if is_valid_name(export_name) else None
    replace = st.checkbox(f"Replace exports/{out.name}", key="sel_export_replace",
                          help="It exists already; without this, Export stops and keeps it",
                          ) if out is not None and out.exists() else False
    if st.button(f"Export {len(selection.sample_ids):,} samples", key="sel_export") and \
            name_ok(export_name, "export name") and \
            may_replace(out.exists(), replace, f"Replace exports/{out.name}",
                        f"exports/{out.name}"):
        from core.export import export_jsonl, manifest_path

        record = selection.to_dict()
        record["name"] = st.session_state.get("sel_saved_name") or export_name
        try:
            out = child_path(ws.path("exports"), export_name, ".jsonl", what="export name")
            manifest = export_jsonl(ws, selection.sample_ids, out, with_scores=with_scores,
                                    write_back_rating=write_back, selection=record,
                                    force=replace)
        except InputError as err:
            show_error(err)
        else:
            st.session_state["sel_export_path"] = str(out)
            st.session_state["sel_export_manifest"] = str(manifest_path(out))
            show_success(f"Wrote {manifest['rows']:,} rows to exports/{out.name} and its "
                         f"manifest {manifest_path(out).name}.")
            if manifest.get("licence_note"):
                show_caption(manifest["licence_note"])
    path = st.session_state.get("sel_export_path")
    if path and Path(path).parent == ws.path("exports"):
        p = Path(path)
        if p.exists():
            b1, b2 = st.columns(2)
            b1.download_button(f"Download {p.name}", p.read_bytes(), file_name=p.name,
                               mime="application/jsonl", key="sel_download")
            m = Path(st.session_state.get("sel_export_manifest", ""))
            if m.is_file():
                b2.download_button(f"Download {m.name}", m.read_bytes(), file_name=m.name,
                                   mime="application/json", key="sel_download_manifest")


def name_ok(name: str, what: str) -> bool:
    """True for a valid name; else an error with the name shown as plain text (st.code),
    never as Markdown, and nothing is written."""
    if is_valid_name(name):
        return True
    show_error(f"Not a valid {what}: {NAME_RULE}. Nothing was written.")
    st.code(show_name(name), language=None)
    return False


def main() -> None:
    st.title("Select & Export")
    ws = state.current_workspace()
    if ws is None:
        st.info("No workspace yet: import a file on the Data page or build the demo.")
        return
    st.caption("Build a recipe (filters, a policy, a budget), watch what it keeps, then save "
               "and export it. Audit decisions feed the DS2 policy.")
    workbench(ws)
    st.divider()
    disagreement(ws)


state.ensure_shell()
main()
