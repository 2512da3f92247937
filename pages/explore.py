"""Explore: the map of samples coloured by any score, text search, selection → inspector."""

from __future__ import annotations

import streamlit as st

from components import state
from components.messages import show_caption, show_warning
from components.histogram import score_histogram
from components.inspector import search_samples, selection_table, show_sample
from components.colouring import offered_columns
from components.explore_selection import (TABLE_SELECTION_MODES, clear_selection,
                                          clicked_position, current_selection,
                                          inspected_sample, map_key, open_sample,
                                          opened_sample, remember_selection,
                                          selection_to_draw)
from components.map import colour_columns, colour_label, map_figure
from components.map_widget import ids_key, map_widget
from components.pool import pool
from components.bulk_actions import bulk_actions, tag_log_key, with_tag_columns

HOVER_TEXT_LIMIT = 20_000  # above this, hover labels show numbers only (a 6 MB figure at 50k)
TABLE_ROWS = 2_000  # the inspector lists this many of a selection (all are counted and acted on)

state.ensure_shell()
ws = state.current_workspace()
if ws is None:
    st.title("Explore")
    st.info("No workspace yet: import a file (or build the demo) on the Data page.")
    st.page_link("pages/data.py", label="Go to Data", icon=":material/upload_file:")
    st.stop()

frame = with_tag_columns(ws, pool(ws))  # tags.<name> columns: a "Colour by" choice
if frame["x"].isna().all():
    st.title("Explore")
    st.info("This workspace has no map yet: run embeddings, neighbours and the map on the "
            "Data page.")
    st.page_link("pages/data.py", label="Go to Data", icon=":material/upload_file:")
    st.stop()

st.title("Explore")
all_columns = colour_columns(frame)
titles = ws.cluster_titles()

left, mid, right = st.columns([2, 3, 1])
regex = right.checkbox("Regex", key="explore_regex")
show_titles = right.checkbox("Titles", value=True, key="explore_titles")
show_internal = right.checkbox("Internal columns", key="explore_internal",
                               help="Also offer bookkeeping columns such as IFD's two losses, "
                                    "token counts and truncation flags.")
columns = offered_columns(all_columns, show_internal)
score_cols = [c for c in columns if c != "cluster"]
colour = left.selectbox("Colour by", [None, *columns], key="explore_colour",
                        format_func=lambda c: "nothing" if c is None else colour_label(c),
                        index=1 if columns else 0)
query = mid.text_input("Search instruction, input and output", key="explore_search",
                       placeholder="substring, or a regular expression")

if colour is not None and "." in colour:
    from core.demo import precomputed_note

    note = precomputed_note(ws.score_meta(colour.split(".", 1)[0]))
    if note:
        show_caption(note + " (recompute on the Data page)")

mask, problem = search_samples(frame, query, regex=regex)
if problem:
    show_warning(problem)
matches = frame.loc[mask, "sample_id"].tolist() if query and not problem else None
if matches is not None:
    st.caption(f"{len(matches):,} of {len(frame):,} samples match")

known = set(frame["sample_id"].tolist())
chosen = current_selection(known)
inspect_ids = chosen or (matches[:5000] if matches else [])
ringed = opened_sample(inspect_ids)
hover_text = len(frame) <= HOVER_TEXT_LIMIT
signature = (state.workspace_key(ws), map_key(), colour, query, regex, show_titles, ringed)
drawn_selection = selection_to_draw(signature, chosen)


def build_map():
    return map_figure(frame, colour, highlight=matches, titles=titles, show_titles=show_titles,
                      revision=str(ws.root), hover_text=hover_text, selected=drawn_selection,
                      inspected=ringed)


if not hover_text:
    st.caption(f"{len(frame):,} points: hover shows ids and scores only, to keep the map fast; "
               "select points to read them below.")
map_widget(build_map, key=map_key(), on_change=remember_selection, config={"displaylogo": False},
           reuse=(signature, tag_log_key(ws), ids_key(drawn_selection)))
if chosen:
    st.button(f"Clear selection ({len(chosen):,})", key="explore_clear",
              on_click=clear_selection,
              help="Clears it on the map, the histogram and the table alike.")
bulk_actions(ws, chosen or matches or [], "selected" if chosen else "matching")

if colour is not None:
    subset, subset_name = ((chosen, "selected") if chosen else (matches, "matches"))
    st.plotly_chart(score_histogram(frame, colour, subset, subset_name=subset_name),
                    key="explore_histogram", config={"displayModeBar": False})


@st.fragment
def inspector(ids: list[int]) -> None:
    """Selected rows and one row's full text; picking a row reruns only this part."""
    if not ids:
        st.caption("Select points on the map (click, box or lasso) to inspect them; "
                   "a search alone inspects its matches.")
        return
    table = selection_table(frame, ids[:TABLE_ROWS], score_cols)
    st.caption(f"{len(ids):,} samples · click a row to read it in full and ring it on the map"
               + (f" (the table lists the first {TABLE_ROWS:,})" if len(ids) > TABLE_ROWS
                  else ""))
    event = st.dataframe(table, key="inspector_table", on_select="rerun",
                         selection_mode=TABLE_SELECTION_MODES, hide_index=True,
                         height=min(300, 35 * (len(table) + 1) + 3))
    sample_id = inspected_sample(table["sample_id"].tolist())
    position = clicked_position(event)
    if position is not None and position < len(table):
        picked = int(table["sample_id"].iloc[position])
        if picked != sample_id:
            open_sample(picked)
    show_sample(frame.loc[frame["sample_id"] == sample_id].iloc[0], score_cols)


inspector(inspect_ids)

from components.groups import group_view  # noqa: E402 - near-duplicates, eval overlap
group_view(ws, inspected_sample(inspect_ids))
