"""Audit: look at the ratings DS2 thinks are wrong, one at a time, and decide.

The queue holds DS2's flagged samples, highest confidence first; the transition matrix T
(click a cell) and the cluster picker filter it. Each decision is one line appended to the
workspace's ``audit.jsonl`` (``core.audit``), and selection reads the curated rating with the
decisions on top. Sample text is shown as plain text only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from components import state
from components.messages import plain, show_caption, show_error, show_warning
from components.pool import knn, pool
from components.audit_view import (audit_map_figure, class_histograms, decision_history,
                                   evidence_table, flag_rate_figure, flag_rates,
                                   transition_counts)
from components.heatmap import annotated_heatmap, clicked_cell
from components.audit_readable import readable_history, show_evidence
from components.inspector import show_sample
from components.selection_view import display_subset
from core import audit
from core.errors import InputError
from core.names import ds2_scores
from core.scores.simifeat import neighbour_evidence
from core.workspace import MAP, Workspace

CONFIDENCE_HELP = (
    "How sure DS2 is that the raw rating is wrong, from 0 to 1: the share of its neighbours' "
    "similarity-weighted votes that go to the suggested rating, times the share of DS2's "
    "rounds that flagged this sample. The queue shows the most confident flags first.")
SMALL_MAP_POINTS = 5_000  # the small map draws a fixed random subset (plus this sample)


# ----- callbacks: run before the rerun, so the page draws the state after the decision ----
def _decide(root: str, column: str, sid: int, action: str, old, suggested, new=None) -> None:
    try:
        audit.append_decision(Workspace(root), sid, column, action, old=old,
                              suggested=suggested, new=new)
    except InputError as err:
        st.session_state["audit_error"] = str(err)
        return
    st.session_state["audit_pinned"] = None
    shown = {"accept": f"accepted {suggested}", "keep": f"kept {old}",
             "set": f"set to {new}", "skip": "skipped", "reject": "rejected"}[action]
    st.session_state["audit_note"] = f"Sample #{sid}: {shown}."


def _decide_set(root: str, column: str, sid: int, old, suggested) -> None:
    _decide(root, column, sid, "set", old, suggested, st.session_state.get("audit_set_value"))


def _undo(root: str, column: str) -> None:
    undone = audit.undo_last(Workspace(root), column)
    if undone is None:
        st.session_state["audit_note"] = "Nothing to undo."
        return
    st.session_state["audit_pinned"] = int(undone["sample_id"])
    st.session_state["audit_note"] = (f"Undid '{undone['action']}' on sample "
                                      f"#{undone['sample_id']}.")


def _pick_cell(chart_key: str, choice_key: str) -> None:
    cell = clicked_cell(st.session_state.get(chart_key))
    if cell is not None:
        true_class, rated = cell
        st.session_state[choice_key] = (rated, true_class)
        st.session_state["audit_pinned"] = None


def _pick_row(table_key: str, ids: list[int]) -> None:
    rows = (st.session_state.get(table_key) or {}).get("selection", {}).get("rows", [])
    if rows and rows[0] < len(ids):
        st.session_state["audit_pinned"] = int(ids[rows[0]])


def _filters_changed() -> None:
    st.session_state["audit_pinned"] = None
    st.session_state["audit_chart_version"] = st.session_state.get("audit_chart_version", 0) + 1


# ----- page ---------------------------------------------------------------------------------
def no_ds2_message(ws: Workspace) -> None:
    st.info(
        "No DS2 scores in this workspace yet. DS2 needs a rating column (an LLM's rating of "
        "each sample) and the neighbours graph. Run it on the Data page (DS2 curation), "
        "or from a terminal:")
    st.page_link("pages/data.py", label="Run DS2 on the Data page",
                 icon=":material/upload_file:")
    st.code(f"python -m core curate --workspace {ws.root} --rating-column COLUMN",
            language="bash")


def main() -> None:
    st.title("Audit DS2 mis-ratings")
    ws = state.current_workspace()
    if ws is None:
        st.info("No workspace yet: import a file on the Data page or build the demo.")
        return
    columns = ds2_scores(ws)  # DS2 score name -> the exact rating column (core.names)
    if not columns:
        no_ds2_message(ws)
        return
    score = st.selectbox("Rating", list(columns), key="audit_score",
                         format_func=columns.get) if len(columns) > 1 else next(iter(columns))
    meta = ws.score_meta(score) or {}
    column = columns[score]  # decisions are logged under this exact name
    ds2 = state.load_score(ws, score)
    k = int(meta.get("num_classes") or int(ds2["rating_class"].max()) + 1)
    classes = list(range(k))
    problems: list[str] = []  # malformed log lines, skipped: say which
    try:
        entries = audit.read_log(ws, problems)
        log_state = audit.fold_log(entries)
    except InputError as err:
        show_error(err)
        return
    for problem in problems:
        show_warning(problem)

    for key in ("audit_note", "audit_error"):
        message = st.session_state.pop(key, None)
        if message:
            if key == "audit_note":
                st.toast(plain(message))
            else:
                show_error(message)

    done, total = audit.audit_progress(ds2, log_state, column)
    show_caption(f"Rating column {column} · {k} classes · {total:,} of {len(ds2):,} samples "
                 f"flagged by DS2 · {int(meta.get('changed', 0)):,} changed by DS2 itself")
    st.progress(done / total if total else 1.0,
                text=f"{done:,} of {total:,} flagged samples audited")
    for warning in meta.get("warnings", []):
        show_caption(f"⚠ {warning}")
    if total == 0:
        st.success("DS2 flagged no sample for this rating: nothing to audit.")

    frame = pool(ws)
    has_map = ws.exists(MAP) and frame["x"].notna().any()
    clusters = frame.set_index("sample_id")["cluster"] if has_map else None
    titles = ws.cluster_titles()

    left, right = st.columns([2, 3], gap="large")
    with left:
        choice_key = "audit_transition"
        counts = transition_counts(ds2, k)
        active = st.session_state.get(choice_key)
        T = np.asarray(meta.get("transition_matrix") or np.full((k, k), np.nan))
        st.markdown("**Transition matrix T[true, rated]**")
        st.caption("P(rated | true) per cell; n = flagged samples with that raw rating whose "
                   "suggestion is that true class. Click a cell to filter the queue.")
        fig = annotated_heatmap(
            T, classes, classes, counts=counts, x_title="rated", y_title="true",
            highlight=None if not active else (active[1], active[0]),
            height=110 + 55 * k)
        chart_key = f"audit_T_{st.session_state.get('audit_chart_version', 0)}"
        st.plotly_chart(fig, key=chart_key, on_select=lambda: _pick_cell(chart_key, choice_key),
                        selection_mode="points", config={"displayModeBar": False})
        pairs = [(r, s) for r in classes for s in classes if r != s]
        options = [None] + sorted(pairs, key=lambda p: (-counts[p[1], p[0]], p))
        if active is not None and active not in options:
            options.append(active)
        st.selectbox("Transition", options, key=choice_key, on_change=_filters_changed,
                     format_func=lambda p: "all flagged" if p is None else
                     f"rated {p[0]} → suggested {p[1]} ({counts[p[1], p[0]]:,} flagged)")
        cluster = None
        if clusters is not None:
            cluster_ids = sorted(int(c) for c in clusters.dropna().unique())
            cluster = st.selectbox(
                "Cluster", [None] + cluster_ids, key="audit_cluster",
                on_change=_filters_changed,
                format_func=lambda c: "all clusters" if c is None else
                f"{c}: {titles.get(c, '')}")
        show_decided = st.toggle("Show decided samples too", key="audit_show_decided")
        in_filter = audit.audit_queue(ds2, log_state, column, clusters,
                                      transition=st.session_state.get(choice_key),
                                      cluster=cluster, include_decided=True)
        undecided = in_filter["status"].isin(["open", "skip"])
        queue = in_filter if show_decided else in_filter[undecided].reset_index(drop=True)
        open_n = int((in_filter["status"] == "open").sum())
        st.caption(f"{int((~undecided).sum()):,} of {len(in_filter):,} audited in this filter"
                   f" · {open_n:,} open")
        ids = queue["sample_id"].astype(int).tolist()
        table = queue.assign(
            title=[titles.get(int(c), "") if pd.notna(c) else "" for c in queue["cluster"]])
        table_key = f"audit_queue_{len(entries)}_{len(ids)}"
        st.dataframe(
            table[["sample_id", "rating_class", "suggested", "confidence", "status",
                   "decided", "title"]],
            key=table_key, on_select=lambda: _pick_row(table_key, ids),
            selection_mode="single-row", hide_index=True, height=300,
            column_config={"sample_id": "sample", "rating_class": "rated",
                           "confidence": st.column_config.NumberColumn(format="%.2f"),
                           "title": "cluster"})

    with right:
        pinned = st.session_state.get("audit_pinned")
        flagged_ids = set(ds2.loc[ds2["flagged"].astype(bool), "sample_id"].astype(int))
        if pinned is not None and pinned in flagged_ids:
            sid = int(pinned)
        elif ids:
            sid = ids[0]
        else:
            st.success("Every flagged sample in this filter has a decision. Change the filter "
                       "or turn on 'Show decided samples too' to review them.")
            sid = None
        if sid is not None:
            sample_panel(ws, ds2, frame, log_state, column, classes, sid, has_map)

    st.divider()
    st.subheader("How noisy is this rater?")
    c1, c2, c3 = st.columns(3)
    curated = audit.curated_in_force(ds2.set_index("sample_id")["curated"], log_state, column)
    with_audit = np.bincount(curated[curated >= 0].astype(int), minlength=k)[:k]
    raw_hist = meta.get("histogram_raw") or np.bincount(
        ds2.loc[ds2["rating_class"] >= 0, "rating_class"], minlength=k).tolist()
    cur_hist = meta.get("histogram_curated") or np.bincount(
        ds2.loc[ds2["curated"] >= 0, "curated"], minlength=k).tolist()
    c1.markdown("**Samples per rating class**")
    c1.plotly_chart(class_histograms(raw_hist, cur_hist, with_audit), key="audit_hist",
                    config={"displayModeBar": False})
    flagged_per_class = meta.get("flagged_per_class") or np.bincount(
        ds2.loc[ds2["flagged"].astype(bool), "rating_class"], minlength=k).tolist()
    rates = flag_rates(raw_hist, flagged_per_class, meta.get("noise_rates") or [None] * k)
    c2.markdown("**Flag rate per raw class** (bars) vs DS2's expected noise rate ρ")
    c2.plotly_chart(flag_rate_figure(rates), key="audit_rates",
                    config={"displayModeBar": False})
    with c3:
        st.markdown("**Latest decisions**")
        history = decision_history(audit.log_frame(entries, column))
        if not history.empty:
            history = readable_history(history)
        if history.empty:
            st.caption("No decisions yet. They are kept in audit.jsonl in the workspace.")
        else:
            st.dataframe(history, hide_index=True, height=260)


def sample_panel(ws: Workspace, ds2: pd.DataFrame, frame: pd.DataFrame,
                 log_state: audit.AuditState, column: str, classes: list[int], sid: int,
                 has_map: bool) -> None:
    """One flagged sample: the decision buttons, its text, and the neighbour evidence."""
    row = ds2.set_index("sample_id").loc[sid]
    old, suggested = int(row["rating_class"]), int(row["suggested"])
    status = log_state.status(sid, column)
    root = str(ws.root)
    st.subheader(f"Sample #{sid}")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Raw rating", old)
    m2.metric("Suggested", suggested)
    m3.metric("Confidence", f"{float(row['confidence']):.2f}", help=CONFIDENCE_HELP)
    decided = log_state.rating(sid, column)
    m4.metric("Status", status if decided is None else f"{status} → {decided}")

    bar = st.container(horizontal=True, gap="small")
    bar.button(f"Accept {suggested}", key="audit_accept", type="primary",
                      shortcut="A", help="Take DS2's suggested rating (A)",
                      on_click=_decide, args=(root, column, sid, "accept", old, suggested))
    bar.button(f"Keep {old}", key="audit_keep", shortcut="K",
                      help="Keep the raw rating: DS2 was wrong (K)",
                      on_click=_decide, args=(root, column, sid, "keep", old, suggested))
    bar.button("Skip", key="audit_skip", shortcut="S",
                      help="Decide later: moves it to the back of the queue (S)",
                      on_click=_decide, args=(root, column, sid, "skip", old, suggested))
    bar.button("Reject", key="audit_reject", shortcut="X",
                      help="Drop this sample from every selection (X)",
                      on_click=_decide, args=(root, column, sid, "reject", old, suggested))
    bar.button("Undo", key="audit_undo", shortcut="U",
                      help="Undo the last decision for this rating (U)",
                      on_click=_undo, args=(root, column))
    set_cols = st.columns([2, 1, 2], vertical_alignment="bottom")
    others = [c for c in classes if c not in (old,)] or classes
    if st.session_state.get("audit_set_value") not in others:
        st.session_state["audit_set_value"] = suggested if suggested in others else others[0]
    set_cols[0].selectbox("Another rating", others, key="audit_set_value")
    set_cols[1].button("Set", key="audit_set", shortcut="E", help="Set the chosen rating (E)",
                       on_click=_decide_set, args=(root, column, sid, old, suggested))

    sample = frame.set_index("sample_id", drop=False).loc[sid]
    show_sample(sample)

    graph = knn(ws)
    if graph is None:
        st.info("No neighbours graph: run `python -m core neighbors` to see the evidence.")
        return
    indices, sims = graph
    ratings = ds2.set_index("sample_id")["rating_class"].reindex(range(len(indices)))
    near = neighbour_evidence(sid, indices, sims, ratings, k=10)
    votes = near["rating"].value_counts().sort_index()
    st.markdown("**Evidence: its nearest neighbours**")
    st.caption("Neighbour ratings: " + ", ".join(f"{int(c)} × {int(n)}" for c, n in votes.items())
               + " (DS2 votes by similarity)")
    ev_left, ev_right = st.columns([3, 2])
    decisions = {s: log_state.rating(s, column) for s in near["neighbour_id"].astype(int)}
    evidence = evidence_table(near, frame, {k: v for k, v in decisions.items()
                                            if v is not None})
    with ev_left:
        show_evidence(evidence, frame)
    if has_map:
        rows = display_subset(len(frame), SMALL_MAP_POINTS)
        wanted = frame["sample_id"].isin([sid, *near["neighbour_id"].tolist()]).to_numpy()
        rows = np.union1d(rows, np.flatnonzero(wanted))
        small = frame.iloc[rows][["sample_id", "x", "y", "preview"]].copy()
        small["rating"] = ds2.set_index("sample_id")["rating_class"].reindex(
            small["sample_id"]).to_numpy()
        ev_right.plotly_chart(
            audit_map_figure(small, sid, near["neighbour_id"].tolist(), colour="rating"),
            key="audit_map", config={"displayModeBar": False})
    else:
        ev_right.caption("No map yet: run `python -m core map` to see where it sits.")


state.ensure_shell()
main()
