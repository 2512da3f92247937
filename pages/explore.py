"""Explore: the map of samples coloured by any score, text search, selection → inspector."""

from __future__ import annotations

import streamlit as st

from components import state
from components.messages import show_caption, show_warning
from components.histogram import score_histogram
from components.inspector import search_samples, selection_table, show_sample
from components.map import colour_columns, colour_label, map_figure, selected_ids
from components.pool import pool

SELECTED = "explore_selected_ids"  # sample_ids picked on the map (tests set it directly)
MAP_KEY = "explore_map"
HOVER_TEXT_LIMIT = 20_000  # above this, hover labels show numbers only (a 6 MB figure at 50k)

state.ensure_shell()
ws = state.current_workspace()
if ws is None:
    st.title("Explore")
    st.info("No workspace yet: import a file (or build the demo) on the Data page.")
    st.page_link("pages/data.py", label="Go to Data", icon=":material/upload_file:")
    st.stop()

frame = pool(ws)
if frame["x"].isna().all():
    st.title("Explore")
    st.info("This workspace has no map yet: run embeddings, neighbours and the map on the "
            "Data page.")
    st.page_link("pages/data.py", label="Go to Data", icon=":material/upload_file:")
    st.stop()

st.title("Explore")
columns = colour_columns(frame)
score_cols = [c for c in columns if c != "cluster"]
titles = ws.cluster_titles()


def _remember_selection() -> None:
    event = st.session_state.get(MAP_KEY)
    points = event.selection.points if event is not None else []
    st.session_state[SELECTED] = selected_ids(points)


left, mid, right = st.columns([2, 3, 1])
colour = left.selectbox("Colour by", [None, *columns], key="explore_colour",
                        format_func=lambda c: "nothing" if c is None else colour_label(c),
                        index=1 if columns else 0)
query = mid.text_input("Search instruction, input and output", key="explore_search",
                       placeholder="substring, or a regular expression")
regex = right.checkbox("Regex", key="explore_regex")
show_titles = right.checkbox("Titles", value=True, key="explore_titles")

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

hover_text = len(frame) <= HOVER_TEXT_LIMIT
fig = map_figure(frame, colour, highlight=matches, titles=titles, show_titles=show_titles,
                 revision=str(ws.root), hover_text=hover_text)
if not hover_text:
    st.caption(f"{len(frame):,} points: hover shows ids and scores only, to keep the map fast; "
               "select points to read them below.")
st.plotly_chart(fig, key=MAP_KEY, on_select=_remember_selection,
                selection_mode=("lasso", "box", "points"), config={"displaylogo": False})

known = set(frame["sample_id"].tolist())
chosen = [i for i in st.session_state.get(SELECTED, []) if i in known]
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
    table = selection_table(frame, ids, score_cols)
    st.caption(f"{len(table):,} samples · pick a row to read it in full")
    event = st.dataframe(table, key="inspector_table", on_select="rerun",
                         selection_mode="single-row", hide_index=True,
                         height=min(300, 35 * (len(table) + 1) + 3))
    rows = event.selection.rows if event is not None else []
    position = rows[0] if rows else 0
    sample_id = int(table["sample_id"].iloc[position])
    show_sample(frame.loc[frame["sample_id"] == sample_id].iloc[0], score_cols)


inspector(chosen or (matches[:5000] if matches else []))
